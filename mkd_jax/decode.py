"""Jitted, batched decoding with a KV cache and static shapes: greedy and beam search.

Both share one recipe: encode once, project cross-attention keys and values once, prefill the
prompt (start-of-transcript, language, task, no-timestamps) in one step, then extend one token per
step inside `lax.while_loop`, which stops early once every row has emitted end-of-text. Shapes
depend only on (batch, frames, prompt length, max_new_tokens, beam size), so a corpus compiles once
per bucket. The suppress lists of the checkpoint's generation config are applied at every step, and
the begin-suppress list at the first generated step, as Whisper's reference decoder does.

With `DecodeSpec.timestamps` the prompt has no `<|notimestamps|>` and Whisper's timestamp rules
constrain every step (`timestamp_rules`, in transformers' order: begin-suppress, suppress, then the
timestamp rules): timestamps come in pairs except right before end-of-text, never decrease, the
first token is a timestamp no later than `max_initial_timestamp` steps of 0.02 s, and a timestamp
is forced whenever the timestamps' total probability beats every text token's.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mkd_jax.config_base import MATMUL_DTYPE_NAMES
from mkd_jax.models import hf_io
from mkd_jax.models.whisper import Whisper

NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static decoding settings (hashable, so they can be bound into a jitted function)."""

    prompt: tuple[int, ...]
    eot: int
    max_new_tokens: int = 128
    suppress: tuple[int, ...] = ()
    begin_suppress: tuple[int, ...] = ()
    beam_size: int = 1
    length_penalty: float = 1.0
    timestamps: bool = False
    no_timestamps: int = -1  # id of <|notimestamps|>; <|0.00|> is the next id
    max_initial_timestamp: int = 50  # latest first timestamp, in 0.02 s steps (1.0 s)

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1


def spec_from_folder(
    folder, tokenizer, *, max_new_tokens=128, beam_size=1, language="en", timestamps=False
):
    """DecodeSpec from a checkpoint folder's `generation_config.json` and its tokenizer.

    Without that file (or without its suppress keys) the tokenizer family's standard Whisper
    suppress lists are used, with a warning (`hf_io.suppress_lists`).

    Raises:
      ValueError: a malformed `generation_config.json`, naming the file and the key; a language
        the vocabulary cannot prompt (any but "en" for an English-only one).
    """
    suppress, begin_suppress = hf_io.suppress_lists(folder, tokenizer.model_vocab_size)
    # An English-only vocabulary refuses any language but "en" (never silently English).
    prompt = tokenizer.prompt_ids(language=language, timestamps=timestamps)
    return DecodeSpec(
        prompt=tuple(int(t) for t in prompt),
        eot=int(tokenizer.eot),
        max_new_tokens=max_new_tokens,
        suppress=tuple(int(t) for t in suppress),
        begin_suppress=tuple(int(t) for t in begin_suppress),
        beam_size=beam_size,
        timestamps=timestamps,
        no_timestamps=int(tokenizer.no_timestamps),
        max_initial_timestamp=hf_io.max_initial_timestamp(folder),
    )


MATMUL_DTYPES = dict(zip(MATMUL_DTYPE_NAMES, (None, jnp.bfloat16), strict=True))


def with_matmul_dtype(model: Whisper, name: str) -> Whisper:
    """`model` whose matmuls take `name` operands ("float32": as loaded; "bfloat16": every dense
    layer, attention product and the output layer rounds its operands to bfloat16 and accumulates
    in float32, about 1.3x faster decoding on a CPU with AVX512-BF16, BUILD_NOTES "Matmul inputs
    in bfloat16"). Raises ValueError naming an unknown value."""
    if name not in MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype={name!r}: choose one of {', '.join(MATMUL_DTYPES)}")
    if name == "bfloat16":
        _warn_without_bf16_units()
    return model.clone(matmul_dtype=MATMUL_DTYPES[name])


