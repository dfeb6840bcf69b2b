"""CTranslate2 (faster-whisper) Whisper folders: read `model.bin` and convert to HF Whisper.

The format and the name mapping are described in shared/design/ASSETS.md. The reader is pure
numpy; the converter writes an ordinary HF Whisper folder that
`transformers.WhisperForConditionalGeneration.from_pretrained` loads with no missing keys.

A corrupt or truncated file fails with one `CheckpointError` line naming the file, the byte offset
and the variable; sizes are checked against the bytes left before anything is sliced, so a huge
declared shape costs nothing. Non-finite weights are refused by name.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np

from mkd_jax.models.hf_io import CheckpointError, default_suppress_lists, read_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 6
SPEC_NAME = "WhisperSpec"
ENGLISH_ONLY_VOCAB = 51864

# CTranslate2's DataType enum. bfloat16 has no numpy dtype: it is read as uint16 and widened.
_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5

# Rank-0 settings CTranslate2 stores next to the weights. A value of None means any value is
# fine because HF Whisper has no such switch (CT2's own alignment options; head counts are read).
# A number is the only value HF Whisper implements: 3 is CT2's ActivationType::GELU (exact).
_SCALARS = {
    "encoder/num_heads": None,
    "decoder/num_heads": None,
    "decoder/alignment_heads": None,
    "decoder/alignment_layer": None,
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Written by newer CTranslate2 releases only; they tune ALiBi, which is off (checked above).
_OPTIONAL_SCALARS = {"decoder/alibi_use_positive_positions", "decoder/scale_alibi"}
_PROJECTION = "decoder/projection/weight"
_EMBEDDINGS = "decoder/embeddings/weight"


class _Reader:
    """Little-endian cursor over a file's bytes whose errors name the file, offset and item."""

    def __init__(self, path: Path, data: bytes):
        self.path, self.data, self.offset, self.item = path, memoryview(data), 0, "header"

    def fail(self, msg: str, offset: int | None = None):
        at = self.offset if offset is None else offset
        raise CheckpointError(f"{self.path}: {msg} at byte offset {at} while reading {self.item}")

    def take(self, n: int) -> memoryview:
        if self.offset + n > len(self.data):
            self.fail(f"truncated file: need {n} bytes, {len(self.data) - self.offset} left")
        out = self.data[self.offset : self.offset + n]
        self.offset += n
        return out

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        start = self.offset
        raw = bytes(self.take(self.uint("H")))
        if not raw.endswith(b"\0"):
            self.fail("string without its trailing NUL", start)
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            self.fail("string is not UTF-8", start)


