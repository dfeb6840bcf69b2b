"""CTranslate2 Whisper reader and converter against random transformers Whisper models.

The CTranslate2 writer below follows ASSETS.md's format description independently of the reader
(fused q/k/v with a zero k bias, fp16 weights next to fp32 norms, rank-0 settings, aliases).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import WhisperConfig, WhisperForConditionalGeneration
from transformers.models.whisper.tokenization_whisper import LANGUAGES

from mkd_jax.models import ct2_io

DIMS = dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=48, num_mel_bins=80,
            max_source_positions=16, max_target_positions=24)  # fmt: skip
VOCAB = {"multilingual": 51865, "english": 51864}
_CODES = {np.dtype("<f4"): 0, np.dtype("i1"): 1, np.dtype("<i2"): 2, np.dtype("<i4"): 3,
          np.dtype("<f2"): 4, np.dtype(ml_dtypes.bfloat16): 5}  # fmt: skip


# ------------------------------------------------------------------------------------------------
# A small CTranslate2 writer and random source models
# ------------------------------------------------------------------------------------------------


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, variables: dict, aliases: dict | None = None) -> None:
    """Writes CTranslate2 binary format 6 as ASSETS.md describes it."""
    out = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name in sorted(variables):
        x = np.asarray(variables[name])
        out += [_string(name), struct.pack("<B", x.ndim), struct.pack(f"<{x.ndim}I", *x.shape)]
        raw = np.ascontiguousarray(x).tobytes()
        out += [struct.pack("<BI", _CODES[x.dtype], len(raw)), raw]
    aliases = aliases or {}
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))


def make_source(kind: str, seed: int = 0) -> WhisperForConditionalGeneration:
    """A random transformers Whisper with weights that fp16 stores exactly (so logits match)."""
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**DIMS, vocab_size=VOCAB[kind])).eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            p.add_(torch.randn_like(p) * 0.1)  # non-trivial norms and biases
            p.copy_(p.half().float())
    return model


def ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """HF Whisper -> CTranslate2 names: 2-D/3-D weights fp16, vectors fp32, as converters do."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    cfg = model.config
    out = {}

    def put(name, x):
        out[name] = x.astype(np.float16 if x.ndim > 1 else np.float32)

    def ln(ct2, hf):
        put(ct2 + "/gamma", sd[hf + ".weight"])
        put(ct2 + "/beta", sd[hf + ".bias"])

    def linear(ct2, hf, bias=True):
        put(ct2 + "/weight", sd[hf + ".weight"])
        if bias:
            put(ct2 + "/bias", sd[hf + ".bias"])

    for side in ("encoder", "decoder"):
        ln(f"{side}/layer_norm", f"model.{side}.layer_norm")
        put(f"{side}/position_encodings/encodings", sd[f"model.{side}.embed_positions.weight"])
        out[f"{side}/num_heads"] = np.int16(getattr(cfg, f"{side}_attention_heads"))
        for i in range(getattr(cfg, f"{side}_layers")):
            c, h = f"{side}/layer_{i}/", f"model.{side}.layers.{i}."
            ln(c + "self_attention/layer_norm", h + "self_attn_layer_norm")
            q, k, v = (h + f"self_attn.{p}_proj" for p in "qkv")
            put(
                c + "self_attention/linear_0/weight",
                np.concatenate([sd[q + ".weight"], sd[k + ".weight"], sd[v + ".weight"]]),
            )
            put(
                c + "self_attention/linear_0/bias",
                np.concatenate([sd[q + ".bias"], np.zeros_like(sd[q + ".bias"]), sd[v + ".bias"]]),
            )
            linear(c + "self_attention/linear_1", h + "self_attn.out_proj")
            ln(c + "ffn/layer_norm", h + "final_layer_norm")
            linear(c + "ffn/linear_0", h + "fc1")
            linear(c + "ffn/linear_1", h + "fc2")
            if side == "decoder":
                ln(c + "attention/layer_norm", h + "encoder_attn_layer_norm")
                linear(c + "attention/linear_0", h + "encoder_attn.q_proj")
                k, v = h + "encoder_attn.k_proj", h + "encoder_attn.v_proj"
                put(
                    c + "attention/linear_1/weight",
                    np.concatenate([sd[k + ".weight"], sd[v + ".weight"]]),
                )
                put(
                    c + "attention/linear_1/bias",
                    np.concatenate([np.zeros_like(sd[v + ".bias"]), sd[v + ".bias"]]),
                )
                linear(c + "attention/linear_2", h + "encoder_attn.out_proj")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    put("decoder/embeddings/weight", sd["model.decoder.embed_tokens.weight"])
    out.update({
        "decoder/activation": np.int8(3), "decoder/pre_norm": np.int8(1),
        "decoder/alibi": np.int8(0), "decoder/scale_embeddings": np.int8(0),
        "decoder/start_from_zero_embedding": np.int8(0),
        "decoder/alignment_heads": np.int16(1), "decoder/alignment_layer": np.int16(-1),
    })  # fmt: skip
    return out


ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def write_tokenizer(path: Path, eot: int) -> dict[str, int]:
    """A valid tokenizer.json laid out like Whisper's: `eot` plain tokens, then the specials."""
    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(eot)}, unk_token="t0"))
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{code}|>" for code in list(LANGUAGES)[:99]]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                 "<|nospeech|>", "<|notimestamps|>"]  # fmt: skip
    tok.add_special_tokens(specials)
    tok.save(str(path))
    ids = {s: tok.token_to_id(s) for s in specials}
    assert ids["<|endoftext|>"] == eot and ids["<|notimestamps|>"] == eot + 106
    return ids


