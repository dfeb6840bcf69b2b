"""Evaluation scores every utterance: long ones get a longer context or windows, failures count as
deletions, partial scoring says so, and systems compare with a paired bootstrap interval.

Most tests decode with a fake generate function (no compile): it emits the word "alpha" once for
each window that holds audio, so an utterance cut into k windows must come back as k words. The
last tests decode with tiny random Whisper models.
"""

import numpy as np
import pytest
import soundfile as sf

from mkd_jax import decode, evaluate
from mkd_jax.data import loaders

WORDS = ["<eot>", "alpha", "bravo"]
EOT = 0
# (seconds, reference): the fake system's output is "alpha" once per window.
CLIPS = [
    (0.6, "alpha"),  # fits the 1 s context
    (2.5, "alpha"),  # needs the whole 3 s context
    (0.9, "alpha bravo"),  # "bravo" is never emitted: one deletion
    (7.0, "alpha alpha alpha"),  # 3 windows of 7/3 s
    (4.0, "alpha alpha"),  # 2 windows of 2 s
]


class _Tok:
    def decode(self, ids):
        return " ".join(WORDS[i] for i in ids)


class _Model:
    num_mel_bins = 80
    max_source_positions = 150  # a 3 s context (300 frames) keeps the test small
    max_target_positions = 448


SPEC = decode.DecodeSpec(prompt=(1,), eot=EOT, max_new_tokens=4)


def _write_corpus(root, clips, split="test"):
    folder = root / split / "7" / "1"
    folder.mkdir(parents=True)
    lines = []
    for i, (secs, ref) in enumerate(clips):
        t = np.arange(int(16000 * secs)) / 16000
        sf.write(folder / f"7-1-{i:04d}.flac", (0.1 * np.sin(2 * np.pi * 300 * t)), 16000)
        lines.append(f"7-1-{i:04d} {ref}")
    (folder / "7-1.trans.txt").write_text("\n".join(lines) + "\n")
    return {"kind": "librispeech", "path": str(root), "max_seconds": 60.0}


@pytest.fixture
def utts(tmp_path):
    return loaders.load_split(_write_corpus(tmp_path, CLIPS), "test")


class _Fake:
    """`make_generate_fn` stand-in: "alpha" per window with audio; misbehaves on chosen calls."""

    def __init__(self, fail=(), empty=(), no_eot=()):
        self.fail, self.empty, self.no_eot = set(fail), set(empty), set(no_eot)
        self.calls, self.frames = 0, []

    def make(self, model, spec, encoded=False):
        # `encoded`: the input is an "encoder output"; the demo's tests pass log-mel through a
        # stand-in memo (`_fake_demo_inputs`), so it reads the same.
        def generate(params, mel):
            k, self.calls = self.calls, self.calls + 1
            self.frames.append(mel.shape[2])
            if k in self.fail:
                raise RuntimeError("boom\nsecond line")
            out = np.full((mel.shape[0], spec.max_new_tokens), EOT, np.int32)
            has_audio = mel.std(axis=(1, 2)) > 0
            out[has_audio, 0] = 0 if k in self.empty else 1
            if k in self.no_eot:
                out[has_audio] = 1
            return out

        return generate


def _run(monkeypatch, utts, fake, **kw):
    monkeypatch.setattr(decode, "make_generate_fn", fake.make)
    kw = {"batch_size": 2, "n_frames": 100, **kw}
    return evaluate.transcribe_utts(_Model(), None, _Tok(), SPEC, utts, **kw)


def test_every_utterance_is_decoded_with_a_long_enough_context(monkeypatch, utts):
    fake = _Fake()
    tr = _run(monkeypatch, utts, fake)
    assert tr.ids == utts.ids and tr.n_total == 5 and not tr.limit
    assert tr.hyps == ["alpha", "alpha", "alpha", "alpha alpha alpha", "alpha alpha"]
    assert set(fake.frames) == {100, 300}  # 2 utterances at 1 s; the rest at the whole 3 s
    assert fake.calls == 1 + 3  # [0.6 s, 0.9 s], then 1 + 3 + 2 rows at 3 s, two per batch
    assert tr.context == (
        "1 s (100 frames); 3 s for 1 longer utterance; "
        "3 s windows for 2 utterances over 3 s (5 windows)"
    )
    ids, hyps = tr  # the old two-value return still unpacks
    res = evaluate.score(utts, ids, hyps, transcripts=tr)["all"]
    assert (res["n_scored"], res["n_total"], res["n"]) == (5, 5, 5)
    assert res["wer"] == pytest.approx(100 * 1 / 9) and res["cer"] > 0
    assert res["per_utt"]["word_errors"] == [0, 0, 1, 0, 0]
    assert res["per_utt"]["ref_words"] == [1, 1, 2, 3, 2]
    assert res["context"] == tr.context and res["failures"] == []


