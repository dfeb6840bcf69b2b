"""Reading audio files into 16 kHz mono float32, with errors that name the file.

Any problem with one file raises `AudioError`, whose message names the file (`display_name`, safe
to print whatever bytes the name holds) and whose `reason` is a short key (`REASONS`); callers
report the file and go on with the next. The header is checked before any sample is allocated:

- the sample rate lies in `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE` (4 kHz..384 kHz): below 4 kHz no
  usable speech band is left, and no common recording format goes above 384 kHz. Headers saying
  1 Hz or 2**31 - 1 Hz are corrupt, not audio to resample;
- for uncompressed containers (WAV, AIFF, ...), frames x channels x sample width fit the file;
  for compressed ones (FLAC, OGG, MP3) at most `_MAX_SAMPLES_PER_BYTE` samples per file byte, more
  than even digital silence compresses to (a FLAC header saying 2**36 - 1 frames, or 0 for
  "unknown", which libsndfile reports as 2**63 - 1, fails this);
- the duration the header claims is at most `max_seconds` (`MAX_SECONDS`, 4 h, by default).

Samples are then decoded in blocks of about `_BLOCK_SAMPLES`, so memory follows the audio really
present rather than what a compressed header claims, and decoding stops once `max_seconds` is
passed. Every sample must be finite and within +-`MAX_ABS_SAMPLE` (1e6): float files scaled like
int16 (+-32768) pass, while larger values are corrupt data and, near 1e16, overflow Whisper's
float32 power spectrum into NaN log-mels.

Resampling is polyphase with the ratio `16000 / sr` as a fraction of denominator at most 1000:
every common rate (8k, 11.025k, 22.05k, 44.1k, 48k, 96k, ...) is exact, and an odd rate such as
44101 Hz changes speed by under 1e-4 instead of needing a filter with millions of taps.
"""

from __future__ import annotations

import io
import os
import stat
from fractions import Fraction
from typing import BinaryIO, NamedTuple

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
MIN_SAMPLE_RATE = 4_000
MAX_SAMPLE_RATE = 384_000
MAX_SECONDS = 4 * 3600.0
MAX_ABS_SAMPLE = 1e6
REASONS = {
    "missing": "no such file", "not_a_file": "not a regular file", "empty": "no audio samples",
    "unreadable": "unreadable or corrupt audio", "sample_rate": "sample rate out of range",
    "too_long": "longer than max_seconds", "bad_samples": "NaN, Inf or out-of-range samples",
}  # fmt: skip
_BLOCK_SAMPLES = 1 << 20
_MAX_SAMPLES_PER_BYTE = 16_384  # FLAC silence, the best case, is about 400 samples per byte
# Uncompressed containers whose data size follows from the header; bytes per sample by subtype.
_UNCOMPRESSED = {"WAV", "WAVEX", "W64", "RF64", "AIFF", "AU", "CAF", "NIST", "RAW"}
_SAMPLE_BYTES = {
    "PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
    "ULAW": 1, "ALAW": 1,
}  # fmt: skip
# What libsndfile, numpy and scipy raise on bad data; anything else is a bug and propagates.
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError, EOFError)


class AudioError(ValueError):
    """An audio file or buffer that cannot be used: `"{where}: {detail}"`, one line.

    `where` names it (see `display_name`), `detail` says why with the offending value, and
    `reason` is one of `REASONS`' keys, for callers that count failures by kind.
    """

    def __init__(self, where: str, detail: str, reason: str = "unreadable"):
        super().__init__(f"{where}: {detail}")
        self.where, self.detail, self.reason = where, detail, reason


class Header(NamedTuple):
    """What an audio header says, after `read_header`'s checks."""

    sample_rate: int
    frames: int
    channels: int
    format: str
    subtype: str


def display_name(path: str | bytes | os.PathLike) -> str:
    """A printable, encodable form of a file name, for messages and output lines.

    Bytes that are not UTF-8 (which reach Python as lone surrogates) become `\\xNN`; a name with
    control characters (tab, newline, ...) is shown as its Python repr, so it stays on one line.
    """
    raw = path if isinstance(path, bytes) else os.fsencode(path)
    name = raw.decode("utf-8", "backslashreplace")
    return name if name.isprintable() else repr(name)


def check_sample_rate(sr, where: str) -> int:
    """`sr` as an int if it is within `MIN_SAMPLE_RATE`..`MAX_SAMPLE_RATE`; else `AudioError`."""
    if not isinstance(sr, (int, np.integer)) or not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioError(
            where,
            f"sample rate {sr!r} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz "
            "(corrupt header?)",
            "sample_rate",
        )
    return int(sr)


def check_samples(x: np.ndarray, where: str) -> None:
    """Raises `AudioError` unless every sample is finite and within +-`MAX_ABS_SAMPLE`."""
    if x.size == 0:
        return
    peak = float(np.max(np.abs(x)))  # NaN if any sample is NaN
    if not np.isfinite(peak):
        raise AudioError(where, "audio contains NaN or Inf samples", "bad_samples")
    if peak > MAX_ABS_SAMPLE:
        raise AudioError(
            where,
            f"sample magnitude {peak:.3g} exceeds {MAX_ABS_SAMPLE:.0e} (corrupt data?)",
            "bad_samples",
        )


