"""The pure distillation step: `loss_fn`, `train_step`, `eval_step`.

Only `trainable = {"lora", "mappers"}` is differentiated; `frozen = {"teachers", "student"}` is
read under `stop_gradient` and never donated. Every teacher runs once per step, or, with a
teacher-output cache (`Setup.cache`, see teacher_cache.py), not at all: the batch then carries
each teacher's top-k target and features, and, with a frozen student encoder, the student's
encoder output, so the step runs only the student decoder. Everything static (models, layer map,
vocabulary maps, loss weights) lives in a `Setup` bound with `functools.partial`, so nothing
jitted reads flags, globals or files.

Loss: `w_ce * CE + w_kd * T^2 KL(target || student) + sum_pairs w_map * w_teacher * L_map`.
Across tokenizers the KL runs over the student ids every teacher can represent, with the student
renormalised over them as well (`kd_support="shared"`, see token_align.py).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mkd_jax import kd_targets, lora, losses
from mkd_jax.data import token_align
from mkd_jax.mappers import Mappers, feature_loss
from mkd_jax.models.whisper import Whisper
from mkd_jax.teacher_cache import entry_layer


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
    # Weights in the order of `teachers` (the config gives them by name).
    ensemble_weights: tuple[float, ...] = ()
    kd_support: str = "shared"
    interpolate: bool = False
    lambdas: tuple[float, ...] = (0.1, 0.5, 0.9)
    # KD only where a teacher's top-1 is the label (`loss.teacher_right_only`).
    teacher_right_only: bool = False
    total_steps: int = 1
    # What the batch carries from the teacher-output cache (teacher_cache.CacheSpec), or None.
    cache: object | None = None
    # The student's training forward: LoRA as adapters beside the frozen kernels (the default;
    # cheaper gradients) or merged into them (round 1's way, kept for `bench distill`).
    lora_merged: bool = False
    # Mel frames the teachers read (the head of the batch's mel), 0 for all of them.
    teacher_frames: int = 0
    # Teacher -> an earlier teacher with the same encoder, definition and weights (a variant
    # tuned with decoder LoRA, as the demo's base_ft): its encoder runs once (`state.py`).
    shared_encoder: dict[str, str] = dataclasses.field(default_factory=dict)


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


def _teacher_mask(name, batch, setup: Setup) -> jax.Array:
    """[B, S] where teacher `name` has a target: the student mask, across tokenizers only at
    student positions aligned to a teacher row."""
    if setup.vocab_index[name] is None:
        return batch["mask"]
    return batch["mask"] * (batch[f"t:{name}/rows"] >= 0).astype(jnp.float32)


def _teacher_mel(batch, setup: Setup) -> jax.Array:
    return batch["mel"][..., : setup.teacher_frames] if setup.teacher_frames else batch["mel"]


def _encode_teacher(model, params, batch, setup: Setup) -> tuple[jax.Array, dict]:
    """A teacher's encoder output and its encoder sites, constant for the step."""
    enc = model.apply({"params": params}, _teacher_mel(batch, setup), method=Whisper.encode)
    return jax.lax.stop_gradient(enc)


