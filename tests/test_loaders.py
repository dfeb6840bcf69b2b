"""Loaders on tiny corpora written here: LibriSpeech folder, manifests, HF datasets, bad input."""

import io
import json
import logging

import datasets
import numpy as np
import pytest
import soundfile as sf

from mkd_jax.data.audio import AudioError, read_audio
from mkd_jax.data.loaders import BadInputError, load_split


def _clip(seconds, sr=16000, freq=440.0, channels=1, seed=0):
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(seed).standard_normal(
        t.size
    )
    x = x.astype(np.float32)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def _write(path, seconds, sr=16000, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _clip(seconds, sr, **kw), sr)
    return path


def _bytes(seconds, sr=16000, fmt="FLAC"):
    buf = io.BytesIO()
    sf.write(buf, _clip(seconds, sr), sr, format=fmt)
    return buf.getvalue()


def test_librispeech_folder(tmp_path):
    split = tmp_path / "LibriSpeech" / "dev-clean"
    lines = {
        ("84", "121123"): [
            "84-121123-0000 GO DO YOU HEAR",
            "84-121123-0001 BUT IN LESS THAN FIVE MINUTES",
        ],
        ("174", "50561"): ["174-50561-0000 FORGOTTEN TOO THE NAME OF GILLIAN"],
    }
    seconds = {"84-121123-0000": 1.0, "84-121123-0001": 2.5, "174-50561-0000": 0.75}
    for (spk, ch), rows in lines.items():
        folder = split / spk / ch
        folder.mkdir(parents=True)
        (folder / f"{spk}-{ch}.trans.txt").write_text("\n".join(rows) + "\n")
        for row in rows:
            uid = row.split()[0]
            _write(folder / f"{uid}.flac", seconds[uid], freq=200 + 100 * len(uid))
    utts = load_split({"kind": "librispeech", "path": str(tmp_path / "LibriSpeech")}, "dev-clean")
    # transcripts are sorted by path: speaker 174 before 84
    assert utts.ids == ["174-50561-0000", "84-121123-0000", "84-121123-0001"]
    assert utts.texts == [
        "FORGOTTEN TOO THE NAME OF GILLIAN",
        "GO DO YOU HEAR",
        "BUT IN LESS THAN FIVE MINUTES",
    ]
    np.testing.assert_allclose(utts.durations, [seconds[i] for i in utts.ids], atol=1e-4)
    assert utts.report.kept == utts.report.seen == 3 and utts.report.bad == 0
    audio = utts.audio(2)
    expected, _ = sf.read(split / "84" / "121123" / "84-121123-0001.flac", dtype="float32")
    assert audio.dtype == np.float32 and audio.shape == (40000,)
    np.testing.assert_array_equal(audio, expected)
    with pytest.raises(FileNotFoundError, match="test-other"):
        load_split({"kind": "librispeech", "path": str(tmp_path / "LibriSpeech")}, "test-other")


def test_manifest_csv_keeps_extra_columns_and_resamples(tmp_path):
    _write(tmp_path / "wav" / "a.wav", 1.0)
    _write(tmp_path / "wav" / "b.wav", 2.0, sr=22050, channels=2)  # resampled, downmixed
    (tmp_path / "train.csv").write_text(
        'path,text,speaker\nwav/a.wav,"Hello, world.",s1\nwav/b.wav,  Second one!  ,s2\n'
    )
    utts = load_split({"kind": "manifest", "path": str(tmp_path)}, "train")
    assert utts.ids == ["wav/a", "wav/b"]
    assert utts.texts == ["Hello, world.", "Second one!"]  # raw: case and punctuation kept
    assert utts.extras == {"speaker": ["s1", "s2"]}
    np.testing.assert_allclose(utts.durations, [1.0, 2.0], atol=1e-4)
    b = utts.audio(1)
    assert b.shape == (32000,) and b.dtype == np.float32
    np.testing.assert_array_equal(b, read_audio(tmp_path / "wav" / "b.wav"))
    bad = tmp_path / "bad.csv"
    bad.write_text("file,transcript\nx.wav,hi\n")
    with pytest.raises(ValueError, match="bad.csv.*'path' and 'text'"):
        load_split({"kind": "manifest", "path": str(bad)}, "train")


