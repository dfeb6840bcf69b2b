"""Hugging Face Whisper checkpoints <-> Flax parameters.

An "HF state" is a dict of numpy arrays keyed like transformers' `WhisperForConditionalGeneration`
state dict (`model.encoder.conv1.weight`, ...), without the tied `proj_out.weight`. Linear weights
are stored `(out, in)` and become Flax kernels `(in, out)`; Conv1d weights `(out, in, k)` become
`(k, in, out)`; layer-norm `weight` becomes `scale`. The mapping is a pure rename plus transpose,
so a round trip is bit-exact.

Loading is defensive: every error names the file (and the key or tensor) in one line, shard
indexes may not point outside their folder, and non-finite weights are refused. A folder without
`generation_config.json` gets the standard Whisper suppress lists of its vocabulary family.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.+)$")
_TIED = "proj_out.weight"
_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "normalizer.json",
    "preprocessor_config.json",
)
GENERATION_CONFIG = "generation_config.json"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_MAX_PROBLEMS = 8  # listed in one error line; the rest are counted

# Whisper's non-speech text tokens by vocabulary family: openai-whisper's
# `Tokenizer.non_speech_tokens` (20250625), equal to the text part of the `suppress_tokens` that the
# released tiny.en and base checkpoints ship (checked against both). The special part of those lists
# is computed from the vocabulary size (`default_suppress_lists`), since large-v3 shifts it by one.
NON_SPEECH_TOKENS = {
    "english": (
        1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 357,
        366, 438, 532, 685, 705, 796, 930, 1058, 1220, 1267, 1279, 1303, 1343, 1377, 1391, 1635,
        1782, 1875, 2162, 2361, 2488, 3467, 4008, 4211, 4600, 4808, 5299, 5855, 6329, 7203, 9609,
        9959, 10563, 10786, 11420, 11709, 11907, 13163, 13697, 13700, 14808, 15306, 16410, 16791,
        17992, 19203, 19510, 20724, 22305, 22935, 27007, 30109, 30420, 33409, 34949, 40283, 40493,
        40549, 47282, 49146,
    ),
    "multilingual": (
        1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359,
        503, 522, 542, 873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268,
        3536, 3846, 3961, 4183, 4667, 6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033,
        12331, 12562, 13793, 14157, 14635, 15265, 15618, 16553, 16604, 18362, 18956, 20075, 21675,
        22520, 26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470, 36865, 42863, 47425, 49870,
        50254,
    ),
}  # fmt: skip
BLANK_TOKEN = 220  # " ": suppressed with end-of-text at the first generated step
ENGLISH_ONLY_VOCAB = 51864  # multilingual vocabularies are larger (51865; large-v3 51866)
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>: the last logits of every Whisper vocabulary


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the key or tensor."""


def hf_to_flax_key(key: str) -> tuple[str, str]:
    """Map one HF key to (`/`-joined Flax path, layout); layout is `linear`, `conv` or `copy`."""
    fixed = {
        "model.encoder.embed_positions.weight": ("encoder/embed_positions", "copy"),
        "model.decoder.embed_positions.weight": ("decoder/embed_positions", "copy"),
        "model.decoder.embed_tokens.weight": ("decoder/embed_tokens/embedding", "copy"),
    }
    if key in fixed:
        return fixed[key]
    m = re.match(r"^model\.encoder\.(conv[12])\.(weight|bias)$", key)
    if m:
        return f"encoder/{m[1]}/{'kernel' if m[2] == 'weight' else 'bias'}", (
            "conv" if m[2] == "weight" else "copy"
        )
    m = re.match(r"^model\.(encoder|decoder)\.layer_norm\.(weight|bias)$", key)
    if m:
        return f"{m[1]}/layer_norm/{'scale' if m[2] == 'weight' else 'bias'}", "copy"
    m = _LAYER.match(key)
    if m:
        side, idx, rest = m.groups()
        module, _, leaf = rest.rpartition(".")
        module = module.replace(".", "/")
        if module.endswith("layer_norm"):
            return f"{side}/layers_{idx}/{module}/{'scale' if leaf == 'weight' else 'bias'}", "copy"
        if leaf == "weight":
            return f"{side}/layers_{idx}/{module}/kernel", "linear"
        return f"{side}/layers_{idx}/{module}/bias", "copy"
    raise KeyError(key)


