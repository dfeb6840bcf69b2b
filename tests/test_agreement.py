"""Agreement with the teachers on unlabelled audio: the teacher's transcript is the reference,
empty references are left out and counted, and reference transcripts are decoded once.

Decoding uses test_evaluate's fake generate function (no compile): "alpha" per window of audio.
"""

import json

import pytest
import soundfile as sf
from test_evaluate import CLIPS, SPEC, _Fake, _Model, _Tok, _write_corpus

from mkd_jax import agreement, decode, encoder_memo, evaluate
from mkd_jax.data import loaders
from mkd_jax.roles import Role


@pytest.fixture
def utts(tmp_path):
    return loaders.load_split(_write_corpus(tmp_path / "corpus", CLIPS), "test")


def _student(monkeypatch, utts, fake=None, **kw):
    monkeypatch.setattr(decode, "make_generate_fn", (fake or _Fake()).make)
    kw = {"batch_size": 2, "n_frames": 100, **kw}
    return evaluate.transcribe_utts(_Model(), None, _Tok(), SPEC, utts, **kw)


def _ref(utts, hyps, name="teacher"):
    return {
        "name": name,
        "ids": list(utts.ids),
        "hyps": hyps,
        "context": "3 s (300 frames)",
        "failures": [],
        "n_frames": 300,
    }


def test_the_teacher_transcript_is_the_reference(monkeypatch, utts):
    tr = _student(monkeypatch, utts)  # alpha, alpha, alpha, alpha alpha alpha, alpha alpha
    ref = _ref(utts, ["alpha", "", "alpha bravo", "Hmm.", "bravo alpha alpha"])
    res = agreement.agreement(tr, ref, utts)
    # u1 (empty) and u3 ("Hmm." normalises to nothing) are left out and counted.
    assert (res["n_scored"], res["n_total"], res["n_empty_reference"]) == (3, 5, 2)
    assert res["per_utt"]["ids"] == [utts.ids[0], utts.ids[2], utts.ids[4]]
    assert res["per_utt"]["word_errors"] == [0, 1, 1]  # "bravo" missing from u2 and u4
    assert res["wer"] == pytest.approx(100 * 2 / 6)
    assert res["reference"] == "teacher" and res["reference_n_frames"] == 300
    assert res["context"] == tr.context  # the student's context
    json.dumps(res)


def test_before_and_after_compare_on_the_same_references(monkeypatch, utts):
    ref = _ref(utts, ["alpha", "alpha", "alpha", "alpha alpha alpha", "alpha alpha"])
    before = agreement.agreement(_student(monkeypatch, utts, _Fake(fail={1})), ref, utts)
    after = agreement.agreement(_student(monkeypatch, utts), ref, utts)
    assert after["wer"] == 0 and before["wer"] > 0
    c = evaluate.compare(before, after, n_resamples=200)
    assert c["diff"] == pytest.approx(-before["wer"]) and c["n_utts"] == 5
    assert before["failures"] and not after["failures"]


def test_a_reference_of_another_split_is_refused(monkeypatch, utts):
    tr = _student(monkeypatch, utts)
    ref = _ref(utts, ["alpha"] * 5)
    ref["ids"] = [f"other-{i}" for i in range(5)]
    with pytest.raises(ValueError, match="not the same split"):
        agreement.agreement(tr, ref, utts)
    with pytest.raises(ValueError, match="empty on every"):
        agreement.agreement(tr, _ref(utts, [""] * 5), utts)


def test_references_are_decoded_once_and_cached(monkeypatch, utts, tmp_path):
    calls = []

    def transcribe(u, n_frames=300):
        calls.append(n_frames)
        monkeypatch.setattr(decode, "make_generate_fn", _Fake().make)
        return evaluate.transcribe_utts(
            _Model(), None, _Tok(), SPEC, u, batch_size=2, n_frames=n_frames
        )

    ckpt = tmp_path / "teacher"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"weights")
    kw = {"n_frames": 300, "cache": tmp_path / "cache"}
    first = agreement.reference("base", [ckpt], transcribe, utts, **kw)
    again = agreement.reference("base", [ckpt], transcribe, utts, **kw)
    assert calls == [300] and again == first
    assert first["hyps"][3] == "alpha alpha alpha" and first["n_total"] == 5
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1
    # Another context, another teacher or rebuilt weights: decoded again.
    short = dict(kw, n_frames=100)
    agreement.reference("base", [ckpt], lambda u: transcribe(u, 100), utts, **short)
    agreement.reference("other", [ckpt], transcribe, utts, **kw)
    assert calls == [300, 100, 300]
    (ckpt / "model.safetensors").write_bytes(b"new weights")
    agreement.reference("base", [ckpt], transcribe, utts, **kw)
    assert calls == [300, 100, 300, 300]
    # A split that changed (fewer utterances) is not served from the cache.
    fewer = loaders.load_split(dict(_write_corpus(tmp_path / "c2", CLIPS), limit=3), "test")
    assert agreement.reference("base", [ckpt], transcribe, fewer, **kw)["ids"] == fewer.ids
    assert len(calls) == 5


