"""Pseudo-labelling: the ensemble rule and every filter on hand-made hypotheses; the dataset it
writes loads as a training split; resume and two processes give the same dataset as one run.

Most tests replace the teachers by fakes that return hypotheses made from the reference, so
they check the bookkeeping without compiling a decoder; one test runs the real decoder.
"""

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
import soundfile as sf

from mkd_jax import evaluate, pseudolabel
from mkd_jax.config_base import load_config_file
from mkd_jax.data import loaders, text
from mkd_jax.pseudolabel import Filters, choose_label, judge, label_row, label_split

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


# ----- the rule and the filters, by hand -----


def test_the_label_is_the_medoid_and_ties_go_to_the_first_teacher():
    # a and c agree; b adds a word: d(a,b) = d(c,b) = 1/4, d(a,c) = 0 -> a and c tie, a first.
    hyps = {"a": "The cat sat.", "b": "the cat sat down", "c": "the cat, sat"}
    assert choose_label(hyps) == ("a", 75.0)
    assert choose_label({"c": hyps["c"], "b": hyps["b"], "a": hyps["a"]})[0] == "c"
    # One odd teacher out: the two that agree win even when listed last.
    name, agreement = choose_label({"x": "zzz yyy", "b": "red green blue", "c": "red green blue"})
    assert name == "b" and agreement == 0.0
    # Two teachers are always a tie: the first is the label.
    assert choose_label({"p": "red green", "q": "red blue"}) == ("p", 50.0)
    assert choose_label({"only": "hello"}) == ("only", None)
    assert choose_label({"a": "", "b": ""}) == ("a", 100.0)


def _row(label, duration=2.0, reference="", others=(), failed=()):
    hyps = {"a": label, **{f"t{i}": h for i, h in enumerate(others)}}
    return label_row("u", duration, reference, hyps, failed)


def test_each_filter_drops_what_it_should():
    strict = Filters(max_ref_wer=10, min_agreement=80, max_words_per_second=6)
    assert judge(_row("red green blue gold"), strict) == ""
    assert judge(_row("red green blue gold", failed=["a"]), strict) == "decode_failed"
    assert judge(_row(""), strict) == "empty_label"
    assert judge(_row("Um."), strict) == "empty_label"  # the normaliser drops fillers
    # 13 words in 2 s is over 6 a second; 5 words in 0.4 s count against 1 s, so they pass.
    assert judge(_row(" ".join(["la"] * 13)), strict) == "too_many_words"
    assert judge(_row(" ".join(["la"] * 12)), strict) == ""
    assert judge(_row("a b c d e", duration=0.4), strict) == ""
    # Agreement 75% (one word in four differs): dropped at 80, kept at 70 and with the filter off.
    row = _row("red green blue gold", others=["red green pink gold"])
    assert row["agreement"] == 75.0
    assert judge(row, strict) == "low_agreement"
    assert judge(row, Filters(min_agreement=70)) == ""
    assert judge(row, Filters()) == ""
    # Against a reference: 1 deletion in 4 words is 25%.
    row = _row("red green blue", reference="Red, green, blue, gold.")
    assert row["label_ref_wer"] == 25.0 and row["ref_wer:a"] == 25.0
    assert judge(row, strict) == "ref_wer"
    assert judge(row, Filters(max_ref_wer=30)) == ""
    # The first reason in the documented order wins.
    both = _row(" ".join(["la"] * 40), reference="la", others=["no"])
    assert judge(both, strict) == "too_many_words"
    with pytest.raises(ValueError, match="--max_ref_wer=-1"):
        Filters(max_ref_wer=-1)


# ----- labelling a split, with fake teachers -----


def _drop_last_word(s):
    return " ".join(s.split()[:-1])


