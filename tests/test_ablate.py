"""The ablation's table (n, test_ood, CIs against row 2 and the best baseline), its variants'
configs, and resuming from committed run reports without training again."""

from types import SimpleNamespace

import pytest
from ml_collections import ConfigDict
from test_agreement import _result

from mkd_jax import ablate
from mkd_jax.config_base import load_config_file

WORDS = [4] * 10
BASE = SimpleNamespace(data=SimpleNamespace(eval_split="dev", test_split="test"))


def _rep(errs, ood=True, agree=None, dev=None, agree_before=None):
    after = {"dev": _result(dev or errs, WORDS), "test": _result(errs, WORDS)}
    if ood:
        after["test_ood"] = _result(errs, WORDS)
    r = {"after": after, "params": {"pct_of_largest_teacher": 0.5}, "median_step_s": 1.0}
    if agree is not None:
        r["agreement"] = {"after": {**_result([agree] * 10, WORDS), "reference": "base"}}
        if agree_before is not None:
            r["agreement"]["before"] = {**_result([agree_before] * 10, WORDS), "reference": "base"}
    return r


def test_ablation_table_has_n_test_ood_and_intervals_against_row_2():
    results = {
        1: ("zero-shot", None, [_rep([2] * 10, ood=False)]),
        2: ("CE", 1e-3, [_rep([1] * 10), _rep([1] * 10)]),
        6: ("ours", 1e-3, [_rep([0] * 10, agree=1, agree_before=3), _rep([1] * 10, agree=2)]),
    }
    table, plot = ablate.summarise(BASE, results)
    lines = table.splitlines()
    assert "test_ood WER % mean [min, max] (n)" in lines[0] and "vs row 2" in lines[0]
    assert "vs best baseline" in lines[0]
    row1, row2, row6 = lines[2:5]
    # Row 1 against row 2 (+25: 2 errors vs 1 on each of 10 four-word utterances), twice: row 2
    # is also the best (the only) baseline.
    assert row1.count("+25.00 [+25.00, +25.00]") == 2
    assert "| 50.00 [50.00, 50.00] (10 / 11) |" in row1
    assert "| 25.00 [25.00, 25.00] (10 / 11) | - | - |" in row2
    # Row 6: seed-mean errors 0.5 per utterance vs row 2's 1: -12.5 points, test and test_ood,
    # against row 2 and against the best baseline (row 2 again).
    assert row6.count("-12.50 [-12.50, -12.50]") == 4 and "37.50 vs base (10 / 11)" in row6
    # Against zero-shot (2 errors an utterance): -37.5 on test; row 1 scored no test_ood. The
    # agreement: seed-mean 1.5 errors a clip after, 3 before (the run's zero-shot): -37.5.
    assert "| -37.50 [-37.50, -37.50] | 12.50" in row6
    assert "37.50 vs base (10 / 11); -37.50 [-37.50, -37.50] vs zero-shot" in row6
    assert row6.split(" | ")[12] == "-"  # test_ood vs zero-shot
    assert [p[3] is None for p in plot] == [True, False, False]
    assert "Best baseline: row 2 (CE) (rows 3, 4, 5 still to run)" in table


