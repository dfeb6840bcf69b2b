"""Loss terms of distillation: CE, labels, temperature KL, ensemble targets, feature losses.

Everything reduces in float32 and averages over unmasked tokens (or frames) of the whole batch,
not per batch row, so short and long utterances weigh by their token counts (METHOD.md). Masks
are {0, 1} arrays of any dtype; an all-zero mask gives a loss of 0, not NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

# Floor of the geodesic clamp: arccos' is infinite at +-1, so cosines are clipped to
# [-1 + eps, 1 - eps]; identical vectors then give arccos(1 - eps) ~ sqrt(2 eps) and zero gradient.
GEODESIC_EPS = 1e-6
_NORM_EPS = 1e-12
# Logit of ids outside a KD support: exp(floor - max) underflows to exactly 0 in float32.
_LOGIT_FLOOR = -1e30


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `x` over positions where `mask` is 1 (0 when none are)."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# ----- labels and cross-entropy -----


def make_labels(
    prompt_ids: Sequence[int], text_ids_list: Sequence[Sequence[int]], eot: int, pad_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Teacher-forcing inputs, targets and loss mask in Whisper's convention.

    The decoder reads `prompt + text` and predicts the same sequence shifted by one, ending in
    EOT. Prompt positions carry no loss, except the last prompt token, which predicts the first
    text token. EOT stays a target; only real padding is masked. The start token appears once.
    Padding is EOT in inputs and labels (harmless: masked).

    Example with prompt [SOT, NT] and text [a, b]:
      input  [SOT, NT, a, b,   pad]
      labels [NT,  a,  b, EOT, pad]
      mask   [0,   1,  1, 1,   0]

    Args:
      prompt_ids: decoder prompt, e.g. `[sot, notimestamps]`.
      text_ids_list: per utterance, the text token ids (no specials, no EOT).
      eot: end-of-text id.
      pad_len: sequence length S of the outputs.

    Returns:
      `(decoder_input, labels, mask)`, each `[B, S]`; ids int32, mask float32.

    Raises:
      ValueError: if an utterance does not fit in `pad_len`, contains EOT, or the prompt is empty.
    """
    prompt = [int(i) for i in prompt_ids]
    if not prompt:
        raise ValueError("make_labels needs a non-empty prompt (at least the start token)")
    b = len(text_ids_list)
    inputs = np.full((b, pad_len), eot, np.int32)
    labels = np.full((b, pad_len), eot, np.int32)
    mask = np.zeros((b, pad_len), np.float32)
    for row, text in enumerate(text_ids_list):
        text = [int(i) for i in text]
        if eot in text:
            raise ValueError(f"utterance {row}: text ids contain EOT ({eot}): {text}")
        seq = prompt + text + [eot]
        n = len(seq) - 1
        if n > pad_len:
            raise ValueError(
                f"utterance {row}: prompt ({len(prompt)}) + text ({len(text)}) tokens = {n} "
                f"exceed pad_len={pad_len}"
            )
        inputs[row, :n] = seq[:-1]
        labels[row, :n] = seq[1:]
        mask[row, len(prompt) - 1 : n] = 1.0
    return inputs, labels, mask


def token_nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Negative log-likelihood of `labels` [B, S] under `logits` [B, S, V] -> [B, S] float32."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Mean token cross-entropy over unmasked tokens, and the number of those tokens."""
    mask = mask.astype(jnp.float32)
    return masked_mean(token_nll(logits, labels), mask), jnp.sum(mask)


