"""Long-form transcription with timestamps: audio of any length to timed segments.

Two strategies, both batched (windows of several files, or several windows of one file, are
decoded together by one jitted decoder with Whisper's timestamp rules, `decode.timestamp_rules`):

- `sequential` (Whisper's reference algorithm): decode the 30 s window at `seek`; cut its tokens
  into segments at each pair of consecutive timestamps; if the window ends with a single timestamp
  (no speech after it) advance by the whole window, else drop the unfinished last segment and
  advance to the last complete timestamp, so the cut words are decoded again in the next window.
  A window with no timestamp pair is one segment (ending at its last timestamp, or at the window's
  end) and the seek advances by the whole window; an advance of zero is made a whole window too,
  so the loop always ends. One change to the reference: when a window ends with a single
  timestamp but the audio after it still holds speech (`has_speech`: at least `SPEECH_MIN_S` of
  frames within `SPEECH_DB` of the clip's loud frames), the seek goes to that timestamp instead of
  past the window. tiny.en often stops early in a window whose last seconds are speech; the
  reference skips that speech (measured: a 73 s recording lost its last 10 s). And a second:
  a segment that claims far more time than its words need (over `LONG_SEGMENT_S`, under
  `MIN_WORDS_PER_S`: "<|0.00|> slow lane of traffic.<|21.92|>" over 20 s of speech) ends the
  window at the first pause after its words, and the next window starts there
  (`_cut_implausible`; only for windows with at least two timestamps, i.e. segment ends the
  model itself placed).
- `chunked`: windows of `chunk_s` seconds every `chunk_s - 2 * stride_s` seconds, each transcribed
  as a clip of its own by `sequential` (so an early stop inside a chunk is resumed the same way),
  all chunks batched together; the last window ends at the audio's end (a full chunk, sharing
  more with the one before). Neighbouring windows share `2 * stride_s` seconds; their words are
  stitched there: the words of both windows in the shared span are aligned (`difflib`, on
  normalised words) and the cut is made at the aligned run nearest the middle of the span, taking
  the left window's words before it and the right window's from it on; with nothing aligned, each
  window keeps the words timed on its side of the middle. A word's time is interpolated within its
  segment by character position.

Both return `Segment`s with times in seconds from the start of the audio.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Sequence

import numpy as np

from mkd_jax.data import features, text

STRATEGIES = ("sequential", "chunked")  # how audio longer than one window is transcribed
SR = features.SAMPLE_RATE
WINDOW_FRAMES = features.N_FRAMES  # 3000 mel frames = 30 s
FRAME_S = features.HOP / SR  # 0.01 s per mel frame
TIME_STEP_S = 0.02  # one timestamp step = 2 mel frames (the encoder's stride)
SPEECH_DB = (
    30.0  # a frame within this many dB of the clip's loud frames (95th percentile) is speech
)
LONG_SEGMENT_S = 5.0  # a segment longer than this with fewer than
MIN_WORDS_PER_S = 0.7  # ... words a second skipped speech (`_cut_implausible`)
MIN_WORD_S, WORD_S = 0.25, 0.6  # shortest and typical time a word takes
PAUSE_MIN_S = 0.3  # a pause between phrases
SPEECH_MIN_S = 1.0  # this much of such frames after a window's last timestamp means more speech

# `decode_windows(list of 16 kHz windows) -> token ids per window` (generated tokens, no prompt,
# up to end-of-text), with timestamps.
DecodeWindows = Callable[[list[np.ndarray]], list[list[int]]]


@dataclasses.dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the audio
    end: float
    text: str


def window_segments(
    tokens: Sequence[int],
    timestamp_begin: int,
    decode_text: Callable[[list[int]], str],
    *,
    offset_s: float,
    window_frames: int,
) -> tuple[list[Segment], int]:
    """Segments of one window's tokens, and how many mel frames the reference algorithm advances.

    Args:
      tokens: the window's generated tokens (timestamps included, end-of-text excluded).
      timestamp_begin: id of `<|0.00|>`.
      decode_text: token ids (no timestamps) -> text.
      offset_s: the window's start in the audio.
      window_frames: mel frames of audio in the window (3000, or fewer at the end).

    Returns:
      `(segments, advance)`: segments with non-empty text, and the advance in mel frames.
    """
    toks = list(tokens)
    is_ts = [t >= timestamp_begin for t in toks]
    window_s = window_frames * FRAME_S

    def seconds(t: int) -> float:
        return (t - timestamp_begin) * TIME_STEP_S

    def seg(start: float, end: float, ids: list[int]) -> Segment:
        words = decode_text([t for t in ids if t < timestamp_begin]).strip()
        return Segment(offset_s + start, offset_s + max(end, start), words)

    single_ending = is_ts[-2:] == [False, True]
    cuts = [i + 1 for i in range(len(toks) - 1) if is_ts[i] and is_ts[i + 1]]
    if cuts:
        segments, last = [], 0
        for cut in cuts:
            part = toks[last:cut]
            segments.append(seg(seconds(part[0]), seconds(part[-1]), part))
            last = cut
        rest = toks[last:]
        if single_ending:
            segments.append(seg(seconds(rest[0]), seconds(rest[-1]), rest))
            advance = window_frames
        else:
            advance = round(seconds(toks[last - 1]) / FRAME_S)
    else:
        stamps = [t for t in toks if t >= timestamp_begin]
        end = seconds(stamps[-1]) if stamps and stamps[-1] != timestamp_begin else window_s
        start = seconds(stamps[0]) if stamps and is_ts[0] else 0.0
        segments = [seg(start, end, toks)]
        advance = window_frames
    if advance <= 0:
        advance = window_frames
    return [s for s in segments if s.text], min(advance, window_frames)


def sequential(
    clips: Sequence[np.ndarray],
    decode_windows: DecodeWindows,
    timestamp_begin: int,
    decode_text: Callable[[list[int]], str],
    *,
    batch_size: int = 16,
    on_progress: Callable[[float], None] | None = None,
) -> list[list[Segment]]:
    """Whisper's sequential long-form algorithm, batched across clips (see the module docstring).

    `on_progress(seconds)` is called with the audio seconds each round advanced.
    """
    hop = features.HOP
    seeks = [0] * len(clips)  # mel frames
    totals = [max(1, -(-len(c) // hop)) for c in clips]
    loud = [_loud_level(c) for c in clips]
    out: list[list[Segment]] = [[] for _ in clips]
    while True:
        active = [k for k in range(len(clips)) if seeks[k] < totals[k]]
        if not active:
            return out
        for b in range(0, len(active), batch_size):
            rows = active[b : b + batch_size]
            windows = [clips[k][seeks[k] * hop : (seeks[k] + WINDOW_FRAMES) * hop] for k in rows]
            for k, toks in zip(rows, decode_windows(windows), strict=True):
                frames = min(WINDOW_FRAMES, totals[k] - seeks[k])
                segs, advance = window_segments(
                    toks,
                    timestamp_begin,
                    decode_text,
                    offset_s=seeks[k] * FRAME_S,
                    window_frames=frames,
                )
                start = seeks[k] * hop
                if sum(t >= timestamp_begin for t in toks) >= 2:  # segment ends the model timed
                    segs, advance = _cut_implausible(
                        segs, advance, clips[k][start:], seeks[k] * FRAME_S, loud[k]
                    )
                out[k] += segs
                stop = _single_ending_frames(toks, timestamp_begin)
                if stop is not None and 0 < stop < advance:
                    rest = clips[k][start + stop * hop : start + advance * hop]
                    if has_speech(rest, loud[k]):
                        advance = stop
                seeks[k] += advance
                if on_progress:
                    on_progress(advance * FRAME_S)


def frame_db(x: np.ndarray) -> np.ndarray:
    """RMS level in dB of consecutive 20 ms frames."""
    n = 320
    frames = x[: len(x) // n * n].reshape(-1, n).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def _loud_level(clip: np.ndarray) -> float:
    db = frame_db(clip)
    return float(np.percentile(db, 95)) if db.size else -120.0


def has_speech(x: np.ndarray, loud_db: float) -> bool:
    """At least `SPEECH_MIN_S` of 20 ms frames within `SPEECH_DB` of `loud_db`."""
    db = frame_db(x)
    return bool(np.sum(db > loud_db - SPEECH_DB) * 0.02 >= SPEECH_MIN_S)


def _pause_after(x: np.ndarray, loud_db: float, after_s: float) -> float | None:
    """Start (s) of the first pause of at least `PAUSE_MIN_S` in `x` after `after_s`, or None."""
    quiet = frame_db(x) <= loud_db - SPEECH_DB
    need = round(PAUSE_MIN_S / 0.02)
    for i in range(round(after_s / 0.02), len(quiet) - need + 1):
        if quiet[i : i + need].all():
            return i * 0.02
    return None


def _cut_implausible(
    segs: list[Segment], advance: int, audio: np.ndarray, offset_s: float, loud_db: float
) -> tuple[list[Segment], int]:
    """Ends a window at its first implausible segment: longer than `LONG_SEGMENT_S` with fewer
    than `MIN_WORDS_PER_S` words a second (the model jumped over speech it did not transcribe).
    That segment ends at the first pause after its words could have been said (or at
    `WORD_S` a word), the window's later segments are dropped, and the seek goes there, so the
    skipped audio is decoded again from a new window. `audio` starts at the window."""
    for i, seg in enumerate(segs):
        dur, words = seg.end - seg.start, len(seg.text.split())
        if dur <= LONG_SEGMENT_S or words >= MIN_WORDS_PER_S * dur:
            continue
        rel = seg.start - offset_s
        part = audio[round(rel * SR) : round((rel + dur) * SR)]
        pause = _pause_after(part, loud_db, MIN_WORD_S * words)
        spoken = pause if pause is not None else min(dur, WORD_S * words + 0.4)
        cut = rel + spoken
        return segs[:i] + [Segment(seg.start, seg.start + spoken, seg.text)], max(
            1, min(advance, round(cut / FRAME_S))
        )
    return segs, advance


def _single_ending_frames(tokens: Sequence[int], timestamp_begin: int) -> int | None:
    """Mel frames to a window's final single timestamp, or None if it does not end that way."""
    if len(tokens) >= 2 and tokens[-1] >= timestamp_begin > tokens[-2]:
        return round((tokens[-1] - timestamp_begin) * TIME_STEP_S / FRAME_S)
    return None