@functools.cache
def _warn_without_bf16_units() -> None:
    """One warning per process where bfloat16 operands likely run slower than float32: a CPU
    backend whose processor lists neither AVX512-BF16 nor AMX-BF16 (Linux's /proc/cpuinfo)."""
    if jax.default_backend() != "cpu":
        return
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        from absl import logging

        logging.warning(
            "matmul_dtype=bfloat16 on a CPU without AVX512-BF16 or AMX: likely slower than "
            "float32 here; drop --matmul_dtype=bfloat16"
        )


def _id_mask(vocab: int, ids: tuple[int, ...]) -> jax.Array:
    mask = np.zeros(vocab, bool)
    mask[[i for i in ids if i < vocab]] = True
    return jnp.asarray(mask)


def encode(params, mel, *, model: Whisper) -> jax.Array:
    """The encoder's output `[B, F/2, D]` of log-mel `[B, n_mels, F]`."""
    return model.apply({"params": params}, mel, method=Whisper.encode)[0]


def _start(model: Whisper, params, x, spec: DecodeSpec, copies: int, encoded: bool = False):
    """Encode (unless `encoded`: `x` is already the encoder's output), project cross K/V,
    allocate the cache and prefill the prompt for `copies` per row."""
    variables = {"params": params}
    enc = x if encoded else encode(params, x, model=model)
    if copies > 1:
        enc = jnp.repeat(enc, copies, axis=0)
    rows = enc.shape[0]
    cross = model.apply(variables, enc, method=Whisper.cross_kv)
    prompt = jnp.broadcast_to(jnp.asarray(spec.prompt, jnp.int32), (rows, len(spec.prompt)))
    cache = model.init_cache(rows, len(spec.prompt) + spec.max_new_tokens)
    logits, cache = model.apply(variables, prompt, cross, cache, 0, method=Whisper.decode_step)
    return cross, cache, logits[:, -1], logits[:, 0]


def no_speech_prob(first_logits, spec: DecodeSpec) -> jax.Array:
    """Probability of the no-speech token right after <|startoftranscript|> (the prompt's first
    position), Whisper's measure of a window without speech; its id is just before
    <|notimestamps|>. `first_logits` [R, V]."""
    probs = jax.nn.softmax(first_logits.astype(jnp.float32), axis=-1)
    return probs[:, spec.no_timestamps - 1]


def timestamp_rules(logits, tokens, step, spec: DecodeSpec):
    """Whisper's timestamp constraints on next-token logits `[R, V]`.

    Args:
      tokens: `[R, N]` tokens generated so far; only the first `step` columns are read.
      step: index of the token being chosen (0 = the first after the prompt).

    Returns:
      The logits with forbidden ids set to NEG_INF.
    """
    vocab = logits.shape[-1]
    ids = jnp.arange(vocab)
    tb, eot = spec.timestamp_begin, spec.eot
    is_ts = ids >= tb
    n = tokens.shape[1]
    pos = jnp.arange(n)
    seen = pos[None, :] < step
    prev = lambda k: jnp.take(tokens, jnp.clip(step - k, 0, n - 1), axis=1)  # noqa: E731
    last_ts = (step >= 1) & (prev(1) >= tb)
    penult_ts = (step < 2) | (prev(2) >= tb)
    ban = (ids == spec.no_timestamps)[None, :]
    ban = ban | ((last_ts & penult_ts)[:, None] & is_ts[None, :])  # a pair closed: text next
    ban = ban | ((last_ts & ~penult_ts)[:, None] & (ids < eot)[None, :])  # an open one: close it
    ts_seen = jnp.where(seen & (tokens >= tb), tokens, -1).max(axis=1)  # they never decrease
    floor = jnp.where(ts_seen < 0, tb, jnp.where(last_ts & ~penult_ts, ts_seen, ts_seen + 1))
    ban = ban | (is_ts[None, :] & (ids[None, :] < floor[:, None]))
    first = (ids < tb) | (ids > tb + spec.max_initial_timestamp)
    ban = ban | ((step == 0) & first)[None, :]
    logits = jnp.where(ban, NEG_INF, logits)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ts_mass = jax.nn.logsumexp(jnp.where(is_ts, logp, -jnp.inf), axis=-1)
    best_text = jnp.where(is_ts, -jnp.inf, logp).max(axis=-1)
    force = (ts_mass > best_text)[:, None] & ~is_ts[None, :]
    return jnp.where(force, NEG_INF, logits)


