"""Whisper log-mel features in JAX, numerically matching transformers' `WhisperFeatureExtractor`.

The pipeline is Whisper's: pad or trim each clip to `n_frames * HOP` samples, centred STFT (periodic
Hann, reflect padding, last frame dropped), power spectrum, Slaney mel filterbank, log10 with a
1e-10 floor, clamp each clip at its max - 8, then `(x + 4) / 4`. Everything after the pad/trim runs
in one jitted function over the whole batch, compiled once per `(B, n_frames, n_mels)`.

Clips must be finite and within +-`audio.MAX_ABS_SAMPLE`: a sample of 1e30 squares to Inf in the
float32 power spectrum and the whole clip becomes NaN, so such input is rejected naming the clip,
and so is any non-finite result (a guard; valid input cannot produce one).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from mkd_jax.data.audio import MAX_ABS_SAMPLE

if TYPE_CHECKING:
    import jax

# jax and transformers are imported where they are first used: the constants and `check_clip` are
# read by commands that check their input before any model loads.

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_FRAMES = 3000  # 30 s, Whisper's full encoder context
SUPPORTED_N_MELS = (80, 128)


@functools.cache
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney mel filterbank `[N_FFT // 2 + 1, n_mels]`, built as `WhisperFeatureExtractor` does."""
    from transformers.audio_utils import mel_filter_bank

    if n_mels not in SUPPORTED_N_MELS:
        raise ValueError(f"n_mels must be one of {SUPPORTED_N_MELS}, got {n_mels!r}")
    filters = mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    )
    return filters.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    from transformers.audio_utils import window_function

    return window_function(N_FFT, "hann").astype(np.float32)  # periodic, like torch.hann_window


def _log_mel(x: jax.Array, window: jax.Array, filters: jax.Array) -> jax.Array:
    """Log-mel of `x [B, n_frames * HOP]`; returns `[B, n_mels, n_frames]`."""
    import jax
    import jax.numpy as jnp

    batch, n_samples = x.shape
    n_frames = n_samples // HOP
    half = N_FFT // 2
    x = jnp.pad(x, ((0, 0), (half, half)), mode="reflect")  # [B, N + N_FFT]
    # Frame t covers samples [t*HOP, t*HOP + N_FFT). With N_FFT = 2.5 hops, each frame is two whole
    # hop-sized chunks plus half of a third, so slicing chunks avoids a large gather.
    chunks = x[:, : (n_frames + 2) * HOP].reshape(batch, n_frames + 2, HOP)
    tail = N_FFT - 2 * HOP
    frames = jnp.concatenate(
        [chunks[:, :-2], chunks[:, 1:-1], chunks[:, 2:, :tail]], axis=-1
    )  # [B, T, N_FFT]; the STFT's extra last frame is never built, as Whisper drops it
    spec = jnp.fft.rfft(frames * window, axis=-1)  # [B, T, F]
    power = jnp.real(spec) ** 2 + jnp.imag(spec) ** 2
    mel = jnp.einsum("btf,fm->bmt", power, filters, precision=jax.lax.Precision.HIGHEST)
    log_spec = jnp.log10(jnp.maximum(mel, 1e-10))  # [B, M, T]
    peak = jnp.max(log_spec, axis=(1, 2), keepdims=True)
    log_spec = jnp.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


@functools.cache
def log_mel_jit():
    """`_log_mel` jitted once per process (its compiles are cached per input shape)."""
    import jax

    return jax.jit(_log_mel)


def check_clip(clip: np.ndarray, where: str) -> None:
    """Raises ValueError (naming `where`) unless `clip` is finite float audio within range."""
    if not np.issubdtype(clip.dtype, np.floating):
        raise ValueError(f"{where} must be float audio in [-1, 1], got dtype {clip.dtype}")
    if clip.size == 0:
        return
    peak = float(np.max(np.abs(clip)))  # NaN if any sample is NaN
    if not np.isfinite(peak):
        raise ValueError(f"{where} contains NaN or Inf samples")
    if peak > MAX_ABS_SAMPLE:
        raise ValueError(
            f"{where} has a sample of magnitude {peak:.3g}, over {MAX_ABS_SAMPLE:.0e}; "
            "float audio belongs in [-1, 1]"
        )


def _pad_or_trim(audio: np.ndarray | Sequence[np.ndarray], n_samples: int) -> np.ndarray:
    """Stack clips into `[B, n_samples]` float32, zero-padding or trimming at the end."""
    if not isinstance(audio, (list, tuple)):
        audio = np.asarray(audio)
        if audio.ndim != 2:
            raise ValueError(
                f"audio array must be [batch, samples], got shape {audio.shape}; "
                "wrap a single clip as audio[None]"
            )
        for i, row in enumerate(audio[:, :n_samples]):
            check_clip(row, f"audio[{i}]")
        audio = audio[:, :n_samples].astype(np.float32, copy=False)
        return np.pad(audio, ((0, 0), (0, n_samples - audio.shape[1])))
    if len(audio) == 0:
        raise ValueError("audio is an empty list; pass at least one clip")
    out = np.zeros((len(audio), n_samples), np.float32)
    for i, clip in enumerate(audio):
        clip = np.asarray(clip)
        if clip.ndim != 1:
            raise ValueError(f"audio[{i}] must be a 1-D clip, got shape {clip.shape}")
        clip = clip[:n_samples]  # samples past the window never reach the features
        check_clip(clip, f"audio[{i}]")
        out[i, : clip.shape[0]] = clip
    return out


def log_mel(
    audio: np.ndarray | Sequence[np.ndarray], *, n_mels: int = 80, n_frames: int = N_FRAMES
) -> np.ndarray:
    """Whisper log-mel features of a batch of 16 kHz clips.

    Args:
      audio: float array `[B, N]`, or a list of 1-D float arrays of any lengths.
      n_mels: 80 (Whisper up to v2) or 128 (large-v3).
      n_frames: output frames; each clip is zero-padded or trimmed to `n_frames * 160` samples.
        3000 (30 s) is Whisper's default; fewer gives a shorter encoder context.

    Returns:
      float32 `[B, n_mels, n_frames]`.

    Raises:
      ValueError: on non-float, non-finite or out-of-range audio (naming the clip, `audio[i]`), a
        wrong rank, an unsupported `n_mels` or a bad `n_frames`.
    """
    filters = mel_filters(n_mels)
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive int, got {n_frames!r}")
    # reflect padding needs more than N_FFT // 2 samples
    if n_frames * HOP <= N_FFT // 2:
        raise ValueError(f"n_frames must be at least 2 (reflect padding needs it), got {n_frames}")
    x = _pad_or_trim(audio, int(n_frames) * HOP)
    mel = np.asarray(log_mel_jit()(x, _hann(), filters))
    bad = np.flatnonzero(~np.isfinite(mel).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"log-mel of audio{bad.tolist()} is not finite")
    return mel
