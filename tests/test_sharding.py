"""Golden PartitionSpecs on a data=2, fsdp=4 mesh, and mesh construction errors."""

import jax
import pytest
from flax.traverse_util import flatten_dict
from jax.sharding import PartitionSpec as P

from mkd_jax import sharding
from mkd_jax.config_base import SHARDING_RULES
from mkd_jax.models.whisper import Whisper, abstract_params

DIMS = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=64,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_source_positions=1500,
    max_target_positions=448,
)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh((("data", 2), ("fsdp", 4), ("tensor", 1)))


def test_golden_param_specs(mesh):
    specs = flatten_dict(
        sharding.param_shardings(abstract_params(Whisper(**DIMS)), mesh, SHARDING_RULES), sep="/"
    )
    golden = {
        "decoder/layers_0/self_attn/q_proj/kernel": P("fsdp", "tensor"),
        "decoder/layers_0/self_attn/out_proj/kernel": P("tensor", "fsdp"),
        "decoder/layers_0/fc1/kernel": P("fsdp", "tensor"),
        "decoder/layers_0/fc2/kernel": P("tensor", "fsdp"),
        "decoder/layers_0/fc1/bias": P("tensor"),
        "decoder/embed_tokens/embedding": P("tensor", "fsdp"),
        "decoder/embed_positions": P(None, "fsdp"),
        "encoder/conv1/kernel": P(None, None, "fsdp"),
        "encoder/layers_0/final_layer_norm/scale": P("fsdp"),
    }
    for path, spec in golden.items():
        assert specs[path].spec == spec, path


def test_indivisible_dimension_is_replicated(mesh):
    odd = dict(DIMS, d_model=66, encoder_attention_heads=6, decoder_attention_heads=6)
    specs = flatten_dict(
        sharding.param_shardings(abstract_params(Whisper(**odd)), mesh, SHARDING_RULES), sep="/"
    )
    assert specs["decoder/layers_0/fc1/kernel"].spec == P(None, "tensor")


def test_batch_sharding_and_data_parallel_size(mesh):
    assert sharding.batch_sharding(mesh, SHARDING_RULES, 3).spec == P(("data", "fsdp"), None, None)
    assert sharding.data_parallel_size(mesh, SHARDING_RULES) == 8


def test_mesh_fills_minus_one_and_rejects_bad_shapes():
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 2), ("tensor", 1)))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2, "tensor": 1}
    assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 3
    with pytest.raises(ValueError, match="not divisible"):
        sharding.make_mesh((("data", -1), ("fsdp", 3)))
    with pytest.raises(ValueError, match="needs 16 devices"):
        sharding.make_mesh((("data", 4), ("fsdp", 4)))
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh((("data", -1), ("fsdp", -1)))