def _resample(audio: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return audio
    from scipy.signal import resample_poly  # a second to import: only when resampling

    ratio = Fraction(SAMPLE_RATE, sr).limit_denominator(1000)
    return resample_poly(audio, ratio.numerator, ratio.denominator).astype(np.float32)


def to_16k_mono(audio: np.ndarray, sr: int, *, where: str = "audio") -> np.ndarray:
    """Check decoded samples, downmix `[N, C]` to mono and resample to 16 kHz."""
    sr = check_sample_rate(sr, where)
    audio = np.asarray(audio)
    if audio.size == 0:
        raise AudioError(where, "empty audio", "empty")
    if audio.ndim not in (1, 2) or not np.issubdtype(audio.dtype, np.number):
        raise AudioError(where, "audio must be 1-D or [frames, channels] numbers, "
                         f"got {audio.dtype} {audio.shape}")  # fmt: skip
    check_samples(audio, where)
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim == 2:
        audio = audio.mean(axis=1, dtype=np.float32)
    return _resample(audio, sr)


def _opened(source) -> tuple[object, int, str]:
    """(what soundfile opens, size in bytes, display name) of a path, bytes or binary file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(source), len(source), "<bytes>"
    if hasattr(source, "read"):
        where = display_name(getattr(source, "name", None) or "<stream>")
        size = source.seek(0, os.SEEK_END)
        source.seek(0)
        return source, size, where
    where = display_name(source)
    try:
        st = os.stat(source)
    except FileNotFoundError:
        raise AudioError(where, "no such file", "missing") from None
    except OSError as e:
        raise AudioError(where, f"cannot stat ({e.strerror})", "missing") from None
    if stat.S_ISDIR(st.st_mode):
        raise AudioError(where, "is a directory, not an audio file", "not_a_file")
    if not stat.S_ISREG(st.st_mode):
        raise AudioError(where, "not a regular file (pipe, device or socket)", "not_a_file")
    # soundfile encodes str paths strictly; bytes keep non-UTF-8 names intact
    return os.fsencode(source), st.st_size, where


def _check_header(f: sf.SoundFile, size: int, where: str, max_seconds: float | None) -> Header:
    sr = check_sample_rate(f.samplerate, where)
    head = Header(sr, int(f.frames), int(f.channels), str(f.format), str(f.subtype))
    if head.channels < 1:
        raise AudioError(where, f"header says {head.channels} channels")
    if head.frames <= 0:
        raise AudioError(where, f"no audio samples (header says {head.frames} frames)", "empty")
    width = _SAMPLE_BYTES.get(head.subtype)
    if head.format in _UNCOMPRESSED and width and head.frames * head.channels * width > size:
        raise AudioError(
            where,
            f"header says {head.frames} frames x {head.channels} channels of "
            f"{head.subtype}, more than the {size}-byte file holds (truncated or corrupt)",
        )
    if head.format not in _UNCOMPRESSED and head.frames * head.channels > (
        _MAX_SAMPLES_PER_BYTE * size
    ):
        raise AudioError(
            where,
            f"header says {head.frames} frames x {head.channels} channels, implausible "
            f"for a {size}-byte {head.format} file (corrupt header)",
        )
    if max_seconds is not None and head.frames > max_seconds * sr:
        raise AudioError(
            where,
            f"header says {head.frames / sr:.6g} s, longer than max_seconds={max_seconds:g}",
            "too_long",
        )
    return head


def read_header(
    source: str | os.PathLike | bytes | BinaryIO, *, max_seconds: float | None = None
) -> Header:
    """The checked header of a file path, encoded bytes or binary file; reads no samples.

    Raises:
      AudioError: naming the file, with `reason` set (see the module docstring for the checks).
    """
    opened, size, where = _opened(source)
    if size == 0:
        raise AudioError(where, "empty file (0 bytes)", "empty")
    try:
        with sf.SoundFile(opened) as f:
            return _check_header(f, size, where, max_seconds)
    except AudioError:
        raise
    except _DECODE_ERRORS as e:
        raise AudioError(where, f"unreadable audio ({_one_line(e)})") from e


def _decode(f: sf.SoundFile, head: Header, where: str, max_seconds: float | None) -> np.ndarray:
    """Mono float32 at the file's rate, read block by block and checked as it comes."""
    limit = None if max_seconds is None else int(max_seconds * head.sample_rate)
    block = max(1, _BLOCK_SAMPLES // head.channels)
    parts, n = [], 0
    while True:
        x = f.read(block, dtype="float32", always_2d=True)  # [n, C]
        if len(x) == 0:
            break
        check_samples(x, where)
        parts.append(x[:, 0] if head.channels == 1 else x.mean(axis=1, dtype=np.float32))
        n += len(x)
        if limit is not None and n > limit:
            raise AudioError(
                where, f"decodes to more than max_seconds={max_seconds:g} s", "too_long"
            )
    if n == 0:
        raise AudioError(where, "no audio samples could be decoded", "empty")
    return np.concatenate(parts)


def read_audio(
    source: str | os.PathLike | bytes | BinaryIO, *, max_seconds: float | None = MAX_SECONDS
) -> np.ndarray:
    """Read a file path or encoded bytes (WAV, FLAC, OGG, ...) as 16 kHz mono float32.

    Args:
      source: a path (any bytes in the name), encoded bytes or a seekable binary file.
      max_seconds: reject longer audio, from the header before decoding and while decoding;
        None for no limit.

    Raises:
      AudioError: for anything wrong with this one file, naming it; `reason` says what kind.
    """
    opened, size, where = _opened(source)
    if size == 0:
        raise AudioError(where, "empty file (0 bytes)", "empty")
    try:
        with sf.SoundFile(opened) as f:
            head = _check_header(f, size, where, max_seconds)
            audio = _decode(f, head, where, max_seconds)
        return _resample(audio, head.sample_rate)
    except AudioError:
        raise
    except MemoryError:
        raise AudioError(where, "out of memory decoding it") from None
    except _DECODE_ERRORS as e:
        raise AudioError(where, f"unreadable audio ({_one_line(e)})") from e


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