def test_variants_are_compared_with_their_row_and_their_control():
    """row6_noise - row 6 and row6_noise - row2_noise (its control), each split and the
    agreement; a pair whose other row has not run is left out; an unknown control fails early."""
    c = _demo_ablation()
    c.ablation.rows = (1, 2, 6)
    c.ablation.variants = ConfigDict(
        dict(
            row2_noise=dict(row=2, label="2 noised", set=()),
            row6_noise=dict(row=6, label="6 noised", set=(), control="row2_noise"),
            row6_x=dict(row=6, label="6 x", set=(), control="row2_noise"),
        )
    )
    assert ablate.pairs(c.ablation) == [
        ("row2_noise", 2), ("row6_noise", 6), ("row6_noise", "row2_noise"), ("row6_x", 6),
        ("row6_x", "row2_noise"),
    ]  # fmt: skip
    results = {
        2: ("CE", 1e-3, [_rep([1] * 10, agree=2)]),
        6: ("ours", 1e-3, [_rep([2] * 10, agree=2)]),
        "row2_noise": ("2 noised", 1e-3, [_rep([2] * 10, agree=3)]),
        "row6_noise": ("6 noised", 1e-3, [_rep([0] * 10, dev=[1] * 10, agree=1)]),
    }
    table, _ = ablate.summarise(BASE, results, None, ablate.pairs(c.ablation))
    lines = table.splitlines()
    head = lines.index(
        "| variant | against | dev (no CI) | test | test_ood | real-audio agreement |"
    )
    body = lines[head + 2 :]
    # 4-word utterances: one error fewer an utterance is -25 points. No interval on dev, where
    # the rates were chosen.
    assert body[0] == (
        "| row2_noise | row 2 (CE) | +25.00 | " + " | ".join(["+25.00 [+25.00, +25.00]"] * 3) + " |"
    )
    assert body[1] == (
        "| row6_noise | row 6 (ours) | -25.00 | -50.00 [-50.00, -50.00] | "
        "-50.00 [-50.00, -50.00] | -25.00 [-25.00, -25.00] |"
    )
    assert body[2] == (
        "| row6_noise | row2_noise (2 noised) | -25.00 | -50.00 [-50.00, -50.00] "
        "| -50.00 [-50.00, -50.00] | -50.00 [-50.00, -50.00] |"
    )
    assert len(body) == 3  # row6_x did not run
    c.ablation.variants.row6_x.control = "row9"
    with pytest.raises(ValueError, match=r"row6_x.control='row9': not a row or variant"):
        ablate.entries(c.ablation)


def test_best_baseline_is_chosen_on_dev_among_rows_2_to_5():
    results = {
        2: ("CE", 1e-3, [_rep([1] * 10, dev=[3] * 10)]),
        3: ("KD", 1e-3, [_rep([2] * 10, dev=[1] * 10)]),  # best on dev, worse on test
        6: ("ours", 1e-3, [_rep([0] * 10, dev=[0] * 10)]),  # not a baseline
        "row3_kd_only": ("KD only", 1e-3, [_rep([0] * 10, dev=[0] * 10)]),  # a variant: neither
    }
    assert ablate.best_baseline(results, "dev") == 3
    table, _ = ablate.summarise(BASE, results)
    row6 = table.splitlines()[4]
    # vs row 2: 0 - 1 error per utterance = -25; vs row 3 (the best baseline): 0 - 2 = -50.
    assert "-25.00 [-25.00, -25.00] | -50.00 [-50.00, -50.00]" in row6
    assert ablate.best_baseline({6: results[6]}, "dev") is None


def _demo_ablation():
    c = load_config_file("configs/ablation_demo.py")
    c.ablation.variants = ConfigDict(
        {
            "row3_kd_only": dict(row=3, label="KD only", set=(("loss.w_ce", 0.0),)),
            "row6_decoder": dict(
                row=6, label="decoder sites", set=(("mappers.sides", ("decoder",)),)
            ),
        }
    )
    return c


def test_variants_change_only_what_they_name():
    c = _demo_ablation()
    todo = ablate.entries(c.ablation)
    assert list(todo)[-2:] == ["row3_kd_only", "row6_decoder"]
    row, label, overrides = todo["row3_kd_only"]
    plain = ablate.row_config(c, 3, lr=1e-3, seed=1)
    varied = ablate.row_config(c, row, lr=1e-3, seed=1, overrides=overrides)
    assert plain.loss.w_ce > 0 and varied.loss.w_ce == 0.0
    assert varied.seed == 1 and varied.optim.lr == 1e-3 and "ablation" not in varied
    plain_d, varied_d = plain.to_dict(), varied.to_dict()
    plain_d["loss"].pop("w_ce"), varied_d["loss"].pop("w_ce")
    assert plain_d == varied_d
    six = ablate.row_config(c, 6, lr=1e-3, seed=0, overrides=todo["row6_decoder"][2])
    assert tuple(six.mappers.sides) == ("decoder",) and list(six.teachers) == ["base"]