def read_model_bin(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Reads a CTranslate2 `model.bin` (binary format version 6) without CTranslate2.

    Args:
      path: the `model.bin` file.

    Returns:
      `(variables, aliases)`: arrays in their stored dtype (bfloat16 widened to float32; rank-0
      settings as 0-d arrays; read-only views of the file's bytes), and alias -> target names.

    Raises:
      FileNotFoundError: the file is missing.
      CheckpointError: (a ValueError) on a truncated or malformed file, naming the file, the byte
        offset and the variable being read; also on trailing bytes or an alias whose target is
        missing.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    r = _Reader(path, data)
    version = r.uint("I")
    if version != FORMAT_VERSION:
        r.fail(f"unsupported format version {version} (expected {FORMAT_VERSION})", 0)
    spec = r.string()
    if spec != SPEC_NAME:
        r.fail(f"spec {spec!r} is not {SPEC_NAME!r}")
    r.uint("I")  # spec revision: the variable names below are what is checked.
    count = r.uint("I")
    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        r.item = f"variable #{index}"
        name = r.string()
        r.item = f"variable {name!r}"
        shape = tuple(r.uint("I") for _ in range(r.uint("B")))
        code_offset = r.offset
        code = r.uint("B")
        if code not in _DTYPES:
            r.fail(f"unknown dtype code {code}", code_offset)
        dtype = _DTYPES[code]
        nbytes_offset = r.offset
        nbytes = r.uint("I")
        need = dtype.itemsize * math.prod(shape)  # exact Python ints: no int64 overflow
        if need > len(r.data) - r.offset:
            r.fail(
                f"shape {shape} of {dtype} needs {need} bytes, but only "
                f"{len(r.data) - r.offset} are left in the file (truncated or corrupt)",
                nbytes_offset,
            )
        if nbytes != need:
            r.fail(f"byte count {nbytes} does not match shape {shape} of {dtype}", nbytes_offset)
        if name in variables:
            r.fail("duplicate variable name")
        array = np.frombuffer(r.take(nbytes), dtype=dtype).reshape(shape)
        if code == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array
    r.item = "aliases"
    aliases = {}
    for _ in range(r.uint("I")):
        alias, target = r.string(), r.string()
        if target not in variables:
            r.fail(f"alias {alias!r} points to missing variable {target!r}")
        aliases[alias] = target
    if r.offset != len(r.data):
        r.fail(f"{len(r.data) - r.offset} trailing bytes after the aliases")
    return variables, aliases


def _layer_rules(side: str, i: int, d: int, ffn: int) -> list[tuple[str, tuple, list]]:
    """CT2 name, expected CT2 shape, HF names (split evenly on axis 0; None drops a zero k bias)."""
    c, h = f"{side}/layer_{i}/", f"model.{side}.layers.{i}."
    rules = [
        (c + "self_attention/layer_norm/gamma", (d,), [h + "self_attn_layer_norm.weight"]),
        (c + "self_attention/layer_norm/beta", (d,), [h + "self_attn_layer_norm.bias"]),
        (
            c + "self_attention/linear_0/weight",
            (3 * d, d),
            [h + f"self_attn.{p}_proj.weight" for p in "qkv"],
        ),
        (
            c + "self_attention/linear_0/bias",
            (3 * d,),
            [h + "self_attn.q_proj.bias", None, h + "self_attn.v_proj.bias"],
        ),
        (c + "self_attention/linear_1/weight", (d, d), [h + "self_attn.out_proj.weight"]),
        (c + "self_attention/linear_1/bias", (d,), [h + "self_attn.out_proj.bias"]),
        (c + "ffn/layer_norm/gamma", (d,), [h + "final_layer_norm.weight"]),
        (c + "ffn/layer_norm/beta", (d,), [h + "final_layer_norm.bias"]),
        (c + "ffn/linear_0/weight", (ffn, d), [h + "fc1.weight"]),
        (c + "ffn/linear_0/bias", (ffn,), [h + "fc1.bias"]),
        (c + "ffn/linear_1/weight", (d, ffn), [h + "fc2.weight"]),
        (c + "ffn/linear_1/bias", (d,), [h + "fc2.bias"]),
    ]
    if side == "decoder":
        rules += [
            (c + "attention/layer_norm/gamma", (d,), [h + "encoder_attn_layer_norm.weight"]),
            (c + "attention/layer_norm/beta", (d,), [h + "encoder_attn_layer_norm.bias"]),
            (c + "attention/linear_0/weight", (d, d), [h + "encoder_attn.q_proj.weight"]),
            (c + "attention/linear_0/bias", (d,), [h + "encoder_attn.q_proj.bias"]),
            (
                c + "attention/linear_1/weight",
                (2 * d, d),
                [h + "encoder_attn.k_proj.weight", h + "encoder_attn.v_proj.weight"],
            ),
            (c + "attention/linear_1/bias", (2 * d,), [None, h + "encoder_attn.v_proj.bias"]),
            (c + "attention/linear_2/weight", (d, d), [h + "encoder_attn.out_proj.weight"]),
            (c + "attention/linear_2/bias", (d,), [h + "encoder_attn.out_proj.bias"]),
        ]
    return rules


def _rules(dims: dict) -> list[tuple[str, tuple, list]]:
    d, mels = dims["d_model"], dims["num_mel_bins"]
    rules = [
        ("encoder/conv1/weight", (d, mels, 3), ["model.encoder.conv1.weight"]),
        ("encoder/conv1/bias", (d,), ["model.encoder.conv1.bias"]),
        ("encoder/conv2/weight", (d, d, 3), ["model.encoder.conv2.weight"]),
        ("encoder/conv2/bias", (d,), ["model.encoder.conv2.bias"]),
        (
            "encoder/position_encodings/encodings",
            (dims["max_source_positions"], d),
            ["model.encoder.embed_positions.weight"],
        ),
        (
            "decoder/embeddings/weight",
            (dims["vocab_size"], d),
            ["model.decoder.embed_tokens.weight"],
        ),
        (
            "decoder/position_encodings/encodings",
            (dims["max_target_positions"], d),
            ["model.decoder.embed_positions.weight"],
        ),
    ]
    for side in ("encoder", "decoder"):
        rules += [
            (f"{side}/layer_norm/gamma", (d,), [f"model.{side}.layer_norm.weight"]),
            (f"{side}/layer_norm/beta", (d,), [f"model.{side}.layer_norm.bias"]),
        ]
        for i in range(dims[f"{side}_layers"]):
            rules += _layer_rules(side, i, d, dims[f"{side}_ffn_dim"])
    return rules


def _get(variables: dict, name: str) -> np.ndarray:
    if name not in variables:
        raise ValueError(f"CTranslate2 Whisper model lacks variable {name!r}")
    return variables[name]


def _shape(variables: dict, name: str, ndim: int) -> tuple[int, ...]:
    shape = _get(variables, name).shape
    if len(shape) != ndim or 0 in shape:
        raise ValueError(f"{name!r} has shape {shape}; expected {ndim} non-zero dims")
    return shape


def _infer_dims(variables: dict) -> dict:
    conv1 = _shape(variables, "encoder/conv1/weight", 3)
    dims = {"d_model": conv1[0], "num_mel_bins": conv1[1]}
    for side in ("encoder", "decoder"):
        found = {int(m[1]) for n in variables if (m := re.match(rf"{side}/layer_(\d+)/", n))}
        if not found:
            raise ValueError(f"CTranslate2 Whisper model has no {side} layers ({side}/layer_0/...)")
        if found != set(range(len(found))):  # also keeps a bogus layer_99999999 from costing
            gap = next(i for i in range(len(found) + 1) if i not in found)
            raise ValueError(
                f"{side} layers are not numbered 0..{len(found) - 1}: {side}/layer_{gap} is "
                f"missing but {side}/layer_{max(found)} exists"
            )
        dims[f"{side}_layers"] = len(found)
        heads = int(_get(variables, f"{side}/num_heads"))
        if heads <= 0 or dims["d_model"] % heads:
            raise ValueError(f"'{side}/num_heads' = {heads} does not divide d_model")
        dims[f"{side}_attention_heads"] = heads
        dims[f"{side}_ffn_dim"] = _shape(variables, f"{side}/layer_0/ffn/linear_0/weight", 2)[0]
    dims["vocab_size"] = _shape(variables, _EMBEDDINGS, 2)[0]
    dims["max_source_positions"] = _shape(variables, "encoder/position_encodings/encodings", 2)[0]
    dims["max_target_positions"] = _shape(variables, "decoder/position_encodings/encodings", 2)[0]
    return {k: int(v) for k, v in dims.items()}


def _check_scalars(variables: dict) -> None:
    for name in _OPTIONAL_SCALARS & set(variables):
        if variables[name].ndim != 0:
            raise ValueError(f"{name!r} has shape {variables[name].shape}; expected a scalar")
    for name, expected in _SCALARS.items():
        value = variables.get(name)
        if value is None or value.ndim != 0:
            raise ValueError(f"CTranslate2 Whisper model lacks scalar {name!r}")
        if not (np.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name!r} = {value}; expected an integer setting")
        if expected is not None and int(value) != expected:
            raise ValueError(f"{name!r} = {int(value)}, but HF Whisper only implements {expected}")


def special_ids(vocab_size: int) -> dict[str, int]:
    """End-of-text and start-of-transcript ids, from the number of logits.

    English-only models (51864 logits) have every special one id lower than multilingual ones.
    The later specials (tasks, `<|notimestamps|>`) move with the language count (large-v3 has
    100), so they are read from tokenizer.json instead.

    Args:
      vocab_size: number of logits of the model.

    Returns:
      `{"eot": ..., "sot": ...}`.
    """
    if vocab_size < ENGLISH_ONLY_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is not a Whisper vocabulary (>= 51864)")
    eot = 50256 if vocab_size == ENGLISH_ONLY_VOCAB else 50257
    return {"eot": eot, "sot": eot + 1}


def _suppress_ids(ct2_config: dict, vocab_size: int, source) -> tuple[list[int], list[int]]:
    """config.json's suppress lists, checked; a missing one falls back to the standard list."""
    out = []
    for key, default in zip(
        ("suppress_ids", "suppress_ids_begin"), default_suppress_lists(vocab_size), strict=True
    ):
        value = ct2_config.get(key)
        if value is None:
            log.warning("%s lacks %s: using the standard Whisper list", source, key)
            value = default
        elif not isinstance(value, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in value
        ):
            raise ValueError(f"{source} {key} must be a list of ids in [0, {vocab_size})")
        out.append(list(value))
    return out[0], out[1]


def to_hf(
    variables: dict[str, np.ndarray],
    aliases: dict[str, str],
    ct2_config: dict,
    *,
    source: str | os.PathLike = "config.json",
) -> tuple[dict, dict[str, np.ndarray]]:
    """Maps CTranslate2 Whisper variables to an HF config dict and float32 HF state.

    Args:
      variables: from `read_model_bin`.
      aliases: from `read_model_bin` (CT2 stores identical tensors once, under an alias).
      ct2_config: the folder's `config.json` (`suppress_ids`, `suppress_ids_begin`, ...); a
        missing suppress list falls back to the standard one, with a warning.
      source: where `ct2_config` came from, for messages.

    Returns:
      `(hf_config, hf_state)`: `WhisperConfig(...).to_dict()` with correct special ids, and
      arrays keyed like `WhisperForConditionalGeneration.state_dict()` minus `proj_out.weight`.

    Raises:
      ValueError: naming the variable, for a missing, unknown or mis-shaped variable, a
        non-finite weight, a non-zero key bias, an untied output projection or a setting HF
        Whisper does not implement; or naming the key of a malformed suppress list.
    """
    from transformers import WhisperConfig  # works without torch; keeps the reader import-light

    variables = dict(variables)
    for alias, target in aliases.items():
        variables[alias] = _get(variables, target)
    _check_scalars(variables)
    dims = _infer_dims(variables)
    if _PROJECTION in variables and not np.array_equal(
        variables[_PROJECTION], variables[_EMBEDDINGS]
    ):
        raise ValueError(f"{_PROJECTION!r} differs from {_EMBEDDINGS!r}; HF Whisper ties them")
    rules = _rules(dims)
    known = {r[0] for r in rules} | set(_SCALARS) | _OPTIONAL_SCALARS | {_PROJECTION}
    unknown = sorted(set(variables) - known)
    if unknown:
        raise ValueError(f"unknown CTranslate2 Whisper variable(s): {', '.join(unknown)}")
    state = {}
    for name, shape, targets in rules:
        value = _get(variables, name)
        if value.shape != shape:
            raise ValueError(f"{name!r} has shape {value.shape}; expected {shape}")
        finite = np.isfinite(value)
        if not finite.all():
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise ValueError(
                f"variable {name!r} has {int(finite.size - finite.sum())} non-finite value(s) "
                f"(first: {value[first]} at index {first}); the model is corrupt"
            )
        for target, part in zip(targets, np.split(value, len(targets)), strict=True):
            if target is None:
                if np.any(part != 0):
                    raise ValueError(
                        f"{name!r}: key bias is not zero (max |b| = {np.abs(part).max():.3g}); "
                        "HF Whisper's k_proj has no bias"
                    )
                continue
            state[target] = part.astype(np.float32, order="C")  # owned, writable copy
    ids = special_ids(dims["vocab_size"])
    suppress, begin_suppress = _suppress_ids(ct2_config, dims["vocab_size"], source)
    config = WhisperConfig(
        **dims,
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        architectures=["WhisperForConditionalGeneration"],
        dtype="float32",
    )
    return config.to_dict(), state


def _token_ids(tokenizer: dict) -> dict[str, int]:
    added = tokenizer.get("added_tokens", [])
    ok = isinstance(added, list) and all(
        isinstance(t, dict) and isinstance(t.get("content"), str) and isinstance(t.get("id"), int)
        for t in added
    )
    if not ok:
        raise ValueError("tokenizer.json added_tokens must be a list of {content: str, id: int}")
    return {t["content"]: t["id"] for t in added}


def generation_config(ct2_config: dict, hf_config: dict, tokenizer: dict) -> dict:
    """Builds `generation_config.json` for transformers' Whisper `generate`.

    Args:
      ct2_config: the CT2 folder's `config.json`.
      hf_config: from `to_hf`.
      tokenizer: the folder's parsed `tokenizer.json`; special and language tokens are read from
        its `added_tokens` and checked against the ids implied by the vocabulary size.

    Returns:
      A dict that `transformers.GenerationConfig(**d)` accepts. Multilingual models get
      `lang_to_id`/`task_to_id`, so `generate(x, language="en", task="transcribe")` works;
      English-only models get neither, so plain `generate(x)` does not detect a language.
    """
    vocab = hf_config["vocab_size"]
    ids = special_ids(vocab)
    by_name = _token_ids(tokenizer)
    by_id = {i: name for name, i in by_name.items()}
    for key, token in [("eot", "<|endoftext|>"), ("sot", "<|startoftranscript|>")]:
        if by_name.get(token) != ids[key]:
            raise ValueError(
                f"tokenizer.json has {token} = {by_name.get(token)}, but a {vocab}-logit "
                f"Whisper uses {ids[key]}"
            )
    for token in ("<|startofprev|>", "<|notimestamps|>", "<|translate|>", "<|transcribe|>"):
        if token not in by_name:
            raise ValueError(f"tokenizer.json lacks the special token {token}")
    out = {
        "alignment_heads": ct2_config.get("alignment_heads"),
        "begin_suppress_tokens": hf_config["begin_suppress_tokens"],
        "bos_token_id": ids["eot"],
        "decoder_start_token_id": ids["sot"],
        "eos_token_id": ids["eot"],
        "pad_token_id": ids["eot"],
        "is_multilingual": vocab != ENGLISH_ONLY_VOCAB,
        "max_initial_timestamp_index": 50,
        "max_length": min(448, hf_config["max_target_positions"]),
        "no_timestamps_token_id": by_name["<|notimestamps|>"],
        "prev_sot_token_id": by_name["<|startofprev|>"],
        "return_timestamps": False,
        "suppress_tokens": hf_config["suppress_tokens"],
    }
    if out["alignment_heads"] is None:
        del out["alignment_heads"]
    if out["is_multilingual"]:
        lang_to_id = {}
        for i in ct2_config.get("lang_ids", []):
            if not isinstance(i, int) or isinstance(i, bool):
                raise ValueError(f"config.json lang_ids entry {i!r} is not a token id")
            name = by_id.get(i, "")
            if not re.fullmatch(r"<\|[a-z]{2,3}\|>", name):
                raise ValueError(f"lang_ids entry {i} is {name!r} in tokenizer.json, not <|xx|>")
            lang_to_id[name] = int(i)
        if "<|en|>" not in lang_to_id:
            raise ValueError("config.json lang_ids lacks <|en|> for a multilingual model")
        out["lang_to_id"] = lang_to_id
        out["task_to_id"] = {t: by_name[f"<|{t}|>"] for t in ("translate", "transcribe")}
    return out


def _load_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (needed for a CTranslate2 Whisper folder)")
    return read_json(path)


def _check_ct2_config(path: Path, config: dict) -> None:
    """Types of the CTranslate2 config.json entries the converter reads, named on failure."""
    for key in ("suppress_ids", "suppress_ids_begin", "lang_ids"):
        value = config.get(key)
        if value is not None and not (
            isinstance(value, list)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
        ):
            raise CheckpointError(f"{path}: {key} must be a list of token ids, got {value!r:.80}")
    heads = config.get("alignment_heads")
    if heads is not None and not (
        isinstance(heads, list)
        and all(
            isinstance(h, list) and len(h) == 2 and all(type(i) is int for i in h) for h in heads
        )
    ):
        raise CheckpointError(f"{path}: alignment_heads must be [layer, head] pairs")


def convert(src_dir: str | os.PathLike, dst_dir: str | os.PathLike, *, progress=False) -> Path:
    """Converts a CTranslate2 Whisper folder to an HF Whisper folder, atomically.

    Writes `config.json`, `generation_config.json`, `preprocessor_config.json`,
    `model.safetensors` (float32) and a copy of `tokenizer.json` into a temporary sibling folder,
    then renames it to `dst_dir` (replacing an existing one).

    Args:
      src_dir: folder with `model.bin`, `config.json` and `tokenizer.json`.
      dst_dir: the HF folder to create.
      progress: show a tqdm bar over the conversion stages.

    Returns:
      `dst_dir` as a Path.

    Raises:
      FileNotFoundError: a missing source file, named.
      CheckpointError: (a ValueError) naming the file, and the variable or key: a corrupt
        `model.bin`, a non-finite weight, malformed JSON, or a tokenizer that does not fit.
    """
    from safetensors.numpy import save_file
    from tqdm import tqdm
    from transformers import WhisperFeatureExtractor

    src, dst = Path(src_dir), Path(dst_dir)
    ct2_config = _load_json(src / "config.json")
    _check_ct2_config(src / "config.json", ct2_config)
    tokenizer = _load_json(src / "tokenizer.json")
    bar = tqdm(total=4, desc=f"convert {dst.name}", unit="stage", disable=not progress)
    bar.set_postfix_str("read model.bin")
    variables, aliases = read_model_bin(src / "model.bin")
    bar.update()
    bar.set_postfix_str("map to HF names")
    try:
        hf_config, state = to_hf(variables, aliases, ct2_config, source=src / "config.json")
    except ValueError as e:
        raise CheckpointError(f"{src / 'model.bin'}: {e}") from None
    del variables  # the raw file bytes; frees half the peak memory before writing
    try:
        gen = generation_config(ct2_config, hf_config, tokenizer)
    except ValueError as e:  # the message names tokenizer.json or config.json
        raise CheckpointError(f"{src}: {e}") from None
    too_big = [t for t, i in _token_ids(tokenizer).items() if i >= hf_config["vocab_size"]]
    if too_big:
        raise ValueError(f"{src / 'tokenizer.json'}: tokens beyond the model's vocab: {too_big}")
    bar.update()
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        bar.set_postfix_str("write model.safetensors")
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        os.chmod(tmp / "model.safetensors", 0o644)  # safetensors creates it 0600
        bar.update()
        bar.set_postfix_str("write configs")
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True))
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2, sort_keys=True))
        extractor = WhisperFeatureExtractor(feature_size=hf_config["num_mel_bins"])
        extractor.to_json_file(tmp / "preprocessor_config.json")
        shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
        bar.update()
        _replace_dir(tmp, dst)
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _replace_dir(new: Path, dst: Path) -> None:
    """Renames `new` to `dst`; an existing `dst` is moved aside first and removed after."""
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        dst.rename(old)
    new.rename(dst)
    shutil.rmtree(old, ignore_errors=True)
