"""`python -m mkd_jax.compare` and `results`: seed means of several runs, paired, with their n.

Reports here have the shape `train` writes (`report.report`): `after` by split, `before` the
untrained student's result on the eval split alone, `agreement` with its own before and after.
"""

import json
import subprocess
import sys

import pytest

from mkd_jax import compare, results


def _score(errors, words=10, ids=None, **extra):
    ids = ids or [f"u{i}" for i in range(len(errors))]
    per_utt = {"ids": ids, "word_errors": list(errors), "ref_words": [words] * len(ids)}
    wer = 100.0 * sum(errors) / (words * len(ids))
    return {"wer": wer, "per_utt": per_utt, **extra}


def _report(folder, dev, test, before=None, agree=None, reference="base"):
    folder.mkdir(parents=True)
    report = {"before": _score(before or dev), "after": {"dev": _score(dev), "test": _score(test)}}
    if agree is not None:
        report["agreement"] = {
            "split": "real_unlabelled",
            "reference": reference,
            "before": _score([5] * len(agree), reference=reference),
            "after": _score(agree, reference=reference),
        }
    (folder / "report.json").write_text(json.dumps(report))
    return str(folder)


def test_reads_a_report_as_train_writes_it(tmp_path):
    run = _report(tmp_path / "r", dev=[1] * 4, test=[2] * 6, before=[3] * 4, agree=[4] * 5)
    assert results.load_result(run, "test")[0]["per_utt"]["word_errors"] == [2] * 6
    # `before` is the eval split's alone: found by its utterances, refused on another split.
    assert results.load_result(f"{run}#before", "dev")[0]["per_utt"]["word_errors"] == [3] * 4
    with pytest.raises(ValueError, match=r"'before' has no split 'test' \(have \['dev', 'real"):
        results.load_result(f"{run}#before", "test")
    agree, label = results.load_result(f"{run}/report.json", "real_unlabelled")
    assert agree["per_utt"]["word_errors"] == [4] * 5 and "vs base's transcripts" in label
    before = results.load_result(f"{run}#before", "real_unlabelled")[0]
    assert before["per_utt"]["word_errors"] == [5] * 5


def test_seed_mean_averages_each_utterance_and_refuses_other_utterances():
    mean = results.seed_mean([_score([1, 3, 0]), _score([3, 1, 2])])
    assert mean["per_utt"]["word_errors"] == [2.0, 2.0, 1.0]
    assert mean["wers"] == [pytest.approx(40 / 3), pytest.approx(60 / 3)]
    assert mean["wer"] == pytest.approx(50 / 3)  # = 100 * 5 errors / 30 words
    with pytest.raises(ValueError, match="run 2 of 2 scored other utterances"):
        results.seed_mean([_score([1, 2]), _score([1, 2], ids=["u0", "x"])])


def test_pooled_keeps_every_utterance_of_every_split():
    p = results.pooled({"dev": _score([1, 1]), "test": _score([4], words=20)})
    assert p["per_utt"]["ids"] == ["dev/u0", "dev/u1", "test/u0"]
    assert p["wer"] == pytest.approx(100 * 6 / 40)
    assert "reference" not in p


def test_references_travel_and_are_never_paired_across():
    """A WER against one model's transcripts is not comparable with one against another's, nor
    with a WER against the true transcripts: seed means, pools and pairs keep them apart."""
    from mkd_jax.evaluate import compare as pair

    base = [_score([1, 2], reference="base"), _score([3, 2], reference="base")]
    assert results.seed_mean(base)["reference"] == "base"
    with pytest.raises(ValueError, match="different references \\['base', 'ens'\\]"):
        results.seed_mean([base[0], _score([1, 2], reference="ens")])
    pool = results.pooled({"dev": _score([1]), "real_unlabelled": base[0]})
    assert pool["reference"] == "real_unlabelled: base"
    other = results.pooled({"dev": _score([1]), "real_unlabelled": _score([1, 2], reference="ens")})
    with pytest.raises(ValueError, match="different references"):
        pair(pool, other)
    with pytest.raises(ValueError, match="different references \\(None and 'base'\\)"):
        pair(_score([1, 2]), base[0])
    assert pair(base[0], base[1])["diff"] == pytest.approx(10.0)