def _teacher(name, model, params, batch, setup: Setup, v_s: int, encoded) -> dict:
    """One teacher's tempered target on student positions and what goes with it.

    Keys: `probs` [B, S, V_s], `mask` [B, S] (where it has a target), `feats` (its sites, decoder
    sites gathered onto student positions), `nll` [B] (summed NLL of its own reference tokens),
    `support` (bool [V_s] of student ids it can represent, None for the student's vocabulary),
    `acc` (its teacher-forced top-1 accuracy on its own labels; `hits` and `count` [B] per
    utterance, for the cache) and, across tokenizers,
    `dropped` (the tempered mass on tokens without a student counterpart, mean over aligned rows)
    and `kept` [B, S] (per position, the mass that had a counterpart).

    `encoded`: `_encode_teacher`'s output for this teacher's encoder.
    """
    cross = setup.vocab_index[name] is not None
    prefix = f"t:{name}/" if cross else ""
    enc, enc_out = encoded
    logits_t, dec_out = model.apply(
        {"params": params}, enc, batch[prefix + "decoder_input"], method=Whisper.decode_forced
    )
    logits_t, out_t = jax.lax.stop_gradient((logits_t, {**enc_out, **dec_out}))
    labels_t, mask_t = batch[prefix + "labels"], batch[prefix + "mask"]
    hit = losses.is_top1(logits_t, labels_t).astype(jnp.float32) * mask_t
    res = {
        "nll": losses.nll_per_utt(logits_t, labels_t, mask_t),
        "hits": jnp.sum(hit, axis=-1),  # [B] per utterance, so a cache can store them
        "count": jnp.sum(mask_t.astype(jnp.float32), axis=-1),
    }
    res["acc"] = jnp.sum(res["hits"]) / jnp.maximum(jnp.sum(res["count"]), 1.0)
    mask = batch["mask"]
    if not cross:
        probs = losses.tempered_probs(logits_t, setup.temperature)
        return dict(res, probs=probs, mask=mask, feats=out_t, support=None)
    rows = batch[f"t:{name}/rows"]  # [B, S_s] teacher row predicting the aligned token, or -1
    aligned = (rows >= 0).astype(jnp.float32)
    p_t = losses.tempered_probs(kd_targets.gather_rows(logits_t, rows), setup.temperature)
    p_t, kept = kd_targets.map_teacher_probs(
        p_t * aligned[..., None],
        setup.vocab_maps[name],
        v_s,
        index=setup.vocab_index[name],
        return_kept=True,
    )
    feats = {
        k: kd_targets.gather_rows(v, rows) if k.startswith("decoder/") else v
        for k, v in out_t.items()
    }
    m = _teacher_mask(name, batch, setup)
    support = token_align.student_support(
        setup.vocab_maps[name], v_s, index=setup.vocab_index[name]
    )
    dropped = jnp.sum((1.0 - kept) * m) / jnp.maximum(jnp.sum(m), 1.0)
    return dict(res, probs=p_t, mask=m, feats=feats, support=support, dropped=dropped, kept=kept)


def teacher_outputs(frozen, batch, setup: Setup, encoded=None) -> dict[str, dict]:
    """Every teacher's `_teacher` dict, its target restricted to the KD support (see `loss_fn`).

    This is what the teacher-output cache stores (top-k of `probs`), so the cached and the
    uncached step share one definition of the target. `encoded`: teacher -> its encoder's output
    [B, T, D], given instead of run (the cache copies it from where that model was the student);
    its encoder sites are then not available.
    """
    v_s = setup.student.vocab_size
    ts = {}
    encoded = {name: (enc, {}) for name, enc in (encoded or {}).items()}
    for name, model in setup.teachers.items():
        source = setup.shared_encoder.get(name, name)  # teachers sharing an encoder run it once
        if source not in encoded:
            params = frozen["teachers"][source]
            encoded[source] = _encode_teacher(setup.teachers[source], params, batch, setup)
        params = frozen["teachers"][name]
        ts[name] = _teacher(name, model, params, batch, setup, v_s, encoded[source])
    support = kd_support(ts, setup)
    for t in ts.values():
        t["probs"] = losses.restrict(t["probs"], support)
        t["top1"] = jnp.argmax(t["probs"], axis=-1)  # the target's top id (`cached_teachers`)
    return ts


def kd_support(ts: dict, setup: Setup):
    """ "shared": the student ids every teacher can represent (bool [V_s]), or None for the whole
    vocabulary; "student": None. See `loss_fn`."""
    if setup.kd_support != "shared":
        return None
    return losses.shared_support([t["support"] for t in ts.values()], setup.student.vocab_size)


def cached_teachers(batch, setup: Setup) -> dict[str, dict]:
    """The `teacher_outputs` dicts rebuilt from a cached batch (teacher_cache.py): each target is
    dense again, its explicit (top-k) ids marked in `explicit` and the rest in `tail` mass."""
    spec, v_s = setup.cache, setup.student.vocab_size
    ts = {}
    for name in setup.teachers:
        c = f"c:{name}/"
        probs, explicit = losses.densify(batch[c + "ids"], batch[c + "p"], v_s)
        m = _teacher_mask(name, batch, setup)
        cross = setup.vocab_index[name] is not None
        t = {
            "probs": probs,
            "explicit": explicit,
            "tail": batch[c + "tail"],
            "mask": m,
            "nll": batch[c + "nll"],
            "hits": batch[c + "hits"],
            "count": batch[c + "count"],
            "acc": jnp.sum(batch[c + "hits"]) / jnp.maximum(jnp.sum(batch[c + "count"]), 1.0),
            # The target's top id, from its k cached ids (`probs` peaks there too).
            "top1": jnp.take_along_axis(
                batch[c + "ids"], jnp.argmax(batch[c + "p"], axis=-1)[..., None], axis=-1
            )[..., 0],
            "feats": {site: batch[c + site].astype(jnp.float32) for site in spec.sites[name]},
            "support": (
                token_align.student_support(
                    setup.vocab_maps[name], v_s, index=setup.vocab_index[name]
                )
                if cross
                else None
            ),
        }
        if cross:
            t["dropped"] = jnp.sum((1.0 - batch[c + "kept"]) * m) / jnp.maximum(jnp.sum(m), 1.0)
        ts[name] = t
    return ts


