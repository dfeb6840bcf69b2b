"""Export a trained student: a merged Hugging Face Whisper folder and its LoRA adapter for PEFT.

    python -m mkd_jax.export --workdir /tmp/mkd_tiny --out /tmp/mkd_tiny/export [--step N]

Writes, under `--out`:

- `merged/`: the student with LoRA merged in, as a plain HF Whisper folder (config.json,
  generation_config.json, model.safetensors, tokenizer.json). It loads in transformers'
  `WhisperForConditionalGeneration.from_pretrained` and in `mkd_jax.models.whisper.load`.
- `adapter/`: `adapter_config.json` and `adapter_model.safetensors` as PEFT writes them, for
  `peft.PeftModel.from_pretrained(<student checkpoint>, adapter/)`. PEFT's update is
  `W_hf + (alpha / r) * B @ A` on the `(out, in)` weight; ours is `W + (alpha / r) * a @ b` on
  the `(in, out)` kernel, so `lora_A = a.T` (`[r, in]`) and `lora_B = b.T` (`[out, r]`).
- `mappers.safetensors`: the trained projection mappers (not part of the student; kept so the
  whole trainable state leaves the workdir), keyed by `/`-joined Flax paths, with the layer map
  in the metadata.

A randomly initialised student (empty `student.checkpoint`) has no checkpoint for PEFT to load as
its base model, so only `--merged_only` exports it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from absl import flags, logging
from safetensors.numpy import save_file

from mkd_jax import cli

# jax, flax and the model code take seconds to import: each function imports what it uses, so a
# usage error stops before they load.

FLAGS = flags.FLAGS

# PEFT wraps the transformers model as `base_model.model`, so state-dict keys gain this prefix.
PEFT_PREFIX = "base_model.model."
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def peft_module_name(path: str) -> str:
    """HF module name (`model.decoder.layers.0.self_attn.q_proj`) of a LoRA-targeted Flax kernel.

    Raises:
      ValueError: the path is not the kernel of a Linear layer (PEFT's LoRA `Linear`).
    """
    from mkd_jax.models.hf_io import flax_to_hf_key

    try:
        key, layout = flax_to_hf_key(path)
    except (KeyError, IndexError) as e:
        raise ValueError(f"LoRA kernel {path!r} has no Hugging Face Whisper name") from e
    if layout != "linear" or not key.endswith(".weight"):
        raise ValueError(
            f"LoRA kernel {path!r} maps to {key!r} ({layout}); PEFT export handles "
            "Linear layers only"
        )
    return key.removesuffix(".weight")


def _factor_pairs(lora_tree: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`kernel path -> (a, b)` from a LoRA tree, checking every entry has both factors."""
    from flax.traverse_util import flatten_dict

    grouped: dict[str, dict] = {}
    for path, leaf in flatten_dict(lora_tree, sep="/").items():
        head, _, name = path.rpartition("/")
        if name not in ("a", "b"):
            raise ValueError(f"LoRA tree leaf {path!r} is neither .../a nor .../b")
        grouped.setdefault(head, {})[name] = np.asarray(leaf, np.float32)
    incomplete = sorted(p for p, g in grouped.items() if len(g) != 2)
    if incomplete:
        raise ValueError(f"LoRA entries {incomplete} lack their a or b factor")
    return {p: (g["a"], g["b"]) for p, g in grouped.items()}


def peft_state(lora_tree: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """PEFT `adapter_model.safetensors` tensors and the sorted target module names.

    Args:
      lora_tree: `{path: {"a": [in, r], "b": [r, out]}}` nested as `lora.init` returns it.

    Returns:
      `({"base_model.model.<module>.lora_A.weight": [r, in], "...lora_B.weight": [out, r]},
      modules)`, float32 and row-major.
    """
    tensors, modules = {}, []
    for path, (a, b) in sorted(_factor_pairs(lora_tree).items()):
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError(
                f"LoRA {path}: a {a.shape}, b {b.shape}; PEFT export needs one "
                "2-D pair per layer (stacked/scanned kernels are not supported)"
            )
        module = peft_module_name(path)
        modules.append(module)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T)
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T)
    return tensors, modules