def test_table_rows_hold_hand_computed_seed_means_and_differences(tmp_path):
    # a: two seeds with 2 and 4 errors on each of 20 dev utterances (10 words each): 30% mean.
    # b: one seed with 1 error each: 10%, so b - a is -20 points on every resample.
    a = [_report(tmp_path / f"a{s}", dev=[e] * 20, test=[e] * 5) for s, e in ((0, 2), (1, 4))]
    b = [_report(tmp_path / "b0", dev=[1] * 20, test=[3] * 5)]
    text = compare.table(a, b, ["dev"], ["dev", "test"], n_resamples=200)
    dev = next(line for line in text.splitlines() if line.startswith("| dev |"))
    assert dev == (
        "| dev | 20 (200) | 30.00 [20.00, 40.00] | 10.00 [10.00, 10.00] | "
        "-20.00 [-20.00, -20.00] | 20 / 0 |"
    )
    pool = next(line for line in text.splitlines() if line.startswith("| dev + test |"))
    # Pooled: a has (3 x 20 + 3 x 5) / 250 = 30%, b (20 + 15) / 250 = 14%.
    assert "| 25 (250) | 30.00 [20.00, 40.00] | 14.00 [14.00, 14.00] | -16.00" in pool


def test_refuses_to_pair_what_differs(tmp_path):
    a = _report(tmp_path / "a", dev=[1] * 4, test=[1] * 3, agree=[1] * 3)
    other = _report(tmp_path / "o", dev=[1] * 5, test=[1] * 3)
    with pytest.raises(ValueError, match="scored different utterances"):
        compare.table([a], [other], ["dev"], [], n_resamples=10)
    with pytest.raises(ValueError, match="run 2 of 2 scored other utterances"):
        compare.table([a, other], [a], ["dev"], [], n_resamples=10)
    ens = _report(tmp_path / "e", dev=[1] * 4, test=[1] * 3, agree=[1] * 3, reference="ens")
    with pytest.raises(ValueError, match="a scored against base's transcripts, b against ens's"):
        compare.table([a], [ens], ["real_unlabelled"], [], n_resamples=10)


def test_cli_prints_the_table_and_fails_in_one_line(tmp_path):
    a = _report(tmp_path / "a", dev=[2] * 10, test=[1] * 3, agree=[2] * 4)
    b = _report(tmp_path / "b", dev=[1] * 10, test=[1] * 3, agree=[3] * 4)
    cmd = [sys.executable, "-m", "mkd_jax.compare", f"--a={a}", "--n_resamples=50"]
    ok = subprocess.run(
        [*cmd, f"--b={b}", "--splits=dev,real_unlabelled"], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "| dev | 10 (100) | 20.00 [20.00, 20.00] | 10.00 [10.00, 10.00] | -10.00" in ok.stdout
    assert "| real_unlabelled (vs base's transcripts) | 4 (40) |" in ok.stdout
    bad = subprocess.run([*cmd, f"--b={tmp_path}/none"], capture_output=True, text=True)
    assert (
        bad.returncode == 2
        and bad.stderr.splitlines()[0] == f"error: {tmp_path}/none: no such file"
    )


def test_a_bad_later_split_fails_before_any_bootstrap(tmp_path, monkeypatch):
    """Every split is read and every pair checked first: a table never spends minutes of
    resampling on dev to fail on a split named after it."""
    import mkd_jax.evaluate

    a = _report(tmp_path / "a", dev=[1] * 4, test=[1] * 3)
    b = _report(tmp_path / "b", dev=[2] * 4, test=[1] * 5)
    calls = []
    monkeypatch.setattr(mkd_jax.evaluate, "compare", lambda *x, **k: calls.append(x))
    with pytest.raises(ValueError, match="test: a and b scored different utterances"):
        compare.table([a], [b], ["dev", "test"], [], n_resamples=10)
    with pytest.raises(ValueError, match="has no split 'test_ood'"):
        compare.table([a], [b], ["dev", "test_ood"], [], n_resamples=10)
    assert calls == []
