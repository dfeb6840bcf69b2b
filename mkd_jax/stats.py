"""Per-utterance word errors and a paired bootstrap confidence interval of a WER difference.

Corpus WER is a ratio of sums, `sum(errors) / sum(reference words)`, so utterances are not
independent word samples: the bootstrap resamples whole utterances (with replacement), the same
draw for both systems (paired), and recomputes the ratio on each resample. The interval is the
percentile interval of the resampled differences.

    errs_a, words = utterance_errors(refs, hyps_a)
    errs_b, _ = utterance_errors(refs, hyps_b)
    paired_bootstrap(errs_a, errs_b, words)  # {"diff": WER_b - WER_a in %, "low", "high", ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import jiwer
import numpy as np

from mkd_jax.data import text

_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (32 MB of int64)


def utterance_errors(refs: Sequence[str], hyps: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`(word edits, reference words)` per utterance on Whisper-normalised text, each `[N]` int64.

    Edits are substitutions + deletions + insertions of jiwer's alignment, so
    `edits.sum() / words.sum()` is `text.wer(refs, hyps)`. A reference that normalises to nothing
    (e.g. "Um.") has 0 words and 0 edits here, as `text.wer` drops it.
    """
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ValueError("refs and hyps must be lists of strings, not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"refs and hyps differ in length: {len(refs)} vs {len(hyps)}")
    edits = np.zeros(len(refs), np.int64)
    words = np.zeros(len(refs), np.int64)
    norm = [(text.normalize(r), text.normalize(h)) for r, h in zip(refs, hyps, strict=True)]
    keep = [j for j, (r, _) in enumerate(norm) if r]
    if not keep:
        return edits, words
    out = jiwer.process_words([norm[j][0] for j in keep], [norm[j][1] for j in keep])
    for j, ref_words, chunks in zip(keep, out.references, out.alignments, strict=True):
        words[j] = len(ref_words)
        edits[j] = sum(
            c.hyp_end_idx - c.hyp_start_idx
            if c.type == "insert"
            else c.ref_end_idx - c.ref_start_idx
            for c in chunks
            if c.type != "equal"
        )
    return edits, words


def corpus_wer(errs: np.ndarray, n_words: np.ndarray) -> float:
    """Corpus WER in % from per-utterance counts."""
    total = int(np.sum(n_words))
    if total <= 0:
        raise ValueError("corpus WER of zero reference words is undefined")
    return 100.0 * float(np.sum(errs)) / total


def _check_counts(errs_a, errs_b, n_words) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    arrays = [np.asarray(x) for x in (errs_a, errs_b, n_words)]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 1:
        raise ValueError(f"errs_a, errs_b and n_words must be 1-D of one length, got {shapes}")
    if any(a.size and (a.min() < 0 or not np.all(np.isfinite(a))) for a in arrays):
        raise ValueError("error and word counts must be finite and non-negative")
    if arrays[2].sum() <= 0:
        raise ValueError("paired bootstrap needs at least one reference word")
    return tuple(a.astype(np.float64) for a in arrays)


def paired_bootstrap(
    errs_a,
    errs_b,
    n_words,
    *,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Corpus WER difference `b - a` (in %) with a paired percentile bootstrap interval.

    Args:
      errs_a, errs_b: word edits per utterance of systems a and b, on the same utterances in the
        same order (`utterance_errors`).
      n_words: reference words per utterance.
      n_resamples: bootstrap resamples of the utterances.
      confidence: interval coverage, e.g. 0.95.
      seed: resampling seed; equal seeds give equal intervals.

    Returns:
      `{"wer_a", "wer_b", "diff", "low", "high", "confidence", "n_utts", "n_words",
      "n_resamples", "seed", "n_better", "n_worse", "max_utt_diff"}`, rates in %; `n_better`
      and `n_worse` count the utterances where b has fewer or more word edits than a, and
      `max_utt_diff` is the largest single-utterance change in word edits, signed (one runaway
      repetition can carry a corpus WER difference: this says when it does). Identical systems
      give `diff = low = high = 0`.
    """
    a, b, w = _check_counts(errs_a, errs_b, n_words)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, got {n_resamples}")
    n = len(w)
    d = b - a
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    rows = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        words = w[idx].sum(axis=1)
        # A resample of only empty references has no WER; it is left out of the percentiles.
        diffs[start:stop] = np.where(words > 0, d[idx].sum(axis=1) / np.maximum(words, 1), np.nan)
    alpha = (1 - confidence) / 2
    low, high = np.nanquantile(diffs, [alpha, 1 - alpha])
    return {
        "wer_a": corpus_wer(a, w),
        "wer_b": corpus_wer(b, w),
        "diff": 100.0 * float(d.sum() / w.sum()),
        "low": 100.0 * float(low),
        "high": 100.0 * float(high),
        "confidence": confidence,
        "n_utts": n,
        "n_words": int(w.sum()),
        "n_resamples": n_resamples,
        "seed": seed,
        "n_better": int((d < 0).sum()),
        "n_worse": int((d > 0).sum()),
        "max_utt_diff": int(d[np.argmax(np.abs(d))]) if n else 0,
    }


def paired_power(
    errs_a,
    errs_b,
    n_words,
    sizes: Sequence[int],
    *,
    sims: int = 300,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """How often a fresh split of `n` utterances would show the difference `b - a` beyond noise.

    The observed utterances stand in for their population (a plug-in estimate): each simulated
    split draws `n` of them with replacement, and its `paired_bootstrap` interval (percentile,
    `n_resamples` resamples) is checked against zero. A split size whose power is low cannot
    show a difference of the observed size, whatever the method: size the split first.

    Args:
      errs_a, errs_b, n_words: as `paired_bootstrap`, on every observed utterance.
      sizes: split sizes to simulate (utterances).
      sims: simulated splits per size.

    Returns:
      `{"observed": paired_bootstrap(...) on the whole data, "sizes": [{"n", "power",
      "wrong_sign", "half_width"}]}`: `power` is the share of simulated splits whose interval
      excludes zero on the observed difference's side, `wrong_sign` the share that excludes it
      on the other side, `half_width` the mean half-width of their intervals in points.
      An observed difference of exactly zero has power 0 by definition.
    """
    a, b, w = _check_counts(errs_a, errs_b, n_words)
    if sims < 1:
        raise ValueError(f"sims must be positive, got {sims}")
    if not sizes or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes must be positive utterance counts, got {list(sizes)}")
    observed = paired_bootstrap(a, b, w, n_resamples=10_000, confidence=confidence, seed=seed)
    sign = np.sign(observed["diff"])
    rng = np.random.default_rng(seed)
    out = []
    for n in (int(x) for x in sizes):
        hits = wrong = 0
        widths = []
        for _ in range(sims):
            pick = rng.integers(0, len(w), size=n)
            if w[pick].sum() <= 0:
                continue  # only empty references drawn: no interval, not a detection
            ci = paired_bootstrap(
                a[pick], b[pick], w[pick], n_resamples=n_resamples, confidence=confidence,
                seed=int(rng.integers(2**31)),
            )  # fmt: skip
            widths.append((ci["high"] - ci["low"]) / 2)
            hits += bool((sign < 0 and ci["high"] < 0) or (sign > 0 and ci["low"] > 0))
            wrong += bool((sign < 0 and ci["low"] > 0) or (sign > 0 and ci["high"] < 0))
        out.append(
            {
                "n": n,
                "power": hits / sims,
                "wrong_sign": wrong / sims,
                "half_width": float(np.mean(widths)) if widths else float("nan"),
            }
        )
    return {"observed": observed, "sizes": out, "sims": sims, "n_resamples": n_resamples}