def test_batches_group_windows_of_like_length(utts):
    # A batch decodes until its longest row ends: each context's windows go shortest first.
    batches, *_ = evaluate._plan(utts, 100, 300, 2, 0)
    rows = [[evaluate._samples(utts, w, 16000) for w in ws if w] for f, ws in batches if f == 300]
    assert rows == [[32000, 32000], [37332, 37334], [37334, 40000]]  # u4, u3 (3 windows), u1


def test_old_callers_score_without_transcripts(monkeypatch, utts):
    ids, hyps = _run(monkeypatch, utts, _Fake(), n_frames=300)
    res = evaluate.score(utts, ids, hyps)["all"]
    assert res["wer"] == pytest.approx(100 / 9) and "context" not in res


def test_a_failed_batch_counts_as_deletions_and_is_listed(monkeypatch, utts):
    # Batches, shortest window first in each context: [u0, u2] at 1 s, then [u4 windows 0-1]
    # (2 s each), [u3 windows 2 and 0] (2.3332 and 2.3334 s), [u3 window 1, u1] (2.5 s) at 3 s.
    tr = _run(monkeypatch, utts, _Fake(fail={0}, no_eot={1}, empty={2}))
    assert tr.ids == utts.ids
    assert tr.hyps[:4] == ["", "alpha", "", "alpha"]  # u3's windows 0 and 2 came back empty
    reason = "batch failed: RuntimeError: boom"  # one line of the error
    assert tr.failures == [
        {"id": utts.ids[0], "reason": reason},
        {"id": utts.ids[2], "reason": reason},
    ]
    assert tr.flagged == [{"id": utts.ids[4], "reason": "no end-of-text within 4 tokens"}]
    results = evaluate.score(utts, *tr, transcripts=tr)
    assert results["all"]["n_scored"] == results["all"]["n_total"] == 5
    assert results["all"]["per_utt"]["word_errors"] == [1, 0, 2, 2, 6]
    table = evaluate.format_table(results)
    assert "2 utterances scored as all deletions" in table and "1 utterance flagged" in table


def test_empty_output_is_listed(monkeypatch, utts):
    tr = _run(monkeypatch, utts, _Fake(empty={0}))
    assert tr.hyps[0] == "" and {"id": utts.ids[0], "reason": "empty hypothesis"} in tr.failures


def test_every_batch_failing_is_an_error(monkeypatch, utts):
    with pytest.raises(RuntimeError, match="all 4 batches failed; first: batch failed: Runtime"):
        _run(monkeypatch, utts, _Fake(fail=range(10)))


def test_unreadable_audio_counts_as_deletions(monkeypatch, utts, tmp_path):
    (tmp_path / "test/7/1/7-1-0001.flac").write_bytes(b"not audio at all")
    tr = _run(monkeypatch, utts, _Fake())
    assert tr.hyps[1] == "" and tr.hyps[0] == "alpha"
    assert tr.failures[0]["id"] == utts.ids[1] and "audio" in tr.failures[0]["reason"]


def test_max_batches_scores_part_and_says_so(monkeypatch, utts):
    tr = _run(monkeypatch, utts, _Fake(), max_batches=1)
    assert tr.ids == utts.ids[:2] and tr.limit.startswith("first 2 of 5 utterances")
    results = evaluate.score(utts, *tr, transcripts=tr)
    assert (results["all"]["n_scored"], results["all"]["n_total"]) == (2, 5)
    table = evaluate.format_table(results)
    assert "| all | 2 / 5 |" in table and "PARTIAL" in table


def test_group_rows_count_the_whole_split(monkeypatch, utts):
    utts.extras["speed"] = ["slow", "fast", "slow", "fast", "fast"]
    tr = _run(monkeypatch, utts, _Fake(), max_batches=1)
    res = evaluate.score(utts, *tr, ("speed",), transcripts=tr)
    assert (res["speed=slow"]["n_scored"], res["speed=slow"]["n_total"]) == (1, 2)
    assert (res["speed=fast"]["n_scored"], res["speed=fast"]["n_total"]) == (1, 3)


def test_compare_on_shared_utterances(monkeypatch, utts):
    good = _run(monkeypatch, utts, _Fake())
    bad = _run(monkeypatch, utts, _Fake(fail={1}))
    part = _run(monkeypatch, utts, _Fake(), max_batches=1)
    a, b, c = (evaluate.score(utts, *t, transcripts=t)["all"] for t in (good, bad, part))
    same = evaluate.compare(a, a)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
    worse = evaluate.compare(a, b, n_resamples=500)
    assert worse["diff"] == pytest.approx(b["wer"] - a["wer"]) and worse["diff"] > 0
    assert worse["low"] <= worse["diff"] <= worse["high"] and worse["n_utts"] == 5
    partial = evaluate.compare(a, c)
    assert (partial["n_utts"], partial["n_only_a"], partial["n_only_b"]) == (2, 3, 0)
    table = evaluate.format_systems(
        {"good": {"all": a}, "bad": {"all": b}}, [("good", "bad", worse)]
    )
    assert "| bad - good |" in table and "95%" in table and "| good | all | 5 / 5 |" in table
    with pytest.raises(ValueError, match="per_utt"):
        evaluate.compare({"wer": 1.0}, a)