def test_rows_place_variants_and_unnamed_variants_run_last():
    c = _demo_ablation()
    c.ablation.rows = (1, 3, "row3_kd_only", 2)
    assert list(ablate.entries(c.ablation)) == [1, 3, "row3_kd_only", 2, "row6_decoder"]
    c.ablation.rows = (1, "row9")
    with pytest.raises(ValueError, match="ablation.rows names 'row9': no such variant"):
        ablate.entries(c.ablation)
    c.ablation.rows = (1, 8)
    with pytest.raises(ValueError, match="ablation.rows names 8: METHOD.md rows are 1-7"):
        ablate.entries(c.ablation)


def test_a_bad_variant_fails_before_any_run():
    c = _demo_ablation()
    c.ablation.variants.row3_kd_only.row = 1
    with pytest.raises(ValueError, match="variants.row3_kd_only.row=1"):
        ablate.entries(c.ablation)
    with pytest.raises(ValueError, match="loss.no_such_key"):
        ablate.row_config(c, 3, lr=1e-3, seed=0, overrides=(("loss.no_such_key", 1.0),))


def test_runs_resume_from_committed_reports_without_training(monkeypatch, tmp_path):
    import json

    from mkd_jax import train

    c = _demo_ablation()
    trained = []

    def fake_run(cfg, workdir):
        trained.append((cfg.seed, cfg.optim.lr, cfg.loss.w_ce))
        workdir.mkdir(parents=True)
        if cfg.seed == 9:  # SIGTERM: checkpointed, no report
            return {"step": 5, "stopped_by": "SIGTERM"}
        if cfg.seed == 8:  # non-finite: no report
            raise RunFailed("step 3: non-finite train/ce")
        report = {**_rep([1] * 10), "total_steps": cfg.total_steps}
        (workdir / "report.json").write_text(json.dumps(report))
        if cfg.seed == 7:  # degenerate output: the report is written, the run fails
            raise RunFailed(f"{workdir}: the trained student's dev output is degenerate")
        return {"step": cfg.total_steps}

    monkeypatch.setattr(train, "run", fake_run)
    from mkd_jax.cli import RunFailed

    entry = ablate.entries(c.ablation)["row3_kd_only"]
    kept, work = tmp_path / "results" / "runs", tmp_path / "work"
    first = ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 2)
    assert trained == [(2, 1e-3, 0.0)]
    saved = kept / "row3_kd_only" / "lr0.001" / "seed2" / "report.json"
    assert json.loads(saved.read_text()) == first
    # A fresh machine: the workdirs are gone, the committed report remains; nothing retrains.
    import shutil

    shutil.rmtree(work)
    again = ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 2)
    assert again == first and len(trained) == 1 and not work.exists()
    # A stopped run fails in one line that says how to resume, and keeps nothing as finished.
    with pytest.raises(RunFailed, match="stopped at step 5 .SIGTERM.; rerun the same command"):
        ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 9)
    assert not (kept / "row3_kd_only" / "lr0.001" / "seed9").exists()
    # A report of another budget, committed or left in a workdir, never fills this table.
    other = {**first, "total_steps": c.total_steps + 100}
    saved.write_text(json.dumps(other))
    with pytest.raises(ValueError, match=f"seed2/report.json: a run of {c.total_steps + 100} st"):
        ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 2)
    left = work / "row3_kd_only" / "lr0.001" / "seed4" / "report.json"
    left.parent.mkdir(parents=True)
    left.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="seed4/report.json: a run of"):
        ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 4)
    assert len(trained) == 2 and not (kept / "row3_kd_only" / "lr0.001" / "seed4").exists()
    # A rate whose student loops is a result of the grid (its report is kept, dev never picks
    # it); a run with nothing to score still stops the ablation.
    assert ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 7)["total_steps"]
    assert (kept / "row3_kd_only" / "lr0.001" / "seed7" / "report.json").is_file()
    with pytest.raises(RunFailed, match="non-finite"):
        ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 8)
    # The kept copy names its row and overrides: after the variant is edited, it is refused.
    assert first["ablation_entry"] == {"row": 3, "set": [["loss.w_ce", 0.0]]}
    saved.write_text(json.dumps(first))
    edited = (3, entry[1], (("loss.w_ce", 0.5),))
    with pytest.raises(
        ValueError, match=r"seed2/report.json: a run of .*'set': \[\['loss.w_ce', 0.0"
    ):
        ablate.run_row(c, work, kept, "row3_kd_only", edited, 1e-3, 2)
    assert ablate.run_row(c, work, kept, "row3_kd_only", entry, 1e-3, 2) == first


