"""Audio augmentation for the synthetic corpus: resampling, speed, noise, telephone band.

Every function takes and returns float32 mono arrays and draws randomness only from the
`np.random.Generator` it is given, so an utterance's audio is a pure function of its seed.
An augmentation is described by a short string recorded in the manifest, e.g.
`"speed=1.1,noise=pink@10dB,telephone"` or `"none"`.
"""

from __future__ import annotations

import hashlib
import random
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown")
SNRS_DB = (5, 10, 15, 20)
SPEEDS = (0.9, 1.1)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling (`scipy.signal.resample_poly`) from `sr_in` to `sr_out` Hz."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    from scipy import signal  # here, not at import: it costs a config error a second

    ratio = Fraction(sr_out, sr_in)
    y = signal.resample_poly(x, ratio.numerator, ratio.denominator)
    return y.astype(np.float32)


def speed_perturb(x: np.ndarray, factor: float) -> np.ndarray:
    """Play `x` `factor` times faster (pitch moves with it), as Kaldi's speed perturbation.

    The output has `round(len(x) / factor)` samples.
    """
    from scipy import signal

    ratio = Fraction(1.0 / factor).limit_denominator(100)
    y = signal.resample_poly(x, ratio.numerator, ratio.denominator)
    return y[: int(round(len(x) / factor))].astype(np.float32)


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white, pink (1/f) or brown (1/f^2) noise of `n` samples."""
    if kind not in NOISE_KINDS:
        raise ValueError(f"noise kind {kind!r} is not one of {NOISE_KINDS}")
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    exponent = {"white": 0.0, "pink": 0.5, "brown": 1.0}[kind]
    noise = np.fft.irfft(spectrum / f**exponent, n)
    return (noise / np.sqrt(np.mean(noise**2) + 1e-20)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`x` plus noise scaled so that power(x) / power(noise) is `snr_db` over the whole clip."""
    noise = colored_noise(len(x), kind, rng)
    power = float(np.mean(np.asarray(x, np.float64) ** 2))
    return (x + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def telephone(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Narrow-band telephone channel: 300-3400 Hz band-pass, 8 kHz, 8-bit mu-law, back to `sr`."""
    from scipy import signal

    sos = signal.butter(4, (300, 3400), btype="bandpass", fs=sr, output="sos")
    narrow = resample(signal.sosfiltfilt(sos, x), sr, 8000)
    mu = 255.0
    peak = float(np.max(np.abs(narrow))) or 1.0
    y = narrow / peak
    coded = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127  # 8-bit code words
    decoded = np.sign(coded) * np.expm1(np.abs(coded) * np.log1p(mu)) / mu * peak
    y = resample(decoded, 8000, sr)
    return np.pad(y, (0, max(0, len(x) - len(y))))[: len(x)].astype(np.float32)


def choose(r: random.Random, clean_fraction: float = 0.4) -> str:
    """Draw an augmentation description: `"none"` with `clean_fraction`, else 1-3 effects."""
    if r.random() < clean_fraction:
        return "none"
    effects = []
    if r.random() < 0.35:
        effects.append(f"speed={r.choice(SPEEDS)}")
    if r.random() < 0.25:
        effects.append("telephone")
    if r.random() < 0.6 or not effects:
        effects.append(f"noise={r.choice(NOISE_KINDS)}@{r.choice(SNRS_DB)}dB")
    return ",".join(effects)


def apply(x: np.ndarray, description: str, rng: np.random.Generator) -> np.ndarray:
    """Apply an augmentation description (from `choose`) to 16 kHz audio `x`.

    Order is speed, then telephone, then noise: noise is added last so its SNR holds on the
    final signal.
    """
    if description == "none":
        return np.asarray(x, dtype=np.float32)
    effects = dict(e.partition("=")[::2] for e in description.split(","))
    unknown = set(effects) - {"speed", "telephone", "noise"}
    if unknown:
        raise ValueError(f"augmentation {description!r}: unknown effects {sorted(unknown)}")
    if "speed" in effects:
        x = speed_perturb(x, float(effects["speed"]))
    if "telephone" in effects:
        x = telephone(x)
    if "noise" in effects:
        kind, _, snr = effects["noise"].partition("@")
        x = add_noise(x, float(snr.removesuffix("dB")), kind, rng)
    return np.asarray(x, dtype=np.float32)


def pad(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad 0.1-0.4 s of silence on each side.

    Kokoro trims its output to the first and last phoneme; real recordings have some lead-in.
    """
    head, tail = (int(rng.uniform(0.1, 0.4) * SAMPLE_RATE) for _ in range(2))
    return np.concatenate([np.zeros(head, np.float32), x, np.zeros(tail, np.float32)])


def set_level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scale to a random peak of -12 to -1 dBFS, so a model cannot key on loudness."""
    peak = float(np.max(np.abs(x))) or 1.0
    return (x * (10 ** (rng.uniform(-12, -1) / 20) / peak)).astype(np.float32)


def training_noise(x: np.ndarray, utt_id: str, snrs_db, kinds) -> np.ndarray:
    """`x` plus one noise draw fixed by the utterance id: a kind from `kinds`, an SNR from
    `snrs_db`, both uniform (`data.train_noise`).

    The draw depends on the id alone, not on the epoch, the run or its seed: an utterance sounds
    the same every time it is read, so the teacher-output cache of a noisy training split stays
    valid and is shared by every seed. Rescaled to a peak of 0.99 when the sum would clip.
    """
    seed = int.from_bytes(hashlib.sha256(f"train_noise/{utt_id}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    kind = kinds[int(rng.integers(len(kinds)))]
    snr = float(snrs_db[int(rng.integers(len(snrs_db)))])
    y = add_noise(np.asarray(x, np.float32), snr, kind, rng)
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    return (y * (0.99 / peak)).astype(np.float32) if peak > 0.99 else y