def test_a_partial_reference_is_refused(monkeypatch, utts, tmp_path):
    def transcribe(u):
        monkeypatch.setattr(decode, "make_generate_fn", _Fake().make)
        return evaluate.transcribe_utts(
            _Model(), None, _Tok(), SPEC, u, batch_size=2, n_frames=100, max_batches=1
        )

    with pytest.raises(ValueError, match="decode the whole split"):
        agreement.reference("base", ["base"], transcribe, utts, n_frames=100, cache=tmp_path)


def test_student_agreement_decodes_once_for_every_reference(monkeypatch, utts):
    fake = _Fake()
    monkeypatch.setattr(decode, "make_generate_fn", fake.make)
    refs = {
        "base": _ref(utts, ["alpha", "alpha", "alpha", "alpha alpha alpha", "alpha alpha"]),
        "ensemble": _ref(utts, ["bravo"] * 5, name="ensemble"),
    }
    out = agreement.student_agreement(
        (_Model(), None, _Tok(), SPEC), refs, utts, batch_size=2, n_frames=100
    )
    assert fake.calls == 4  # one decoding of the split (see test_evaluate), two scores
    assert out["base"]["wer"] == 0 and out["ensemble"]["wer"] > 100  # "alpha alpha..." vs "bravo"
    assert out["base"]["n_frames"] == out["ensemble"]["n_frames"] == 100
    assert "1 s (100 frames)" in agreement.summary(out["base"])