def _masked_logprobs(logits, step, spec: DecodeSpec, vocab: int, tokens=None):
    begin = _id_mask(vocab, spec.begin_suppress) & (step == 0)
    logits = jnp.where(begin, NEG_INF, logits)
    logits = jnp.where(_id_mask(vocab, spec.suppress), NEG_INF, logits)
    if spec.timestamps:
        logits = timestamp_rules(logits, tokens, step, spec)
    return jax.nn.log_softmax(logits, axis=-1)


def greedy(
    params, mel, *, model: Whisper, spec: DecodeSpec, encoded: bool = False, scores: bool = False
):
    """Greedy decoding of log-mel `mel` (with `encoded`: of the encoder's output). Returns new
    tokens [B, max_new_tokens], padded with EOT after EOT; with `scores`, `(tokens, no_speech,
    avg_logprob)`: `no_speech_prob` and the mean log-probability (after the suppress and timestamp
    rules) of the chosen tokens up to and including the first EOT."""
    cross, cache, last, first = _start(model, params, mel, spec, 1, encoded)
    rows, p = mel.shape[0], len(spec.prompt)
    tokens = jnp.full((rows, spec.max_new_tokens), spec.eot, jnp.int32)

    def cond(state):
        i, _, _, _, done, _ = state
        return (i < spec.max_new_tokens) & ~jnp.all(done)

    def body(state):
        i, last, cache, tokens, done, sum_lp = state
        logp = _masked_logprobs(last, i, spec, model.vocab_size, tokens)
        tok = jnp.argmax(logp, axis=-1)
        chosen = jnp.take_along_axis(logp, tok[:, None], axis=1)[:, 0]
        sum_lp = sum_lp + jnp.where(done, 0.0, chosen)
        tok = jnp.where(done, spec.eot, tok).astype(jnp.int32)
        tokens = tokens.at[:, i].set(tok)
        logits, cache = model.apply(
            {"params": params}, tok[:, None], cross, cache, p + i, method=Whisper.decode_step
        )
        return i + 1, logits[:, 0], cache, tokens, done | (tok == spec.eot), sum_lp

    zeros = jnp.zeros((rows,), jnp.float32)
    state = (jnp.int32(0), last, cache, tokens, jnp.zeros((rows,), bool), zeros)
    final = jax.lax.while_loop(cond, body, state)
    tokens, sum_lp = final[3], final[5]
    if not scores:
        return tokens
    return tokens, no_speech_prob(first, spec), sum_lp / _generated_len(tokens, spec.eot)


def _generated_len(tokens, eot: int) -> jax.Array:
    """Tokens up to and including the first EOT, as float. A row that hit the token limit
    without EOT counts its tokens (transformers' convention; openai-whisper adds one)."""
    is_eot = tokens == eot
    first = jnp.where(is_eot.any(axis=1), jnp.argmax(is_eot, axis=1) + 1, tokens.shape[1])
    return first.astype(jnp.float32)