def adapter_config(
    *, rank: int, alpha: float, dropout: float, target_modules: list[str], base_model: str
) -> dict:
    """`adapter_config.json` for a plain LoRA on Whisper.

    `task_type` is null: PEFT's task wrappers (`SEQ_2_SEQ_LM`) feed `input_ids`, whereas Whisper
    takes `input_features`, and PEFT's own Whisper examples leave the task unset. Target modules
    are full module names, which PEFT matches exactly, so no other layer can be caught by a
    suffix match.
    """
    return {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(target_modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }


def write_adapter(
    folder: str | os.PathLike,
    lora_tree: dict,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    base_model: str | os.PathLike,
) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` into `folder`."""
    tensors, modules = peft_state(lora_tree)
    if not tensors:
        raise ValueError("the run has no LoRA factors (lora.targets is empty): nothing to export")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = adapter_config(
        rank=rank, alpha=alpha, dropout=dropout, target_modules=modules, base_model=str(base_model)
    )
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def merged_hf_config(model, base_config: dict) -> dict:
    """The base folder's HF config with the student's dimensions and float32 weights.

    The base config supplies the special ids and suppress lists; the dimensions come from the
    model because a random-init student's base folder is only its tokenizer's model.
    """
    from mkd_jax.models.whisper import HF_FIELDS

    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    config.update({k: int(getattr(model, k)) for k in HF_FIELDS})
    config.pop("torch_dtype", None)
    config["dtype"] = "float32"  # the safetensors are float32 whatever the base was stored as
    return config


def _drop_stale_alignment_heads(folder: Path, model) -> None:
    """Remove `alignment_heads` naming layers or heads the model does not have.

    A random-init student copies its tokenizer model's generation config, whose cross-attention
    heads for word timestamps refer to that model's layers; transformers would index past them.
    """
    path = folder / "generation_config.json"
    if not path.is_file():
        return
    gen = json.loads(path.read_text())
    heads = gen.get("alignment_heads") or []
    if all(
        0 <= layer < model.decoder_layers and 0 <= head < model.decoder_attention_heads
        for layer, head in heads
    ):
        return
    logging.warning(
        "%s: alignment_heads %s do not fit a %d-layer, %d-head decoder; dropped",
        path,
        heads,
        model.decoder_layers,
        model.decoder_attention_heads,
    )
    del gen["alignment_heads"]
    path.write_text(json.dumps(gen, indent=2, sort_keys=True) + "\n")


def write_merged(
    folder: str | os.PathLike,
    model,
    params: dict,
    *,
    base_folder: str | os.PathLike,
    tokenizer_folder: str | os.PathLike,
) -> Path:
    """Write the merged student as an HF Whisper folder.

    Args:
      folder: destination (replaced atomically).
      model: the student `Whisper`.
      params: merged student parameters.
      base_folder: the student's checkpoint folder (or, for random init, its tokenizer's model
        folder): source of config.json defaults, generation_config.json and side files.
      tokenizer_folder: where the student's tokenizer.json lives.
    """
    import jax

    from mkd_jax.models.hf_io import save_hf_folder

    base_folder = Path(base_folder)
    base_config = json.loads((base_folder / "config.json").read_text())
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
    folder = save_hf_folder(
        folder, merged_hf_config(model, base_config), params, copy_from=base_folder
    )
    tok = Path(tokenizer_folder) / "tokenizer.json"
    if Path(tokenizer_folder) != base_folder and tok.is_file():
        shutil.copy2(tok, folder / "tokenizer.json")
    _drop_stale_alignment_heads(folder, model)
    return folder


def write_mappers(path: str | os.PathLike, mappers: dict, setup) -> Path | None:
    """Mapper weights as safetensors keyed by Flax path, the layer map in the metadata."""
    from flax.traverse_util import flatten_dict

    from mkd_jax.mappers import mapper_name

    flat = flatten_dict(mappers, sep="/")
    if not flat:
        return None
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in flat.items()}
    m = setup.mappers
    meta = {
        "format": "mkd_jax.mappers",
        "kind": m.kind,
        "hidden": json.dumps(m.hidden),
        "align": m.align,
        "pairs": json.dumps({mapper_name(p): list(p) for p in m.pairs}),
        "teacher_dims": json.dumps(dict(m.teacher_dims)),
    }
    save_file(tensors, str(path), metadata=meta)
    return Path(path)


def export(
    workdir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    step: int | None = None,
    merged_only: bool = False,
) -> dict[str, Path]:
    """Export a workdir's checkpoint; returns the written paths by kind.

    Raises:
      ValueError: the student is randomly initialised and `merged_only` is False, or `step` has
        no checkpoint.
    """
    import jax

    from mkd_jax.distill import merged_student
    from mkd_jax.state import load_config, restore_run

    cfg = load_config(workdir)
    if not cfg.student.checkpoint and not merged_only:
        raise ValueError(
            f"{workdir}/config.json: student.checkpoint is empty (a randomly initialised "
            "student), so there is no base model for PEFT's base_model_name_or_path; rerun with "
            "--merged_only to export just the merged weights"
        )
    cfg, (model, params_s, _, folder), setup, trainable, step = restore_run(workdir, step)
    logging.info("exporting step %d of %s", step, workdir)
    merged = jax.jit(lambda t, s: merged_student(t, {"student": s}, setup))(trainable, params_s)
    out = Path(out)
    tok_folder = folder
    if cfg.student.tokenizer:
        from mkd_jax import assets

        tok_folder = assets.resolve_model(cfg.student.tokenizer)
    written = {
        "merged": write_merged(
            out / "merged", model, merged, base_folder=folder, tokenizer_folder=tok_folder
        )
    }
    if merged_only:
        return written
    written["adapter"] = write_adapter(
        out / "adapter",
        jax.device_get(trainable["lora"]),
        rank=cfg.lora.rank,
        alpha=float(cfg.lora.alpha),
        dropout=float(cfg.lora.dropout),
        base_model=Path(folder).absolute(),
    )
    mappers = write_mappers(
        out / "mappers.safetensors", jax.device_get(trainable["mappers"]), setup
    )
    if mappers is not None:
        written["mappers"] = mappers
    return written


def main(argv):
    del argv
    out = Path(FLAGS.out)
    if out.exists() and not out.is_dir():  # before the checkpoint is restored and merged
        raise ValueError(f"--out {out}: is a file, not a folder")
    import jax

    jax.config.update("jax_threefry_partitionable", True)
    written = export(FLAGS.workdir, FLAGS.out, step=FLAGS.step, merged_only=FLAGS.merged_only)
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    # Flags are defined only when run as a program: `--workdir` is train's flag too, and absl
    # rejects a second definition when a process (a test session) imports both modules.
    flags.DEFINE_string("workdir", None, "Training workdir (holds config.json and checkpoints/).")
    flags.DEFINE_string("out", None, "Export folder for merged/, adapter/ and mappers.safetensors.")
    flags.DEFINE_integer("step", None, "Checkpoint step to export; the latest by default.")
    flags.DEFINE_bool("merged_only", False, "Write only merged/ (a random-init student).")
    flags.mark_flags_as_required(["workdir", "out"])
    cli.run(main)
