"""The pure distillation step: `loss_fn`, `train_step`, `eval_step`.

Only `trainable = {"lora", "mappers"}` is differentiated; `frozen = {"teachers", "student"}` is
read under `stop_gradient` and never donated. Every teacher runs once per step. Everything static
(models, layer map, vocabulary maps, loss weights) lives in a `Setup` bound with
`functools.partial`, so nothing jitted reads flags, globals or files.

Loss: `w_ce * CE + w_kd * T^2 KL(target || student) + sum_pairs w_map * w_teacher * L_map`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mkd_jax import lora, losses, token_align
from mkd_jax.mappers import Mappers, feature_loss
from mkd_jax.models.whisper import Whisper


@dataclasses.dataclass(frozen=True, eq=False)
class Setup:
    """Static pieces of the step. `vocab_index[name]` is None for a teacher sharing the student's
    vocabulary, else `token_align.student_index` (teacher probabilities mapped onto student ids)."""

    student: Whisper
    teachers: dict[str, Whisper]
    teacher_weights: dict[str, float]
    vocab_maps: dict[str, np.ndarray | None]
    vocab_index: dict[str, np.ndarray | None]
    mappers: Mappers | None
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    w_ce: float
    w_kd: float
    w_map: float
    feature_loss: str
    temperature: float
    ensemble: str = "mean"
    ensemble_weights: tuple[float, ...] = ()
    interpolate: bool = False
    lambdas: tuple[float, ...] = (0.1, 0.5, 0.9)
    total_steps: int = 1


def merged_student(trainable, frozen, setup: Setup, rng=None):
    """Student parameters with LoRA merged in (dropout only when `rng` is given)."""
    return lora.merge(
        frozen["student"],
        trainable["lora"],
        alpha=setup.lora_alpha,
        rank=setup.lora_rank,
        dropout_rng=rng,
        dropout=setup.lora_dropout if rng is not None else 0.0,
    )


def _frame_mask(batch, n_enc: int) -> jax.Array:
    """[B, n_enc] 1 on encoder frames that hold audio (mel frames / 2, rounded up)."""
    frames = (batch["audio_frames"] + 1) // 2
    return (jnp.arange(n_enc)[None, :] < frames[:, None]).astype(jnp.float32) * batch["valid"][
        :, None
    ]


def _teacher(name, model, params, batch, setup: Setup, v_s: int):
    """One teacher's tempered target on student positions, its mask, features and CE per utt."""
    cross = setup.vocab_index[name] is not None
    prefix = f"t:{name}/" if cross else ""
    logits_t, out_t = model.apply({"params": params}, batch["mel"], batch[prefix + "decoder_input"])
    logits_t, out_t = jax.lax.stop_gradient((logits_t, out_t))
    ce_utt = losses.cross_entropy_per_utt(
        logits_t, batch[prefix + "labels"], batch[prefix + "mask"]
    )
    mask = batch["mask"]
    if not cross:
        return losses.tempered_probs(logits_t, setup.temperature), mask, out_t, ce_utt
    rows = batch[f"t:{name}/rows"]  # [B, S_s] teacher row predicting the aligned token, or -1
    aligned = (rows >= 0).astype(jnp.float32)
    p_t = losses.tempered_probs(token_align.gather_rows(logits_t, rows), setup.temperature)
    p_t = token_align.map_teacher_probs(
        p_t * aligned[..., None], setup.vocab_maps[name], v_s, index=setup.vocab_index[name]
    )
    feats = {
        k: token_align.gather_rows(v, rows) if k.startswith("decoder/") else v
        for k, v in out_t.items()
    }
    return p_t, mask * aligned, feats, ce_utt


def loss_fn(trainable, frozen, batch, rng, step, *, setup: Setup):
    """Total loss and metrics. Differentiate with respect to `trainable` only."""
    params_s = merged_student(trainable, frozen, setup, rng)
    logits_s, out_s = setup.student.apply(
        {"params": params_s}, batch["mel"], batch["decoder_input"]
    )
    mask = batch["mask"]
    ce, n_tok = losses.cross_entropy(logits_s, batch["labels"], mask)
    metrics = {"train/ce": ce, "train/tokens": n_tok}
    total = setup.w_ce * ce

    probs, masks, feats, ces = [], [], {}, []
    pred_s = jnp.argmax(logits_s, axis=-1)
    for name, model in setup.teachers.items():
        p_t, m_t, f_t, ce_t = _teacher(
            name, model, frozen["teachers"][name], batch, setup, setup.student.vocab_size
        )
        probs.append(p_t)
        masks.append(m_t)
        feats[name] = f_t
        ces.append(ce_t)
        agree = (jnp.argmax(p_t, axis=-1) == pred_s).astype(jnp.float32)
        metrics[f"train/agree/{name}"] = jnp.sum(agree * m_t) / jnp.maximum(jnp.sum(m_t), 1.0)
        metrics[f"train/coverage/{name}"] = jnp.sum(m_t) / jnp.maximum(jnp.sum(mask), 1.0)

    if probs and setup.w_kd > 0:
        kw = dict(
            mode=setup.ensemble,
            weights=setup.ensemble_weights or None,
            teacher_ce_per_utt=jnp.stack(ces) if setup.ensemble == "best" else None,
        )
        target = losses.ensemble_target(probs, masks=masks, **kw)
        kd_mask = losses.ensemble_mask(masks, **kw)
        if setup.interpolate:
            lam = losses.lambda_schedule(step, setup.total_steps, setup.lambdas)
            p_s = losses.tempered_probs(logits_s, setup.temperature)
            target = losses.interpolated_target(p_s, target, lam) * kd_mask[..., None]
            metrics["train/lambda"] = lam
        kd = losses.kd_kl(logits_s, target, kd_mask, temperature=setup.temperature)
        metrics["train/kd_kl"] = kd
        total = total + setup.w_kd * kd

    if setup.mappers is not None:
        mapped = setup.mappers.apply({"params": trainable["mappers"]}, out_s, feats)
        for (name, (pred, target)), pair in zip(mapped.items(), setup.mappers.pairs, strict=True):
            if pair.student_site.startswith("encoder/"):
                m = _frame_mask(batch, pred.shape[1])
            else:
                m = masks[list(setup.teachers).index(pair.teacher)]
            value = feature_loss(setup.feature_loss, pred, target, m)
            metrics[f"train/feat/{name}"] = value
            total = total + setup.w_map * setup.teacher_weights[pair.teacher] * value
    metrics["train/loss"] = total
    return total, metrics


def train_step(state, frozen, batch, *, setup: Setup, tx: optax.GradientTransformation):
    """One optimizer update of `state = {"step", "trainable", "opt", "rng"}`."""
    rng, step_rng = jax.random.split(state["rng"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(
        state["trainable"], frozen, batch, step_rng, state["step"], setup=setup
    )
    updates, opt = tx.update(grads, state["opt"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    new_state = {"step": state["step"] + 1, "trainable": trainable, "opt": opt, "rng": rng}
    return new_state, metrics


def eval_step(trainable, frozen, batch, *, setup: Setup):
    """Loss terms on a held-out batch, without dropout."""
    _, metrics = loss_fn(trainable, frozen, batch, None, jnp.int32(setup.total_steps), setup=setup)
    return {k.replace("train/", "eval/"): v for k, v in metrics.items()}