class _Teachers:
    """Fake teachers: "a" says the reference, "b" the reference without its last word on every
    third utterance; records which utterances each transcribed; can fail after N shards."""

    def __init__(self, monkeypatch, fail_after=None):
        self.calls, self.fail_after = [], fail_after
        monkeypatch.setattr(
            pseudolabel, "_teachers", lambda cfg, n: [(t, (t, None, None, None), [t]) for t in "ab"]
        )
        monkeypatch.setattr(evaluate, "transcribe_utts", self.transcribe)

    def transcribe(self, model, params, tok, spec, utts, **kw):
        if self.fail_after is not None and len(self.calls) >= 2 * self.fail_after:
            raise KeyboardInterrupt  # an interruption between shards
        self.calls.append((model, list(utts.ids)))
        hyps = []
        for uid, ref in zip(utts.ids, utts.texts, strict=True):
            odd = model == "b" and uid[-4:].isdigit() and int(uid[-4:]) % 3 == 0
            hyps.append(_drop_last_word(ref) if odd else ref)
        return evaluate.Transcripts(list(utts.ids), hyps, len(utts), "30 s", [], [])


@pytest.fixture
def cfg():
    return load_config_file(ROOT / "configs/tiny.py")


@pytest.fixture
def utts(tiny_librispeech):
    return loaders.load_split({"kind": "librispeech", "path": str(tiny_librispeech)}, "train")


def _files(out, split="train"):
    return {n: (out / f"{split}.{n}").read_text() for n in ("jsonl", "all.jsonl")}


def test_the_labelled_split_loads_as_training_data(monkeypatch, cfg, utts, tmp_path):
    _Teachers(monkeypatch)
    out = tmp_path / "labels"
    summary = label_split(cfg, utts, "train", out, Filters(max_ref_wer=5.0), shard_size=5)
    # b drops a word on ids 0, 3, 6, ...: a and b tie, so a's exact reference is the label.
    assert summary["n"] == 16 and summary["kept"] == 16 and summary["dropped"] == {}
    assert summary["label_wer"]["teacher a"] == 0.0
    # b deletes one word on 6 of 16 utterances: 6 errors over the references' words, in %.
    n_words = sum(len(text.normalize(t).split()) for t in utts.texts)
    assert summary["label_wer"]["teacher b"] == pytest.approx(100 * 6 / n_words)
    assert summary["label_wer"]["ensemble label"] == 0.0
    assert summary["kept_fraction_by_min_agreement"]["100"] == pytest.approx(10 / 16)
    labelled = loaders.load_split(
        {"kind": "manifest", "path": str(out), "text_column": "label"}, "train"
    )
    assert labelled.ids == utts.ids and labelled.texts == utts.texts
    np.testing.assert_allclose(labelled.durations, utts.durations, atol=1e-6)
    np.testing.assert_array_equal(labelled.audio(3), utts.audio(3))
    assert labelled.extras["hyp:b"][0] == _drop_last_word(utts.texts[0])
    assert labelled.extras["label_from"] == ["a"] * 16
    # Training reads it through data.train_labels, the label column as the target.
    from mkd_jax.roles import train_source

    with cfg.unlocked():
        cfg.data.train_labels = str(out)
    assert loaders.load_split(train_source(cfg), "train").texts == utts.texts


def test_filters_decide_what_the_dataset_keeps(monkeypatch, cfg, utts, tmp_path):
    _Teachers(monkeypatch)
    out = tmp_path / "labels"
    summary = label_split(cfg, utts, "train", out, Filters(min_agreement=90), shard_size=8)
    assert summary["dropped"] == {"low_agreement": 6}  # ids 0, 3, ..., 15
    kept = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert [r["id"] for r in kept] == [u for u in utts.ids if int(u[-4:]) % 3]
    every = [json.loads(x) for x in (out / "train.all.jsonl").read_text().splitlines()]
    assert [r["dropped"] for r in every].count("low_agreement") == 6