def nll_per_utt(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Summed negative log-likelihood of each utterance's unmasked labels -> [B] (0 for empty rows).

    This is what `ensemble_target(mode="best")` ranks teachers by: the probability each teacher
    gives the whole reference, which is comparable across tokenizers (a mean per token is not:
    a tokenizer that needs more pieces for the same text spreads the same NLL over more tokens).
    """
    return jnp.sum(token_nll(logits, labels) * mask.astype(jnp.float32), axis=-1)


def is_top1(scores: jax.Array, ids: jax.Array) -> jax.Array:
    """bool [B, S]: whether `ids` [B, S] is where `scores` [B, S, V] peaks (a tie for the top
    counts too, unlike `argmax`'s first index).

    A max and a gather rather than `argmax == ids`: XLA:CPU runs a max over 51,864 logits about
    15x faster than an argmax, which had cost the demo's training step a sixth of its time in
    metrics alone (BUILD_NOTES "Profiles of the step and of the decoding loop")."""
    top = jnp.max(scores, axis=-1)
    at = jnp.take_along_axis(scores, ids[..., None].astype(jnp.int32), axis=-1, mode="clip")
    return at[..., 0] >= top


def top1_hits(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Teacher-forced top-1 accuracy on the unmasked labels (0 when none are)."""
    return masked_mean(is_top1(logits, labels).astype(jnp.float32), mask)


# ----- logit distillation -----


def tempered_probs(logits: jax.Array, temperature: float) -> jax.Array:
    """`softmax(logits / T)` in float32."""
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def kd_kl(
    student_logits: jax.Array,
    target_probs: jax.Array,
    mask: jax.Array,
    *,
    temperature: float,
    support: jax.Array | None = None,
    explicit: jax.Array | None = None,
    tail: jax.Array | None = None,
) -> jax.Array:
    """`T^2 * mean over unmasked tokens of KL(target || softmax(student / T))`.

    Args:
      student_logits: [B, S, V].
      target_probs: [B, S, V], already tempered (e.g. `tempered_probs(teacher_logits, T)`). No
        gradient flows into it. A row of zeros (no target) contributes 0.
      mask: [B, S]; 1 where the token has a target.
      temperature: T; the T^2 factor keeps gradient magnitudes comparable across T (Hinton).
      support: optional bool [V] (or broadcastable to [B, S, V]): the student ids the target can
        speak about. The student's distribution is renormalised over them before the KL, so ids
        outside get exactly zero gradient: a teacher that lacks a token neither pushes the
        student's probability of it down nor up (`shared_support`). None: the whole vocabulary.
      explicit, tail: a target known only on some ids (a cached top-k, `densify`): `explicit`
        bool [B, S, V] marks them and `tail` [B, S] is the target's remaining mass. The KL then
        runs over the explicit ids plus one bin holding every other id (of the support), on both
        sides: exact for the coarsened distributions, and the full KL when every id is explicit.
    """
    p = jax.lax.stop_gradient(target_probs.astype(jnp.float32))
    z = student_logits.astype(jnp.float32) / temperature
    if support is not None:
        # A finite floor, not -inf: exp() of it is exactly 0 in float32, and 0 * floor stays 0.
        z = jnp.where(support, z, _LOGIT_FLOOR)
    log_q = jax.nn.log_softmax(z, axis=-1)
    if explicit is None:
        kl = jnp.sum(xlogy(p, p) - p * log_q, axis=-1)  # [B, S]; xlogy makes 0 * log 0 = 0
    else:
        p = jnp.where(explicit, p, 0.0)
        kl = jnp.sum(xlogy(p, p) - p * jnp.where(explicit, log_q, 0.0), axis=-1)
        # The student's tail summed directly (not 1 - sum of the explicit part: no cancellation).
        q_tail = jnp.sum(jnp.where(explicit, 0.0, jnp.exp(log_q)), axis=-1)
        p_tail = jax.lax.stop_gradient(jnp.maximum(tail.astype(jnp.float32), 0.0))
        kl = kl + xlogy(p_tail, p_tail) - p_tail * jnp.log(jnp.maximum(q_tail, 1e-30))
    return temperature**2 * masked_mean(kl, mask)


def densify(ids: jax.Array, values: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """A sparse target `ids`, `values` [B, S, k] as dense `(probs [B, S, V], explicit bool)`.

    Ids must be distinct within a row except where their value is 0 (padding rows).
    """
    b, s, _ = ids.shape
    at = (jnp.arange(b)[:, None, None], jnp.arange(s)[None, :, None], ids)
    probs = jnp.zeros((b, s, vocab_size), jnp.float32).at[at].add(values.astype(jnp.float32))
    explicit = jnp.zeros((b, s, vocab_size), bool).at[at].set(True)
    return probs, explicit


def shared_support(supports: Sequence[jax.Array | np.ndarray | None], vocab_size: int):
    """The student ids every teacher can represent: the AND of their supports -> bool [V], or
    None when every teacher shares the student's vocabulary (plain KL over all ids)."""
    present = [np.asarray(s, bool) for s in supports if s is not None]
    if not present:
        return None
    out = np.ones(vocab_size, bool)
    for s in present:
        if s.shape != (vocab_size,):
            raise ValueError(f"a support must be [{vocab_size}] bool, got {s.shape}")
        out &= s
    return out


def restrict(probs: jax.Array, support) -> jax.Array:
    """Probabilities [..., V] restricted to `support` (bool [V]) and renormalised; zero rows stay
    zero. `support=None` returns `probs` unchanged."""
    if support is None:
        return probs
    p = jnp.where(jnp.asarray(support), probs.astype(jnp.float32), 0.0)
    total = jnp.sum(p, axis=-1, keepdims=True)
    return p / jnp.where(total > 0, total, 1.0)


def _teacher_weights(
    k: int,
    shape: tuple[int, int],
    *,
    mode: str,
    weights: Sequence[float] | None,
    teacher_nll_per_utt,
    masks: Sequence[jax.Array] | None,
) -> jax.Array:
    """Per-position mixing weights [K, B, S]; they sum to 1 wherever some teacher has a target."""
    if mode == "mean":
        w = jnp.ones((k, 1, 1), jnp.float32)
    elif mode == "weights":
        if weights is None or len(weights) != k:
            raise ValueError(f"mode='weights' needs {k} weights, got {weights!r}")
        if any(x < 0 for x in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be >= 0 with a positive sum, got {weights}")
        w = jnp.asarray(weights, jnp.float32)[:, None, None]
    elif mode == "best":
        if teacher_nll_per_utt is None:
            raise ValueError("mode='best' needs teacher_nll_per_utt ([K, B] NLL of the reference)")
        nll = jnp.asarray(jnp.stack(list(teacher_nll_per_utt)), jnp.float32)
        if nll.shape != (k, shape[0]):
            raise ValueError(f"teacher_nll_per_utt must be [{k}, {shape[0]}], got {nll.shape}")
        w = jax.nn.one_hot(jnp.argmin(nll, axis=0), k, dtype=jnp.float32).T[:, :, None]
    else:
        raise ValueError(f"ensemble mode must be 'mean', 'weights' or 'best', got {mode!r}")
    w = jnp.broadcast_to(w, (k, *shape))
    if masks is not None:
        if len(masks) != k:
            raise ValueError(f"got {len(masks)} masks for {k} teachers")
        w = w * jnp.stack([m.astype(jnp.float32) for m in masks])
    return w / jnp.maximum(jnp.sum(w, axis=0, keepdims=True), 1e-30)


def ensemble_target(
    teacher_probs: Sequence[jax.Array],
    *,
    mode: str = "mean",
    weights: Sequence[float] | None = None,
    teacher_nll_per_utt=None,
    masks: Sequence[jax.Array] | None = None,
) -> jax.Array:
    """One target distribution [B, S, V] from K teachers' tempered probabilities.

    Args:
      teacher_probs: K arrays [B, S, V] over the student's vocabulary.
      mode: "mean" (default), "weights" (fixed weights, normalised to sum 1) or "best" (per
        utterance, the teacher with the lowest summed NLL of the reference, see `nll_per_utt`;
        ties go to the first).
      weights: K non-negative floats for mode="weights".
      teacher_nll_per_utt: [K, B] (or K arrays [B]) for mode="best", see `nll_per_utt`.
      masks: optional K arrays [B, S] marking where each teacher has a target (cross-tokenizer
        teachers miss some positions). Weights are renormalised over the teachers present at
        each position; where none is (or, for "best", the chosen one is not), the row is zero.
        Use `ensemble_mask` for the matching loss mask.
    """
    k = len(teacher_probs)
    if k == 0:
        raise ValueError("ensemble_target needs at least one teacher")
    shapes = {tuple(p.shape) for p in teacher_probs}
    if len(shapes) != 1:
        raise ValueError(f"teacher probabilities differ in shape: {sorted(shapes)}")
    w = _teacher_weights(
        k,
        teacher_probs[0].shape[:2],
        mode=mode,
        weights=weights,
        teacher_nll_per_utt=teacher_nll_per_utt,
        masks=masks,
    )
    return jnp.einsum("kbs,kbsv->bsv", w, jnp.stack(teacher_probs).astype(jnp.float32))


def ensemble_mask(
    masks: Sequence[jax.Array],
    *,
    mode: str = "mean",
    weights: Sequence[float] | None = None,
    teacher_nll_per_utt=None,
) -> jax.Array:
    """[B, S] float mask of where `ensemble_target(..., masks=masks)` (same args) has a target."""
    w = _teacher_weights(
        len(masks),
        masks[0].shape,
        mode=mode,
        weights=weights,
        teacher_nll_per_utt=teacher_nll_per_utt,
        masks=masks,
    )
    return (jnp.sum(w, axis=0) > 0.5).astype(jnp.float32)


def interpolated_target(p_student: jax.Array, p_target: jax.Array, lam) -> jax.Array:
    """`(1 - lam) * p_s + lam * p_t`, with no gradient through the student's share."""
    return (1.0 - lam) * jax.lax.stop_gradient(p_student) + lam * p_target


def lambda_schedule(step, total_steps: int, values: Sequence[float] = (0.1, 0.5, 0.9)):
    """Piecewise-constant lambda over `len(values)` equal parts of training (jit-friendly).

    Step s in [0, total_steps) uses `values[s * n // total_steps]`; later steps keep the last.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    n = len(values)
    idx = jnp.clip((jnp.asarray(step, jnp.int32) * n) // total_steps, 0, n - 1)
    return jnp.asarray(values, jnp.float32)[idx]


# ----- feature losses: (pred [B, T, D], target [B, T, D], mask [B, T]) -> scalar -----


def _check_features(pred, target, mask) -> None:
    if pred.shape != target.shape or pred.shape[:-1] != mask.shape:
        raise ValueError(
            f"feature loss needs pred and target [B, T, D] and mask [B, T]; got "
            f"{pred.shape}, {target.shape}, {mask.shape}"
        )


def _cos(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Cosine similarity per position [B, T]; zero vectors count as orthogonal, not NaN."""
    p, t = pred.astype(jnp.float32), target.astype(jnp.float32)
    p = p * jax.lax.rsqrt(jnp.maximum(jnp.sum(p * p, axis=-1, keepdims=True), _NORM_EPS))
    t = t * jax.lax.rsqrt(jnp.maximum(jnp.sum(t * t, axis=-1, keepdims=True), _NORM_EPS))
    return jnp.sum(p * t, axis=-1)


def mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """Squared error, averaged over features and unmasked positions (the paper code's loss)."""
    _check_features(pred, target, mask)
    err = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    return masked_mean(err, mask)


def cosine(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """`1 - cos(pred, target)`, averaged over unmasked positions."""
    _check_features(pred, target, mask)
    return masked_mean(1.0 - _cos(pred, target), mask)


def geodesic(
    pred: jax.Array, target: jax.Array, mask: jax.Array, *, eps: float = GEODESIC_EPS
) -> jax.Array:
    """Great-circle distance on the unit sphere, `arccos(clip(cos, -1+eps, 1-eps))`, averaged.

    Both sides are L2-normalised per position. The clamp keeps the gradient finite (zero) at
    identical or opposite vectors, where arccos' is infinite.
    """
    _check_features(pred, target, mask)
    return masked_mean(jnp.arccos(jnp.clip(_cos(pred, target), -1.0 + eps, 1.0 - eps)), mask)


FEATURE_LOSSES = {"mse": mse, "cosine": cosine, "geodesic": geodesic}