def test_a_workdir_trained_on_another_corpus_build_is_refused(tmp_path):
    """`run_row` takes a report left in the workdir as finished: the workdir names its build."""
    work = tmp_path / "work"
    ablate.check_workdir(work, "a" * 64)  # first use: marked
    ablate.check_workdir(work, "a" * 64)
    with pytest.raises(ValueError, match="trained on corpus build aaaaaaaaaaaa, this corpus is bb"):
        ablate.check_workdir(work, "b" * 64)
    old = tmp_path / "old"
    (old / "row2" / "lr0.001" / "seed0").mkdir(parents=True)
    (old / "row2" / "lr0.001" / "seed0" / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="holds runs .*seed0. but no corpus.json"):
        ablate.check_workdir(old, "a" * 64)
    # An interrupted run's checkpoints alone: `train` would resume them on this build's audio.
    part = tmp_path / "part"
    (part / "row6" / "lr0.002" / "seed1" / "checkpoints" / "100").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds runs .*seed1. but no corpus.json"):
        ablate.check_workdir(part, "a" * 64)
    assert not (part / "corpus.json").exists()


def test_an_opt_in_split_no_run_reads_leaves_the_build_unchanged(tmp_path):
    """`synth --real-train` adds real_train to a built corpus: the ablation's finished runs stay
    its own unless a run trains on that split."""
    import datasets

    from mkd_jax.config_base import mix_source

    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["one", "two"]})
    datasets.DatasetDict(train=ds, dev=ds).save_to_disk(tmp_path / "corpus")
    source = {"kind": "disk", "path": str(tmp_path / "corpus")}
    c = _demo_ablation()
    before = ablate.corpus_digest(source, ablate.unread_splits(c))
    datasets.DatasetDict(train=ds, dev=ds, real_train=ds.select([1])).save_to_disk(
        tmp_path / "with"
    )
    source = {"kind": "disk", "path": str(tmp_path / "with")}
    assert ablate.corpus_digest(source, ablate.unread_splits(c)) == before
    assert ablate.corpus_digest(source) != before  # every split
    c.data.mix.real = mix_source(dict(kind="disk", path=source["path"]), "real_train", 0.25)
    assert ablate.unread_splits(c) == ()
    assert ablate.corpus_digest(source, ablate.unread_splits(c)) != before


def test_reports_of_another_corpus_build_are_set_aside_not_mixed(tmp_path):
    """Synthesis differs across CPUs, so the kept reports name their corpus build: the same
    build keeps them, another moves them aside (kept, not used) and starts afresh."""
    corpus = tmp_path / "corpus" / "dev"
    corpus.mkdir(parents=True)
    (corpus / "data-00000-of-00001.arrow").write_bytes(b"audio v1")
    (corpus / "state.json").write_text('{"_fingerprint": "random"}')
    source = {"kind": "disk", "path": str(tmp_path / "corpus")}
    v1 = ablate.corpus_digest(source)
    (corpus / "state.json").write_text('{"_fingerprint": "other"}')  # not the content
    assert ablate.corpus_digest(source) == v1
    kept = tmp_path / "results" / "runs"
    (kept / "row2" / "lr0.001" / "seed0").mkdir(parents=True)
    (kept / "row2" / "lr0.001" / "seed0" / "report.json").write_text("{}")
    ablate.check_corpus(kept, v1)  # reports without a build mark are of an unknown build
    assert not (kept / "row2").exists()
    assert (tmp_path / "results" / "runs_stale_unknown" / "row2").is_dir()
    (kept / "row2").mkdir()
    ablate.check_corpus(kept, v1)  # the same build: kept
    assert (kept / "row2").is_dir()
    (corpus / "data-00000-of-00001.arrow").write_bytes(b"audio v2")
    v2 = ablate.corpus_digest(source)
    assert v2 != v1
    ablate.check_corpus(kept, v2)
    assert (tmp_path / "results" / f"runs_stale_{v1[:12]}" / "row2").is_dir()
    assert sorted(p.name for p in kept.iterdir()) == ["corpus.json"]
    (kept / "row3").mkdir()  # a second set of unmarked reports: the first set stays
    (kept / "corpus.json").unlink()
    ablate.check_corpus(kept, v2)
    assert (tmp_path / "results" / "runs_stale_unknown" / "row2").is_dir()
    assert (tmp_path / "results" / "runs_stale_unknown_2" / "row3").is_dir()


