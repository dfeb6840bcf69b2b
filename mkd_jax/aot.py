"""Ahead-of-time compile of the train step for a TPU topology, with no TPU attached.

    JAX_PLATFORMS=cpu python -m mkd_jax.aot --config configs/paper_large_v2.py --init_shapes \
        --topology v5e:4x4 --mesh data=-1,fsdp=4
    python -m mkd_jax.aot --config configs/tiny.py --platform cpu --mesh data=2,fsdp=4

Builds the roles on abstract shapes (nothing is loaded or allocated), the optimizer state, and a
batch of the config's largest bucket, then lowers and compiles `train_step` exactly as
`mkd_jax.train` jits it (same shardings, donation of the state) on a mesh over the topology's
devices, and prints the per-device memory XLA plans and the step's FLOPs. Answers "does this
config fit on that slice, with that mesh?" before renting the slice.

TPU topologies need libtpu (`pip install -e .[tpu]`); it is only used as a compiler here, and
`JAX_PLATFORMS=cpu` keeps JAX from also starting a local TPU backend. `--config.a.b=v` overrides
work as in `mkd_jax.train`. `--platform cpu` does the same on this machine's CPU devices
(`--cpu_devices` fakes several). The paper preset on v5e:4x4 plans 3.97 GiB per chip (table in
launch/README.md).
"""

from __future__ import annotations

import importlib.util
import json
from typing import TYPE_CHECKING

from absl import app, flags
from ml_collections import ConfigDict, config_flags

from mkd_jax import cli
from mkd_jax.validate import validate

if TYPE_CHECKING:
    import jax

# jax and flax take seconds to import: the functions that trace or compile import them, so a
# usage error or a bad config stops before they load.

GIB = 1024**3
# Tokenizers in the asset cache that stand in for a checkpoint's own under --init_shapes, by the
# model's vocabulary size: Whisper's English-only and (pre-v3) multilingual vocabularies.
TOKENIZER_BY_VOCAB = {51864: "tiny.en", 51865: "base"}


def parse_mesh(text: str) -> tuple[tuple[str, int], ...]:
    """`"data=-1,fsdp=4"` -> `(("data", -1), ("fsdp", 4))`, in the given order."""
    axes = []
    for part in text.split(","):
        name, _, size = (s.strip() for s in part.partition("="))
        if not name or not (size.isdigit() and int(size) > 0 or size == "-1"):
            raise ValueError(
                f"--mesh={text!r}: expected name=size pairs such as data=-1,fsdp=4 "
                f"(size a positive int or -1), got {part!r}"
            )
        axes.append((name, int(size)))
    names = [n for n, _ in axes]
    if len(set(names)) != len(names):
        raise ValueError(f"--mesh={text!r}: repeated axis name")
    return tuple(axes)


def override_mesh(config_mesh, axes) -> tuple[tuple[str, int], ...]:
    """`axes`, then every other axis of `config_mesh` at size 1, since sharding rules name them."""
    named = {n for n, _ in axes}
    return tuple(axes) + tuple((str(n), 1) for n, _ in config_mesh if n not in named)


def topology_devices(name: str) -> list:
    """The devices of a TPU topology such as `v5e:4x4`, compiled for through libtpu."""
    if importlib.util.find_spec("libtpu") is None:
        raise RuntimeError(
            f"--topology={name} needs libtpu as the TPU compiler; install it with "
            "`pip install -e .[tpu]` (jax[tpu]==0.10.2, libtpu 0.0.42.*)"
        )
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # libtpu reports bad names as various XLA errors
        raise ValueError(
            f"--topology={name!r} is not a TPU topology libtpu knows "
            f"(examples: v5e:2x2, v5e:4x4, v4:2x2x2, v5p:2x2x2): {e}"
        ) from e


def use_init_shapes(cfg: ConfigDict) -> None:
    """Point every role at its `init` dimensions instead of its checkpoint (in place).

    A preset's checkpoints need not exist on the machine that checks it; the tokenizer only
    decides whether teacher and student share a vocabulary, so a cached one of the same
    vocabulary size stands in.
    """
    roles = {"student": cfg.student, **{f"teachers.{n}": c for n, c in cfg.teachers.items()}}
    for where, role in roles.items():
        vocab = int(role.init.vocab_size)
        if vocab not in TOKENIZER_BY_VOCAB:
            raise ValueError(
                f"{where}.init.vocab_size={vocab}: --init_shapes knows tokenizers "
                f"for {sorted(TOKENIZER_BY_VOCAB)} only"
            )
        role.checkpoint = ""
        role.tokenizer = TOKENIZER_BY_VOCAB[vocab]


def lower_train_step(cfg, mesh) -> jax.stages.Lowered:
    """`train_step` lowered with the shardings and donation `mkd_jax.train` uses, on `mesh`."""
    import flax.linen as nn
    import jax

    from mkd_jax import sharding
    from mkd_jax.roles import build_roles, frozen_params
    from mkd_jax.state import (
        abstract_batch,
        init_state,
        init_trainable,
        make_setup,
        make_step_fn,
        make_tx,
    )

    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    dp = sharding.data_parallel_size(mesh, rules)
    if cfg.data.batch_size % dp:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} is not a multiple of the "
            f"{dp}-way data parallelism of mesh {dict(mesh.shape)}"
        )
    roles = build_roles(cfg, abstract=True)
    student = roles["student"].model
    setup = make_setup(cfg, roles)
    tx, _ = make_tx(cfg)
    rng = jax.random.PRNGKey(cfg.seed)
    state = jax.eval_shape(lambda: init_state(init_trainable(cfg, roles, setup, rng), tx, rng))
    frozen = frozen_params(roles)
    batch = abstract_batch(cfg, setup, student)
    step_fn, _ = make_step_fn(setup, tx, roles, state, batch, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):  # as mkd_jax.train traces it
        return step_fn.lower(state, frozen, batch)


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # some backends do not implement it
        return None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops >= 0 else None


