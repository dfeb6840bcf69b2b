"""Two real training processes on this CPU machine give the single-process result.

Each process gets the environment `launch/run_gpu_slurm.sh` gives a task under `srun`: the
SLURM variables srun sets, plus `MKD_JAX_DISTRIBUTED=1` and `JAX_COORDINATOR_ADDRESS`. So
`mkd_jax.train`'s bare `jax.distributed.initialize()` runs through jax's SLURM auto-detection
exactly as on a cluster, with gloo collectives between the processes. (The simpler jitted
reduction over two processes is `test_batching.py::test_two_real_processes_...`.)
"""

import json
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).parent.parent
STEPS = 2
COMPARED = ("train/loss", "train/ce", "train/kd_kl", "train/grad_norm", "train/tokens")


def _train_cmd(workdir: Path, data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mkd_jax.train",
        "--config",
        str(REPO / "configs/tiny.py"),
        "--workdir",
        str(workdir),
        f"--config.total_steps={STEPS}",
        "--config.eval.max_batches=-1",  # no WER passes: the steps are under test
        "--config.data.source.kind=librispeech",
        f"--config.data.source.path={data}",
    ]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_"))}
    return (
        env
        | {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "HF_HUB_OFFLINE": "1"}
        | extra
    )


def _metrics(workdir: Path) -> dict[int, list[dict]]:
    by_step = defaultdict(list)
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_step[row["step"]].append(row)
    return by_step


def _wait(procs, logs, timeout=240):
    for p, log in zip(procs, logs, strict=True):
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert rc == 0, f"exit {rc}; last output:\n{log.read_text()[-3000:]}"


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, tiny_librispeech):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi, single = tmp_path / "multi", tmp_path / "single"
    logs = [tmp_path / f"task{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        env = _env(
            4,
            MKD_JAX_DISTRIBUTED="1",
            JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
            SLURM_JOB_ID="4242",
            SLURM_STEP_NODELIST="localhost",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(i),
            SLURM_LOCALID=str(i),
        )
        with log.open("w") as f:
            procs.append(
                subprocess.Popen(
                    _train_cmd(multi, tiny_librispeech),
                    env=env,
                    cwd=REPO,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                )
            )
    _wait(procs, logs)
    assert "connected to 1 peer ranks" in logs[0].read_text()  # really two processes

    ref_log = tmp_path / "single.log"
    with ref_log.open("w") as f:
        ref = subprocess.Popen(
            _train_cmd(single, tiny_librispeech),
            env=_env(8),
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    _wait([ref], [ref_log])

    got, want = _metrics(multi), _metrics(single)
    assert sorted(want) == sorted(got) == list(range(1, STEPS + 1))
    for step, rows in got.items():
        (expected,) = want[step]
        for row in rows:
            for key in COMPARED:
                np.testing.assert_allclose(
                    row[key], expected[key], rtol=1e-5, err_msg=f"step {step} {key}"
                )
    assert (multi / "checkpoints" / str(STEPS)).is_dir()