def test_score_refuses_unknown_ids(utts):
    with pytest.raises(ValueError, match="not in the split"):
        evaluate.score(utts, ["nope"], ["x"])


def test_bad_context_is_refused(monkeypatch, utts):
    with pytest.raises(ValueError, match="n_frames=301"):
        _run(monkeypatch, utts, _Fake(), n_frames=301)


def test_ensemble_members_get_their_own_features(monkeypatch, utts):
    class _Model128(_Model):
        num_mel_bins = 128

    seen = {}

    def make(models, specs, toks, weights, encoded=False):
        assert not encoded  # log-mel in, unless the memo is asked for
        seen["weights"] = weights
        single = _Fake().make(None, specs[0])

        def generate(params, mels):
            assert [m.shape[1] for m in mels] == [80, 128] and params == ("p0", "p1")
            seen.setdefault("frames", set()).add(mels[0].shape[2])
            return single(None, mels[1])

        return generate

    monkeypatch.setattr(decode, "make_ensemble_generate_fn", make)
    members = [(_Model(), "p0", _Tok(), SPEC), (_Model128(), "p1", _Tok(), SPEC)]
    tr = evaluate.transcribe_ensemble(members, utts, weights=(2, 1), batch_size=2, n_frames=100)
    assert tr.hyps == ["alpha", "alpha", "alpha", "alpha alpha alpha", "alpha alpha"]
    assert seen == {"weights": (2, 1), "frames": {100, 300}}


# ----- tiny random Whisper models: real decoding, and the command line -----


def _save_tiny(folder, tok, n_mels: int, seed: int):
    """An HF Whisper folder: random weights, a 3 s context, the toy tokenizer."""
    import json

    import flax.linen as nn
    import jax
    from safetensors.numpy import save_file

    from mkd_jax.models import hf_io
    from mkd_jax.models.whisper import HF_FIELDS, Whisper, abstract_params

    model = Whisper(
        vocab_size=tok.model_vocab_size,
        num_mel_bins=n_mels,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=150,
        max_target_positions=64,
    )
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (
            rng.normal(0.0, 0.3 if len(s.shape) > 1 else 0.1, s.shape) + (path[-1].key == "scale")
        ).astype(np.float32),
        nn.unbox(abstract_params(model, frames=40)),
    )
    folder.mkdir()
    save_file(hf_io.hf_state_from_flax(params), str(folder / "model.safetensors"))
    config = {f: getattr(model, f) for f in HF_FIELDS}
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "whisper"}))
    gen = {"suppress_tokens": [], "begin_suppress_tokens": [tok.eot]}
    (folder / "generation_config.json").write_text(json.dumps(gen))
    tok._tok.save(str(folder / "tokenizer.json"))
    return model, params