def _beam_core(b: int, spec: DecodeSpec, vocab: int, last, caches, logprobs, extend):
    """Beam search over `b` rows of `spec.beam_size` beams each, whatever computes the scores.

    Args:
      last: next-token inputs of the `b * K` beams after the prompt (whatever `logprobs` reads).
      caches: a pytree of per-beam decoder state, leading axis `b * K`.
      logprobs: `(last, step, tokens [b * K, N]) -> [b * K, vocab]` log-probabilities.
      extend: `(caches, tokens [b * K], step) -> (last, caches)`, feeding the chosen tokens.

    A finished hypothesis is scored `sum_logprob / generated_len ** length_penalty`. Each step keeps
    the best `K` unfinished beams among `2K` candidates, so finishing never starves the live set.
    A row stops once its worst kept finished score beats the best live beam's at the current length.
    """
    k, n, v = spec.beam_size, spec.max_new_tokens, vocab

    def length_norm(logp, length):
        return logp / jnp.asarray(length, jnp.float32) ** spec.length_penalty

    def cond(state):
        i, _, _, _, _, _, _, done = state
        return (i < n) & ~jnp.all(done)

    def body(state):
        i, last, caches, seqs, logp, fin_seqs, fin_score, done = state
        lp = logprobs(last, i, seqs.reshape(b * k, n)).reshape(b, k, v)
        cand = (logp[:, :, None] + lp).reshape(b, k * v)
        top_lp, top_idx = jax.lax.top_k(cand, 2 * k)  # [B, 2K]
        beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        cand_seqs = jnp.take_along_axis(seqs, beam[:, :, None], axis=1).at[:, :, i].set(tok)
        is_eot = tok == spec.eot
        # Finished pool: old finished plus candidates that just emitted EOT.
        new_fin = jnp.where(is_eot & ~done[:, None], length_norm(top_lp, i + 1), NEG_INF)
        pool_score = jnp.concatenate([fin_score, new_fin], axis=1)
        pool_seqs = jnp.concatenate([fin_seqs, cand_seqs], axis=1)
        fin_score, keep = jax.lax.top_k(pool_score, k)
        fin_seqs = jnp.take_along_axis(pool_seqs, keep[:, :, None], axis=1)
        # Live beams: best K candidates that did not end.
        live_lp, keep = jax.lax.top_k(jnp.where(is_eot, NEG_INF, top_lp), k)
        seqs = jnp.take_along_axis(cand_seqs, keep[:, :, None], axis=1)
        src = jnp.take_along_axis(beam, keep, axis=1)  # [B, K] parent beam of each live beam
        flat_src = (jnp.arange(b)[:, None] * k + src).reshape(-1)
        caches = jax.tree.map(lambda c: c[flat_src], caches)
        step_tok = jnp.take_along_axis(tok, keep, axis=1).reshape(-1)
        last, caches = extend(caches, step_tok, i)
        best_live = length_norm(live_lp[:, 0], i + 1)
        done = done | (fin_score[:, -1] > NEG_INF / 2) & (fin_score[:, -1] >= best_live)
        return i + 1, last, caches, seqs, live_lp, fin_seqs, fin_score, done

    seqs = jnp.full((b, k, n), spec.eot, jnp.int32)
    logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
    state = (
        jnp.int32(0),
        last,
        caches,
        seqs,
        logp,
        seqs,
        jnp.full((b, k), NEG_INF),
        jnp.zeros(b, bool),
    )
    i, _, _, seqs, logp, fin_seqs, fin_score, done = jax.lax.while_loop(cond, body, state)
    # Live beams compete with finished ones at their current length (they hit the token limit).
    live_score = jnp.where(done[:, None], NEG_INF, length_norm(logp, jnp.maximum(i, 1)))
    pool_score = jnp.concatenate([fin_score, live_score], axis=1)
    pool_seqs = jnp.concatenate([fin_seqs, seqs], axis=1)
    best = jnp.argmax(pool_score, axis=1)
    seqs = jnp.take_along_axis(pool_seqs, best[:, None, None], axis=1)[:, 0]
    return seqs, jnp.take_along_axis(pool_score, best[:, None], axis=1)[:, 0]


def beam_search(
    params, mel, *, model: Whisper, spec: DecodeSpec, encoded: bool = False, scores: bool = False
):
    """Beam search with `spec.beam_size` beams (`_beam_core`), from log-mel or (`encoded`) the
    encoder's output. Returns the best hypothesis [B, max_new_tokens]; with `scores`, also
    `no_speech_prob` and its mean log-probability per token, EOT included (as `greedy`)."""
    p, v = len(spec.prompt), model.vocab_size
    cross, cache, last, first = _start(model, params, mel, spec, spec.beam_size, encoded)

    def logprobs(last, i, tokens):
        return _masked_logprobs(last, i, spec, v, tokens)

    def extend(cache, tok, i):
        logits, cache = model.apply(
            {"params": params}, tok[:, None], cross, cache, p + i, method=Whisper.decode_step
        )
        return logits[:, 0], cache

    seqs, score = _beam_core(mel.shape[0], spec, v, last, cache, logprobs, extend)
    if not scores:
        return seqs
    length = _generated_len(seqs, spec.eot)
    avg = score * length**spec.length_penalty / length  # the score is sum / length ** penalty
    return seqs, no_speech_prob(first[:: spec.beam_size], spec), avg


