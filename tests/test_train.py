"""End-to-end training on the tiny preset: a 2-step run, one compile, bit-exact resume."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mkd_jax import train

ROOT = Path(__file__).parent.parent


def tiny_config(data_root, **overrides):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs/tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.source.kind = "librispeech"
    cfg.data.source.path = str(data_root)
    cfg.eval.max_batches = -1  # no WER passes: decoding a random model tells nothing here
    cfg.data.prefetch = 0
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_end_to_end_run_compiles_once(tiny_librispeech, tmp_path):
    out = train.run(tiny_config(tiny_librispeech, total_steps=4), tmp_path)
    assert out["step"] == 4
    assert out["train_step_compiles"] == 1
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["params"]["trainable"] > 0
    assert report["params"]["pct_of_largest_teacher"] < 1.0
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "train/loss" in x]
    assert [x["step"] for x in logged] == [1, 2, 3, 4]
    for key in ("train/ce", "train/kd_kl", "train/agree/a", "train/agree/b", "train/coverage/b"):
        assert np.isfinite(logged[-1][key]), key
    # Cross-tokenizer diagnostics: mass the vocabulary map drops, the student's probability on ids
    # teacher b lacks, and teacher-forced top-1 accuracy of student, teachers and target.
    for key in ("train/kd/dropped_mass/b", "train/kd/student_off_support/b", "train/acc/student",
                "train/acc/a", "train/acc/b", "train/acc/target"):  # fmt: skip
        assert 0.0 <= logged[-1][key] <= 1.0, key
    assert "train/kd/dropped_mass/a" not in logged[-1]  # a shares the student's vocabulary
    assert all(x["train/finite"] == 1.0 for x in logged)
    assert any(k.startswith("train/feat/") for k in logged[-1])
    assert 0.5 < logged[-1]["train/coverage/b"] <= 1.0  # cross-tokenizer teacher
    assert (tmp_path / "checkpoints" / "4").is_dir()
    assert (tmp_path / "curves.png").stat().st_size > 0
    # LoRA `b` moved off zero: the student is no longer exactly its pretrained self.
    b = [
        x
        for p, x in jax.tree_util.tree_flatten_with_path(out["trainable"]["lora"])[0]
        if p[-1].key == "b"
    ]
    assert max(float(np.abs(x).max()) for x in b) > 0


def assert_resumes_bit_exact(cfg, root) -> None:
    """Four steps straight equal two steps, an interruption, and a resume to four."""
    straight = train.run(cfg, root / "straight")
    interrupted = train.run(cfg, root / "resumed", stop_at=2)
    assert interrupted == {"step": 2, "stopped_by": "stop_at=2"}
    t0, cpu0 = time.time(), time.process_time()
    resumed = train.run(cfg, root / "resumed")
    last_process, last_cpu = time.time() - t0, time.process_time() - cpu0
    assert straight["step"] == resumed["step"] == 4
    # The report's wall and CPU time span both processes, not just the last one.
    report = json.loads((root / "resumed" / "report.json").read_text())
    assert report["wall_s"] > last_process and report["cpu_s"] > last_cpu
    flat_a = jax.tree_util.tree_flatten_with_path(straight["trainable"])[0]
    flat_b = jax.tree_util.tree_flatten_with_path(resumed["trainable"])[0]
    assert len(flat_a) == len(flat_b) > 0
    for (path, a), (_, b) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def test_a_student_trained_into_loops_is_garbage_not_a_result():
    def res(wer, flagged=0, failures=0, n=20):
        return {"wer": wer, "n_total": n, "flagged": [{}] * flagged, "failures": [{}] * failures}

    assert train.degenerate(res(12.0), res(30.0, flagged=2)) is None  # worse, not garbage
    assert train.degenerate(res(12.0), res(40.0, flagged=5)) is None  # a quarter: the limit
    why = train.degenerate(res(12.0, flagged=1), res(80.0, flagged=4, failures=2))
    assert why == "6 of 20 utterances loop without end-of-text or fail to decode"
    assert train.degenerate(None, res(80.0, flagged=6)) is not None  # no before scored
    assert "WER 130.0%" in train.degenerate(res(12.0), res(130.0))
    # An untrained student that already looped (a random-init test model): not training's doing.
    assert train.degenerate(res(150.0, flagged=20), res(140.0, flagged=20)) is None
    assert train.degenerate(res(12.0), None) is None


def test_earlier_processes_time_is_unknown_not_zero_without_a_record():
    assert train.earlier_clocks(None) == (0.0, 0.0)  # a fresh run
    assert train.earlier_clocks({"wall_s": 60.0, "cpu_s": 90.0}) == (60.0, 90.0)
    assert train.earlier_clocks({"wall_s": 60.0}) == (60.0, None)  # before CPU time was recorded
    assert train.earlier_clocks({"before": {}}) == (None, None)  # before either was


@pytest.mark.slow  # the cached path's resume test runs by default
def test_resume_is_bit_exact(tiny_librispeech, tmp_path):
    assert_resumes_bit_exact(tiny_config(tiny_librispeech, total_steps=4), tmp_path)


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(
    tiny_librispeech, tmp_path
):
    from mkd_jax.checkpoint import Checkpointer, nonfinite_leaves
    from mkd_jax.cli import RunFailed

    cfg = tiny_config(tiny_librispeech, total_steps=6)
    train.run(cfg, tmp_path, stop_at=2)  # a finite checkpoint at step 2
    with cfg.unlocked():
        cfg.optim.lr = 1e30  # every update after the first overflows
    with pytest.raises(RunFailed, match=r"step [3-6]: non-finite .*train/(ce|loss|grad_norm)"):
        train.run(cfg, tmp_path)
    # The resume ran under another rate than its first two steps: named, as the report will.
    assert train.config_changes(tmp_path, cfg.to_json_best_effort()) == []  # config.json is now it
    cfg_json = json.loads(cfg.to_json_best_effort())
    cfg_json["optim"]["lr"], cfg_json["eval"]["max_batches"] = 1e-3, 7
    assert train.config_changes(tmp_path, json.dumps(cfg_json)) == ["optim.lr 1e+30 -> 0.001"]
    assert train.config_changes(tmp_path / "fresh", json.dumps(cfg_json)) == []
    ckpt = Checkpointer(tmp_path / "checkpoints")
    latest = ckpt.latest_step()
    restored = ckpt.restore_latest(_abstract_state(cfg))
    ckpt.close()
    state, meta, step = restored
    assert step == latest and not nonfinite_leaves(state)
    assert meta["fingerprint"]


def _abstract_state(cfg):
    from mkd_jax.roles import build_roles
    from mkd_jax.state import init_state, init_trainable, make_setup, make_tx

    roles = build_roles(cfg, abstract=True)
    setup = make_setup(cfg, roles)
    rng = jax.random.PRNGKey(cfg.seed)
    tx, _ = make_tx(cfg)
    return jax.eval_shape(lambda: init_state(init_trainable(cfg, roles, setup, rng), tx, rng))


@pytest.mark.parametrize(
    "damage",
    [
        "bitflip",
        pytest.param("truncate", marks=pytest.mark.slow),
        pytest.param("metadata", marks=pytest.mark.slow),
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tiny_librispeech, tmp_path, damage, caplog
):
    cfg = tiny_config(tiny_librispeech, total_steps=4)
    with cfg.unlocked():
        cfg.ckpt.max_to_keep = 3
    train.run(cfg, tmp_path, stop_at=4)
    folder = tmp_path / "checkpoints" / "4"
    files = sorted(
        (f for f in folder.rglob("*") if f.is_file() and f.stat().st_size > 64),
        key=lambda f: -f.stat().st_size,
    )
    if damage == "metadata":
        target = next(f for f in folder.rglob("*") if f.is_file() and "meta" in str(f))
        target.write_text("{ not json")
    else:
        target = files[0]  # the largest file holds the array data
        data = bytearray(target.read_bytes())
        if damage == "bitflip":
            rng = np.random.default_rng(0)
            for i in rng.choice(len(data), 64, replace=False):
                data[i] ^= 0xFF
        else:
            data = data[: len(data) // 2]
        target.write_bytes(bytes(data))
    from mkd_jax.checkpoint import Checkpointer

    ckpt = Checkpointer(tmp_path / "checkpoints")
    with caplog.at_level("WARNING"):
        state, _, step = ckpt.restore_latest(_abstract_state(cfg))
    ckpt.close()
    assert step == 2, (damage, step)
    assert any("checkpoints/4 is damaged" in r.getMessage() for r in caplog.records)
    assert any("falling back to step 2" in r.getMessage() for r in caplog.records)
    # Training resumes from step 2 and finishes.
    out = train.run(cfg, tmp_path)
    assert out["step"] == 4


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tiny_librispeech, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "mkd_jax.train",
        "--config",
        str(ROOT / "configs/tiny.py"),
        "--workdir",
        str(tmp_path),
        "--config.total_steps=1000",
        "--config.data.source.kind=librispeech",
        f"--config.data.source.path={tiny_librispeech}",
        "--config.eval.max_batches=-1",
        "--config.ckpt.every_steps=1000",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    for line in proc.stdout:
        if "step 1/1000" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, rest
    assert "SIGTERM: saved step" in rest
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and 1 <= saved[-1] < 1000


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["uncached", "cached"])
def test_a_mixture_trains_and_resumes_bit_exact(tiny_librispeech, tmp_path, cached):
    """Two sources interleaved by weight, batches made by a Grain worker process; with the teacher
    cache each source reads its own cache."""
    from mkd_jax.config_base import mix_source

    cfg = tiny_config(tiny_librispeech, total_steps=4)
    with cfg.unlocked():
        libri = dict(kind="librispeech", path=str(tiny_librispeech))
        cfg.data.mix.dev = mix_source(libri, "dev", 0.5)
        cfg.data.workers = 1
        cfg.cache.enabled, cfg.cache.dir = cached, str(tmp_path / "cache")
    assert_resumes_bit_exact(cfg, tmp_path)
    if cached:  # one cache per source
        assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 2
