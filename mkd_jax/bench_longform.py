"""Long-form check: recordings joined from a split's utterances, transcribed whole, against the
same utterances transcribed one by one.

    python -m mkd_jax.bench longform --source disk:CORPUS --split test_ood [--minutes=3]

The split's utterances, in order, are joined with `PAUSE_S` of silence into recordings of at least
`--minutes` each (the remainder joins the last one); a recording's reference is its utterances'
transcripts joined with spaces. Three ways to transcribe, same model, greedy, with timestamps:
each utterance alone (its own 30 s window), then each recording with `--long_form sequential` and
`chunked` (30 s windows, 5 s strides). WER and CER over all recordings (Whisper normaliser),
the word counts behind them, and wall time.
"""

from __future__ import annotations

import time

import jiwer
import numpy as np

from mkd_jax import longform
from mkd_jax.data import features, text
from mkd_jax.transcriber import Transcriber

PAUSE_S = 0.6


def recordings(utts, minutes: float) -> list[tuple[np.ndarray, str, int]]:
    """`[(audio, reference, n utterances)]`, each at least `minutes` long (see the docstring)."""
    pause = np.zeros(round(PAUSE_S * features.SAMPLE_RATE), np.float32)
    out, audio, refs = [], [], []
    seconds = 0.0
    for i in range(len(utts)):
        x = utts.audio(i)
        audio += [x, pause]
        refs.append(utts.texts[i])
        seconds += len(x) / features.SAMPLE_RATE + PAUSE_S
        if seconds >= 60 * minutes:
            out.append((np.concatenate(audio), " ".join(refs), len(refs)))
            audio, refs, seconds = [], [], 0.0
    if refs:
        if out:
            last, ref, n = out.pop()
            audio, refs = [last, *audio], [ref, *refs]
            out.append((np.concatenate(audio), " ".join(refs), n + len(refs) - 1))
        else:
            out.append((np.concatenate(audio), " ".join(refs), len(refs)))
    return out


def _rates(refs: list[str], hyps: list[str]) -> tuple[float, float, int]:
    r = [text.normalize(x) for x in refs]
    h = [text.normalize(x) for x in hyps]
    words = sum(len(x.split()) for x in r)
    return 100 * jiwer.wer(r, h), 100 * jiwer.cer(r, h), words


def bench_longform(model: str, source: dict, split: str, minutes: float) -> None:
    from mkd_jax.evaluate import load_scoring_split

    utts = load_scoring_split(source, split)
    recs = recordings(utts, minutes)
    refs = [r for _, r, _ in recs]
    lengths = ", ".join(f"{len(a) / features.SAMPLE_RATE / 60:.1f}" for a, _, _ in recs)
    print(
        f"{split}: {len(utts)} utterances joined with {PAUSE_S} s pauses into {len(recs)} "
        f"recordings of {lengths} min; model {model}, greedy with timestamps"
    )
    rows = []
    pieces = Transcriber(model, long_form="sequential")
    t = time.perf_counter()
    texts = pieces([utts.audio(i) for i in range(len(utts))])
    joined, k = [], 0
    for _, _, n in recs:
        joined.append(" ".join(texts[k : k + n]))
        k += n
    rows.append(("utterances one by one", joined, time.perf_counter() - t))
    for mode in ("sequential", "chunked"):
        tr = Transcriber(model, long_form=mode)
        t = time.perf_counter()
        hyps = [longform.join_text(s) for s in tr.segments([a for a, _, _ in recs])]
        rows.append((f"whole recordings, {mode}", hyps, time.perf_counter() - t))
    base = None
    print("| transcription | WER % | CER % | words | vs one by one (WER points) | wall s |")
    print("|---|---|---|---|---|---|")
    for label, hyps, secs in rows:
        wer, cer, words = _rates(refs, hyps)
        base = wer if base is None else base
        print(f"| {label} | {wer:.2f} | {cer:.2f} | {words} | {wer - base:+.2f} | {secs:.0f} |")