def test_manifest_jsonl_with_split_placeholder(tmp_path):
    clip = _write(tmp_path / "audio" / "x.flac", 1.5)
    rows = [
        {"audio_filepath": str(clip), "text": "absolute path", "duration": 1.5, "id": "u1"},
        {"audio_filepath": "audio/x.flac", "text": "relative path", "id": "u2"},
    ]
    (tmp_path / "dev.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    utts = load_split({"kind": "manifest", "path": str(tmp_path / "{split}.jsonl")}, "dev")
    assert utts.ids == ["u1", "u2"]
    assert utts.texts == ["absolute path", "relative path"]
    assert utts.extras["duration"] == [1.5, None]
    np.testing.assert_array_equal(utts.audio(0), utts.audio(1))
    (tmp_path / "broken.jsonl").write_text('{"path": "a.wav", "text": "ok"}\n{"path": \n')
    with pytest.raises(ValueError, match="broken.jsonl:2"):
        load_split({"kind": "manifest", "path": str(tmp_path / "broken.jsonl")}, "dev")


def _synth_like(n, seconds=1.0, split="train"):
    """Rows in the layout `data/synth.py` saves."""
    return {
        "id": [f"{split}-{i:04d}" for i in range(n)],
        "text": [f"Sentence number {i}." for i in range(n)],
        "audio": [{"bytes": _bytes(seconds + 0.25 * i), "path": f"{i}.flac"} for i in range(n)],
        "sampling_rate": [16000] * n,
        "duration": [seconds + 0.25 * i for i in range(n)],
        "engine": ["espeak"] * n,
        "voice": [f"v{i % 2}" for i in range(n)],
        "voice_seen": [i % 2 == 0 for i in range(n)],
        "augment": ["none"] * n,
    }


def test_hf_load_from_disk(tmp_path):
    splits = {s: datasets.Dataset.from_dict(_synth_like(n, split=s)) for s, n in
              [("train", 4), ("dev", 2), ("test", 2)]}  # fmt: skip
    dd = datasets.DatasetDict(splits).cast_column("audio", datasets.Audio(decode=False))
    dd.save_to_disk(str(tmp_path / "corpus"))
    utts = load_split({"kind": "disk", "path": str(tmp_path / "corpus")}, "train")
    assert utts.ids == [f"train-{i:04d}" for i in range(4)]
    assert utts.texts[3] == "Sentence number 3."
    np.testing.assert_allclose(utts.durations, [1.0, 1.25, 1.5, 1.75], atol=1e-4)
    np.testing.assert_allclose(utts.durations, utts.extras["duration"], atol=1e-4)
    assert utts.extras["voice"] == ["v0", "v1", "v0", "v1"]
    assert utts.extras["voice_seen"] == [True, False, True, False]
    row = datasets.load_from_disk(str(tmp_path / "corpus"))["train"][2]
    np.testing.assert_array_equal(utts.audio(2), read_audio(row["audio"]["bytes"]))
    with pytest.raises(KeyError, match="validation") as e:
        load_split({"kind": "disk", "path": str(tmp_path / "corpus")}, "validation")
    assert isinstance(e.value, ValueError)  # so every command prints it as one line


def test_hf_load_dataset_parquet_with_array_and_path_audio(tmp_path):
    x = _clip(0.5, sr=8000)
    _write(tmp_path / "c.wav", 0.75)
    pq = tmp_path / "arrays.parquet"
    datasets.Dataset.from_dict(
        {"sentence": ["array audio"], "audio": [{"array": x.tolist(), "sampling_rate": 8000}]}
    ).to_parquet(str(pq))
    cfg = {"kind": "hf", "name": "parquet", "data_files": {"train": str(pq)},
           "text_column": "sentence"}  # fmt: skip
    utts = load_split(cfg, "train")
    assert utts.ids == ["train-0000000"] and utts.texts == ["array audio"]
    np.testing.assert_allclose(utts.durations, [0.5])
    assert utts.audio(0).shape == (8000,)  # 8 kHz array resampled to 16 kHz
    pq2 = tmp_path / "paths.parquet"
    datasets.Dataset.from_dict({"text": ["a path"], "audio": [str(tmp_path / "c.wav")]}).to_parquet(
        str(pq2)
    )
    utts = load_split({"kind": "hf", "name": "parquet", "data_files": {"test": str(pq2)}}, "test")
    np.testing.assert_array_equal(utts.audio(0), read_audio(tmp_path / "c.wav"))


def _bad_corpus(tmp_path, n_good=3):
    """A CSV manifest with good rows and one row for each kind of bad input."""
    rows = []
    for i in range(n_good):
        rows.append((_write(tmp_path / f"good{i}.wav", 1.0), f"good {i}", ""))
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x01garbage that is not audio" * 10)
    (tmp_path / "empty.wav").write_bytes(b"")
    rows += [
        (tmp_path / "corrupt.wav", "corrupt bytes", ""),
        (tmp_path / "empty.wav", "empty file", ""),
        (tmp_path / "missing.wav", "missing file", ""),
        (_write(tmp_path / "notext.wav", 1.0), "   ", ""),
        (_write(tmp_path / "low.wav", 1.0, sr=4000), "four kilohertz", ""),
        (_write(tmp_path / "declared.wav", 1.0), "declared 8 kHz", "8000"),
        (_write(tmp_path / "long.wav", 31.0), "too long", ""),
        (_write(tmp_path / "short.wav", 0.2), "too short", ""),
    ]
    text = "path,text,sampling_rate\n" + "".join(f'{p.name},"{t}",{sr}\n' for p, t, sr in rows)
    (tmp_path / "train.csv").write_text(text)
    return {"kind": "manifest", "path": str(tmp_path / "train.csv"), "min_seconds": 0.5}


def test_bad_input_is_skipped_counted_and_named(tmp_path, caplog):
    cfg = _bad_corpus(tmp_path) | {"max_bad_fraction": 0.75}
    with caplog.at_level(logging.WARNING, logger="mkd_jax.data.loaders"):
        utts = load_split(cfg, "train")
    assert utts.ids == ["good0", "good1", "good2"]
    report = utts.report
    assert report.seen == 11 and report.kept == 3
    assert dict(report.counts) == {
        "unreadable": 1, "empty_audio": 1, "missing": 1, "empty_text": 1, "sample_rate": 2,
        "too_long": 1, "too_short": 1,
    }  # fmt: skip
    assert report.bad == 6 and report.filtered == 2
    assert report.bad_fraction == pytest.approx(6 / 11)
    assert report.filtered_seconds == pytest.approx(31.2, abs=1e-3)
    log = caplog.text
    for name, why in [("corrupt.wav", "unreadable"), ("empty.wav", "empty audio"),
                      ("missing.wav", "missing"), ("notext", "empty transcript"),
                      ("low.wav", "4000 Hz"), ("declared.wav", "sampling_rate says 8000"),
                      ("long.wav", "31.00 s"), ("short.wav", "0.20 s")]:  # fmt: skip
        assert any(name in r.message and why in r.message for r in caplog.records), (name, log)
    summary = report.summary()
    for part in ["kept 3 of 11", "bad 6", "missing audio file: 1", "unexpected sample rate: 2",
                 "longer than max_seconds: 1", "filtered 2"]:  # fmt: skip
        assert part in summary, summary


def test_bad_fraction_over_threshold_fails_with_counts(tmp_path):
    cfg = _bad_corpus(tmp_path)
    with pytest.raises(BadInputError) as err:
        load_split(cfg, "train")  # default max_bad_fraction 0.01
    msg = str(err.value)
    assert "train.csv" in msg and "bad 6" in msg and "1.00%" in msg and "54.55%" in msg
    load_split(cfg | {"max_bad_fraction": 6 / 11}, "train")  # exactly at the limit passes


def test_threshold_counts_only_bad_input_not_duration_filtering(tmp_path):
    for i in range(20):
        _write(tmp_path / f"{i}.wav", 0.5 if i < 10 else 2.0)
    (tmp_path / "gone.wav").touch()
    rows = [f"{i}.wav,utterance {i}" for i in range(20)] + ["gone.wav,empty"]
    (tmp_path / "m.csv").write_text("path,text\n" + "\n".join(rows) + "\n")
    cfg = {"kind": "manifest", "path": str(tmp_path / "m.csv"), "max_seconds": 1.0}
    with pytest.raises(BadInputError, match="4.76%"):  # 1 bad of 21; 10 filtered do not count
        load_split(cfg, "train")
    utts = load_split(cfg | {"max_bad_fraction": 0.05}, "train")
    assert len(utts) == 10 and utts.report.counts["too_long"] == 10
    with pytest.raises(BadInputError, match="kept 0 of 21.*no usable utterances"):
        load_split(cfg | {"max_bad_fraction": 0.05, "max_seconds": 0.1}, "train")


def test_limit_and_lazy_decoding(tmp_path):
    rows = [f"{_write(tmp_path / f'{i}.wav', 1.0).name},text {i}" for i in range(5)]
    (tmp_path / "m.csv").write_text("path,text\n" + "\n".join(rows) + "\n")
    utts = load_split({"kind": "manifest", "path": str(tmp_path / "m.csv"), "limit": 2}, "x")
    assert utts.ids == ["0", "1"] and utts.report.seen == 2
    (tmp_path / "1.wav").unlink()  # nothing was decoded up front, so this surfaces only now
    with pytest.raises(AudioError, match="'1'.*no such file"):
        utts.audio(1)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        load_split({"kind": "folder", "path": "x"}, "train")
    with pytest.raises(ValueError, match="unknown data source key.*max_second"):
        load_split({"kind": "manifest", "path": "x", "max_second": 3}, "train")
    (tmp_path / "m.csv").write_text("path,text\na.wav,one\na.wav,two\n")
    _write(tmp_path / "a.wav", 1.0)
    with pytest.raises(ValueError, match="duplicate utterance ids.*'a'"):
        load_split({"kind": "manifest", "path": str(tmp_path / "m.csv")}, "train")


def test_training_noise_is_fixed_by_the_id_and_holds_its_snr(tiny_librispeech):
    utts = load_split({"kind": "librispeech", "path": str(tiny_librispeech)}, "train")
    noisy = utts.with_noise((10,), ("pink",))
    clean = utts.audio(0)
    first = noisy.audio(0)
    np.testing.assert_array_equal(first, noisy.audio(0))  # every read, the same draw
    noise = first - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - 10.0) < 0.01, snr  # 0.1-amplitude tones: no rescaling needed
    other = noisy.audio(1) - utts.audio(1)
    n = min(len(noise), len(other))
    assert abs(np.corrcoef(noise[:n], other[:n])[0, 1]) < 0.2  # each id its own draw
    np.testing.assert_array_equal(utts.audio(0), clean)  # the source split stays clean
    np.testing.assert_array_equal(noisy.select([1, 0]).audio(1), first)  # selection keeps it
    with pytest.raises(ValueError, match="needs SNRs"):
        utts.with_noise((), ("pink",))