def test_unlabelled_split_loads_without_text_and_a_missing_one_is_none(tmp_path):
    for i in range(2):
        sf.write(tmp_path / f"r{i}.flac", [0.1, -0.1] * 4000, 16000)
    rows = [{"path": f"r{i}.flac", "text": "", "id": f"r{i}"} for i in range(2)]
    (tmp_path / "real_unlabelled.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    source = {"kind": "manifest", "path": str(tmp_path)}
    real = agreement.load_split_if_present(source, agreement.SPLIT, require_text=False)
    assert real.ids == ["r0", "r1"] and real.texts == ["", ""]
    assert agreement.load_split_if_present(source, "test_ood") is None


# ----- the tables that show these numbers: demo, run report, ablation -----


def _fake_demo_inputs(monkeypatch, tmp_path):
    from ml_collections import ConfigDict

    from mkd_jax import assets, demo

    root = tmp_path / "corpus"
    for split in ("dev", "test", "test_ood", "real_unlabelled"):
        source = _write_corpus(root, CLIPS, split)
    member = (_Model(), None, _Tok(), SPEC)
    monkeypatch.setattr(demo, "FULL_FRAMES", 300)  # the fake model's whole context
    monkeypatch.setattr(demo, "_member", lambda checkpoint, cfg: member)
    monkeypatch.setattr(demo, "_trained_member", lambda run_dir, cfg: member)
    monkeypatch.setattr(assets, "resolve_model", lambda name: tmp_path / name)
    monkeypatch.setattr(agreement, "cache_dir", lambda: tmp_path / "agreement")
    fake = _Fake()
    monkeypatch.setattr(decode, "make_generate_fn", fake.make)

    def make_ensemble(models, specs, toks, weights, encoded=False):
        single = fake.make(None, specs[0])
        return lambda params, mels: single(None, mels[0])

    monkeypatch.setattr(decode, "make_ensemble_generate_fn", make_ensemble)
    # The demo decodes through the encoder memo; the fake models' "encoder" passes log-mel on.
    monkeypatch.setattr(encoder_memo, "make_encoder", lambda model, params: lambda mel: mel)
    cfg = ConfigDict(
        {
            "data": {"eval_split": "dev", "test_split": "test", "n_frames": 100,
                     "eval_batch_size": 2},
            "eval": {"max_new_tokens": 4},
            "student": {"checkpoint": "tiny.en"},
        }
    )  # fmt: skip
    return demo, cfg, source, fake


def test_demo_table_has_every_split_n_context_and_intervals(monkeypatch, tmp_path):
    demo, cfg, source, fake = _fake_demo_inputs(monkeypatch, tmp_path)
    work = tmp_path / "work"
    results = demo.evaluate_demo(work, cfg, source, tmp_path / "ft", tmp_path / "run")
    assert results["splits"] == ["dev", "test", "test_ood"]
    labels = [(r["label"], r["n_frames"]) for r in results["rows"]]
    assert labels == [
        ("teacher base", 100), ("teacher base_ft", 100), ("ensemble(base, base_ft)", 100),
        ("student tiny.en, before (zero-shot)", 300), ("student tiny.en, after", 100),
        ("student tiny.en, after", 300),
    ]  # fmt: skip
    test = results["rows"][4]["results"]["test"]
    assert (test["n_scored"], test["n_total"]) == (5, 5) and "1 s (100 frames)" in test["context"]
    assert [c["label"] for c in results["changes"]] == [
        "after (1 s) - before (3 s)",
        "after (3 s) - before (3 s)",
    ]
    assert results["changes"][1]["results"]["test_ood"]["diff"] == 0  # the same fake system
    agree = results["agreement"]
    assert list(agree["references"]) == ["base", "ensemble(base, base_ft)"]
    assert len(agree["rows"]) == 3 and len(agree["changes"]) == 2
    assert agree["rows"][1]["results"]["base"]["wer"] == 0  # the fakes agree with each other
    lines = demo.format_demo(results)
    md = "\n".join(lines)
    assert "| system | encoder context | dev | test | test_ood |" in md
    assert "| student tiny.en, after | 1 s | 11.11 / " in md and "(5 / 5)" in md
    assert "| after (1 s) - before (3 s) | +0.00 [+0.00, +0.00] |" in md
    assert "vs base (at 3 s)" in md and "real_unlabelled, 5 clips" in md
    assert "encoder context 1 s (100 frames); 3 s for 1 longer utterance" in md
    # Everything is cached: a second pass decodes nothing.
    calls = fake.calls
    again = demo.evaluate_demo(work, cfg, source, tmp_path / "ft", tmp_path / "run")
    assert fake.calls == calls and demo.format_demo(again) == lines
    print(md)


def _result(errs, words, ids=None, **extra):
    return {
        "wer": 100 * sum(errs) / sum(words),
        "cer": 1.0,
        "n": len(errs),
        "n_scored": len(errs),
        "n_total": len(errs) + 1,
        "per_utt": {
            "ids": ids or [f"u{i}" for i in range(len(errs))],
            "word_errors": list(errs),
            "ref_words": list(words),
        },
        **extra,
    }


def test_run_report_shows_n_context_and_the_before_after_interval(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from mkd_jax import report

    words = [5] * 20
    before = _result([1] * 20, words, context="10 s (1000 frames)", n_frames=1000)
    after = {
        "dev": _result([0] * 20, words, context="10 s (1000 frames)", n_frames=1000),
        "test_ood": _result([2] * 20, words, context="10 s (1000 frames); 30 s for 1 longer "
                            "utterance", n_frames=1000),
    }  # fmt: skip
    agree = {
        "split": "real_unlabelled",
        "reference": "base",
        "before": _result([1] * 20, words, context="10 s (1000 frames)",
                          reference_context="30 s (3000 frames)"),
        "after": _result([2] * 20, words, context="10 s (1000 frames)",
                         reference_context="30 s (3000 frames)"),
    }  # fmt: skip
    log = SimpleNamespace(history={"before": before}, primary=True, close=lambda: None)
    cfg = SimpleNamespace(data=SimpleNamespace(eval_split="dev"), total_steps=2)
    roles = {"teachers": {}, "student": Role(None, {"w": np.zeros(3)}, None, None)}
    clocks = {"wall_s": 60.0, "cpu_s": 90.0}
    md = report.write_report(tmp_path, cfg, roles, log, after, 10, clocks, agreement=agree)
    assert "| dev WER before | 20.00% (CER 1.00%; 20 / 21 scored at 10 s (1000 frames)) |" in md
    assert "| test_ood WER after | 40.00% (CER 1.00%; 20 / 21 scored at 10 s (1000 frames); " in md
    assert "| dev WER change, after - before (95% CI) | -20.00 [-20.00, -20.00] points" in md
    assert "agreement with base (its transcripts at 30 s (3000 frames) as reference), after" in md
    assert "| +20.00 [+20.00, +20.00] points over 20 clips (0 better, 20 worse" in md
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["change"]["diff"] == -20 and saved["agreement_change"]["diff"] == 20
    assert saved["cpu_s"] == 90.0 and "| CPU time | 1.5 min (1.50 cores busy on average) |" in md
    # Without a before (eval.max_batches = -1) or agreement, the rows are simply absent.
    log = SimpleNamespace(history={}, primary=True, close=lambda: None)
    md = report.write_report(tmp_path, cfg, roles, log, {}, 10, {**clocks, "cpu_s": None})
    assert "before" not in md and "agreement" not in md
    # CPU time unknown (resumed from a checkpoint that did not record it): no row, None saved.
    assert "CPU time" not in md
    assert json.loads((tmp_path / "report.json").read_text())["cpu_s"] is None
    log = SimpleNamespace(
        history={"config_changes": [{"step": 40, "changed": ["optim.lr 0.002 -> 0.0005"]}]},
        primary=True, close=lambda: None,
    )  # fmt: skip
    md = report.write_report(tmp_path, cfg, roles, log, {}, 10, {"wall_s": None, "cpu_s": None})
    assert "| wall time | unknown (resumed from a checkpoint without it) |" in md
    assert "| config changed on resume at step 40 | optim.lr 0.002 -> 0.0005 |" in md
    assert json.loads((tmp_path / "report.json").read_text())["config_changes"][0]["step"] == 40


def test_demo_reuses_the_students_scores_from_trains_report(monkeypatch, tmp_path):
    import json

    demo, cfg, source, fake = _fake_demo_inputs(monkeypatch, tmp_path)
    cfg.eval.beam_size = 1
    first = demo.evaluate_demo(tmp_path / "w1", cfg, source, tmp_path / "ft", tmp_path / "run")
    scored = {sp: first["rows"][4]["results"][sp] for sp in first["splits"]}
    marked = {sp: dict(r, wer=r["wer"] + 50, n_frames=100) for sp, r in scored.items()}  # marked
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text(json.dumps({"after": marked}))
    calls = fake.calls
    second = demo.evaluate_demo(tmp_path / "w2", cfg, source, tmp_path / "ft", tmp_path / "run")
    assert second["rows"][4]["results"] == marked  # the 1 s student row came from the report
    assert second["rows"][5]["results"] == first["rows"][5]["results"]  # 3 s: decoded, not read
    decoded_again = fake.calls - calls
    assert 0 < decoded_again < calls


def test_runs_without_teachers_are_compared_with_a_named_reference(tmp_path):
    """CE-only runs have no teacher: `eval.agreement_reference` names the model their
    real-audio agreement is measured against; by default it is the first teacher."""
    from pathlib import Path

    from test_evaluate import _save_tiny
    from test_token_align import _toy

    from mkd_jax import train
    from mkd_jax.config_base import load_config_file

    cfg = load_config_file(Path(__file__).resolve().parent.parent / "configs/tiny.py")
    assert train._agreement_reference(cfg, {"teachers": {}}) is None
    first = Role(None, None, None, tmp_path / "teacher")
    assert cfg.teachers  # the tiny config's teachers are random: no reference unless named
    name = next(iter(cfg.teachers))
    with cfg.unlocked():
        cfg.teachers[name].checkpoint = "base"
    assert train._agreement_reference(cfg, {"teachers": {name: first}}) == (name, first)
    _save_tiny(tmp_path / "ref", _toy(multilingual=False), 80, seed=0)
    cfg.eval.agreement_reference = str(tmp_path / "ref")
    got_name, role = train._agreement_reference(cfg, {"teachers": {name: first}})
    assert got_name == str(tmp_path / "ref")
    assert role.folder == tmp_path / "ref" and role.model.d_model == 32


def test_a_demo_stage_whose_student_is_degenerate_stays_failed(monkeypatch, tmp_path):
    """train.run raises on garbage after writing its report; a rerun of the demo must not take
    that report as a finished stage and end 0 on top of it."""
    import json

    from mkd_jax import demo, train
    from mkd_jax.cli import RunFailed

    calls = []
    monkeypatch.setattr(train, "run", lambda cfg, run_dir: calls.append(run_dir) or {"step": 2})
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "report.json").write_text(json.dumps({"degenerate": None}))
    demo._train(None, tmp_path / "ok")  # finished: not trained again
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "report.json").write_text(json.dumps({"degenerate": "6 of 20 loop"}))
    with pytest.raises(RunFailed, match=r"bad: the trained student's output is degenerate \(6 of"):
        demo._train(None, tmp_path / "bad")
    assert calls == []
