"""Flax Whisper against transformers' PyTorch Whisper on the same random weights."""

import json

import jax
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict
from hf_reference import SHAPES, make_reference, random_mel
from safetensors.numpy import load_file, save_file
from transformers import WhisperForConditionalGeneration

from mkd_jax.models import hf_io
from mkd_jax.models.whisper import Whisper, from_hf

TOKENS = np.array([[50258, 50259, 50359, 50363, 440, 2068, 3699, 50257]] * 2)


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
    ref = make_reference(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(folder)
    model, params, config = from_hf(folder)
    return ref, model, params, folder


def test_encoder_and_logits_match_transformers(pair):
    ref, model, params, _ = pair
    mel = random_mel(model.num_mel_bins)
    with torch.no_grad():
        o = ref(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(TOKENS))
    logits, out = jax.jit(model.apply)({"params": params}, mel, TOKENS)
    enc_err = np.abs(np.asarray(out["encoder/output"]) - o.encoder_last_hidden_state.numpy())
    logit_err = np.abs(np.asarray(logits) - o.logits.numpy())
    assert enc_err.max() < 1e-4, enc_err.max()
    assert logit_err.max() < 1e-4, logit_err.max()
    assert np.abs(o.logits.numpy()).max() > 1.0  # the comparison is not between near-zeros


def test_out_holds_every_layer(pair):
    _, model, params, _ = pair
    mel = random_mel(model.num_mel_bins, batch=1)
    logits, out = model.apply({"params": params}, mel, TOKENS[:1])
    want = {f"encoder/layer_{i}" for i in range(model.encoder_layers)}
    want |= {f"decoder/layer_{i}" for i in range(model.decoder_layers)}
    assert set(out) == want | {"encoder/output", "decoder/output"}
    assert out["encoder/layer_0"].shape == (1, 1500, model.d_model)
    assert out["decoder/output"].shape == (1, TOKENS.shape[1], model.d_model)
    assert logits.shape == (1, TOKENS.shape[1], model.vocab_size)


def test_export_round_trip_is_exact_and_loads_in_transformers(pair, tmp_path):
    ref, model, params, folder = pair
    config = json.loads((folder / "config.json").read_text())
    out_dir = hf_io.save_hf_folder(tmp_path / "export", config, params, copy_from=folder)
    original = load_file(str(folder / "model.safetensors"))
    exported = load_file(str(out_dir / "model.safetensors"))
    assert set(exported) == set(original) - {"proj_out.weight"}
    for key, value in exported.items():
        np.testing.assert_array_equal(value, original[key], err_msg=key)
    reloaded = WhisperForConditionalGeneration.from_pretrained(out_dir).eval()
    mel = torch.tensor(random_mel(model.num_mel_bins, batch=1))
    with torch.no_grad():
        a = ref(input_features=mel, decoder_input_ids=torch.tensor(TOKENS[:1])).logits
        b = reloaded(input_features=mel, decoder_input_ids=torch.tensor(TOKENS[:1])).logits
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_parameter_tree_uses_hf_names_and_logical_axes():
    from mkd_jax.models.whisper import abstract_params

    model = Whisper(**SHAPES["mel80"])
    flat = flatten_dict(abstract_params(model), sep="/")
    assert flat["decoder/layers_1/encoder_attn/q_proj/kernel"].names == ("embed", "heads")
    assert flat["encoder/layers_0/fc1/kernel"].names == ("embed", "mlp")
    assert flat["decoder/embed_tokens/embedding"].names == ("vocab", "embed")
    assert "decoder/layers_0/self_attn/k_proj/bias" not in flat  # Whisper's k has no bias
    assert all(getattr(v, "names", None) is not None for v in flat.values())


def test_short_context_slices_position_table(pair):
    _, model, params, _ = pair
    mel = random_mel(model.num_mel_bins, batch=1)[:, :, :1000]
    _, out = model.apply({"params": params}, mel, TOKENS[:1])
    assert out["encoder/output"].shape == (1, 500, model.d_model)
    with pytest.raises(ValueError, match="frames"):
        model.apply(
            {"params": params}, random_mel(model.num_mel_bins, batch=1)[:, :, :999], TOKENS[:1]
        )


def _write_state(folder, state, config):
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def test_bad_checkpoints_name_the_tensor(pair, tmp_path):
    _, _, _, folder = pair
    config = json.loads((folder / "config.json").read_text())
    state = load_file(str(folder / "model.safetensors"))
    key = "model.decoder.layers.0.fc1.weight"

    missing = {k: v for k, v in state.items() if k != key}
    _write_state(tmp_path / "missing", missing, config)
    with pytest.raises(ValueError, match=r"missing tensor for decoder/layers_0/fc1/kernel"):
        from_hf(tmp_path / "missing")

    extra = dict(state, **{"model.decoder.layers.0.extra.weight": np.zeros((2, 2), np.float32)})
    _write_state(tmp_path / "extra", extra, config)
    with pytest.raises(ValueError, match=r"unknown tensor 'model.decoder.layers.0.extra.weight'"):
        from_hf(tmp_path / "extra")

    bad = dict(state, **{key: state[key][:, :-1].copy()})
    _write_state(tmp_path / "shape", bad, config)
    with pytest.raises(ValueError, match=r"shape mismatch for 'model.decoder.layers.0.fc1.weight'"):
        from_hf(tmp_path / "shape")

    with pytest.raises(FileNotFoundError, match="config.json"):
        from_hf(tmp_path)


def test_sharded_safetensors_folder_loads(pair, tmp_path):
    ref, model, params, _ = pair
    ref.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    _, sharded, _ = from_hf(tmp_path)
    for (k, a), (_, b) in zip(
        sorted(flatten_dict(params, sep="/").items()),
        sorted(flatten_dict(sharded, sep="/").items()),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_fused_attention_path_equals_the_einsum_form(monkeypatch):
    """The GPU's fused-attention call (layout [B, T, H, Dh], queries already scaled) computes
    the same attention as the einsum form; on the CPU XLA's implementation stands in for
    cuDNN's, which only a GPU has."""
    from mkd_jax.models import whisper

    layer = whisper.Attention(d_model=64, num_heads=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 50, 64))
    params = layer.init(jax.random.PRNGKey(1), x)
    einsum = layer.apply(params, x)
    calls, real = [], jax.nn.dot_product_attention

    def xla(*args, **kwargs):
        calls.append(kwargs["implementation"])
        return real(*args, **{**kwargs, "implementation": "xla"})

    monkeypatch.setattr(whisper, "fused_attention", lambda q, k, mask: mask is None)
    monkeypatch.setattr(jax.nn, "dot_product_attention", xla)
    fused = layer.apply(params, x)
    assert calls == ["cudnn"]
    np.testing.assert_allclose(np.asarray(fused), np.asarray(einsum), rtol=1e-5, atol=1e-5)


def test_encoder_by_tiles_matches_transformers(pair, monkeypatch):
    """The CPU's tiled encoder attention (one device only; this suite runs on eight, so it is
    forced here) gives transformers' encoder output and logits."""
    from mkd_jax.models import whisper

    ref, model, params, _ = pair
    calls, real = [], whisper.attention_by_tiles

    def counted(q, k, v):
        calls.append(q.shape)
        return real(q, k, v)

    monkeypatch.setattr(
        whisper, "tiled_attention", lambda q, k, mask: mask is None and q.shape[1] == k.shape[1]
    )
    monkeypatch.setattr(whisper, "attention_by_tiles", counted)
    mel = random_mel(model.num_mel_bins)
    with torch.no_grad():
        o = ref(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(TOKENS))
    logits, out = jax.jit(lambda p, m, t: model.apply({"params": p}, m, t))(params, mel, TOKENS)
    assert len(calls) == model.encoder_layers  # every encoder layer, no decoder attention
    enc_err = np.abs(np.asarray(out["encoder/output"]) - o.encoder_last_hidden_state.numpy())
    assert enc_err.max() < 1e-4, enc_err.max()
    assert np.abs(np.asarray(logits) - o.logits.numpy()).max() < 1e-4


def test_attention_by_tiles_equals_the_einsum_form():
    from mkd_jax.models import whisper

    assert [whisper.query_blocks(t) for t in (1500, 1000, 512, 600, 3001)] == [3, 2, 1, 2, None]
    q, k, v = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 600, 3, 16))
    want = jax.numpy.einsum(
        "bhts,bshd->bthd", jax.nn.softmax(jax.numpy.einsum("bthd,bshd->bhts", q, k), -1), v
    )
    got = whisper.attention_by_tiles(q, k, v)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_bfloat16_matmul_operands_stay_close_to_transformers(pair):
    """`matmul_dtype=bfloat16`: every matmul of the forward pass (dense layers, both attention
    products, the tied output layer) takes bfloat16 operands and returns float32 sums; the
    encoder output and logits stay within bfloat16 rounding of transformers' float32 ones."""
    import re

    import jax.numpy as jnp

    from mkd_jax import decode

    ref, model, params, _ = pair
    fast = decode.with_matmul_dtype(model, "bfloat16")
    mel = random_mel(model.num_mel_bins)
    apply = jax.jit(lambda p, m, t: fast.apply({"params": p}, m, t))
    text = apply.lower(params, mel, TOKENS).as_text()
    operands = r": \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)"
    dots = re.findall(r"stablehlo\.dot_general.*?" + operands, text)
    per_layer = 4 + 2  # q, k, v, out; fc1, fc2
    attention_products = 2
    want = (
        model.encoder_layers * (per_layer + attention_products)
        + model.decoder_layers * (2 * per_layer - 2 + 2 * attention_products)
        + 1  # the tied output layer
    )
    assert len(dots) == want, (len(dots), want)
    assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b, _ in dots)
    assert all(out.endswith("xf32>") for _, _, out in dots)
    with torch.no_grad():
        o = ref(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor(TOKENS))
    logits, out = apply(params, mel, TOKENS)
    want_enc, want_logits = o.encoder_last_hidden_state.numpy(), o.logits.numpy()
    enc_err = np.abs(np.asarray(out["encoder/output"]) - want_enc).max()
    logit_err = np.abs(np.asarray(logits) - want_logits).max()
    # bfloat16 keeps 8 significant bits: errors near 2^-8 of the values' scale, not 1e-6.
    assert 1e-5 < enc_err < 0.05 * np.abs(want_enc).max(), enc_err
    assert 1e-5 < logit_err < 0.05 * np.abs(want_logits).max(), logit_err
    assert fast.clone(matmul_dtype=None) == model and jnp.bfloat16 == fast.matmul_dtype
