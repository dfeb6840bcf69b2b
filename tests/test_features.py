"""Log-mel features against transformers' WhisperFeatureExtractor (numpy path)."""

import numpy as np
import pytest
import transformers.models.whisper.feature_extraction_whisper as hf_fe
from transformers import WhisperFeatureExtractor

from mkd_jax.data import features
from mkd_jax.data.features import HOP, SAMPLE_RATE, log_mel


def _vowel(rng, seconds, f0):
    """Speech-like clip: jittered glottal harmonics through two formants, syllable envelope."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = f0 * (
        1 + 0.05 * np.sin(2 * np.pi * 3 * t) + 0.01 * rng.standard_normal(t.size).cumsum() / 400
    )
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    x = np.zeros_like(t)
    for k in range(1, 40):
        fk = k * f0
        gain = np.exp(-(((fk - 700) / 150) ** 2)) + 0.5 * np.exp(-(((fk - 1200) / 200) ** 2)) + 0.02
        x += gain / k * np.sin(k * phase)
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    x = envelope * x + 1e-3 * rng.standard_normal(t.size)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def _clips(seed):
    rng = np.random.default_rng(seed)
    t = np.arange(7 * SAMPLE_RATE) / SAMPLE_RATE
    return [
        _vowel(rng, 4.3, 120.0),
        _vowel(rng, 12.0, 210.0),
        (0.1 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32),
        (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
        (np.sin(2 * np.pi * (100 + 300 * t) * t) * np.exp(-t)).astype(np.float32),  # chirp
        np.clip(2.0 * rng.standard_normal(33 * SAMPLE_RATE), -1, 1).astype(np.float32),  # > 30 s
        (1e-4 * rng.standard_normal(2 * SAMPLE_RATE)).astype(np.float32),  # very quiet
        np.zeros(1000, np.float32),  # silence: everything floors
    ]


def _reference(clips, n_mels, n_frames, monkeypatch):
    # With torch installed the extractor silently takes a torch path; pin the numpy one.
    monkeypatch.setattr(hf_fe, "is_torch_available", lambda: False)

    def no_torch(*args, **kwargs):
        raise AssertionError("torch feature path used")

    monkeypatch.setattr(WhisperFeatureExtractor, "_torch_extract_fbank_features", no_torch)
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    return fe(
        clips,
        sampling_rate=SAMPLE_RATE,
        return_tensors="np",
        padding="max_length",
        max_length=n_frames * HOP,
        truncation=True,
    ).input_features


@pytest.mark.parametrize("n_mels", [80, 128])
@pytest.mark.parametrize("n_frames", [3000, 1000])
def test_matches_whisper_feature_extractor(n_mels, n_frames, monkeypatch):
    clips = _clips(seed=n_mels + n_frames)
    ref = _reference(clips, n_mels, n_frames, monkeypatch)
    out = log_mel(clips, n_mels=n_mels, n_frames=n_frames)
    assert out.shape == (len(clips), n_mels, n_frames) == ref.shape
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_array_and_list_inputs_agree():
    rng = np.random.default_rng(1)
    audio = (0.1 * rng.standard_normal((3, 2 * SAMPLE_RATE))).astype(np.float32)
    from_array = log_mel(audio, n_frames=300)
    np.testing.assert_array_equal(from_array, log_mel(list(audio), n_frames=300))
    # float64 is accepted and cast, like the extractor does
    np.testing.assert_array_equal(from_array, log_mel(audio.astype(np.float64), n_frames=300))


def test_pads_with_zeros_and_trims_at_the_end():
    rng = np.random.default_rng(2)
    clip = (0.1 * rng.standard_normal(5000)).astype(np.float32)
    padded = np.concatenate([clip, np.zeros(100 * HOP - clip.size, np.float32)])
    np.testing.assert_array_equal(
        log_mel([clip], n_frames=100), log_mel(padded[None], n_frames=100)
    )
    long = np.concatenate([padded, rng.standard_normal(3000).astype(np.float32)])
    np.testing.assert_array_equal(
        log_mel([long], n_frames=100), log_mel(padded[None], n_frames=100)
    )


def test_batch_does_not_mix_clips():
    clips = _clips(seed=3)[:4]
    batch = log_mel(clips, n_frames=400)
    for i, clip in enumerate(clips):
        np.testing.assert_allclose(batch[i], log_mel([clip], n_frames=400)[0], atol=1e-6, rtol=0)


def test_compiles_once_per_shape():
    audio = np.zeros((2, 20 * HOP), np.float32)
    log_mel(audio, n_frames=20)
    before = features.log_mel_jit()._cache_size()
    log_mel(audio + 0.1, n_frames=20)
    log_mel([audio[0][:100], audio[1]], n_frames=20)
    assert features.log_mel_jit()._cache_size() == before
    log_mel(audio, n_frames=21)
    assert features.log_mel_jit()._cache_size() == before + 1


@pytest.mark.parametrize(
    ("audio", "kwargs", "match"),
    [
        (np.zeros((2, 16000), np.int16), {}, "int16"),
        (np.zeros(16000, np.float32), {}, r"\(16000,\)"),
        (np.zeros((1, 2, 16000), np.float32), {}, r"\(1, 2, 16000\)"),
        ([np.zeros(10, np.float32), np.zeros((2, 10), np.float32)], {}, r"audio\[1\].*\(2, 10\)"),
        ([np.zeros(10, np.int32)], {}, "int32"),
        ([], {}, "empty"),
        (np.zeros((1, 16000), np.float32), {"n_mels": 64}, "64"),
        (np.zeros((1, 16000), np.float32), {"n_frames": 0}, "0"),
        (np.zeros((1, 16000), np.float32), {"n_frames": 1}, "1"),
    ],
)
def test_rejects_bad_input(audio, kwargs, match):
    with pytest.raises(ValueError, match=match):
        log_mel(audio, **kwargs)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.nan, r"audio\[1\] contains NaN or Inf"),
        (-np.inf, r"audio\[1\] contains NaN or Inf"),
        (1e30, r"audio\[1\] has a sample of magnitude 1e\+30"),
    ],
)
def test_rejects_non_finite_and_absurdly_loud_audio_naming_the_clip(bad, match):
    # 1e30 is finite, but squares to Inf in the float32 power spectrum: the clip's log-mel would
    # be all NaN, which is what this guards against.
    clip = np.full(16000, 0.1, np.float32)
    clip[123] = bad
    good = np.zeros(16000, np.float32)
    with pytest.raises(ValueError, match=match):
        log_mel([good, clip], n_frames=100)
    with pytest.raises(ValueError, match=match):
        log_mel(np.stack([good, clip]), n_frames=100)
    tail = np.concatenate([good, [np.nan]]).astype(np.float32)  # past the window: never used
    assert np.isfinite(log_mel([tail], n_frames=100)).all()


def test_loud_but_sane_audio_gives_finite_features():
    # Float files scaled like int16 exist; the scale only shifts the log-mel by a constant.
    t = np.arange(16000) / 16000
    clip = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    quiet, loud = log_mel([clip, 32768 * clip], n_frames=100)
    assert np.isfinite(loud).all()
    np.testing.assert_allclose(loud - quiet, 2 * np.log10(32768) / 4, atol=1e-4)
