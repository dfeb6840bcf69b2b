"""WER/CER of every utterance of a split, for models, a trained student or an ensemble, with paired
bootstrap intervals of the differences between systems.

    python -m mkd_jax.evaluate --model tiny.en,base --source disk:/path/to/corpus --split test
    python -m mkd_jax.evaluate --workdir /tmp/run --zero_shot --split test --group_by engine
    python -m mkd_jax.evaluate --ensemble base,tiny.en --ensemble_weights 2,1 --source KIND:PATH
    python -m mkd_jax.evaluate --ensemble base,tiny.en --beam_size 4 --source KIND:PATH
    python -m mkd_jax.evaluate --workdir W --zero_shot --split real_unlabelled --reference base

No utterance is hidden from the score:
- An utterance is decoded at `--n_frames` (a workdir's training context by default) when it fits,
  else at the model's full context (30 s, 3000 frames). One longer than 30 s is transcribed
  long-form, sequentially with timestamps as `transcribe` does (`longform.sequential`); an
  ensemble, which decodes without timestamps, cuts it into equal windows of at most 30 s and joins
  their texts. Each result records these contexts.
- An utterance whose audio, batch or tokens fail to decode, or whose output is empty, is scored as
  all deletions (an empty hypothesis) and listed under `failures`. Output that hits the token limit
  without end-of-text is scored as decoded and listed under `flagged`.
- The loader's duration filters are off here (`min_seconds` 0, `max_seconds` 4 h); inputs the
  loader finds bad are reported in the title and count towards `--max_bad_fraction`.
- `--max_batches` scores only the first `max_batches * batch_size` utterances of the split (source
  order), and the table says so; every result reads "n scored / n in the split".

Text on both sides is normalised with Whisper's English normaliser before scoring (corpus-level
WER). `--group_by` adds one row per value of a corpus column. With several systems, each later one
is compared with the first on the utterances both scored: the WER difference (later - first) and
its paired bootstrap 95% interval over utterances (`stats.paired_bootstrap`).

`--reference MODEL` scores against that model's transcripts instead of the split's text (which
may be missing): the label-free agreement check on real recordings (`agreement.py`), on the whole
split. The reference decodes greedily at its whole window (30 s for Whisper), once, cached with
the agreement check's; an utterance whose reference normalises to nothing is left out and
counted.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from mkd_jax import cli, stats
from mkd_jax.config_base import MATMUL_DTYPE_NAMES
from mkd_jax.data import batching, features, loaders, text
from mkd_jax.data.audio import AudioError

FLAGS = flags.FLAGS
_LISTED = 10  # failures named in the table; all of them are in the JSON output
MAX_SECONDS = 4 * 3600.0  # the loaders' longest decodable audio (`data.audio.MAX_SECONDS`)


@dataclasses.dataclass
class Transcripts:
    """Hypotheses of a split, with how they were produced.

    Unpacks as `ids, hyps = transcribe_utts(...)`. `ids` are in split order; failed utterances
    are present with an empty hypothesis.
    """

    ids: list[str]
    hyps: list[str]
    n_total: int  # utterances in the split
    context: str  # encoder context(s) used, e.g. "10 s (1000 frames); 30 s for 3 longer ..."
    failures: list[dict]  # {"id", "reason"}: scored as all deletions
    flagged: list[dict]  # {"id", "reason"}: scored as decoded
    limit: str = ""  # why fewer than n_total were decoded; "" for the whole split

    def __iter__(self):
        return iter((self.ids, self.hyps))


@dataclasses.dataclass(frozen=True)
class _Window:
    utt: int  # index into the split
    part: int  # window number within the utterance
    start: int  # first sample
    stop: int | None  # end sample (exclusive); None: to the end of the clip


@dataclasses.dataclass(frozen=True)
class _Decoder:
    generate: Callable  # {n_mels: mel [B, n_mels, F]} -> tokens [B, max_new_tokens]
    n_mels: tuple[int, ...]
    full_frames: int  # the encoder's whole context
    tokenizer: object
    eot: int
    max_new_tokens: int
    long_form: Callable | None = None  # clips over 30 s -> texts; None: equal windows


def _secs(frames: int) -> str:
    return f"{frames / batching.FRAMES_PER_SECOND:g} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _plan(
    utts, n_frames: int, full: int, batch_size: int, max_batches: int, long_form: bool = False
):
    """`(batches [(frames, [window or None] * batch_size)], selected indices, context, limit,
    long)`: `long` lists the utterances over `full` frames left to long-form decoding (with
    `long_form`; else they are cut into equal windows in `batches`)."""
    if batch_size < 1 or max_batches < 0:
        raise ValueError(
            f"need batch_size >= 1 and max_batches >= 0, got {batch_size}, {max_batches}"
        )
    n_frames = n_frames or full
    if n_frames % 2 or not 2 <= n_frames <= full:
        raise ValueError(f"n_frames={n_frames}: need an even count in [2, {full}]")
    n = len(utts)
    selected = range(min(n, max_batches * batch_size) if max_batches else n)
    limit = ""
    if len(selected) < n:
        limit = (
            f"first {len(selected)} of {n} utterances "
            f"(max_batches={max_batches} x batch_size={batch_size})"
        )
    by_frames: dict[int, list[_Window]] = defaultdict(list)
    promoted = windowed = n_windows = 0
    long = []
    rate = features.SAMPLE_RATE
    for i in selected:
        dur = float(utts.durations[i])
        frames = math.ceil(dur * batching.FRAMES_PER_SECOND - 1e-6)
        if frames <= n_frames:
            by_frames[n_frames].append(_Window(i, 0, 0, None))
        elif frames <= full:
            promoted += 1
            by_frames[full].append(_Window(i, 0, 0, None))
        elif long_form:
            long.append(i)
        else:
            k = math.ceil(frames / full)
            size = math.ceil(math.ceil(dur * rate) / k)  # equal windows, each <= the context
            windowed, n_windows = windowed + 1, n_windows + k
            for j in range(k):
                stop = (j + 1) * size if j < k - 1 else None
                by_frames[full].append(_Window(i, j, j * size, stop))
    context = [f"{_secs(n_frames)} ({n_frames} frames)"]
    if promoted:
        context.append(f"{_secs(full)} for {_plural(promoted, 'longer utterance')}")
    if windowed:
        context.append(
            f"{_secs(full)} windows for {_plural(windowed, 'utterance')} over {_secs(full)} "
            f"({n_windows} windows)"
        )
    if long:
        context.append(
            f"long-form (sequential, timestamps) for {_plural(len(long), 'utterance')} over "
            f"{_secs(full)}"
        )
    batches = []
    for frames in sorted(by_frames):
        # Shortest first: a batch decodes until its longest row ends, so rows of like length
        # waste fewer token steps (results are placed by utterance, so the order is free).
        windows = sorted(by_frames[frames], key=lambda w: _samples(utts, w, rate))
        for s in range(0, len(windows), batch_size):
            chunk = windows[s : s + batch_size]
            batches.append((frames, chunk + [None] * (batch_size - len(chunk))))
    return batches, selected, "; ".join(context), limit, long


def _samples(utts, w: _Window, rate: int) -> int:
    """A window's length in samples, from the split's durations (no audio read)."""
    total = round(float(utts.durations[w.utt]) * rate)
    return (total if w.stop is None else min(w.stop, total)) - w.start


def _features(utts, frames: int, windows, n_mels: Sequence[int], cache: dict):
    """`({n_mels: mel}, {row: audio error})` of one batch. `cache` keeps the last clip read, so
    consecutive windows of a long utterance read its audio once (one preparing thread uses it)."""
    audio = np.zeros((len(windows), frames * features.HOP), np.float32)
    errors = {}
    for r, w in enumerate(windows):
        if w is None:
            continue
        try:
            if cache.get("utt") != w.utt:
                cache.clear()
                cache.update(utt=w.utt, clip=utts.audio(w.utt))
        except AudioError as e:
            errors[r] = f"audio failed to decode: {e}"
            continue
        clip = cache["clip"][w.start : w.stop][: audio.shape[1]]
        audio[r, : len(clip)] = clip
    mels = {m: features.log_mel(audio, n_mels=m, n_frames=frames) for m in n_mels}
    return mels, errors


def _first_line(e: BaseException, limit: int = 300) -> str:
    msg = f"{type(e).__name__}: {e}".splitlines()[0]
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _long_form(dec: _Decoder, utts, long: list[int], pieces: dict, failed: dict, desc: str):
    """Long-form texts of the utterances over 30 s into `pieces`; failures into `failed`."""
    clips = {}
    for i in long:
        try:
            clips[i] = utts.audio(i)
        except AudioError as e:
            failed.setdefault(i, f"audio failed to decode: {e}")
    if not clips:
        return
    try:
        texts = dec.long_form(list(clips.values()))
    except Exception as e:  # scored as deletions and listed, like a failed batch
        reason = f"long-form decoding failed: {_first_line(e)}"
        logging.warning("%s: %s", desc, reason)
        for i in clips:
            failed.setdefault(i, reason)
        return
    for i, t in zip(clips, texts, strict=True):
        pieces[i][0] = t


def _transcribe(
    dec: _Decoder, utts, *, batch_size: int, n_frames: int, max_batches: int, desc: str
) -> Transcripts:
    from mkd_jax import decode

    batches, selected, context, limit, long = _plan(
        utts, n_frames, dec.full_frames, batch_size, max_batches, dec.long_form is not None
    )
    pieces: dict[int, dict[int, str]] = defaultdict(dict)
    failed: dict[int, str] = {}
    flagged: dict[int, str] = {}
    batch_errors = []
    cache: dict = {}
    with ThreadPoolExecutor(1) as pool:  # prepares the next batch's features while one decodes

        def prepare(batch):
            return pool.submit(_features, utts, batch[0], batch[1], dec.n_mels, cache)

        pending = prepare(batches[0]) if batches else None
        for k, (_, windows) in enumerate(tqdm(batches, desc=desc, unit="batch", leave=False)):
            current, pending = pending, prepare(batches[k + 1]) if k + 1 < len(batches) else None
            try:
                mels, audio_errors = current.result()
                tokens = np.asarray(dec.generate(mels))
            except Exception as e:  # one bad batch is scored as deletions; all bad raises below
                reason = f"batch failed: {_first_line(e)}"
                logging.warning("%s: batch %d of %d: %s", desc, k + 1, len(batches), reason)
                batch_errors.append(reason)
                for w in windows:
                    if w is not None:
                        failed.setdefault(w.utt, reason)
                continue
            for r, w in enumerate(windows):
                if w is None:
                    continue
                if r in audio_errors:
                    failed.setdefault(w.utt, audio_errors[r])
                    continue
                row = tokens[r]
                if not np.any(row == dec.eot):
                    flagged[w.utt] = f"no end-of-text within {dec.max_new_tokens} tokens"
                try:
                    pieces[w.utt][w.part] = dec.tokenizer.decode(
                        decode.strip(row[None], dec.eot)[0]
                    )
                except Exception as e:  # out-of-vocabulary ids and the like: garbage output
                    failed.setdefault(w.utt, f"tokens failed to decode: {_first_line(e)}")
    _long_form(dec, utts, long, pieces, failed, desc)
    if batches and len(batch_errors) == len(batches):
        raise RuntimeError(f"{desc}: all {len(batches)} batches failed; first: {batch_errors[0]}")
    ids, hyps, failures = [], [], []
    for i in selected:
        ids.append(utts.ids[i])
        texts = [] if i in failed else [t.strip() for _, t in sorted(pieces[i].items())]
        hyps.append(" ".join(t for t in texts if t))
        if i in failed:
            failures.append({"id": utts.ids[i], "reason": failed[i]})
        elif not hyps[-1]:
            failures.append({"id": utts.ids[i], "reason": "empty hypothesis"})
    if failures:
        logging.warning(
            "%s: %s scored as all deletions, e.g. %s",
            desc,
            _plural(len(failures), "utterance"),
            failures[0],
        )
    return Transcripts(
        ids=ids,
        hyps=hyps,
        n_total=len(utts),
        context=context,
        failures=failures,
        flagged=[{"id": utts.ids[i], "reason": r} for i, r in sorted(flagged.items())],
        limit=limit,
    )


def transcribe_utts(
    model,
    params,
    tokenizer,
    spec,
    utts,
    *,
    batch_size: int,
    n_frames: int,
    max_batches: int = 0,
    desc: str = "eval",
    reuse_encoder: bool = False,
) -> Transcripts:
    """Hypotheses of every utterance of a split (see the module docstring for long ones).

    Args:
      model, params, tokenizer, spec: the system; `spec` from `decode.spec_from_folder`.
      utts: the split, from `loaders.load_split`.
      batch_size: rows per decoded batch (one static shape per context).
      n_frames: preferred mel frames per window (0: the model's whole context).
      max_batches: if set, only the first `max_batches * batch_size` utterances.
      desc: progress-bar label.
      reuse_encoder: serve the encoder's outputs from the process's memo (`encoder_memo`), for
        students evaluated again and again with the same encoder weights.

    Returns:
      `Transcripts`, which unpacks as `(ids, hyps)`; pass it to `score(..., transcripts=)`.
    """
    from mkd_jax import decode
    from mkd_jax.transcriber import long_form_texts

    if reuse_encoder:
        from mkd_jax import encoder_memo

        encode = encoder_memo.make_encoder(model, params)
        from_enc = decode.make_generate_fn(model, spec, encoded=True)

        def generate(mels):
            return from_enc(params, encode(mels[model.num_mel_bins]))
    else:
        fn = decode.make_generate_fn(model, spec)

        def generate(mels):
            return fn(params, mels[model.num_mel_bins])

    def long_form(clips):
        return long_form_texts(model, params, tokenizer, spec, clips, batch_size=batch_size)

    dec = _Decoder(
        generate=generate,
        n_mels=(model.num_mel_bins,),
        full_frames=2 * model.max_source_positions,
        tokenizer=tokenizer,
        eot=spec.eot,
        max_new_tokens=spec.max_new_tokens,
        # Long-form windows are Whisper's 30 s; a model with another context keeps equal windows.
        long_form=long_form
        if spec.no_timestamps >= 0 and 2 * model.max_source_positions == features.N_FRAMES
        else None,
    )
    out = _transcribe(
        dec, utts, batch_size=batch_size, n_frames=n_frames, max_batches=max_batches, desc=desc
    )
    if reuse_encoder:
        logging.info("%s: encoder memo %s", desc, encoder_memo.stats())
    return out


def transcribe_ensemble(
    members,
    utts,
    *,
    weights=None,
    batch_size: int,
    n_frames: int,
    max_batches: int = 0,
    desc: str = "ensemble",
    reuse_encoder: bool = False,
) -> Transcripts:
    """As `transcribe_utts`, decoding from an ensemble's mean next-token distribution (greedy, or
    beam search when the first member's spec has `beam_size > 1`).

    Args:
      members: `[(model, params, tokenizer, spec), ...]`; the first member's vocabulary is the
        decoding vocabulary (see `decode.make_ensemble_generate_fn` for the shared-token rule).
      weights: per-member weights (default equal).
      reuse_encoder: serve each member's encoder outputs from the process's memo
        (`encoder_memo`), e.g. those of its own evaluation as a single model just before.
    """
    from mkd_jax import decode

    models, params, toks, specs = (tuple(x) for x in zip(*members, strict=True))
    fn = decode.make_ensemble_generate_fn(models, specs, toks, weights, encoded=reuse_encoder)
    if reuse_encoder:
        from mkd_jax import encoder_memo

        encoders = [encoder_memo.make_encoder(m, p) for m, p in zip(models, params, strict=True)]

        def inputs(mels):
            return [e(mels[m.num_mel_bins]) for e, m in zip(encoders, models, strict=True)]
    else:

        def inputs(mels):
            return [mels[m.num_mel_bins] for m in models]

    dec = _Decoder(
        generate=lambda mels: fn(params, inputs(mels)),
        n_mels=tuple(sorted({m.num_mel_bins for m in models})),
        full_frames=min(2 * m.max_source_positions for m in models),
        tokenizer=toks[0],
        eot=specs[0].eot,
        max_new_tokens=specs[0].max_new_tokens,
    )
    out = _transcribe(
        dec, utts, batch_size=batch_size, n_frames=n_frames, max_batches=max_batches, desc=desc
    )
    if reuse_encoder:
        logging.info("%s: encoder memo %s", desc, encoder_memo.stats())
    return out


def _rate(fn, refs, hyps) -> float:
    try:
        return 100 * fn(refs, hyps)
    except ValueError:  # every reference of a group is empty after normalisation
        return math.nan


def score(
    utts,
    ids: Sequence[str],
    hyps: Sequence[str],
    group_by: tuple[str, ...] = (),
    *,
    transcripts: Transcripts | None = None,
) -> dict:
    """`{"all": {...}, "<column>=<value>": {...}}`, per set: wer, cer (in %), n_scored, n_total.

    Each set also has `n` (= n_scored), `n_words` and `dropped_empty_refs`. "all" adds the
    per-utterance counts for `compare` (`per_utt`: ids, word_errors, ref_words) and, given the
    `Transcripts`, its `context`, `failures`, `flagged` and `limit`. Everything is JSON-able.
    """
    index = {uid: k for k, uid in enumerate(utts.ids)}
    ids, hyps = [str(i) for i in ids], list(hyps)
    unknown = [i for i in ids if i not in index]
    if unknown:
        raise ValueError(f"{len(unknown)} ids are not in the split, e.g. {unknown[:3]}")
    if len(set(ids)) != len(ids):
        raise ValueError("ids hold duplicates; score each utterance once")
    if len(hyps) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(hyps)} hypotheses")
    refs = [utts.texts[index[i]] for i in ids]
    errs, words = stats.utterance_errors(refs, hyps)
    groups, totals = defaultdict(list), {"all": len(utts)}
    groups["all"] = list(range(len(ids)))
    for col in group_by:
        values = utts.extras.get(col)
        if values is None:
            raise ValueError(f"--group_by {col!r}: the corpus has no such column")
        for v in values:
            totals[f"{col}={v}"] = totals.get(f"{col}={v}", 0) + 1
        for j, uid in enumerate(ids):
            groups[f"{col}={values[index[uid]]}"].append(j)
    out = {}
    for name, rows in groups.items():
        n_words = int(words[rows].sum())
        if name == "all" and n_words == 0:
            raise ValueError(f"no reference words to score among {len(ids)} utterances")
        out[name] = {
            "wer": 100 * float(errs[rows].sum()) / n_words if n_words else math.nan,
            "cer": _rate(text.cer, [refs[j] for j in rows], [hyps[j] for j in rows]),
            "n": len(rows),
            "n_scored": len(rows),
            "n_total": totals[name],
            "n_words": n_words,
            "dropped_empty_refs": int(sum(1 for j in rows if words[j] == 0)),
        }
    out["all"]["per_utt"] = {
        "ids": ids,
        "word_errors": errs.tolist(),
        "ref_words": words.tolist(),
    }
    if transcripts is not None:
        out["all"].update(
            context=transcripts.context,
            failures=list(transcripts.failures),
            flagged=list(transcripts.flagged),
            limit=transcripts.limit,
        )
    return out


class DifferentReferences(ValueError):
    """Two results scored against different reference models' transcripts: not comparable."""


def paired_counts(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """`(errors of a, errors of b, reference words, n_only_a, n_only_b)` on the utterances both
    `score(...)["all"]` results scored, in a's order; `n_only_*` count the ones left out because
    only one system scored them. Raises ValueError where they are not results of one split, or
    were scored against different reference models' transcripts (`reference`)."""
    pa, pb = a.get("per_utt"), b.get("per_utt")
    if pa is None or pb is None:
        raise ValueError("comparing needs score(...)['all'] results, which hold 'per_utt'")
    if a.get("reference") != b.get("reference"):
        raise DifferentReferences(
            f"scored against different references ({a.get('reference')!r} and "
            f"{b.get('reference')!r}): not comparable"
        )
    where_b = {uid: k for k, uid in enumerate(pb["ids"])}
    ka = [k for k, uid in enumerate(pa["ids"]) if uid in where_b]
    if not ka:
        raise ValueError("the two results share no scored utterance")
    kb = [where_b[pa["ids"][k]] for k in ka]
    words_a = np.asarray(pa["ref_words"])[ka]
    if np.any(words_a != np.asarray(pb["ref_words"])[kb]):
        raise ValueError("reference word counts differ on shared ids: not the same split")
    return (
        np.asarray(pa["word_errors"])[ka],
        np.asarray(pb["word_errors"])[kb],
        words_a,
        len(pa["ids"]) - len(ka),
        len(pb["ids"]) - len(kb),
    )


def compare(a: dict, b: dict, *, n_resamples: int = 10_000, confidence: float = 0.95, seed=0):
    """Paired bootstrap interval of WER(b) - WER(a) on the utterances both results scored.

    Args:
      a, b: `score(...)["all"]` of two systems on the same split.

    Returns:
      `stats.paired_bootstrap`'s dict (rates in %) plus `n_only_a` and `n_only_b`, the utterances
      left out because only one system scored them.
    """
    errs_a, errs_b, words, only_a, only_b = paired_counts(a, b)
    res = stats.paired_bootstrap(
        errs_a, errs_b, words, n_resamples=n_resamples, confidence=confidence, seed=seed
    )
    return {**res, "n_only_a": only_a, "n_only_b": only_b}


def _n(r: dict) -> str:
    return f"{r['n_scored']} / {r['n_total']}" if "n_total" in r else str(r["n"])


def _notes(name: str, r: dict) -> list[str]:
    """Lines under a table: context, partial scoring, failures, flags."""
    lines = []
    if r.get("context"):
        lines.append(f"- {name}: encoder context {r['context']}")
    if r.get("limit"):
        lines.append(f"- {name}: PARTIAL, scored the {r['limit']}")
    for key, what in (("failures", "scored as all deletions"), ("flagged", "flagged")):
        items = r.get(key) or []
        if items:
            shown = "; ".join(f"{f['id']} ({f['reason']})" for f in items[:_LISTED])
            more = f"; and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
            lines.append(f"- {name}: {_plural(len(items), 'utterance')} {what}: {shown}{more}")
    return lines


def format_table(results: dict[str, dict], title: str = "") -> str:
    """Markdown table of one system's `score` output, with its notes."""
    return format_systems({"": results}, title=title)


def format_systems(
    systems: dict[str, dict], comparisons: Sequence[tuple] = (), title: str = ""
) -> str:
    """Markdown tables of several systems' `score` outputs and `(a, b, compare(a, b))` triples."""
    named = any(systems)
    lines = [title, ""] if title else []
    head = ["system"] * named + ["set", "n scored / total", "WER %", "CER %"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, results in systems.items():
        for group, r in results.items():
            cells = [name] * named + [group, _n(r), f"{r['wer']:.2f}", f"{r['cer']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    notes = [
        line for name, results in systems.items() for line in _notes(name or "all", results["all"])
    ]
    if notes:
        lines += ["", *notes]
    if comparisons:
        lines += [
            "",
            "| comparison | WER difference (points) | 95% CI | utterances |",
            "|---|---|---|---|",
        ]
        for a, b, c in comparisons:
            pct = f"{c['confidence']:.0%}"
            lines.append(
                f"| {b} - {a} | {c['diff']:+.2f} | [{c['low']:+.2f}, {c['high']:+.2f}] ({pct}) "
                f"| {c['n_utts']}"
                + f" (left out: {c['n_only_a']} only in {a}, {c['n_only_b']} only in {b})"
                * bool(c["n_only_a"] or c["n_only_b"])
                + " |"
            )
        lines.append(
            f"Paired bootstrap over utterances ({comparisons[0][2]['n_resamples']} resamples); "
            "an interval that excludes 0 is a difference beyond resampling noise."
        )
    return "\n".join(lines)


# ----- command line -----


def parse_source(spec: str) -> dict:
    kind, _, path = spec.partition(":")
    if kind not in loaders.KINDS or not path:
        raise app.UsageError(f"--source={spec!r}: use KIND:PATH with KIND in {loaders.KINDS}")
    if kind == "hf":  # a hub dataset is named, not found at a path: hf:NAME
        return {"kind": kind, "name": path}
    return {"kind": kind, "path": path}


def split_of(source: dict, split: str, given: bool) -> str:
    """The split scored: `split` (`--split`; `given` when the user set it), except for a manifest
    that is one file (no `{split}` in its path), which holds one split and is named by its file
    (so its results say `clips`, not `test`, for `clips.csv`). Raises UsageError where `--split`
    asks that file for another split."""
    path = source.get("path", "")
    if source["kind"] != "manifest" or "{split}" in path or not Path(path).is_file():
        return split  # a missing path is the loader's to name
    name = Path(path).stem
    if given and split != name:
        raise app.UsageError(
            f"--split={split}: manifest {path} is one file, not a set of splits; drop --split, "
            "or give a folder of SPLIT.csv / SPLIT.jsonl files or a path with {split}"
        )
    return name


def _decode_kwargs(n_frames: int, desc: str, reuse_encoder: bool) -> dict:
    return dict(
        batch_size=FLAGS.batch_size,
        n_frames=n_frames,
        max_batches=FLAGS.max_batches,
        desc=desc,
        reuse_encoder=reuse_encoder,
    )


def _model_member(name: str, beam_size: int, matmul_dtype: str = "float32"):
    from mkd_jax import decode
    from mkd_jax.assets import load_model
    from mkd_jax.data.tokenizers import load_tokenizer

    model, params, config = load_model(name)
    model = decode.with_matmul_dtype(model, matmul_dtype)
    tok = load_tokenizer(config["_folder"], model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(
        config["_folder"], tok, max_new_tokens=FLAGS.max_new_tokens, beam_size=beam_size
    )
    return model, params, tok, spec


def _with_models() -> bool:
    """Whether `--model` is scored: when given, or when there is nothing else to score."""
    return FLAGS["model"].present or not (FLAGS.workdir or FLAGS.ensemble)


def _check_flags() -> None:
    """What can be checked before a checkpoint, a corpus or a model is read: every model name,
    the ensemble weights, the output folder."""
    from mkd_jax.assets import resolve_model

    if not 0.0 <= FLAGS.max_bad_fraction <= 1.0:
        raise ValueError(f"--max_bad_fraction={FLAGS.max_bad_fraction}: must be in [0, 1]")
    for w in FLAGS.ensemble_weights:
        try:
            float(w)
        except ValueError:
            raise ValueError(f"--ensemble_weights: {w!r} is not a number") from None
    names = [*(FLAGS.model if _with_models() else ()), *FLAGS.ensemble]
    for name in [*names, *([FLAGS.reference] if FLAGS.reference else [])]:
        resolve_model(name)  # raises naming it
    if FLAGS.output:
        parent = Path(FLAGS.output).resolve().parent
        if not parent.is_dir():
            raise ValueError(f"--output {FLAGS.output}: folder {parent} does not exist")
        if Path(FLAGS.output).is_dir():
            raise ValueError(f"--output {FLAGS.output}: is a folder; name a .json file")


def _systems(restored) -> list[tuple[str, Callable]]:
    """`[(name, fn(utts) -> Transcripts)]`; models load their weights when they run.

    `restored` is `state.restore_run(FLAGS.workdir)`, or None without a workdir. Every system
    comes once per `--matmul_dtype` value (labelled with it unless float32), so the comparisons
    against the first system give the cost of bfloat16 operands paired, with a CI. With more
    than one system every decoding goes through the encoder memo (`encoder_memo`), so systems
    that share an encoder (a frozen-encoder student and its zero-shot self, a model and an
    ensemble that holds it, a decoder-tuned variant) encode each window once.
    """
    from mkd_jax import decode

    with_models = _with_models()
    count = len(FLAGS.matmul_dtype) * (
        (restored is not None) * (1 + FLAGS.zero_shot)
        + with_models * len(FLAGS.model)
        + bool(FLAGS.ensemble)
    )
    reuse = count > 1
    names = list(FLAGS.ensemble)
    weights = [float(w) for w in FLAGS.ensemble_weights] if FLAGS.ensemble_weights else None
    if names and len(names) < 2:
        raise app.UsageError("--ensemble needs at least two comma-separated models")
    if weights is not None and len(weights) != len(names):
        raise app.UsageError(f"--ensemble_weights needs {len(names)} values, got {weights}")
    run_workdir = None
    if restored is not None:
        import jax

        from mkd_jax.distill import merged_student

        cfg, (model, base, tok, folder), setup, trainable, _ = restored

        def run_workdir(utts, zero_shot: bool, dtype: str, suffix: str):
            params = base
            if not zero_shot:
                merge = jax.jit(lambda t, s: merged_student(t, {"student": s}, setup))
                params = merge(trainable, base)
            spec = decode.spec_from_folder(
                folder, tok, max_new_tokens=FLAGS.max_new_tokens, beam_size=FLAGS.beam_size
            )
            n_frames = FLAGS.n_frames or cfg.data.n_frames
            desc = f"{'zero-shot ' * zero_shot}{FLAGS.workdir}{suffix}"
            kwargs = _decode_kwargs(n_frames, desc, reuse)
            fast = decode.with_matmul_dtype(model, dtype)
            return transcribe_utts(fast, params, tok, spec, utts, **kwargs)

    systems = []
    for dtype in FLAGS.matmul_dtype:
        suffix = "" if dtype == "float32" else f" ({dtype} matmuls)"
        if run_workdir is not None:
            if FLAGS.zero_shot:
                name = f"{restored[0].student.checkpoint} (zero-shot){suffix}"
                systems.append(
                    (
                        name,
                        functools.partial(run_workdir, zero_shot=True, dtype=dtype, suffix=suffix),
                    )
                )
            systems.append(
                (
                    FLAGS.workdir + suffix,
                    functools.partial(run_workdir, zero_shot=False, dtype=dtype, suffix=suffix),
                )
            )
        if with_models:
            for name in FLAGS.model:

                def run_model(utts, name=name, dtype=dtype, suffix=suffix):
                    model, params, tok, spec = _model_member(name, FLAGS.beam_size, dtype)
                    kwargs = _decode_kwargs(FLAGS.n_frames, name + suffix, reuse)
                    return transcribe_utts(model, params, tok, spec, utts, **kwargs)

                systems.append((name + suffix, run_model))
        if names:
            parts = names
            if weights:
                parts = [f"{n} x{w:g}" for n, w in zip(names, weights, strict=True)]
            label = f"ensemble({', '.join(parts)}){suffix}"

            def run_ensemble(utts, dtype=dtype, label=label):
                members = [_model_member(n, FLAGS.beam_size, dtype) for n in names]
                kwargs = _decode_kwargs(FLAGS.n_frames, label, reuse)
                return transcribe_ensemble(members, utts, weights=weights, **kwargs)

            systems.append((label, run_ensemble))
    labels = [n for n, _ in systems]
    if len(set(labels)) != len(labels):
        raise app.UsageError(f"systems are named twice: {labels}")
    return systems


def _reference(utts, split: str) -> dict:
    """`--reference`'s transcripts of the whole split, greedy at the model's whole window (30 s
    for Whisper), decoded once and cached with the agreement check's (`agreement.reference`)."""
    from mkd_jax import agreement
    from mkd_jax.assets import resolve_model

    name = FLAGS.reference
    model, params, tok, spec = _model_member(name, 1)
    n_frames = 2 * model.max_source_positions

    def run(u):
        kw = dict(batch_size=FLAGS.batch_size, n_frames=n_frames, desc=f"reference {name}")
        return transcribe_utts(model, params, tok, spec, u, **kw)

    return agreement.reference(
        name,
        [resolve_model(name)],
        run,
        utts,
        n_frames=n_frames,
        cache=agreement.cache_dir(),
        split=split,
        # The split's size keeps this whole-split reference apart from the agreement check's
        # 64-clip one of the same split, so neither overwrites the other's cache.
        settings={"max_new_tokens": FLAGS.max_new_tokens, "utterances": len(utts)},
    )


def load_scoring_split(source: dict, split: str, *, max_bad_fraction: float | None = None):
    """A split as scoring must see it: every utterance, with no duration filter short of the
    loaders' 4 h decoding limit (training's `max_seconds` filters its own input, not the score)."""
    source = dict(source, min_seconds=0.0, max_seconds=MAX_SECONDS)
    if max_bad_fraction is not None:
        source["max_bad_fraction"] = max_bad_fraction
    return loaders.load_split(source, split)


def main(argv):
    del argv
    for dtype in FLAGS.matmul_dtype:  # before any model, checkpoint or corpus is read
        if dtype not in MATMUL_DTYPE_NAMES:
            raise app.UsageError(
                f"--matmul_dtype={dtype}: choose one of {', '.join(MATMUL_DTYPE_NAMES)}"
            )
    if FLAGS.reference and FLAGS.group_by:
        raise app.UsageError(
            "--group_by breaks down WER against transcripts; drop it with --reference"
        )
    _check_flags()
    restored = None
    if FLAGS.workdir:
        from mkd_jax.state import restore_run

        restored = restore_run(FLAGS.workdir)
    elif FLAGS.zero_shot:
        raise app.UsageError("--zero_shot needs --workdir")
    if FLAGS.source:
        source = parse_source(FLAGS.source)
    elif restored is not None:
        from mkd_jax.roles import resolve_source

        source = resolve_source(restored[0].data.source)
    else:
        raise app.UsageError("--source is required without --workdir")
    split = split_of(source, FLAGS.split, FLAGS["split"].present)
    # Score the whole split; bad inputs are reported and capped.
    # With --reference the split's own transcripts are not needed (real recordings have none).
    src = dict(source, require_text=False) if FLAGS.reference else source
    utts = load_scoring_split(src, split, max_bad_fraction=FLAGS.max_bad_fraction)
    missing = [c for c in FLAGS.group_by or () if c not in utts.extras]
    if missing:
        raise ValueError(
            f"--group_by {','.join(missing)}: the split has no such column "
            f"(have: {', '.join(sorted(utts.extras)) or 'none'})"
        )
    systems = _systems(restored)
    ref = _reference(utts, split) if FLAGS.reference else None
    results, hypotheses = {}, {}
    for name, run in systems:
        tr = run(utts)
        if ref is None:
            groups = tuple(FLAGS.group_by or ())
            results[name] = score(utts, tr.ids, tr.hyps, groups, transcripts=tr)
        else:
            from mkd_jax.agreement import agreement

            results[name] = {"all": agreement(tr, ref, utts)}
        hypotheses[name] = dict(zip(tr.ids, tr.hyps, strict=True))
    first = systems[0][0]
    comparisons = [
        (
            first,
            name,
            compare(results[first]["all"], results[name]["all"], n_resamples=FLAGS.n_resamples),
        )
        for name, _ in systems[1:]
    ]
    title = (
        f"[{split}] of {source.get('path') or source.get('name')}; "
        f"normaliser: Whisper EnglishTextNormalizer; loader: {utts.report.summary()}"
    )
    if ref is not None:
        title += (
            f"; references: {ref['name']}'s transcripts (greedy, {ref['context']}; "
            f"{len(ref['failures'])} failed), not the split's text; utterances whose reference "
            "is empty are left out of n scored"
        )
    print(format_systems(results, comparisons, title))
    if FLAGS.output:
        out = {
            "split": split,
            "source": source,
            "loader": utts.report.summary(),
            "systems": results,
            "comparisons": [{"a": a, "b": b, **c} for a, b, c in comparisons],
            "hypotheses": hypotheses,
        }
        if ref is not None:
            out["reference"] = {k: ref[k] for k in ("name", "n_frames", "context", "failures")}
        Path(FLAGS.output).write_text(json.dumps(out, indent=1))
        logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    flags.DEFINE_list("model", ["tiny.en"], "Model names or folders, comma-separated.")
    flags.DEFINE_string("workdir", None, "A training workdir: evaluate its merged student.")
    flags.DEFINE_bool("zero_shot", False, "With --workdir: also score its student untrained.")
    flags.DEFINE_list("ensemble", [], "Models decoded as one ensemble (first: vocabulary).")
    flags.DEFINE_list("ensemble_weights", [], "Ensemble member weights (default equal).")
    flags.DEFINE_string("source", None, "KIND:PATH of the data (disk, librispeech, manifest, hf).")
    flags.DEFINE_string("split", "test", "Split to score.")
    flags.DEFINE_integer("batch_size", 16, "Decoding batch size.")
    flags.DEFINE_integer("n_frames", 0, "Mel frames per window (0: training's, or 3000).")
    flags.DEFINE_integer("max_new_tokens", 128, "Token limit.")
    flags.DEFINE_list("matmul_dtype", ["float32"],
                      "Matmul operands, each a run of every system: float32, bfloat16 "
                      "(float32 sums; ~1.3x faster on AVX512-BF16).")  # fmt: skip
    flags.DEFINE_integer("beam_size", 1, "1 = greedy; ensembles too (beams on the mixture).")
    flags.DEFINE_integer("max_batches", 0, "Score only the first max_batches * batch_size.")
    flags.DEFINE_float("max_bad_fraction", 0.01, "Loader: fail if more inputs are bad.")
    flags.DEFINE_integer("n_resamples", 10_000, "Bootstrap resamples for comparisons.")
    flags.DEFINE_list("group_by", [], "Corpus columns to break WER down by.")
    flags.DEFINE_string("reference", None,
                        "Score against this model's transcripts (greedy, whole window) instead of "
                        "the split's text: agreement on audio without transcripts.")  # fmt: skip
    flags.DEFINE_string("output", None, "Write results and hypotheses as JSON here.")
    cli.run(main)