def compile_report(cfg, mesh) -> dict:
    """Compile the train step on `mesh` and summarise it (see `summarize`)."""
    return summarize(lower_train_step(cfg, mesh).compile(), cfg, mesh)


def summarize(compiled, cfg, mesh) -> dict:
    """XLA's per-device memory plan and cost of a compiled train step.

    Returns:
      A JSON-able dict: platform, device kind and count, mesh, global batch shape, and per
      device `argument_gib`, `output_gib`, `alias_gib` (outputs written into donated
      arguments), `temp_gib`, `total_gib` (= argument + output - alias + temp, the live peak
      XLA plans for) and `flops` (None where the backend reports no cost analysis).
    """
    mem = compiled.memory_analysis()
    if mem is None:
        raise RuntimeError(f"{mesh.devices.flat[0].platform} compiler gave no memory analysis")
    arg, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    dev = mesh.devices.flat[0]
    return {
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "devices": int(mesh.devices.size),
        "mesh": {k: int(v) for k, v in mesh.shape.items()},
        "batch": [
            int(cfg.data.batch_size),
            int(max(cfg.data.token_buckets)),
            int(cfg.data.n_frames),
        ],
        "argument_gib": arg / GIB,
        "output_gib": out / GIB,
        "alias_gib": alias / GIB,
        "temp_gib": temp / GIB,
        "total_gib": (arg + out - alias + temp) / GIB,
        "flops": _flops(compiled),
    }


def format_report(r: dict) -> str:
    flops = "n/a" if r["flops"] is None else f"{r['flops'] / 1e12:.3f} TFLOP per device"
    mesh = ",".join(f"{k}={v}" for k, v in r["mesh"].items())
    b, s, f = r["batch"]
    return "\n".join(
        [
            f"{r['devices']} x {r['device_kind']} ({r['platform']}), mesh {mesh}, "
            f"global batch {b} x {s} tokens x {f} mel frames",
            "per-device memory (GiB):",
            f"  arguments {r['argument_gib']:9.3f}",
            f"  outputs   {r['output_gib']:9.3f}  ({r['alias_gib']:.3f} of it aliased to donated "
            "arguments)",
            f"  temp      {r['temp_gib']:9.3f}",
            f"  total     {r['total_gib']:9.3f}  (arguments + outputs - aliased + temp)",
            f"step cost: {flops}",
        ]
    )


FLAGS = flags.FLAGS


def define_flags() -> None:
    """Command-line flags; defined on demand so importing this module next to `mkd_jax.train`
    (which also defines `--config`) does not clash."""
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_enum("platform", "tpu", ["tpu", "cpu"], "Compile for a TPU topology or CPUs.")
    flags.DEFINE_string("topology", "", "TPU topology, e.g. v5e:4x4 or v4:2x2x2 (platform tpu).")
    flags.DEFINE_string(
        "mesh",
        "",
        "Mesh overriding config.mesh, e.g. data=-1,fsdp=4; config axes left out get size 1.",
    )
    flags.DEFINE_integer("cpu_devices", 8, "CPU devices to fake with --platform cpu.")
    flags.DEFINE_bool(
        "init_shapes",
        False,
        "Take every role's shape from its `init` dimensions, not its checkpoint (check a preset "
        "without its weights).",
    )
    flags.DEFINE_string("json", "", "Also write the report as JSON to this file.")
    flags.mark_flags_as_required(["config"])


def main(argv):
    del argv
    cfg = FLAGS.config
    if FLAGS.platform == "tpu" and not FLAGS.topology:
        raise app.UsageError("--platform tpu needs --topology, e.g. --topology v5e:4x4")
    if FLAGS.platform == "cpu" and FLAGS.topology:
        raise app.UsageError("--topology applies to --platform tpu only")
    with cfg.unlocked():
        if FLAGS.init_shapes:
            use_init_shapes(cfg)
        if FLAGS.mesh:
            cfg.mesh = override_mesh(cfg.mesh, parse_mesh(FLAGS.mesh))
    roles = ("student", *(f"teachers.{n}" for n in cfg.teachers))
    validate(cfg, shapes_only=roles if FLAGS.init_shapes else ())  # as train would, up front
    import jax

    from mkd_jax import sharding

    jax.config.update("jax_threefry_partitionable", True)
    if FLAGS.platform == "tpu":
        devices = topology_devices(FLAGS.topology)
    else:
        # Takes effect only before the CPU backend starts, which nothing above has done.
        jax.config.update("jax_num_cpu_devices", FLAGS.cpu_devices)
        devices = jax.devices("cpu")
    mesh = sharding.make_mesh(cfg.mesh, devices)
    report = compile_report(cfg, mesh)
    print(format_report(report))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