def test_resume_and_two_processes_give_the_same_dataset(monkeypatch, cfg, utts, tmp_path):
    filters = Filters(max_ref_wer=10, max_words_per_second=8)
    _Teachers(monkeypatch)
    label_split(cfg, utts, "train", tmp_path / "one", filters, shard_size=4)
    expected = _files(tmp_path / "one")

    # Interrupted after two shards of four, then resumed: only the missing shards are decoded.
    _Teachers(monkeypatch, fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        label_split(cfg, utts, "train", tmp_path / "resumed", filters, shard_size=4)
    assert not (tmp_path / "resumed" / "train.jsonl").exists()
    again = _Teachers(monkeypatch)
    label_split(cfg, utts, "train", tmp_path / "resumed", filters, shard_size=4)
    assert sorted({u for _, ids in again.calls for u in ids}) == utts.ids[8:]
    assert _files(tmp_path / "resumed") == expected

    # Process 1 of 2 labels shards 1 and 3 and leaves the dataset to the last one to finish.
    first = _Teachers(monkeypatch)
    out = tmp_path / "two"
    assert label_split(cfg, utts, "train", out, filters, shard_size=4, process_index=1,
                       process_count=2) is None  # fmt: skip
    assert not (out / "train.jsonl").exists()
    second = _Teachers(monkeypatch)
    label_split(cfg, utts, "train", out, filters, shard_size=4, process_index=0, process_count=2)
    ids_1 = {u for _, ids in first.calls for u in ids}
    ids_0 = {u for _, ids in second.calls for u in ids}
    assert not ids_0 & ids_1 and ids_0 | ids_1 == set(utts.ids)
    assert ids_1 == set(utts.ids[4:8] + utts.ids[12:16])
    assert _files(out) == expected


def test_labelling_other_work_into_the_same_folder_is_refused(monkeypatch, cfg, utts, tmp_path):
    _Teachers(monkeypatch)
    out = tmp_path / "labels"
    label_split(cfg, utts, "train", out, Filters(), shard_size=4)
    with pytest.raises(ValueError, match="other work.*shard_size"):
        label_split(cfg, utts, "train", out, Filters(), shard_size=8)
    with pytest.raises(ValueError, match="needs at least two teachers"):
        with cfg.unlocked():
            del cfg.teachers["b"]
        label_split(cfg, utts, "train", tmp_path / "x", Filters(min_agreement=50))


def test_embedded_audio_is_written_once_as_flac(monkeypatch, cfg, tmp_path):
    rng = np.random.default_rng(0)
    clips = [0.1 * rng.standard_normal(16000 + 4000 * i).astype(np.float32) for i in range(3)]
    blobs = []
    for i, c in enumerate(clips):
        sf.write(tmp_path / f"{i}.flac", c, 16000)
        blobs.append({"bytes": (tmp_path / f"{i}.flac").read_bytes(), "path": f"{i}.flac"})
    ds = datasets.Dataset.from_dict(
        {"id": ["e0", "e1", "e2"], "text": ["one", "two three", "four"], "audio": blobs}
    ).cast_column("audio", datasets.Audio(decode=False))
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "corpus"))
    for i in range(3):
        (tmp_path / f"{i}.flac").unlink()  # only the embedded bytes remain
    utts = loaders.load_split({"kind": "disk", "path": str(tmp_path / "corpus")}, "train")
    assert utts.file(0) is None
    _Teachers(monkeypatch)
    out = tmp_path / "labels"
    label_split(cfg, utts, "train", out, Filters(), shard_size=2)
    labelled = loaders.load_split({"kind": "manifest", "path": str(out), "text_column": "label"},
                                  "train")  # fmt: skip
    assert labelled.ids == ["e0", "e1", "e2"]
    for i, clip in enumerate(clips):
        assert labelled.file(i).startswith(str(out / "audio" / "train"))
        np.testing.assert_allclose(labelled.audio(i), clip, atol=1e-4)


# ----- the real decoder and the command line -----