def _student_forward(params_s, batch, setup: Setup):
    """The student's `(logits, out)`: the whole model; or, with a cached frozen encoder, only
    the decoder on the cached encoder output; or, with LoRA from encoder layer k up, layers k..
    and the decoder on the cached output of layer k-1. The cached sites join `out`."""
    spec = setup.cache
    if spec is None or not spec.student_sites:
        return setup.student.apply({"params": params_s}, batch["mel"], batch["decoder_input"])
    entry = batch[f"c:student/{spec.student_sites[0]}"]
    start = entry_layer(spec)
    if start is None:
        logits, out = setup.student.apply(
            {"params": params_s}, entry, batch["decoder_input"], method=Whisper.decode_forced
        )
    else:
        logits, out = setup.student.apply(
            {"params": params_s},
            entry,
            batch["decoder_input"],
            start=start,
            method=Whisper.forward_from,
        )
    enc = {site: batch[f"c:student/{site}"] for site in spec.student_sites}
    return logits, {**enc, **out}


def _student(trainable, frozen, batch, setup: Setup, rng):
    """The student's `(logits, out)` with its LoRA (dropout only when `rng` is given)."""
    if setup.lora_merged or not trainable["lora"]:
        return _student_forward(merged_student(trainable, frozen, setup, rng), batch, setup)
    adapter = lora.adapter(
        trainable["lora"],
        alpha=setup.lora_alpha,
        rank=setup.lora_rank,
        dropout_rng=rng,
        dropout=setup.lora_dropout if rng is not None else 0.0,
    )
    with nn.intercept_methods(adapter):
        return _student_forward(frozen["student"], batch, setup)


