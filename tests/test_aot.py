"""Ahead-of-time compile of the train step: CPU mesh in the default suite, a TPU topology if
libtpu is installed."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from mkd_jax import aot, sharding
from mkd_jax.aot import GIB

CONFIGS = Path(__file__).parent.parent / "configs"


def load_config(name):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def shard_bytes(lowered, compiled) -> int:
    """Bytes one device holds of the step's arguments, from shapes and shardings alone.

    Only arguments the executable keeps count: jit prunes inputs the step never reads.
    """
    infos = dict(jax.tree_util.tree_leaves_with_path(lowered.args_info))
    kept = jax.tree_util.tree_leaves_with_path(compiled.input_shardings)
    assert 0 < len(kept) <= len(infos)
    return sum(
        int(np.prod(s.shard_shape(infos[p].shape))) * np.dtype(infos[p].dtype).itemsize
        for p, s in kept
    )


def test_tiny_compiles_on_a_cpu_data2_fsdp4_mesh():
    cfg = load_config("tiny")
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1)), jax.devices()[:8])
    lowered = aot.lower_train_step(cfg, mesh)
    compiled = lowered.compile()
    r = aot.summarize(compiled, cfg, mesh)
    assert (r["platform"], r["devices"], r["mesh"]) == (
        "cpu",
        8,
        {"data": 2, "fsdp": 4, "tensor": 1},
    )
    assert r["batch"] == [8, 48, 1000]
    for key in ("argument_gib", "output_gib", "temp_gib", "total_gib"):
        assert r[key] > 0, (key, r)
    # XLA's argument figure is exactly this device's shards: FSDP-sharded weights, a quarter
    # batch each for the `(data, fsdp)`-sharded rows, a full copy of the replicated state.
    assert r["argument_gib"] * GIB == shard_bytes(lowered, compiled)
    frozen_full = sum(
        int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(lowered.args_info[0][1])
    )
    assert r["argument_gib"] * GIB < frozen_full  # weights really are split over fsdp
    assert 0 < r["alias_gib"] <= r["output_gib"]  # the donated state is updated in place
    assert r["total_gib"] == pytest.approx(
        r["argument_gib"] + r["output_gib"] - r["alias_gib"] + r["temp_gib"]
    )
    assert r["flops"] is not None and r["flops"] > 0
    text = aot.format_report(r)
    assert "mesh data=2,fsdp=4,tensor=1" in text and "TFLOP per device" in text


def test_batch_not_divisible_by_data_parallelism_is_refused():
    cfg = load_config("tiny")
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 8), ("tensor", 1)), jax.devices()[:8])
    with cfg.unlocked():
        cfg.data.batch_size = 12
    with pytest.raises(ValueError, match="batch_size=12 is not a multiple of the 8-way"):
        aot.lower_train_step(cfg, mesh)


def test_mesh_flag_parsing_and_override():
    assert aot.parse_mesh("data=-1, fsdp=4") == (("data", -1), ("fsdp", 4))
    for bad in ("data", "data=0", "data=-2", "=4", "data=x", "data=2,data=4"):
        with pytest.raises(ValueError, match="--mesh"):
            aot.parse_mesh(bad)
    config_mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    assert aot.override_mesh(config_mesh, (("fsdp", 4), ("data", -1))) == (
        ("fsdp", 4),
        ("data", -1),
        ("tensor", 1),
    )


def test_init_shapes_swaps_checkpoints_for_tokenizers_of_the_same_vocabulary():
    cfg = load_config("paper_large_v2")
    with cfg.unlocked():
        aot.use_init_shapes(cfg)
    assert (cfg.student.checkpoint, cfg.student.tokenizer) == ("", "tiny.en")
    assert (cfg.teachers.large_v2.checkpoint, cfg.teachers.large_v2.tokenizer) == ("", "base")
    with cfg.unlocked():
        cfg.student.init.vocab_size = 51866  # large-v3's vocabulary: no stand-in tokenizer
        with pytest.raises(ValueError, match="student.init.vocab_size=51866"):
            aot.use_init_shapes(cfg)


def test_missing_libtpu_names_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a)
    )
    with pytest.raises(RuntimeError, match=r"pip install -e \.\[tpu\]"):
        aot.topology_devices("v5e:2x4")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="libtpu not installed; `pip install -e .[tpu]` enables TPU compiles",
)
def test_tiny_compiles_for_a_v5e_topology():
    cfg = load_config("tiny")
    devices = aot.topology_devices("v5e:2x4")
    assert len(devices) == 8
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1)), devices)
    lowered = aot.lower_train_step(cfg, mesh)
    compiled = lowered.compile()
    r = aot.summarize(compiled, cfg, mesh)
    assert r["platform"] == "tpu" and "v5" in r["device_kind"]
    # TPU layouts pad minor dimensions to tiles, so the shards are a lower bound here.
    assert r["argument_gib"] * GIB >= shard_bytes(lowered, compiled)
    assert r["temp_gib"] > 0 and r["flops"] > 0
    with pytest.raises(ValueError, match="not a TPU topology"):
        aot.topology_devices("v5e:banana")