@pytest.mark.slow
def test_real_models_and_the_command_line(tmp_path):
    """Tiny random models end to end (compiles several programs; about a minute on 2 cores)."""
    import json
    import os
    import re
    import subprocess
    import sys

    import test_token_align

    from mkd_jax.data.tokenizers import load_tokenizer

    # The toy tokenizers with Whisper's full special layout (99 languages), so vocabulary sizes
    # are Whisper's (51864 and 51865), as checkpoint loading expects.
    specials = test_token_align._SPECIALS
    full = [*specials[:2], "<|en|>", *(f"<|x{i}|>" for i in range(98)), *specials[4:]]
    test_token_align._SPECIALS = full
    try:
        en, multi = (test_token_align._toy(multilingual=m) for m in (False, True))
    finally:
        test_token_align._SPECIALS = specials
    assert (en.model_vocab_size, multi.model_vocab_size) == (51864, 51865)
    model, params = _save_tiny(tmp_path / "en", en, 80, seed=0)
    _save_tiny(tmp_path / "multi", multi, 128, seed=1)
    source = _write_corpus(tmp_path / "corpus", CLIPS)
    utts = loaders.load_split(source, "test")

    tok = load_tokenizer(tmp_path / "en", model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(tmp_path / "en", tok, max_new_tokens=6)
    kw = {"batch_size": 2, "n_frames": 100}
    single = evaluate.transcribe_utts(model, params, tok, spec, utts, **kw)
    members = [(model, params, tok, spec)] * 2
    both = evaluate.transcribe_ensemble(members, utts, weights=(1, 3), **kw)
    assert single.ids == both.ids == utts.ids and single.hyps == both.hyps
    assert single.context == both.context and "2 utterances over 3 s" in single.context

    out = tmp_path / "out.json"
    cmd = [
        sys.executable, "-m", "mkd_jax.evaluate", f"--model={tmp_path / 'en'},{tmp_path / 'multi'}",
        f"--ensemble={tmp_path / 'en'},{tmp_path / 'multi'}", "--ensemble_weights=1,2",
        f"--source=librispeech:{tmp_path / 'corpus'}", "--split=test", "--n_frames=100",
        "--batch_size=2", "--max_new_tokens=6", "--n_resamples=200", f"--output={out}",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", XLA_FLAGS="")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| comparison |" in run.stdout and "95%" in run.stdout
    report = json.loads(out.read_text())
    assert len(report["systems"]) == 3 and len(report["comparisons"]) == 2
    for res in report["systems"].values():
        assert res["all"]["n_scored"] == res["all"]["n_total"] == 5
        assert res["all"]["context"] == single.context
    assert set(report["hypotheses"][str(tmp_path / "en")]) == set(utts.ids)
    # Three systems: the ensemble decodes from the encoder outputs its members' own rows left.
    memo = [ln for ln in run.stderr.splitlines() if "encoder memo" in ln]
    misses = [int(re.search(r"'misses': (\d+)", ln).group(1)) for ln in memo]
    assert len(memo) == 3 and "ensemble(" in memo[-1], run.stderr[-3000:]
    assert misses[0] > 0 and misses[2] == misses[1], memo

    # Each --matmul_dtype value is a run of every system, compared with the first.
    en = str(tmp_path / "en")
    assert cmd[3].startswith("--model=") and cmd[5].startswith("--ensemble_weights=")
    cmd = [*cmd[:3], f"--model={en}", "--matmul_dtype=float32,bfloat16", *cmd[6:]]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["systems"]) == [en, f"{en} (bfloat16 matmuls)"]
    assert [(c["a"], c["b"]) for c in report["comparisons"]] == [tuple(report["systems"])]

    # --reference: scored against a model's transcripts, not the split's text. The reference
    # itself then agrees with itself on every utterance it heard words in.
    assert cmd[4].startswith("--matmul_dtype=") and cmd[5].startswith("--source=")
    cmd = [*cmd[:3], f"--model={en},{tmp_path / 'multi'}", f"--reference={en}", *cmd[5:]]
    cmd = [a if a != "--n_frames=100" else "--n_frames=300" for a in cmd]  # the reference's
    env["MKD_JAX_CACHE"] = str(tmp_path / "cache")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"references: {en}'s transcripts" in run.stdout
    report = json.loads(out.read_text())
    assert report["reference"]["name"] == en and report["reference"]["n_frames"] == 300
    same = report["systems"][en]["all"]
    assert same["wer"] == 0.0 and same["n_scored"] + same["n_empty_reference"] == 5
    assert report["systems"][str(tmp_path / "multi")]["all"]["reference"] == en
    assert len(list((tmp_path / "cache" / "agreement").glob("*.json"))) == 1


def test_utterances_over_30_s_go_long_form(monkeypatch, tmp_path):
    """A Whisper-sized context and a spec that knows <|notimestamps|>: a 70 s utterance is
    decoded by the sequential long-form path (three 30 s windows; the fake emits no timestamp,
    so each window is one segment and the seek moves a whole window)."""

    class _Whisper(_Model):
        max_source_positions = 1500

    source = _write_corpus(tmp_path, [(2.0, "alpha"), (70.0, "alpha alpha alpha")])
    source["max_seconds"] = 120.0
    long_utts = loaders.load_split(source, "test")
    fake = _Fake()
    monkeypatch.setattr(decode, "make_generate_fn", fake.make)
    spec = decode.DecodeSpec(prompt=(1, 2), eot=EOT, max_new_tokens=4, no_timestamps=2)
    tr = evaluate.transcribe_utts(
        _Whisper(), None, _Tok(), spec, long_utts, batch_size=2, n_frames=3000
    )
    assert tr.hyps == ["alpha", "alpha alpha alpha"]
    assert tr.context == (
        "30 s (3000 frames); long-form (sequential, timestamps) for 1 utterance over 30 s"
    )
    assert fake.frames == [3000] * 4  # one short batch, then windows at 0, 30 and 60 s


def test_reference_refuses_group_by_in_one_line(tmp_path):
    """WER against a model's transcripts has no corpus columns to break down: refused before
    any model or corpus is read."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "mkd_jax.evaluate", "--reference=base", "--group_by=engine",
           f"--source=disk:{tmp_path}", "--split=real_unlabelled"]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "--group_by" in run.stderr and "--reference" in run.stderr