@functools.lru_cache(maxsize=8)
def make_encode_fn(model: Whisper):
    """A jitted `fn(params, mel) -> encoder output [B, F/2, D]`, one per model per process."""
    return jax.jit(functools.partial(encode, model=model))


@functools.lru_cache(maxsize=64)
def make_generate_fn(model: Whisper, spec: DecodeSpec, encoded: bool = False, scores=False):
    """A jitted `fn(params, mel) -> tokens [B, max_new_tokens]` for the spec's beam size; with
    `encoded`, `fn(params, enc)` decodes from the encoder's output (`make_encode_fn`); with
    `scores`, it returns `(tokens, no_speech_prob [B], avg_logprob [B])` (see `greedy`).

    One function per (model, spec) for the whole process: every WER pass of a run (before,
    during and after training, every split) reuses its traces instead of re-tracing.
    """
    if spec.max_new_tokens + len(spec.prompt) > model.max_target_positions:
        raise ValueError(
            f"prompt ({len(spec.prompt)}) + max_new_tokens ({spec.max_new_tokens}) exceeds the "
            f"decoder's {model.max_target_positions} positions"
        )
    if scores and spec.no_timestamps < 0:
        raise ValueError("scores need the no-speech id: build the spec with spec_from_folder")
    step = greedy if spec.beam_size == 1 else beam_search
    return jax.jit(functools.partial(step, model=model, spec=spec, encoded=encoded, scores=scores))


# ----- ensemble decoding across tokenizers -----
#
# Rule: member 0's vocabulary is the decoding vocabulary, and the ensemble only emits a token that
# every member can represent (its bytes are one token in each member's vocabulary, by
# `token_align.vocab_map`: text by bytes, specials by name, timestamps by offset) and that no
# member suppresses. Such a token maps to exactly one id in each member, which is fed back to that
# member, so every member extends its own token history in its own ids with its own KV cache. At
# each step each member's next-token distribution is renormalised over those allowed tokens, the
# distributions are averaged with the ensemble weights, and the argmax is taken.


def ensemble_index(tokenizers, models) -> tuple[np.ndarray, ...]:
    """Per member, decoding id (member 0's vocabulary) -> the member's id or -1, each `[V_0]`.

    Raises:
      ValueError: if a tokenizer does not fit its model's logits.
    """
    from mkd_jax.data import token_align

    if len(tokenizers) != len(models) or not models:
        raise ValueError(f"{len(tokenizers)} tokenizers for {len(models)} ensemble members")
    for k, (tok, model) in enumerate(zip(tokenizers, models, strict=True)):
        if tok.model_vocab_size != model.vocab_size:
            raise ValueError(
                f"ensemble member {k}: tokenizer has {tok.model_vocab_size} ids, the model "
                f"{model.vocab_size} logits"
            )
    v = models[0].vocab_size
    return tuple(
        token_align.student_index(token_align.vocab_map(tok, tokenizers[0]), v)
        for tok in tokenizers
    )


def ensemble_allowed(index, specs, models) -> tuple[np.ndarray, np.ndarray]:
    """`(allowed, allowed at the first step)` over the decoding vocabulary, each `[V_0]` bool.

    Allowed: every member can represent the token and no member's suppress list (begin-suppress
    list too at the first step) holds it.
    """
    allowed = np.all([ix >= 0 for ix in index], axis=0)
    first = allowed.copy()
    for ix, spec, model in zip(index, specs, models, strict=True):
        for ids, mask in ((spec.suppress, allowed), (spec.begin_suppress, first)):
            member = np.zeros(model.vocab_size, bool)
            member[[i for i in ids if i < model.vocab_size]] = True
            banned = (ix >= 0) & member[np.maximum(ix, 0)]
            mask &= ~banned
    first &= allowed
    return allowed, first


