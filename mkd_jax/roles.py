"""Teacher and student roles and the data source, built from a config.

A role is a checkpoint (a known name, an HF folder or a CTranslate2 folder) or, when `checkpoint`
is empty, a randomly initialised Whisper of the `init` dimensions with the tokenizer named by
`tokenizer` (used by tests and shape checks; never for real runs).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mkd_jax import assets
from mkd_jax.data.tokenizers import load_tokenizer
from mkd_jax.models.whisper import Whisper, abstract_params

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)  # the corpus builder's train, dev, test shares


class Role(NamedTuple):
    """One model of a run: the module, its parameters, its tokenizer and the folder it came from."""

    model: Whisper
    params: Any  # a parameter pytree, or its ShapeDtypeStructs when built abstract
    tokenizer: Any
    folder: Path


def frozen_params(roles: dict) -> dict:
    """The step's `frozen` argument: the base student's and every teacher's parameters."""
    return {
        "student": roles["student"].params,
        "teachers": {n: r.params for n, r in roles["teachers"].items()},
    }


def _dtype(name: str, where: str):
    if name not in DTYPES:
        raise ValueError(f"{where}.dtype={name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def build_role(cfg, where: str, *, seed: int = 0, abstract: bool = False) -> Role:
    """The `Role` of one role config (`student` or `teachers.<name>`).

    With `abstract=True` params are `jax.ShapeDtypeStruct`s (nothing is loaded or allocated).
    """
    dtype = _dtype(cfg.dtype, where)
    if cfg.checkpoint:
        if abstract:
            folder = assets.resolve_model(cfg.checkpoint)
            config = json.loads((Path(folder) / "config.json").read_text())
            from mkd_jax.models.whisper import dims_from_hf_config

            model = Whisper(**dims_from_hf_config(config), dtype=dtype)
            params = nn.unbox(abstract_params(model))
        else:
            model, params, config = assets.load_model(cfg.checkpoint, dtype=dtype)
            folder = config["_folder"]
        tok_folder = assets.resolve_model(cfg.tokenizer) if cfg.tokenizer else folder
    else:
        if not cfg.tokenizer:
            raise ValueError(f"{where}: a randomly initialised role needs `tokenizer`")
        try:
            model = Whisper(**cfg.init.to_dict(), dtype=dtype)
        except TypeError as e:
            raise ValueError(f"{where}.init: {e}") from e
        tok_folder = folder = assets.resolve_model(cfg.tokenizer)
        params = nn.unbox(abstract_params(model, frames=2 * model.max_source_positions))
        if not abstract:
            key = jax.random.fold_in(
                jax.random.PRNGKey(seed), int(hashlib.sha1(where.encode()).hexdigest()[:7], 16)
            )
            params = _random_init(model, key)
    tokenizer = load_tokenizer(tok_folder, model_vocab_size=model.vocab_size)
    return Role(model, params, tokenizer, Path(folder))


def _random_init(model: Whisper, key) -> dict:
    """Random float32 params drawn on the host: N(0, 0.02) weights, unit norms, sinusoid table.

    Host numpy keeps start-up free of XLA compiles (a jitted `model.init` compiles the whole
    unrolled network). Used only for roles without a checkpoint.
    """
    from flax.traverse_util import flatten_dict, unflatten_dict

    from mkd_jax.models.whisper import sinusoids

    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    flat = {}
    for path, leaf in flatten_dict(nn.unbox(abstract_params(model)), sep="/").items():
        if path == "encoder/embed_positions":
            value = sinusoids(*leaf.shape)
        elif path.endswith("/scale"):
            value = np.ones(leaf.shape, np.float32)
        elif path.endswith("/bias"):
            value = np.zeros(leaf.shape, np.float32)
        else:
            value = rng.normal(0.0, 0.02, leaf.shape).astype(np.float32)
        flat[path] = value
    return unflatten_dict(flat, sep="/")


def build_roles(config, *, abstract: bool = False):
    """Student and every teacher: `{"student": role, "teachers": {name: role}}`."""
    student = build_role(config.student, "student", seed=config.seed, abstract=abstract)
    if not config.teachers:
        logging.info("no teachers: supervised mode (CE only)")
    teachers = {
        name: build_role(cfg, f"teachers.{name}", seed=config.seed, abstract=abstract)
        for name, cfg in config.teachers.items()
    }
    for name, teacher in teachers.items():
        if teacher.model.num_mel_bins != student.model.num_mel_bins:
            raise ValueError(
                f"teachers.{name} takes {teacher.model.num_mel_bins} mel bins, the student "
                f"{student.model.num_mel_bins}; mixed mel sizes need per-model features, which the "
                "batcher does not build yet"
            )
    return {"student": student, "teachers": teachers}


def resolve_source(source) -> dict:
    """The loader config for `data.source`; kind `synth` builds the project's corpus if missing.

    Empty strings and a zero `limit` mean "unset"; `hours` only applies to kind `synth`.
    """
    src = source.to_dict() if hasattr(source, "to_dict") else dict(source)
    hours = float(src.pop("hours", 0.0))
    fractions = tuple(float(f) for f in src.pop("fractions", DEFAULT_FRACTIONS))
    src = {k: (None if v == "" or (k == "limit" and not v) else v) for k, v in src.items()}
    if src["kind"] != "synth":
        return src
    from mkd_jax.corpus import synth

    name = f"synth_{hours:g}h"
    if fractions != DEFAULT_FRACTIONS:  # another split of the same hours is another corpus
        name += "_" + "-".join(f"{f:g}" for f in fractions)
    path = Path(src["path"]) if src["path"] else assets.cache_dir() / "corpora" / name
    complete = (path / "dataset_dict.json").is_file() and set(synth.EXTRA_SPLITS) <= set(
        synth.registered_splits(path)
    )
    if not complete:  # a corpus built before test_ood existed gains it without a rebuild
        logging.info(
            "building the %.3g h synthetic corpus at %s (cached for later runs)", hours, path
        )
        if synth.build(path, synth.Config(hours=hours, fractions=fractions)) is None:
            raise RuntimeError(f"corpus build at {path} stopped early; rerun to resume it")
    return dict(src, kind="disk", path=str(path))


def train_source(cfg) -> dict:
    """The loader config of the training input: `data.source` (resolved), or, with
    `data.train_labels` set, the pseudo-labelled manifest `mkd_jax.pseudolabel` wrote there, whose
    `label` column is the target (the split keeps its name, `data.train_split`; evaluation splits
    still come from `data.source`, with their true transcripts)."""
    source = resolve_source(cfg.data.source)
    labels = cfg.data.get("train_labels", "")
    if not labels:
        return source
    manifest = Path(labels) / f"{cfg.data.train_split}.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"data.train_labels={labels!r} has no {manifest.name}; label the "
            f"{cfg.data.train_split!r} split with `python -m mkd_jax.pseudolabel --out {labels}`"
        )
    keep = ("min_seconds", "max_seconds", "max_bad_fraction", "limit")
    return dict(
        {k: source[k] for k in keep if k in source},
        kind="manifest",
        path=str(labels),
        text_column="label",
        id_column="id",
    )