@pytest.mark.slow
def test_real_teachers_label_with_the_jitted_decoder(cfg, utts, tmp_path):
    """Random-weight tiny teachers: the hypotheses are nonsense, but every teacher decodes every
    utterance through the project's decoder and the row carries each hypothesis."""
    small = utts.select(range(3))
    out = tmp_path / "labels"
    summary = label_split(cfg, small, "train", out, Filters(), shard_size=2, max_new_tokens=4)
    every = [json.loads(x) for x in (out / "train.all.jsonl").read_text().splitlines()]
    assert [r["id"] for r in every] == small.ids and summary["n"] == 3
    for r in every:
        assert set(r) >= {"hyp:a", "hyp:b", "label", "agreement", "ref_wer:a", "label_ref_wer"}
        assert r["label"] == r[f"hyp:{r['label_from']}"]
    # Split over two of the (fake) devices: the same hypotheses, in the same order.
    label_split(cfg, small, "train", tmp_path / "two", Filters(), shard_size=3, max_new_tokens=4,
                devices=2)  # fmt: skip
    two = [json.loads(x) for x in (tmp_path / "two" / "train.all.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k != "path"} for r in two] == [
        {k: v for k, v in r.items() if k != "path"} for r in every
    ]
    with pytest.raises(ValueError, match="--devices=99"):
        label_split(cfg, small, "train", tmp_path / "x", Filters(), devices=99)


def test_bad_flags_get_one_line(tmp_path):
    cmd = [sys.executable, "-m", "mkd_jax.pseudolabel", "--config", str(ROOT / "configs/tiny.py"),
           "--out", str(tmp_path / "o"), "--max_ref_wer=-5"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "error: --max_ref_wer=-5.0: must be a finite number >= 0" in p.stderr
    assert "Traceback" not in p.stderr


def test_demo_stage_compares_students_on_labels_and_transcripts(monkeypatch, tmp_path, utts):
    """The demo's --pseudo_labels table: label WER, both students, the paired CI (training and
    labelling replaced by fakes that write what the real ones write)."""
    from mkd_jax import demo, evaluate

    refs = utts.texts
    runs = []

    def fake_label_split(cfg, split_utts, split, out, filters, **kw):
        assert filters.min_agreement == 90.0 and list(cfg.teachers) == ["base", "tiny_en"]
        return {"kept": 12, "n": 16, "label_wer": {"ensemble label": 7.5,
                "ensemble label, kept only": 3.25}}  # fmt: skip

    def fake_train(cfg, run_dir):
        runs.append((run_dir.name, cfg.data.train_labels, cfg.loss.w_ce))
        hyps = list(refs) if cfg.data.train_labels else [_drop_last_word(r) for r in refs]
        ids = list(utts.ids)
        after = {sp: evaluate.score(utts, ids, hyps)["all"] for sp in ("dev", "test")}
        run_dir.mkdir(parents=True)
        (run_dir / "report.json").write_text(json.dumps({"after": after}))

    monkeypatch.setattr(pseudolabel, "label_split", fake_label_split)
    monkeypatch.setattr(demo, "_train", fake_train)
    monkeypatch.setattr(evaluate, "load_scoring_split", lambda source, split: utts)
    lines = demo.pseudo_label_stage(tmp_path, {"kind": "librispeech", "path": "x"})
    assert [r[0] for r in runs] == ["targets_transcripts", "targets_labels"]
    assert runs[1][1] == str(tmp_path / "labels") and runs[0][1] == "" and runs[0][2] == 1.0
    text = "\n".join(lines)
    assert "12 of 16 utterances; label WER against the transcripts 3.25% (all labels 7.50%)" in text
    assert "| student trained on | dev | test |" in text
    assert "| teacher labels | 0.00 / 0.00 (16 / 16) | 0.00 / 0.00 (16 / 16) |" in text
    ci_row = next(x for x in lines if x.startswith("| labels - transcripts"))
    assert "16 better, 0 worse" in ci_row and ci_row.count("[") == 2


def test_audio_without_any_transcript_is_labelled(monkeypatch, cfg, tmp_path, tiny_librispeech):
    """A manifest with paths only: no reference, so no reference WER, and every label kept."""
    flacs = sorted(tiny_librispeech.glob("train/*/*/*.flac"))[:4]
    (tmp_path / "train.jsonl").write_text(
        "".join(json.dumps({"path": str(f), "id": f.stem}) + "\n" for f in flacs)
    )
    source = {"kind": "manifest", "path": str(tmp_path), "require_text": False}
    utts = loaders.load_split(source, "train")
    assert utts.texts == [""] * 4
    teachers = _Teachers(monkeypatch)
    monkeypatch.setattr(
        teachers, "transcribe",
        lambda *a, **kw: evaluate.Transcripts(list(a[4].ids), ["hello there"] * 4, 4, "", [], []),
    )  # fmt: skip
    monkeypatch.setattr(evaluate, "transcribe_utts", teachers.transcribe)
    summary = label_split(cfg, utts, "train", tmp_path / "out", Filters(max_ref_wer=10))
    assert summary["kept"] == 4 and "label_wer" not in summary
    labelled = loaders.load_split(
        {"kind": "manifest", "path": str(tmp_path / "out"), "text_column": "label"}, "train"
    )
    assert labelled.texts == ["hello there"] * 4
