"""`python -m mkd_jax.power`: what it reads, what it refuses, what it prints."""

import json
import subprocess
import sys

import pytest

from mkd_jax import power


def _score(errors, words=10):
    ids = [f"u{i}" for i in range(len(errors))]
    per_utt = {"ids": ids, "word_errors": errors, "ref_words": [words] * len(ids)}
    return {"wer": 0.0, "per_utt": per_utt}


@pytest.fixture
def files(tmp_path):
    zero, trained = _score([3] * 20), _score([2] * 20)
    (tmp_path / "report.json").write_text(
        json.dumps({"before": zero, "after": {"test": trained}})  # as train writes it
    )
    (tmp_path / "eval.json").write_text(
        json.dumps({"split": "test", "systems": {"x": {"all": zero}, "y": {"all": trained}}})
    )
    (tmp_path / "score.json").write_text(json.dumps(zero))
    return tmp_path


def test_reads_reports_evaluate_outputs_and_scores(files):
    after, _ = power.load_result(str(files / "report.json"), "test")
    before, _ = power.load_result(str(files / "report.json#before"), "test")
    assert after["per_utt"]["word_errors"][0] == 2 and before["per_utt"]["word_errors"][0] == 3
    y, label = power.load_result(str(files / "eval.json#y"), "test")
    assert y["per_utt"]["word_errors"][0] == 2 and label.endswith("eval.json#y")
    s, _ = power.load_result(str(files / "score.json"), "test")
    assert s["per_utt"]["word_errors"][0] == 3


@pytest.mark.parametrize(
    "spec, split, match",
    [
        ("nope.json", "test", "no such file"),
        ("report.json", "dev", "no split 'dev'"),
        ("report.json#during", "test", "no 'during' results"),
        ("eval.json", "test", "name one"),
        ("eval.json#z", "test", "no system 'z'"),
        ("eval.json#x", "dev", "scored split 'test'"),
    ],
)
def test_refuses_what_it_cannot_pair(files, spec, split, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        power.load_result(str(files / spec), split)


def test_cli_prints_the_table_and_fails_in_one_line(files):
    cmd = [sys.executable, "-m", "mkd_jax.power", "--split=test", "--sizes=5,20", "--sims=20"]
    ok = subprocess.run(
        [*cmd, f"--a={files}/report.json#before", f"--b={files}/report.json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "observed: -10.00 WER points" in ok.stdout
    assert "| 5 | 1.00 | 0.00 | 0.00 |" in ok.stdout and "smallest size tried" in ok.stdout
    bad = subprocess.run(
        [*cmd, f"--a={files}/missing.json", f"--b={files}/report.json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "missing.json: no such file" in bad.stderr
