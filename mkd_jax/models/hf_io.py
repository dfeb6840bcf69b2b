"""Hugging Face Whisper checkpoints <-> Flax parameters.

An "HF state" is a dict of numpy arrays keyed like transformers' `WhisperForConditionalGeneration`
state dict (`model.encoder.conv1.weight`, ...), without the tied `proj_out.weight`. Linear weights
are stored `(out, in)` and become Flax kernels `(in, out)`; Conv1d weights `(out, in, k)` become
`(k, in, out)`; layer-norm `weight` becomes `scale`. The mapping is a pure rename plus transpose,
so a round trip is bit-exact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import load_file, save_file

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
        raise ValueError("checkpoint does not fit the model:\n  " + "\n  ".join(problems))
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


def load_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """Read `config.json` and `model.safetensors` (or a sharded index) from an HF Whisper folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: not a Hugging Face Whisper folder")
    config = json.loads(cfg_path.read_text())
    if config.get("model_type") not in (None, "whisper"):
        raise ValueError(f"{cfg_path}: model_type={config['model_type']!r}, expected 'whisper'")
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        shards = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = [folder / f for f in sorted(set(weight_map.values()))]
        for shard in shards:
            if not shard.is_file():
                raise FileNotFoundError(f"{index} names shard {shard.name}, which is missing")
    else:
        raise FileNotFoundError(
            f"{folder} has no model.safetensors or model.safetensors.index.json "
            "(PyTorch .bin checkpoints are not read; convert them to safetensors)"
        )
    state = {}
    for shard in shards:
        for key, value in load_file(str(shard)).items():
            # A bare WhisperModel checkpoint has no "model." prefix.
            full = key if key.startswith("model.") or key == _TIED else f"model.{key}"
            state[full] = value
    return config, {k: v.astype(np.float32) for k, v in state.items()}


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