def _ensemble_parts(params, mels, weights, models, specs, index, copies: int, encoded: bool):
    """Shared by greedy and beam ensemble decoding: `(lasts, caches, mean_probs, extend)`.
    With `encoded`, `mels` are the members' encoder outputs (`make_encode_fn`).

    `mean_probs(lasts, step) -> [R, V_0]` mixture over the allowed tokens (-1 elsewhere);
    `extend(caches, tokens [R] in member 0's ids, step) -> (lasts, caches)` feeds each member its
    own id of each token. `R` is the batch times `copies` (beams).
    """
    allowed_np, first_np = ensemble_allowed(index, specs, models)
    allowed, first = jnp.asarray(allowed_np), jnp.asarray(first_np)
    gather = [jnp.asarray(np.maximum(ix, 0)) for ix in index]
    to_member = [jnp.asarray(ix) for ix in index]
    rows = mels[0].shape[0] * copies
    starts = [
        _start(m, p, x, s, copies, encoded)
        for m, p, x, s in zip(models, params, mels, specs, strict=True)
    ]
    cross = tuple(s[0] for s in starts)

    def mean_probs(lasts, i):
        ok = jnp.where(i == 0, first, allowed)
        mean = jnp.zeros((rows, len(allowed_np)), jnp.float32)
        for k, (g, last) in enumerate(zip(gather, lasts, strict=True)):
            logits = jnp.where(ok, jnp.take(last.astype(jnp.float32), g, axis=-1), NEG_INF)
            mean = mean + weights[k] * jax.nn.softmax(logits, axis=-1)
        return jnp.where(ok, mean, -1.0)

    def extend(caches, tok, i):
        lasts, new_caches = [], []
        for k, model in enumerate(models):
            logits, cache = model.apply(
                {"params": params[k]},
                to_member[k][tok][:, None],
                cross[k],
                caches[k],
                len(specs[k].prompt) + i,
                method=Whisper.decode_step,
            )
            lasts.append(logits[:, 0])
            new_caches.append(cache)
        return tuple(lasts), tuple(new_caches)

    return tuple(s[2] for s in starts), tuple(s[1] for s in starts), mean_probs, extend


def ensemble_greedy(
    params, mels, weights, *, models, specs, index, encoded: bool = False
) -> jax.Array:
    """Greedy decoding from the weighted mean of the members' next-token distributions.

    Args:
      params: per-member parameter trees (a tuple).
      mels: per-member log-mel `[B, n_mels_k, F]` (members may differ in mel bins); with
        `encoded`, per-member encoder outputs `[B, F/2, D_k]`.
      weights: `[K]` member weights summing to 1 (traced, so changing them does not recompile).
      models, specs: per-member `Whisper` and `DecodeSpec` (each in its own ids).
      index: `ensemble_index` output.

    Returns:
      New tokens `[B, max_new_tokens]` in member 0's ids, padded with its EOT after EOT.
    """
    lasts, caches, mean_probs, extend = _ensemble_parts(
        params, mels, weights, models, specs, index, 1, encoded
    )
    n, eot = specs[0].max_new_tokens, specs[0].eot
    rows = mels[0].shape[0]

    def cond(state):
        i, _, _, _, done = state
        return (i < n) & ~jnp.all(done)

    def body(state):
        i, lasts, caches, tokens, done = state
        tok = jnp.argmax(mean_probs(lasts, i), axis=-1)
        tok = jnp.where(done, eot, tok).astype(jnp.int32)
        tokens = tokens.at[:, i].set(tok)
        lasts, caches = extend(caches, tok, i)
        return i + 1, lasts, caches, tokens, done | (tok == eot)

    state = (
        jnp.int32(0),
        lasts,
        caches,
        jnp.full((rows, n), eot, jnp.int32),
        jnp.zeros(rows, bool),
    )
    return jax.lax.while_loop(cond, body, state)[3]


