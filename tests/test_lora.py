"""LoRA init/merge over parameter trees: identity at init, merge against numpy, gradients."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mkd_jax import lora
from mkd_jax.models.whisper import Whisper

TINY = dict(
    vocab_size=64,
    num_mel_bins=8,
    d_model=16,
    encoder_layers=2,
    encoder_attention_heads=2,
    decoder_layers=3,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_source_positions=8,
    max_target_positions=8,
)


@pytest.fixture(scope="module")
def tiny():
    model = Whisper(**TINY)
    mel = jax.random.normal(jax.random.key(1), (2, 8, 16))
    tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), mel, tokens)["params"])
    return model, jax.tree.map(np.asarray, params), mel, tokens


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def test_default_targets_cover_attention_and_mlp_of_every_decoder_layer(tiny):
    _, params, _, _ = tiny
    got = lora.resolve_targets(params, lora.DEFAULT_TARGETS)
    expected = sorted(
        f"decoder/layers_{i}/{attn}/{proj}/kernel"
        for i in range(3)
        for attn in ("self_attn", "encoder_attn")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
    ) + [f"decoder/layers_{i}/fc{j}/kernel" for i in range(3) for j in (1, 2)]
    assert got == sorted(expected)
    assert len(got) == 30
    enc = lora.resolve_targets(params, lora.ENCODER_TARGETS)
    assert len(enc) == 2 * 6 and all(p.startswith("encoder/layers_") for p in enc)
    both = lora.resolve_targets(params, [lora.DECODER_TARGETS, lora.ENCODER_TARGETS])
    assert both == sorted(got + enc)


def test_resolve_logs_the_list(tiny, caplog):
    _, params, _, _ = tiny
    with caplog.at_level(logging.INFO):
        lora.resolve_targets(params, r"decoder/layers_0/fc1/kernel")
    assert "decoder/layers_0/fc1/kernel" in caplog.text


def test_unmatched_or_bad_pattern_raises(tiny):
    _, params, _, _ = tiny
    # The paper code's defect: PyTorch-style names that match nothing in this tree.
    with pytest.raises(ValueError, match="q_proj.weight"):
        lora.resolve_targets(params, [lora.DEFAULT_TARGETS, ".*q_proj.weight"])
    with pytest.raises(ValueError, match="must be kernels"):
        lora.resolve_targets(params, r"decoder/layers_0/fc1/bias")
    with pytest.raises(ValueError, match="not a valid regex"):
        lora.resolve_targets(params, "decoder/(")
    with pytest.raises(ValueError, match="unbox"):
        lora.resolve_targets({"k": nn.Partitioned(np.zeros((2, 2)), ("embed", "mlp"))}, ".*")
    with pytest.raises(ValueError, match="empty"):
        lora.resolve_targets(params, [])
    with pytest.raises(ValueError, match="rank"):
        lora.init(jax.random.key(0), params, targets=lora.DEFAULT_TARGETS, rank=0)


def test_init_shapes_and_identity(tiny):
    model, params, mel, tokens = tiny
    adapters = lora.init(jax.random.key(3), params, targets=lora.DEFAULT_TARGETS, rank=4)
    flat = _flat(adapters)
    assert len(flat) == 2 * 30
    a = flat["decoder/layers_1/fc1/kernel/a"]
    b = flat["decoder/layers_1/fc1/kernel/b"]
    assert a.shape == (16, 4) and b.shape == (4, 32)
    assert np.all(np.asarray(b) == 0)
    assert 0 < np.abs(a).max() <= 1 / np.sqrt(16)  # PEFT's kaiming-uniform bound 1/sqrt(in)
    merged = lora.merge(params, adapters, alpha=8.0, rank=4)
    for path, w in _flat(params).items():
        np.testing.assert_array_equal(np.asarray(_flat(merged)[path]), w, err_msg=path)
    apply = jax.jit(model.apply)
    out0, _ = apply({"params": params}, mel, tokens)
    out1, _ = apply({"params": merged}, mel, tokens)
    np.testing.assert_array_equal(np.asarray(out0), np.asarray(out1))


def test_merge_matches_numpy_and_does_not_mutate():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(5, 7)).astype(np.float32)
    stacked = rng.normal(size=(3, 5, 7)).astype(np.float32)  # scanned layers [L, in, out]
    params = {"dense": {"kernel": w, "bias": np.zeros(7, np.float32)}, "scan": {"kernel": stacked}}
    a = rng.normal(size=(5, 2)).astype(np.float32)
    b = rng.normal(size=(2, 7)).astype(np.float32)
    sa = rng.normal(size=(3, 5, 2)).astype(np.float32)
    sb = rng.normal(size=(3, 2, 7)).astype(np.float32)
    adapters = {"dense": {"kernel": {"a": a, "b": b}}, "scan": {"kernel": {"a": sa, "b": sb}}}
    before = jax.tree.map(np.copy, (params, adapters))
    merged = lora.merge(params, adapters, alpha=3.0, rank=2)
    np.testing.assert_allclose(merged["dense"]["kernel"], w + 1.5 * a @ b, rtol=1e-6, atol=1e-6)
    expected = stacked + 1.5 * np.stack([sa[i] @ sb[i] for i in range(3)])
    np.testing.assert_allclose(merged["scan"]["kernel"], expected, rtol=1e-6, atol=1e-6)
    assert merged["dense"]["bias"] is params["dense"]["bias"]
    assert merged is not params and merged["dense"] is not params["dense"]
    jax.tree.map(np.testing.assert_array_equal, (params, adapters), before)
    assert params["dense"]["kernel"] is w
    with pytest.raises(ValueError, match="rank 3"):
        lora.merge(params, adapters, alpha=3.0, rank=3)
    with pytest.raises(ValueError, match="not in the parameter tree"):
        lora.merge({"dense": params["dense"]}, adapters, alpha=3.0, rank=2)


def test_merge_keeps_kernel_dtype():
    params = {"k": {"kernel": jnp.ones((4, 4), jnp.bfloat16)}}
    adapters = {"k": {"kernel": {"a": jnp.ones((4, 2)), "b": jnp.ones((2, 4))}}}
    merged = lora.merge(params, adapters, alpha=2.0, rank=2)
    assert merged["k"]["kernel"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(merged["k"]["kernel"], np.float32), 3.0)


def test_gradient_reaches_only_the_factors():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    c = rng.normal(size=(4, 6)).astype(np.float32)
    a = rng.normal(size=(4, 3)).astype(np.float32)
    b = rng.normal(size=(3, 6)).astype(np.float32)
    params = {"l": {"kernel": w, "bias": np.ones(6, np.float32)}}
    adapters = {"l": {"kernel": {"a": a, "b": b}}}

    def loss(adapters):
        merged = lora.merge(params, adapters, alpha=6.0, rank=3)
        return jnp.sum(merged["l"]["kernel"] * c) + jnp.sum(merged["l"]["bias"])

    grads = jax.grad(loss)(adapters)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    # d/da sum(C * (W + s a b)) = s C b^T, d/db = s a^T C.
    np.testing.assert_allclose(grads["l"]["kernel"]["a"], 2.0 * c @ b.T, rtol=1e-5)
    np.testing.assert_allclose(grads["l"]["kernel"]["b"], 2.0 * a.T @ c, rtol=1e-5)


def test_gradient_through_whisper_reaches_every_adapter(tiny):
    model, params, mel, tokens = tiny
    adapters = lora.init(jax.random.key(3), params, targets=lora.DEFAULT_TARGETS, rank=2)

    def loss(adapters):
        merged = lora.merge(params, adapters, alpha=4.0, rank=2)
        logits, _ = model.apply({"params": merged}, mel, tokens)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    grads = _flat(jax.jit(jax.grad(loss))(adapters))
    for path, g in grads.items():
        if path.endswith("/b"):  # b = 0, so only b gets gradient at init
            assert np.abs(np.asarray(g)).max() > 0, path
        else:
            np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=path)


def test_dropout_masks_rank_components():
    a = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    params = {"k": {"kernel": np.zeros((3, 4), np.float32)}}
    adapters = {"k": {"kernel": {"a": a, "b": np.eye(4, dtype=np.float32)}}}
    # With b = I the update is s * a', revealing which rank columns of a were kept.
    exact = lora.merge(params, adapters, alpha=4.0, rank=4, dropout=0.5)  # no rng: exact
    np.testing.assert_array_equal(exact["k"]["kernel"], a)
    kept_counts = []
    for seed in range(8):
        out = np.asarray(
            lora.merge(
                params, adapters, alpha=4.0, rank=4, dropout=0.5, dropout_rng=jax.random.key(seed)
            )["k"]["kernel"]
        )
        kept = np.all(out == 2.0 * a, axis=0)
        dropped = np.all(out == 0.0, axis=0)
        assert np.all(kept | dropped), out
        kept_counts.append(kept.sum())
    assert 0 < sum(kept_counts) < 8 * 4
    with pytest.raises(ValueError, match="dropout"):
        lora.merge(params, adapters, alpha=4.0, rank=4, dropout=1.0)


def test_count():
    tree = {
        "x": {"a": np.zeros((8, 4)), "b": np.zeros((4, 16))},
        "y": jax.ShapeDtypeStruct((3,), jnp.float32),
    }
    assert lora.count(tree) == 32 + 64 + 3
    assert lora.count({}) == 0
