"""Timed segments as SRT (composed by the `srt` library), WebVTT, JSON or plain text."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence

import srt as srt_lib

from mkd_jax.longform import Segment

FORMATS = ("txt", "json", "srt", "vtt")


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue in both formats, and "-->" would read as a timing line.
    return " ".join(text.split()).replace("-->", "->")


def _timed(segments: Sequence[Segment]) -> list[Segment]:
    """Cues in order with end > start (players reject zero-length cues)."""
    out = []
    for s in segments:
        if not s.text.strip():
            continue
        start = max(s.start, out[-1].start if out else 0.0)
        out.append(Segment(start, max(s.end, start + 0.01), s.text))
    return out


def srt(segments: Sequence[Segment]) -> str:
    td = lambda s: datetime.timedelta(milliseconds=max(0, round(s * 1000)))  # noqa: E731
    subs = [
        srt_lib.Subtitle(k, td(s.start), td(s.end), _cue_text(s.text))
        for k, s in enumerate(_timed(segments), start=1)
    ]
    return srt_lib.compose(subs, reindex=False)


def vtt(segments: Sequence[Segment]) -> str:
    cues = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_cue_text(s.text)}\n"
        for s in _timed(segments)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def as_json(name: str, segments: Sequence[Segment]) -> str:
    return json.dumps(
        {
            "file": name,
            "text": " ".join(s.text for s in segments if s.text),
            "segments": [
                {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text}
                for s in segments
            ],
        },
        ensure_ascii=False,
    )


def render(fmt: str, name: str, segments: Sequence[Segment]) -> str:
    """The file body in `fmt` (one of `FORMATS`)."""
    if fmt == "txt":
        return " ".join(s.text for s in segments if s.text) + "\n"
    if fmt == "json":
        return as_json(name, segments) + "\n"
    if fmt == "srt":
        return srt(segments)
    if fmt == "vtt":
        return vtt(segments)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