def loss_fn(trainable, frozen, batch, rng, step, *, setup: Setup):
    """Total loss and metrics. Differentiate with respect to `trainable` only."""
    logits_s, out_s = _student(trainable, frozen, batch, setup, rng)
    mask = batch["mask"]
    ce, n_tok = losses.cross_entropy(logits_s, batch["labels"], mask)
    metrics = {
        "train/ce": ce,
        "train/tokens": n_tok,
        "train/acc/student": losses.top1_hits(logits_s, batch["labels"], mask),
    }
    total = setup.w_ce * ce

    # "shared": KL over the student ids every teacher can represent, the student renormalised
    # over them too; "student": the teacher's mapped target against the student's full vocabulary
    # (ids a teacher lacks get zero target mass, so the KL pushes them down).
    ts = cached_teachers(batch, setup) if setup.cache else teacher_outputs(frozen, batch, setup)
    support = kd_support(ts, setup)
    p_s1 = jax.nn.softmax(logits_s.astype(jnp.float32), axis=-1)
    feats = {}
    for name, t in ts.items():
        feats[name] = t["feats"]
        m_t = t["mask"]
        agree = losses.is_top1(logits_s, t["top1"]).astype(jnp.float32)
        metrics[f"train/agree/{name}"] = jnp.sum(agree * m_t) / jnp.maximum(jnp.sum(m_t), 1.0)
        metrics[f"train/coverage/{name}"] = jnp.sum(m_t) / jnp.maximum(jnp.sum(mask), 1.0)
        metrics[f"train/acc/{name}"] = t["acc"]
        if t["support"] is not None:
            off = jnp.sum(jnp.where(jnp.asarray(t["support"]), 0.0, p_s1), axis=-1)
            metrics[f"train/kd/dropped_mass/{name}"] = t["dropped"]
            metrics[f"train/kd/student_off_support/{name}"] = losses.masked_mean(off, mask)

    if ts and setup.w_kd > 0:
        probs = [t["probs"] for t in ts.values()]
        masks = [t["mask"] for t in ts.values()]
        if setup.teacher_right_only:
            right = [(t["top1"] == batch["labels"]).astype(jnp.float32) for t in ts.values()]
            masks = [m * r for m, r in zip(masks, right, strict=True)]
        kw = dict(
            mode=setup.ensemble,
            weights=setup.ensemble_weights or None,
            teacher_nll_per_utt=(
                jnp.stack([t["nll"] for t in ts.values()]) if setup.ensemble == "best" else None
            ),
        )
        target = losses.ensemble_target(probs, masks=masks, **kw)
        kd_mask = losses.ensemble_mask(masks, **kw)
        if setup.teacher_right_only:  # the share of label positions that keep a KD target
            metrics["train/kd/coverage"] = jnp.sum(kd_mask) / jnp.maximum(jnp.sum(mask), 1.0)
        # From the cache, each target is explicit on its top-k ids and keeps the rest of its mass
        # as one tail bin; the ensemble's explicit ids are the union, its tail the mixed tails.
        explicit = tail = None
        if setup.cache:
            explicit = functools.reduce(jnp.logical_or, [t["explicit"] for t in ts.values()])
            tails = [t["tail"][..., None] for t in ts.values()]
            tail = losses.ensemble_target(tails, masks=masks, **kw)[..., 0]
        metrics["train/acc/target"] = losses.top1_hits(target, batch["labels"], kd_mask)
        if setup.interpolate:
            lam = losses.lambda_schedule(step, setup.total_steps, setup.lambdas)
            p_s = losses.restrict(losses.tempered_probs(logits_s, setup.temperature), support)
            if explicit is not None:
                p_s_tail = jnp.sum(jnp.where(explicit, 0.0, jax.lax.stop_gradient(p_s)), axis=-1)
                tail = losses.interpolated_target(p_s_tail, tail, lam) * kd_mask
                p_s = jnp.where(explicit, p_s, 0.0)
            target = losses.interpolated_target(p_s, target, lam) * kd_mask[..., None]
            metrics["train/lambda"] = lam
        kd = losses.kd_kl(
            logits_s,
            target,
            kd_mask,
            temperature=setup.temperature,
            support=support,
            explicit=explicit,
            tail=tail,
        )
        metrics["train/kd_kl"] = kd
        total = total + setup.w_kd * kd

    if setup.mappers is not None:
        mapped = setup.mappers.apply({"params": trainable["mappers"]}, out_s, feats)
        for (name, (pred, target)), pair in zip(mapped.items(), setup.mappers.pairs, strict=True):
            if pair.student_site.startswith("encoder/"):
                m = _frame_mask(batch, pred.shape[1])
            else:
                m = ts[pair.teacher]["mask"]
            value = feature_loss(setup.feature_loss, pred, target, m)
            metrics[f"train/feat/{name}"] = value
            total = total + setup.w_map * setup.teacher_weights[pair.teacher] * value
    metrics["train/loss"] = total
    return total, metrics


def train_step(state, frozen, batch, *, setup: Setup, tx: optax.GradientTransformation):
    """One optimizer update of `state = {"step", "trainable", "opt", "rng"}`.

    A step whose loss, any loss term or gradient norm is not finite is not applied: trainables
    and optimizer state stay as they were (the step counter and RNG still advance), and
    `train/finite` is 0 so the loop can stop and name the terms. The state never turns NaN.
    """
    rng, step_rng = jax.random.split(state["rng"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(
        state["trainable"], frozen, batch, step_rng, state["step"], setup=setup
    )
    metrics["train/grad_norm"] = optax.tree.norm(grads)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in metrics.values()]))
    updates, opt = tx.update(grads, state["opt"], state["trainable"])
    trainable = optax.apply_updates(state["trainable"], updates)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    trainable, opt = keep(trainable, state["trainable"]), keep(opt, state["opt"])
    metrics["train/finite"] = finite.astype(jnp.float32)
    new_state = {"step": state["step"] + 1, "trainable": trainable, "opt": opt, "rng": rng}
    return new_state, metrics


def nonfinite_terms(metrics: dict) -> list[str]:
    """Names of the metrics of one step that are not finite (host side)."""
    return sorted(k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v))))


def eval_step(trainable, frozen, batch, *, setup: Setup):
    """Loss terms on a held-out batch, without dropout."""
    _, metrics = loss_fn(trainable, frozen, batch, None, jnp.int32(setup.total_steps), setup=setup)
    return {k.replace("train/", "eval/"): v for k, v in metrics.items()}