def noised(cfg, utts):
    """The training split as training reads it: with `data.train_noise` when that is on."""
    noise = cfg.data.get("train_noise")
    if noise is None or not tuple(noise.snr_db):
        return utts
    return utts.with_noise(tuple(noise.snr_db), tuple(noise.kinds))


def train_input(cfg, roles, setup):
    """`(source, utts, tokenizers, buckets)` of the training split, as training and the teacher
    cache both read it: the student's tokenizer and every cross-vocabulary teacher's. A streamed
    source is not listed (`utts` is None)."""
    from mkd_jax.data import batching, loaders

    source = train_source(cfg)
    streamed = source.get("streaming", False)
    utts = None if streamed else noised(cfg, loaders.load_split(source, cfg.data.train_split))
    if utts is not None and len(utts) < cfg.data.batch_size:  # every batch would be padding
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size}: more than the {len(utts)} usable utterances "
            f"of {utts.source}[{cfg.data.train_split}]; lower it"
        )
    tokenizers = {batching.STUDENT: roles["student"].tokenizer}
    tokenizers.update(
        {n: roles["teachers"][n].tokenizer for n, ix in setup.vocab_index.items() if ix is not None}
    )
    buckets = batching.make_buckets(
        tuple(cfg.data.token_buckets), (cfg.data.n_frames,), cfg.data.batch_size
    )
    return source, utts, tokenizers, buckets