def _to_flax(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return x.T
    if layout == "conv":
        return x.transpose(2, 1, 0)
    return x


def _to_hf(x: np.ndarray, layout: str) -> np.ndarray:
    return _to_flax(x, layout)  # both transposes are involutions


def flax_from_hf_state(state: dict[str, np.ndarray], expected: dict) -> dict:
    """Flax params from an HF state, checked against `expected` shapes (a params pytree).

    Raises:
        ValueError: naming each unknown tensor, missing tensor and shape mismatch (both shapes).
    """
    want = {k: tuple(np.shape(v)) for k, v in flatten_dict(expected, sep="/").items()}
    flat, problems = {}, []
    for key, value in state.items():
        if key == _TIED:
            continue
        try:
            path, layout = hf_to_flax_key(key)
        except KeyError:
            problems.append(f"unknown tensor {key!r} with shape {tuple(value.shape)}")
            continue
        ndim = {"linear": 2, "conv": 3}.get(layout, np.ndim(value))
        if np.ndim(value) != ndim:
            problems.append(f"{key!r} has shape {tuple(np.shape(value))}; expected {ndim} dims")
            continue
        arr = _to_flax(np.asarray(value), layout)
        if path not in want:
            problems.append(f"unknown tensor {key!r} (-> {path}) with shape {tuple(value.shape)}")
        elif tuple(arr.shape) != want[path]:
            problems.append(
                f"shape mismatch for {key!r}: checkpoint {tuple(value.shape)} gives {path} "
                f"{tuple(arr.shape)}, model expects {want[path]}"
            )
        else:
            flat[path] = np.ascontiguousarray(arr)
    problems += [f"missing tensor for {p} (shape {s})" for p, s in want.items() if p not in flat]
    if problems:
        extra = len(problems) - _MAX_PROBLEMS
        shown = "; ".join(problems[:_MAX_PROBLEMS]) + (f"; and {extra} more" if extra > 0 else "")
        raise CheckpointError(f"checkpoint does not fit the model: {shown}")
    return unflatten_dict(flat, sep="/")


def flax_to_hf_key(path: str) -> tuple[str, str]:
    """Inverse of `hf_to_flax_key`."""
    parts = path.split("/")
    side = parts[0]
    if path in ("encoder/embed_positions", "decoder/embed_positions"):
        return f"model.{side}.embed_positions.weight", "copy"
    if path == "decoder/embed_tokens/embedding":
        return "model.decoder.embed_tokens.weight", "copy"
    leaf = parts[-1]
    hf_leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    if parts[1] in ("conv1", "conv2"):
        return f"model.encoder.{parts[1]}.{hf_leaf}", "conv" if leaf == "kernel" else "copy"
    if parts[1] == "layer_norm":
        return f"model.{side}.layer_norm.{hf_leaf}", "copy"
    idx = parts[1].removeprefix("layers_")
    module = ".".join(parts[2:-1])
    return f"model.{side}.layers.{idx}.{module}.{hf_leaf}", "linear" if leaf == "kernel" else "copy"


def hf_state_from_flax(params: dict) -> dict[str, np.ndarray]:
    """HF state (float32 numpy, row-major) from Flax params."""
    state = {}
    for path, value in flatten_dict(params, sep="/").items():
        key, layout = flax_to_hf_key(path)
        state[key] = np.ascontiguousarray(_to_hf(np.asarray(value, np.float32), layout))
    return state


def read_json(path: str | os.PathLike) -> dict:
    """A JSON object from `path`; every failure is one line naming the file.

    Raises:
      FileNotFoundError: the file is missing.
      CheckpointError: it is unreadable, not UTF-8 JSON, or not an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def _shards_from_index(folder: Path, index: Path) -> dict[Path, set[str]]:
    """Shard file -> tensor names it must hold, refusing entries that leave `folder`."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"{index}: 'weight_map' must be a non-empty object of tensor name -> shard file"
        )
    shards: dict[Path, set[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or not name.strip() or "\0" in name:
            raise CheckpointError(
                f"{index}: weight_map entry {key!r} -> {name!r} is not a file name"
            )
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or "\\" in name:
            raise CheckpointError(
                f"{index}: weight_map entry {key!r} -> {name!r} points outside {folder}; "
                "shards must be files inside the checkpoint folder"
            )
        shard = folder / rel
        if not shard.is_file():
            raise FileNotFoundError(f"{index} names shard {name!r} (for {key!r}), which is missing")
        shards.setdefault(shard, set()).add(key)
    return shards


def _read_shard(shard: Path) -> dict[str, np.ndarray]:
    """Float32 tensors of one safetensors file, refusing non-float and non-finite ones."""
    out = {}
    try:
        with safe_open(str(shard), framework="numpy") as f:
            for key in f.keys():
                value = f.get_tensor(key)
                if value.dtype.name not in _FLOAT_DTYPES:
                    raise CheckpointError(
                        f"{shard}: tensor {key!r} has dtype {value.dtype.name}; Whisper weights "
                        f"are floating point ({', '.join(_FLOAT_DTYPES)})"
                    )
                value = value.astype(np.float32)
                finite = np.isfinite(value)
                if not finite.all():
                    bad = np.argwhere(~finite)
                    first = tuple(int(i) for i in bad[0])
                    raise CheckpointError(
                        f"{shard}: tensor {key!r} has {len(bad)} non-finite value(s) (first: "
                        f"{value[first]} at index {first}); the checkpoint is corrupt"
                    )
                out[key] = value
    except (SafetensorError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{shard}: not a readable safetensors file ({msg}); re-download or re-export it"
        ) from None
    return out


def load_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read `config.json` and `model.safetensors` (or a sharded index) from an HF Whisper folder.

    Returns:
      `(config, state)`: the parsed config and float32 tensors keyed with the `model.` prefix.

    Raises:
      FileNotFoundError: a missing config, weights file or shard, named.
      CheckpointError: (a ValueError) naming the file, and the key or tensor where there is one:
        malformed JSON, a non-Whisper `model_type`, an index entry outside the folder, a tensor
        the index promises but its shard lacks, a tensor in two shards, an unreadable or truncated
        safetensors file, a non-float tensor or a non-finite weight.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a Hugging Face Whisper folder")
    config = read_json(cfg_path)
    if config.get("model_type") not in (None, "whisper"):
        raise CheckpointError(
            f"{cfg_path}: model_type={config['model_type']!r}, expected 'whisper'"
        )
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        shards = {single: set()}
    elif index.is_file():
        shards = _shards_from_index(folder, index)
    else:
        raise FileNotFoundError(
            f"{folder} has no model.safetensors or model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not read; convert them to safetensors)"
        )
    state, origin = {}, {}
    for shard, promised in sorted(shards.items()):
        tensors = _read_shard(shard)
        missing = sorted(promised - set(tensors))
        if missing:
            raise CheckpointError(
                f"{index}: weight_map puts {missing[0]!r} in {shard.name}, which lacks it "
                f"({len(missing)} such tensor(s))"
            )
        for key, value in tensors.items():
            # A bare WhisperModel checkpoint has no "model." prefix.
            full = key if key.startswith("model.") or key == _TIED else f"model.{key}"
            if full in state:
                raise CheckpointError(f"{shard}: tensor {key!r} is also in {origin[full]}")
            state[full], origin[full] = value, shard
    return config, state


def default_suppress_lists(vocab_size: int) -> tuple[list[int], list[int]]:
    """Whisper's standard `(suppress_tokens, begin_suppress_tokens)` for a model vocabulary.

    The non-speech text tokens of its family (English-only for 51864 logits, else multilingual)
    plus the specials openai-whisper suppresses: start-of-transcript and the five from
    `<|translate|>` to `<|nospeech|>`, which sit just before `<|notimestamps|>` and the timestamps
    that end every Whisper vocabulary (so large-v3's 51866 works too). The begin list is blank and
    end-of-text. For tiny.en and base these equal the lists their released checkpoints ship.

    Raises:
      ValueError: for a vocabulary smaller than Whisper's.
    """
    if vocab_size < ENGLISH_ONLY_VOCAB:
        raise ValueError(f"vocab_size {vocab_size} is not a Whisper vocabulary (>= 51864)")
    english = vocab_size == ENGLISH_ONLY_VOCAB
    eot = 50256 if english else 50257
    no_timestamps = vocab_size - N_TIMESTAMPS - 1
    specials = [eot + 1, *range(no_timestamps - 5, no_timestamps)]
    text = NON_SPEECH_TOKENS["english" if english else "multilingual"]
    return sorted({*text, *specials}), [BLANK_TOKEN, eot]


def _token_list(path: Path, gen: dict, key: str, vocab: int) -> list[int]:
    value = gen[key]
    if value is None:  # transformers' spelling of "suppress nothing"
        return []
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    ):
        raise CheckpointError(f"{path}: {key} must be a list of token ids, got {value!r:.80}")
    bad = [i for i in value if not 0 <= i < vocab]
    if bad:
        raise CheckpointError(f"{path}: {key} has ids outside [0, {vocab}): {bad[:5]}")
    return value


def max_initial_timestamp(folder: str | os.PathLike) -> int:
    """`max_initial_timestamp_index` of the folder's `generation_config.json`, else 50 (1.0 s).

    The latest first timestamp of a window, in 0.02 s steps; 50 is openai-whisper's 1.0 s.

    Raises:
      CheckpointError: the value is not a non-negative integer; the message names the file.
    """
    path = Path(folder) / GENERATION_CONFIG
    value = read_json(path).get("max_initial_timestamp_index", 50) if path.exists() else 50
    if value is None:
        return N_TIMESTAMPS - 1
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointError(
            f"{path}: max_initial_timestamp_index must be a non-negative integer, got {value!r}"
        )
    return value


def suppress_lists(folder: str | os.PathLike, vocab_size: int) -> tuple[list[int], list[int]]:
    """`(suppress_tokens, begin_suppress_tokens)` from a folder's `generation_config.json`.

    A missing file, or a file without one of the two keys, falls back to the standard lists of the
    vocabulary's family (`default_suppress_lists`) with a warning: decoding without them lets
    Whisper emit non-speech tokens. An explicit `[]` or `null` means no suppression.

    Args:
      folder: the checkpoint folder.
      vocab_size: the model's number of logits (English-only 51864, multilingual more).

    Raises:
      CheckpointError: the file is not a JSON object, or a list is not token ids in
        `[0, vocab_size)`; the message names the file and the key.
    """
    path = Path(folder) / GENERATION_CONFIG
    defaults = default_suppress_lists(vocab_size)
    family = "English-only" if vocab_size == ENGLISH_ONLY_VOCAB else "multilingual"
    keys = ("suppress_tokens", "begin_suppress_tokens")
    if not path.exists():
        log.warning("%s not found: using the standard %s Whisper suppress lists", path, family)
        return defaults
    gen = read_json(path)
    absent = [k for k in keys if k not in gen]
    if absent:
        log.warning(
            "%s lacks %s: using the standard %s Whisper list(s)", path, " and ".join(absent), family
        )
    suppress, begin = (
        _token_list(path, gen, key, vocab_size) if key in gen else default
        for key, default in zip(keys, defaults, strict=True)
    )
    return suppress, begin


def save_hf_folder(
    folder: str | os.PathLike,
    config: dict,
    params: dict,
    *,
    copy_from: str | os.PathLike | None = None,
) -> Path:
    """Write an HF Whisper folder atomically, copying the tokenizer and generation config."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        state = hf_state_from_flax(params)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        cfg = dict(
            config,
            architectures=["WhisperForConditionalGeneration"],
            model_type="whisper",
            tie_word_embeddings=True,
        )
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if copy_from is not None:
            for name in _SIDE_FILES:
                src = Path(copy_from) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