def ensemble_beam(
    params, mels, weights, *, models, specs, index, encoded: bool = False
) -> jax.Array:
    """Beam search (`specs[0].beam_size` beams, `_beam_core`) on the log of the weighted mean of
    the members' next-token distributions; arguments and result as `ensemble_greedy`."""
    k = specs[0].beam_size
    lasts, caches, mean_probs, extend = _ensemble_parts(
        params, mels, weights, models, specs, index, k, encoded
    )

    def logprobs(lasts, i, tokens):
        mean = mean_probs(lasts, i)
        return jnp.where(mean >= 0, jnp.log(jnp.maximum(mean, 1e-30)), NEG_INF)

    vocab = len(index[0])
    return _beam_core(mels[0].shape[0], specs[0], vocab, lasts, caches, logprobs, extend)[0]


def _ensemble_weights(weights, k: int) -> np.ndarray:
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != k or not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"ensemble weights {w.tolist()}: need {k} non-negative, not all 0")
    return (w / w.sum()).astype(np.float32)


def make_ensemble_generate_fn(models, specs, tokenizers, weights=None, encoded: bool = False):
    """`fn(params_tuple, mels_tuple, weights=None) -> tokens [B, max_new_tokens]` in member 0's ids;
    with `encoded`, `fn(params_tuple, encoder_outputs_tuple, ...)` (`make_encode_fn`'s outputs).

    Member 0's spec sets the token limit and the beam size (1: greedy); each member's prompt,
    suppress lists and EOT are its own.
    `weights` (here or per call, which does not recompile) default to equal and are normalised to
    sum to 1. `fn.jitted` is the compiled function.
    """
    models, specs, tokenizers = tuple(models), tuple(specs), tuple(tokenizers)
    if not len(models) == len(specs) == len(tokenizers) >= 1:
        raise ValueError(
            f"ensemble needs one spec and tokenizer per model, got {len(models)} models, "
            f"{len(specs)} specs, {len(tokenizers)} tokenizers"
        )
    default = _ensemble_weights(weights, len(models))
    n, beams = specs[0].max_new_tokens, specs[0].beam_size
    specs = tuple(dataclasses.replace(s, max_new_tokens=n, beam_size=beams) for s in specs)
    for k, (model, spec) in enumerate(zip(models, specs, strict=True)):
        if spec.timestamps:
            raise ValueError(f"ensemble member {k}: ensemble decoding has no timestamp mode")
        if n + len(spec.prompt) > model.max_target_positions:
            raise ValueError(
                f"ensemble member {k}: prompt ({len(spec.prompt)}) + max_new_tokens ({n}) "
                f"exceeds the decoder's {model.max_target_positions} positions"
            )
    index = ensemble_index(tokenizers, models)
    allowed, _ = ensemble_allowed(index, specs, models)
    eot = specs[0].eot
    if not allowed[eot]:
        raise ValueError(f"end-of-text {eot} is not a token every ensemble member can emit")
    for k, (ix, spec) in enumerate(zip(index, specs, strict=True)):
        if ix[eot] != spec.eot:
            raise ValueError(f"ensemble member {k}: end-of-text maps to {ix[eot]}, not {spec.eot}")
    step = ensemble_greedy if beams == 1 else ensemble_beam
    jitted = jax.jit(
        functools.partial(step, models=models, specs=specs, index=index, encoded=encoded)
    )

    def generate(params, mels, weights=None):
        w = default if weights is None else _ensemble_weights(weights, len(models))
        return jitted(tuple(params), tuple(mels), w)

    generate.jitted = jitted
    return generate


def strip(tokens: np.ndarray, eot: int) -> list[list[int]]:
    """Per-row token lists up to (not including) the first EOT."""
    rows = []
    for row in np.asarray(tokens):
        hits = np.flatnonzero(row == eot)
        rows.append(row[: hits[0] if hits.size else len(row)].tolist())
    return rows