def write_ct2_folder(folder: Path, model: WhisperForConditionalGeneration) -> dict[str, int]:
    """model.bin, config.json (as faster-whisper ships it) and tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    write_model_bin(folder / "model.bin", ct2_variables(model), ALIASES)
    eot = 50256 if model.config.vocab_size == 51864 else 50257
    ids = write_tokenizer(folder / "tokenizer.json", eot)
    config = {
        "alignment_heads": [[1, 0], [1, 1]],
        "lang_ids": [ids[f"<|{c}|>"] for c in list(LANGUAGES)[:99]],
        "suppress_ids": [1, 2, 7, eot + 1, eot + 101, eot + 102],
        "suppress_ids_begin": [220, eot],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return ids


def _hf_state(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items() if k != "proj_out.weight"}


def _features(model, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    frames = 2 * model.config.max_source_positions
    return torch.from_numpy(rng.normal(size=(2, model.config.num_mel_bins, frames))).float()


# ------------------------------------------------------------------------------------------------
# read_model_bin
# ------------------------------------------------------------------------------------------------


def test_read_model_bin_reads_every_dtype_and_alias(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/float32": rng.normal(size=(3, 4)).astype(np.float32),
        "a/float16": rng.normal(size=(5,)).astype(np.float16),
        "a/bfloat16": rng.normal(size=(2, 3)).astype(ml_dtypes.bfloat16),
        "a/int8": rng.integers(-128, 127, size=(7,)).astype(np.int8),
        "a/int16": rng.integers(-3000, 3000, size=(2, 2, 2)).astype(np.int16),
        "a/int32": rng.integers(-(2**31), 2**31 - 1, size=(4,)).astype(np.int32),
        "a/scalar": np.int16(-1),
    }
    write_model_bin(tmp_path / "model.bin", variables, {"b/alias": "a/float32"})
    got, aliases = ct2_io.read_model_bin(tmp_path / "model.bin")
    assert aliases == {"b/alias": "a/float32"}
    assert set(got) == set(variables)
    for name, want in variables.items():
        if want.dtype == ml_dtypes.bfloat16:  # widened to float32 exactly
            want = want.astype(np.float32)
        assert got[name].dtype == want.dtype, name
        np.testing.assert_array_equal(got[name], want, err_msg=name)
    assert got["a/scalar"].shape == ()


def test_truncated_file_names_the_variable_and_offset(tmp_path):
    x = np.arange(64, dtype=np.float32)
    write_model_bin(tmp_path / "model.bin", {"enc/first": x, "enc/second": x})
    data = (tmp_path / "model.bin").read_bytes()
    bad = tmp_path / "truncated.bin"
    bad.write_bytes(data[: len(data) - 100])  # inside the data of the second variable
    with pytest.raises(ValueError, match=r"truncated\.bin.*byte offset \d+.*'enc/second'"):
        ct2_io.read_model_bin(bad)
    bad.write_bytes(data + b"\0\0")
    with pytest.raises(ValueError, match="2 trailing bytes"):
        ct2_io.read_model_bin(bad)
    bad.write_bytes(struct.pack("<I", 5) + data[4:])
    with pytest.raises(ValueError, match="format version 5"):
        ct2_io.read_model_bin(bad)


# ------------------------------------------------------------------------------------------------
# to_hf and generation_config
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["multilingual", "english"])
def source(request, tmp_path_factory):
    model = make_source(request.param)
    folder = tmp_path_factory.mktemp(request.param) / "ct2"
    ids = write_ct2_folder(folder, model)
    return model, folder, ids


def test_to_hf_matches_source_state_and_config(source):
    model, folder, _ = source
    variables, aliases = ct2_io.read_model_bin(folder / "model.bin")
    assert variables["decoder/layer_0/self_attention/linear_0/weight"].dtype == np.float16
    assert variables["decoder/layer_0/ffn/layer_norm/gamma"].dtype == np.float32
    ct2_config = json.loads((folder / "config.json").read_text())
    config, state = ct2_io.to_hf(variables, aliases, ct2_config)
    want = _hf_state(model)
    assert set(state) == set(want)
    for k, v in want.items():
        assert state[k].dtype == np.float32 and state[k].flags.writeable, k
        np.testing.assert_allclose(state[k], v, rtol=1e-3, atol=1e-7, err_msg=k)
    for k, v in DIMS.items():
        assert config[k] == v, k
    english = model.config.vocab_size == 51864
    eot = 50256 if english else 50257
    assert config["vocab_size"] == model.config.vocab_size
    assert (config["eos_token_id"], config["pad_token_id"]) == (eot, eot)
    assert config["decoder_start_token_id"] == eot + 1
    assert config["begin_suppress_tokens"] == [220, eot]
    WhisperConfig(**{k: v for k, v in config.items() if k != "transformers_version"})


def _to_hf(variables, aliases=ALIASES):
    return ct2_io.to_hf(variables, aliases, {"suppress_ids": [], "suppress_ids_begin": [220]})


def test_unknown_missing_and_malformed_variables_are_named():
    variables = ct2_variables(make_source("english"))
    _to_hf(variables)  # the unmodified set converts

    extra = dict(variables, **{"encoder/layer_1/self_attention/linear_9/weight": np.zeros(3)})
    with pytest.raises(ValueError, match="encoder/layer_1/self_attention/linear_9/weight"):
        _to_hf(extra)
    missing = {k: v for k, v in variables.items() if k != "decoder/layer_1/ffn/linear_1/bias"}
    with pytest.raises(ValueError, match="lacks variable 'decoder/layer_1/ffn/linear_1/bias'"):
        _to_hf(missing)
    name = "decoder/layer_0/attention/linear_1/bias"
    bias = variables[name].copy()
    bias[0] = 0.5  # the key half of the fused cross-attention k/v bias
    with pytest.raises(ValueError, match=f"'{name}': key bias is not zero"):
        _to_hf(dict(variables, **{name: bias}))
    name = "encoder/layer_1/ffn/linear_0/weight"  # layer 0 sets the expected ffn width
    with pytest.raises(ValueError, match=f"'{name}' has shape"):
        _to_hf(dict(variables, **{name: variables[name][:-1]}))
    with pytest.raises(ValueError, match="'decoder/activation' = 1"):
        _to_hf(dict(variables, **{"decoder/activation": np.int8(1)}))
    doubled = variables["decoder/embeddings/weight"] * 2
    untied = dict(variables, **{"decoder/projection/weight": doubled})
    with pytest.raises(ValueError, match="decoder/projection/weight"):
        _to_hf(untied, aliases={})
    with pytest.raises(ValueError, match="vocab_size 51000 is not a Whisper vocabulary"):
        ct2_io.special_ids(51000)


def test_generation_config_multilingual_vs_english(source):
    model, folder, ids = source
    ct2_config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    variables, aliases = ct2_io.read_model_bin(folder / "model.bin")
    config, _ = ct2_io.to_hf(variables, aliases, ct2_config)
    gen = ct2_io.generation_config(ct2_config, config, tokenizer)
    english = model.config.vocab_size == 51864
    eot = 50256 if english else 50257
    assert gen["is_multilingual"] is not english
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["decoder_start_token_id"]) == (
        eot, eot, eot + 1,
    )  # fmt: skip
    assert gen["no_timestamps_token_id"] == eot + 106
    assert gen["suppress_tokens"] == ct2_config["suppress_ids"]
    assert gen["begin_suppress_tokens"] == ct2_config["suppress_ids_begin"]
    assert gen["alignment_heads"] == [[1, 0], [1, 1]]
    if english:
        assert "lang_to_id" not in gen and "task_to_id" not in gen
    else:
        assert len(gen["lang_to_id"]) == 99 and gen["lang_to_id"]["<|en|>"] == 50259
        assert gen["task_to_id"] == {"translate": 50358, "transcribe": 50359}
    wrong = dict(tokenizer, added_tokens=[t for t in tokenizer["added_tokens"]
                                          if t["content"] != "<|notimestamps|>"])  # fmt: skip
    with pytest.raises(ValueError, match="notimestamps"):
        ct2_io.generation_config(ct2_config, config, wrong)


# ------------------------------------------------------------------------------------------------
# convert: the folder transformers loads
# ------------------------------------------------------------------------------------------------


class _FirstInputs:
    """Logits processor that records the decoder input of the first generation step."""

    def __init__(self):
        self.first = None

    def __call__(self, input_ids, scores):
        if self.first is None:
            self.first = input_ids.tolist()
        return scores


def test_convert_loads_in_transformers_with_identical_logits(source, tmp_path):
    model, folder, _ = source
    dst = tmp_path / "hf"
    dst.mkdir()
    (dst / "stale.txt").write_text("from an earlier run")  # replaced atomically, not merged
    assert ct2_io.convert(folder, dst) == dst
    assert sorted(p.name for p in dst.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
        "preprocessor_config.json", "tokenizer.json",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".hf.*"))  # no temporary folder left behind
    assert (dst / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()

    loaded, info = WhisperForConditionalGeneration.from_pretrained(dst, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(),
                    "mismatched_keys": set(), "error_msgs": []}  # fmt: skip
    feats = _features(model)
    dec = torch.tensor([[model.config.decoder_start_token_id, 11, 12, 13]] * 2)
    with torch.no_grad():
        want = model(input_features=feats, decoder_input_ids=dec).logits
        got = loaded.eval()(input_features=feats, decoder_input_ids=dec).logits
    assert torch.equal(got, want)

    # generate() runs from the converted generation config with Whisper's prompts.
    english = model.config.vocab_size == 51864
    kwargs = {} if english else {"language": "en", "task": "transcribe"}
    recorder = _FirstInputs()
    with torch.no_grad():
        out = loaded.generate(feats, max_new_tokens=3, logits_processor=[recorder], **kwargs)
    prompt = [50257, 50362] if english else [50258, 50259, 50359, 50363]
    assert recorder.first == [prompt, prompt]
    assert out.shape[0] == 2


def test_convert_reports_missing_files(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        ct2_io.convert(tmp_path, tmp_path / "out")
