"""Reading audio files into 16 kHz mono float32, with errors that name the file."""

from __future__ import annotations

import io
import os
from math import gcd

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """An audio file or buffer that cannot be used; the message names it and says why."""


def to_16k_mono(audio: np.ndarray, sr: int, *, where: str = "audio") -> np.ndarray:
    """Downmix to mono and resample to 16 kHz with a polyphase filter."""
    if audio.size == 0:
        raise AudioError(f"{where}: empty audio")
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    audio = audio.astype(np.float32)
    if sr != SAMPLE_RATE:
        if sr <= 0:
            raise AudioError(f"{where}: invalid sample rate {sr}")
        g = gcd(SAMPLE_RATE, sr)
        audio = resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32)
    if not np.isfinite(audio).all():
        raise AudioError(f"{where}: audio contains NaN or Inf samples")
    return audio


def read_audio(source: str | os.PathLike | bytes) -> np.ndarray:
    """Read a file path or encoded bytes (WAV, FLAC, OGG, ...) as 16 kHz mono float32."""
    where = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
    if not isinstance(source, bytes) and not os.path.isfile(source):
        raise AudioError(f"{where}: no such file")
    try:
        audio, sr = sf.read(
            io.BytesIO(source) if isinstance(source, bytes) else source,
            dtype="float32",
            always_2d=False,
        )
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"{where}: unreadable audio ({e})") from e
    return to_16k_mono(audio, sr, where=where)