@dataclasses.dataclass(frozen=True)
class _Word:
    time: float  # estimated centre, seconds from the audio start
    text: str
    key: str  # normalised, for alignment
    segment: int  # index into the stitched output's segment list


def _words(segments: list[Segment], first_index: int) -> list[_Word]:
    words = []
    for s_idx, s in enumerate(segments):
        pieces = s.text.split()
        n_chars = sum(len(p) + 1 for p in pieces)
        pos = 0
        for p in pieces:
            centre = (pos + len(p) / 2) / max(n_chars, 1)
            key = text.normalize(p) or p.lower()
            words.append(_Word(s.start + centre * (s.end - s.start), p, key, first_index + s_idx))
            pos += len(p) + 1
    return words


def _stitch(left: list[_Word], right: list[_Word], lo: float, hi: float) -> list[_Word]:
    """Left window's words, then the right's, cut once inside the shared span `[lo, hi]`."""
    mid = (lo + hi) / 2
    margin = 0.25 * (hi - lo)
    li = [i for i, w in enumerate(left) if w.time >= lo - margin]
    ri = [j for j, w in enumerate(right) if w.time <= hi + margin]
    a0 = li[0] if li else len(left)
    b1 = ri[-1] + 1 if ri else 0
    match = difflib.SequenceMatcher(
        None, [w.key for w in left[a0:]], [w.key for w in right[:b1]], autojunk=False
    )
    blocks = [m for m in match.get_matching_blocks() if m.size]
    if blocks:
        best = min(blocks, key=lambda m: abs(left[a0 + m.a + m.size // 2].time - mid) - m.size)
        cut = best.size // 2
        return left[: a0 + best.a + cut] + right[best.b + cut :]
    return [w for w in left if w.time < mid] + [w for w in right if w.time >= mid]


def chunked(
    clips: Sequence[np.ndarray],
    decode_windows: DecodeWindows,
    timestamp_begin: int,
    decode_text: Callable[[list[int]], str],
    *,
    chunk_s: float = 30.0,
    stride_s: float = 5.0,
    batch_size: int = 16,
    on_progress: Callable[[float], None] | None = None,
) -> list[list[Segment]]:
    """Overlapping windows decoded all at once and stitched (see the module docstring).

    Raises:
      ValueError: a chunk over 30 s, or strides that leave no step between windows.
    """
    if not 0 < chunk_s <= WINDOW_FRAMES * FRAME_S:
        raise ValueError(f"chunk_s={chunk_s}: need a window in (0, 30] seconds")
    if not 0 <= stride_s or not chunk_s - 2 * stride_s > 0:
        raise ValueError(f"stride_s={stride_s}: need 0 <= 2 * stride_s < chunk_s ({chunk_s})")
    chunk, step = round(chunk_s * SR), round((chunk_s - 2 * stride_s) * SR)
    plan = []  # (clip, start sample)
    for k, clip in enumerate(clips):
        start = 0
        while True:
            plan.append((k, start))
            if start + chunk >= len(clip):
                break
            # The last window ends at the clip's end, so it is a whole chunk too.
            start = min(start + step, len(clip) - chunk)
    pieces = [clips[k][s : s + chunk] for k, s in plan]
    per_chunk = sequential(
        pieces,
        decode_windows,
        timestamp_begin,
        decode_text,
        batch_size=batch_size,
        on_progress=on_progress,
    )
    out = []
    for k in range(len(clips)):
        segments: list[Segment] = []
        words: list[_Word] = []
        prev_end = 0.0
        for (c, s), segs in zip(plan, per_chunk, strict=True):
            if c != k:
                continue
            start = s / SR
            segs = [Segment(x.start + start, x.end + start, x.text) for x in segs]
            new = _words(segs, len(segments))
            segments += segs
            words = _stitch(words, new, start, prev_end) if words else new
            prev_end = start + chunk / SR
        out.append(_regroup(words, segments))
    return out


def _regroup(words: list[_Word], segments: list[Segment]) -> list[Segment]:
    """Consecutive stitched words of one window segment become one output segment."""
    out: list[Segment] = []
    run: list[_Word] = []
    for w in [*words, None]:
        if run and (w is None or w.segment != run[0].segment):
            src = segments[run[0].segment]
            start = max(src.start, out[-1].end) if out else src.start
            out.append(Segment(start, max(src.end, start), " ".join(x.text for x in run)))
            run = []
        if w is not None:
            run.append(w)
    return out


def join_text(segments: Sequence[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)