def test_the_corpus_digest_ignores_the_caches_datasets_writes_beside_a_split(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "text": ["one", "two"]})
    datasets.DatasetDict(train=ds).save_to_disk(tmp_path / "corpus")
    source = {"kind": "disk", "path": str(tmp_path / "corpus")}
    before = ablate.corpus_digest(source)
    loaded = datasets.load_from_disk(str(tmp_path / "corpus"))
    loaded["train"].map(lambda r: {"text": r["text"].upper()})  # writes cache-*.arrow there
    assert list((tmp_path / "corpus" / "train").glob("cache-*.arrow"))
    assert ablate.corpus_digest(source) == before
    datasets.DatasetDict(train=ds.select([1, 0])).save_to_disk(tmp_path / "other")
    assert ablate.corpus_digest({"kind": "disk", "path": str(tmp_path / "other")}) != before


def test_a_partial_ablation_writes_its_table_and_says_what_is_missing(tmp_path):
    c = _demo_ablation()
    c.ablation.rows = (1, 2, 6)
    results = {
        1: ("zero-shot", None, [_rep([2] * 10)]),
        2: ("CE", 1e-3, [{**_rep([1] * 10), "wall_s": 1800.0}]),
    }
    every = {2: results[2][2] * 3}
    md = ablate.write_results(c, results, every, tmp_path, 60.0, "CMD", complete=False)
    assert "**Partial**: still to run: row6, row3_kd_only, row6_decoder." in md
    assert "Command: `CMD`" in md and "Trained runs: 3, 1.50 h" in md
    assert "CPU time" not in md  # no run recorded it
    assert (tmp_path / "ablation.md").read_text() == md and (tmp_path / "ablation.png").is_file()
    # CPU time is summed over the runs that record it, and says how many do.
    every = {2: [*results[2][2] * 2, {**results[2][2][0], "cpu_s": 5400.0}]}
    md = ablate.write_results(c, results, every, tmp_path, 60.0, "CMD", complete=True)
    assert "Partial" not in md
    assert "1.50 h of CPU time in the 1 of 3 runs that record it" in md


def test_the_table_is_rebuilt_from_committed_reports_alone(tmp_path):
    """`--table_only`: complete rows from `runs/`, the rate chosen on dev; a row missing one run
    is listed as still to run; nothing is trained and no corpus is read."""
    import json

    c = _demo_ablation()
    c.ablation.rows, c.ablation.variants = (1, 2, 6), ConfigDict()
    c.ablation.lr_grid, c.ablation.seeds = (1e-4, 1e-3), (0, 1)
    kept = tmp_path / "runs"

    def put(key, lr, seed, errs, dev):
        path = ablate._run_dir(kept, key, lr, seed) / "report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({**_rep(errs, dev=dev), "total_steps": c.total_steps}))

    with pytest.raises(ValueError, match="no finished runs"):
        ablate.table_only(c, ablate.entries(c.ablation), tmp_path, "CMD")
    kept.mkdir()
    (kept / "corpus.json").write_text(json.dumps({"sha256": "f" * 64}))
    (kept / "row1").mkdir()
    (kept / "row1" / "report.json").write_text(json.dumps(_rep([2] * 10)))
    put("row2", 1e-4, 0, [1] * 10, [3] * 10)
    put("row2", 1e-3, 0, [3] * 10, [1] * 10)  # best on dev, worse on test
    put("row2", 1e-3, 1, [3] * 10, [1] * 10)
    put("row6", 1e-4, 0, [0] * 10, [0] * 10)
    put("row6", 1e-3, 0, [0] * 10, [1] * 10)  # row 6's seed 1 at 1e-4 is still to run
    md = ablate.table_only(c, ablate.entries(c.ablation), tmp_path, "CMD")
    assert "**Partial**: still to run: row6." in md and "by `--table_only`" in md
    row2 = next(line for line in md.splitlines() if line.startswith("| 2 |"))
    assert row2.startswith("| 2 | LoRA, CE only | 0.001 | 2 | 25.00 [25.00, 25.00] (10 / 11) |")
    assert "| 75.00 [75.00, 75.00] (10 / 11) |" in row2
    put("row6", 1e-4, 1, [0] * 10, [0] * 10)
    md = ablate.table_only(c, ablate.entries(c.ablation), tmp_path, "CMD")
    assert "Partial" not in md and "| 6 | " in md and "Trained runs: 6" in md


