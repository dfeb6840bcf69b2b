"""The train state and everything static about a run, built from the config and the roles.

`state = {"step", "trainable": {"lora", "mappers"}, "opt", "rng"}`; `frozen = {"teachers",
"student"}`. `restore_student` rebuilds a workdir's merged student for evaluate; `restore_run` also
returns the unmerged trainable tree, for export.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import logging
from ml_collections import ConfigDict

from mkd_jax import lora
from mkd_jax.data import token_align
from mkd_jax.distill import Setup, merged_student
from mkd_jax.mappers import Mappers, format_layer_map, layer_counts, resolve_layer_map
from mkd_jax.optim import make_optimizer


def _layers(model) -> dict[str, int]:
    return layer_counts(
        {"encoder_layers": model.encoder_layers, "decoder_layers": model.decoder_layers}
    )


def shared_encoders(teachers) -> dict[str, str]:
    """Teacher -> the first earlier teacher with the same encoder: the same definition and
    byte-identical encoder weights (a variant tuned with decoder LoRA, as the demo's base_ft),
    so the step and the teacher cache run that encoder once. Empty for abstract roles (AOT
    plans then count every encoder) and for parameters this process cannot read whole."""
    from mkd_jax.encoder_memo import weights_fingerprint

    first, out = {}, {}
    for name, (model, params, *_) in teachers.items():
        leaves = jax.tree.leaves(params["encoder"])
        if not all(getattr(x, "is_fully_addressable", True) for x in leaves) or any(
            isinstance(x, jax.ShapeDtypeStruct) for x in leaves
        ):
            return {}
        key = (model, weights_fingerprint(params["encoder"]))
        if key in first:
            out[name] = first[key]
            logging.info("teacher %s has teacher %s's encoder: it runs once", name, first[key])
        else:
            first[key] = name
    return out


def make_setup(cfg, roles) -> Setup:
    """Static step settings: models, layer map, vocabulary maps and loss weights."""
    student, tok_s = roles["student"].model, roles["student"].tokenizer
    teachers = roles["teachers"]
    vocab_maps, vocab_index = {}, {}
    for name, teacher in teachers.items():
        model, tok = teacher.model, teacher.tokenizer
        vmap = token_align.vocab_map(tok, tok_s)
        if token_align.same_vocabulary(vmap, student.vocab_size) and (
            model.vocab_size == student.vocab_size
        ):
            vocab_maps[name] = vocab_index[name] = None
        else:
            vocab_maps[name] = vmap
            vocab_index[name] = token_align.student_index(vmap, student.vocab_size)
            logging.info("teacher %s has another vocabulary: cross-tokenizer KD", name)
    mappers = None
    if teachers and cfg.mappers.weight > 0:
        pairs = resolve_layer_map(
            cfg.mappers.strategy,
            student_layers=_layers(student),
            teachers={n: _layers(t.model) for n, t in teachers.items()},
            sides=tuple(cfg.mappers.sides),
            explicit=list(cfg.mappers.explicit) or None,
        )
        logging.info("layer map:\n%s", format_layer_map(pairs))
        mappers = Mappers(
            tuple(pairs),
            tuple((n, m.d_model) for n, (m, *_) in teachers.items()),
            kind=cfg.mappers.kind,
            hidden=cfg.mappers.hidden or None,
            align=cfg.mappers.align,
        )
    loss = cfg.loss
    setup = Setup(
        student=student,
        teachers={n: m for n, (m, *_) in teachers.items()},
        teacher_weights={n: float(c.weight) for n, c in cfg.teachers.items()},
        vocab_maps=vocab_maps,
        vocab_index=vocab_index,
        mappers=mappers,
        lora_rank=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        w_ce=loss.w_ce,
        w_kd=loss.w_kd if teachers else 0.0,
        w_map=cfg.mappers.weight,
        feature_loss=cfg.mappers.loss,
        temperature=loss.temperature,
        ensemble=loss.ensemble,
        ensemble_weights=(
            tuple(float(loss.ensemble_weights[n]) for n in teachers)
            if loss.ensemble == "weights"
            else ()
        ),
        kd_support=loss.kd_support,
        interpolate=loss.interpolate,
        teacher_right_only=bool(loss.get("teacher_right_only", False)),
        lambdas=tuple(loss.lambdas),
        total_steps=cfg.total_steps,
        teacher_frames=(
            0
            if cfg.data.get("teacher_frames", 0) in (0, cfg.data.n_frames)
            else int(cfg.data.teacher_frames)
        ),
        shared_encoder=shared_encoders(teachers),
    )
    if cfg.get("cache") and cfg.cache.enabled:
        from mkd_jax.teacher_cache import make_spec

        spec = make_spec(cfg, roles["student"].params, mappers.pairs if mappers else ())
        setup = dataclasses.replace(setup, cache=spec)
    return setup


def init_trainable(cfg, roles, setup: Setup, rng) -> dict:
    """`{"lora", "mappers"}`: LoRA with zero `b` on the student, mappers on dummy features.

    Only parameter shapes are read, so this traces under `jax.jit` / `jax.eval_shape` and runs
    as one compiled program.
    """
    student, params_s = roles["student"].model, roles["student"].params
    lora_rng, map_rng = jax.random.split(rng)
    targets = list(cfg.lora.targets)
    lora_tree = (
        lora.init(lora_rng, params_s, targets=targets, rank=cfg.lora.rank) if targets else {}
    )
    mappers = {}
    if setup.mappers is not None:
        # Every site of a Whisper has width d_model; one frame is enough to create the kernels.
        s_out = {p.student_site: jnp.zeros((1, 1, student.d_model)) for p in setup.mappers.pairs}
        t_out = {}
        for p in setup.mappers.pairs:
            width = setup.teachers[p.teacher].d_model
            t_out.setdefault(p.teacher, {})[p.teacher_site] = jnp.zeros((1, 1, width))
        mappers = setup.mappers.init(map_rng, s_out, t_out)["params"]
    return {"lora": lora_tree, "mappers": mappers}


def make_tx(cfg):
    """The optimizer and its schedules; `total_steps` counts micro-batches."""
    updates = max(cfg.total_steps // max(cfg.optim.accum_steps, 1), 1)
    return make_optimizer(cfg.optim, total_steps=updates)


def init_state(trainable, tx, rng) -> dict:
    return {"step": jnp.int32(0), "trainable": trainable, "opt": tx.init(trainable), "rng": rng}


def load_config(workdir) -> ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {workdir} is not a mkd_jax training workdir")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e}); the workdir's config is damaged") from None
    missing = [
        g for g in ("student", "teachers", "data") if not isinstance(data, dict) or g not in data
    ]
    if missing:
        raise ValueError(
            f"{path}: not a training config (no {', '.join(missing)}); the workdir's config is "
            "damaged or from another program"
        )
    return ConfigDict(data)


def checkpoint_steps(workdir) -> list[int]:
    """Steps with a finished checkpoint in `workdir/checkpoints` (orbax names each by its step)."""
    folder = Path(workdir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def restore_run(workdir, step: int | None = None):
    """`(cfg, student role, setup, trainable, step)` of a workdir's checkpoint (latest by default).

    The student role is `(model, base params, tokenizer, folder)` and `trainable` the restored
    `{"lora", "mappers"}` tree, unmerged (export writes the LoRA factors themselves).

    Raises:
      FileNotFoundError: the workdir has no config.json or no checkpoint.
      ValueError: `step` has no checkpoint; the message lists the steps that do.
      CheckpointDamaged: the checkpoint is unreadable, non-finite or fails its fingerprint.
    """
    from mkd_jax.checkpoint import CheckpointDamaged, Checkpointer
    from mkd_jax.roles import build_role

    cfg = load_config(workdir)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"{workdir}/checkpoints has no checkpoint yet")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"{workdir}/checkpoints has no step {step}; it has steps {steps}")
    roles = {
        "student": build_role(cfg.student, "student", seed=cfg.seed),
        "teachers": {
            n: build_role(c, f"teachers.{n}", seed=cfg.seed, abstract=True)
            for n, c in cfg.teachers.items()
        },
    }
    setup = make_setup(cfg, roles)
    rng = jax.random.PRNGKey(cfg.seed)
    tx, _ = make_tx(cfg)
    state = jax.eval_shape(lambda: init_state(init_trainable(cfg, roles, setup, rng), tx, rng))
    ckpt = Checkpointer(Path(workdir) / "checkpoints")
    restored, _, why = ckpt.restore_intact(step, state)
    ckpt.close()
    if why is not None:
        others = [s for s in steps if s != step]
        fix = f"pass --step with one of {others}" if others else "train the run again"
        raise CheckpointDamaged(f"{workdir}/checkpoints/{step} does not restore ({why}); {fix}")
    return cfg, roles["student"], setup, restored["trainable"], step


def restore_student(workdir):
    """`(model, merged params, tokenizer, folder, config)` of a workdir's latest checkpoint."""
    cfg, (student, params_s, tok, folder), setup, trainable, _ = restore_run(workdir)
    merged = jax.jit(lambda t, s: merged_student(t, {"student": s}, setup))(trainable, params_s)
    return student, merged, tok, folder, cfg


def abstract_batch(cfg, setup: Setup, student) -> dict:
    """ShapeDtypeStructs of one global batch of the largest bucket, keyed as the batcher keys it."""
    b, s, f = cfg.data.batch_size, max(cfg.data.token_buckets), cfg.data.n_frames
    batch = {
        "mel": jax.ShapeDtypeStruct((b, student.num_mel_bins, f), jnp.float32),
        "valid": jax.ShapeDtypeStruct((b,), jnp.float32),
        "audio_frames": jax.ShapeDtypeStruct((b,), jnp.int32),
    }
    cross = [f"t:{n}/" for n, ix in setup.vocab_index.items() if ix is not None]
    for prefix in ["", *cross]:
        batch[prefix + "decoder_input"] = jax.ShapeDtypeStruct((b, s), jnp.int32)
        batch[prefix + "labels"] = jax.ShapeDtypeStruct((b, s), jnp.int32)
        batch[prefix + "mask"] = jax.ShapeDtypeStruct((b, s), jnp.float32)
        if prefix:
            batch[prefix + "rows"] = jax.ShapeDtypeStruct((b, s), jnp.int32)
    if setup.cache is not None:
        from mkd_jax.teacher_cache import abstract_fields

        batch.update(abstract_fields(setup.cache, setup, b, s, f))
        if setup.cache.student_sites:
            del batch["mel"]
    return batch


def make_step_fn(setup: Setup, tx, roles, state, batch, mesh, rules):
    """`(jitted train_step, shardings)` with explicit shardings and the state donated.

    Frozen weights follow their logical axes; trainables, optimizer state and RNG replicate; the
    batch is split along `act_batch`. `shardings` holds `state`, `frozen` and `batch`.
    """
    from mkd_jax import sharding
    from mkd_jax.distill import train_step
    from mkd_jax.models.whisper import abstract_params

    replicated = sharding.replicated(mesh)
    shardings = {
        "state": jax.tree.map(lambda _: replicated, state),
        "frozen": {
            "student": sharding.param_shardings(
                abstract_params(roles["student"].model), mesh, rules
            ),
            "teachers": {  # a cached step reads no teacher weights
                n: sharding.param_shardings(abstract_params(r.model), mesh, rules)
                for n, r in roles["teachers"].items()
                if setup.cache is None
            },
        },
        "batch": {k: sharding.batch_sharding(mesh, rules, v.ndim) for k, v in batch.items()},
    }
    step = jax.jit(
        functools.partial(train_step, setup=setup, tx=tx),
        in_shardings=(shardings["state"], shardings["frozen"], shardings["batch"]),
        out_shardings=(shardings["state"], replicated),
        donate_argnums=(0,),
    )
    return step, shardings