def test_partial_pairings_mixed_references_and_rows_without_a_teacher_are_shown():
    """An interval over part of a split says so; a seed mean over two agreement references is
    refused; CE-only LoRA's trainable share is against the ablation's largest teacher; the step
    time is the lowest of the row's runs' medians; a non-finite dev WER never wins the rate."""
    from test_agreement import _result as res

    short = _rep([0] * 10)
    short["after"]["test"] = res([0] * 6, [4] * 6)  # scored 6 of the 10 test utterances
    ce = {**_rep([1] * 10), "params": {"trainable": 100, "student": 1000}}
    ensemble = _rep([1] * 10, agree=1, agree_before=2)
    ensemble["agreement"]["after"]["reference"] = "base_ft"
    ensemble["params"] = {"trainable": 100, "teachers": {"base": 400, "base_ft": 400}}
    ensemble["params"]["pct_of_largest_teacher"] = 25.0
    results = {
        2: ("CE", 1e-3, [ce]),
        6: ("ours", 1e-3, [short]),
        7: ("ours, ensemble", 1e-3, [ensemble, _rep([1] * 10, agree=1)]),
    }
    slow = {**_rep([1] * 10), "median_step_s": 9.0}
    every = {6: [short, slow, slow, {**short, "median_step_s": 2.0}]}
    lines = ablate.summarise(BASE, results, every)[0].splitlines()
    row2, row6, row7 = lines[2:5]
    assert "-25.00 [-25.00, -25.00] (paired on 6; 10 and 6 scored)" in row6
    assert row6.split(" | ")[10] == "-25.00 [-25.00, -25.00]"  # test_ood: whole split
    assert row6.endswith("| 0.500 | 1.00 |")  # the fastest of its runs: 1, 9, 9, 2 s
    assert row2.endswith("| 25.000 | 1.00 |")  # 100 of base_ft's 400
    assert "- (runs scored against different references: ['base', 'base_ft'])" in row7
    nan = {"after": {"dev": {"wer": float("nan")}}}
    assert ablate._dev_wer(nan, "dev") == float("inf")


def test_an_interrupted_report_write_leaves_the_old_report(tmp_path, monkeypatch):
    from pathlib import Path

    from mkd_jax.results import write_atomic

    path = tmp_path / "report.json"
    write_atomic(path, '{"old": 1}')
    real = Path.write_text

    def half(self, text, *a, **k):
        real(self, text[:3])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, '{"new": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"old": 1}'


@pytest.mark.parametrize("name", ["ablation_demo", "ablation_power"])
def test_every_row_and_variant_of_the_shipped_ablations_validates(name):
    """A long ablation must not die at its fifth row on a config error: each row's and variant's
    config passes every rule up front (base_ft stands in as base, which is what it starts from)."""
    from mkd_jax.validate import validate

    c = load_config_file(f"configs/{name}.py")
    c.teachers.base_ft.checkpoint = "base"
    todo = ablate.entries(c.ablation)
    assert set(ablate.ROWS) <= set(todo)
    for row, _, overrides in todo.values():
        if row != 1:
            validate(
                ablate.row_config(c, row, lr=c.ablation.lr_grid[0], seed=0, overrides=overrides)
            )
    if name == "ablation_power":
        five = ablate.row_config(c, 5, lr=1e-3, seed=0, overrides=todo[5][2])
        assert five.data.teacher_frames == 0 and len(five.lora.targets) == 2
        six = ablate.row_config(c, 6, lr=1e-3, seed=0, overrides=todo[6][2])
        assert six.data.teacher_frames == 1000 and len(six.lora.targets) == 1
