"""Run METHOD.md's ablation rows with one budget and write a table and a plot.

    python -m mkd_jax.ablate --config configs/ablation_demo.py --workdir results/ablation_runs

Each (row, learning rate, seed) trains in its own workdir. Its `report.json` is copied into
`<results>/runs/`, which is meant to be committed: a run whose report is there is never trained
again, so an ablation resumes run by run across sessions and machines even when the workdirs
(checkpoints, caches) are gone. The learning rate of each row is selected on the dev split
(seed 0); test WER is read only at the selected rate. Spread is over seeds (min-max). Each split
shows n scored / total; test and test_ood (engines never used in training) add the paired
bootstrap 95% CI of each row's difference from row 2 (CE-only LoRA) and from the best baseline
(the row of 2-5 with the lowest dev WER), and the real-audio agreement with the first teacher
(from each run's report) stands beside them. `ablation.variants` adds rows that change one thing
of a METHOD.md row (KD without CE, another CE weight, other LoRA targets or mapper sides, other
ensemble weights), each with its own LR selection and seeds.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
from absl import flags, logging
from ml_collections import ConfigDict, config_flags

from mkd_jax import assets, cli
from mkd_jax.results import write_atomic
from mkd_jax.validate import validate

FLAGS = flags.FLAGS
OOD_SPLIT = "test_ood"  # TTS engines never used in training (data/synth.py)
AGREEMENT = "agreement"  # `_vs`'s name for the real-audio agreement after training

ROWS = {
    1: "student zero-shot",
    2: "LoRA, CE only",
    3: "LoRA + logit KD (Hinton)",
    4: "LoRA + interpolated-target KD",
    5: "LoRA + KD + FitNets MSE, last encoder layer (paper code)",
    6: "LoRA + KD + layer-wise geodesic mappers, one teacher (ours)",
    7: "row 6 with the teacher ensemble (ours)",
}


def row_config(
    base: ConfigDict, row: int, *, lr: float, seed: int, overrides: tuple = ()
) -> ConfigDict:
    """The config of one ablation row; everything not named here is shared by all rows.

    `overrides`: `(("loss.w_ce", 0.0), ...)` pairs applied last (a variant of the row).
    """
    cfg = copy.deepcopy(base)
    ab = cfg.ablation
    with cfg.unlocked():
        del cfg["ablation"]
        cfg.seed = seed
        cfg.optim.lr = lr
        teachers = cfg.teachers
        single = ConfigDict({ab.single_teacher: teachers[ab.single_teacher]})
        cfg.loss.interpolate = row == 4
        if row in (2, 3, 4, 5, 6):
            cfg.teachers = single if row != 2 else ConfigDict()
        if row == 2:
            cfg.loss.w_kd = 0.0
        if row in (2, 3, 4):
            cfg.mappers.weight = 0.0
        if row == 5:
            cfg.mappers.strategy, cfg.mappers.sides = "last", ("encoder",)
            cfg.mappers.loss, cfg.mappers.kind, cfg.mappers.hidden = "mse", "linear", 0
        for path, value in overrides:
            *parents, leaf = path.split(".")
            node = cfg
            for name in parents:
                node = node[name]
            if leaf not in node:
                raise ValueError(f"ablation override {path}={value!r}: no such config key")
            node[leaf] = value
    return cfg


def entries(ab: ConfigDict) -> dict:
    """Row key -> `(METHOD.md row, label, overrides)`, in the order the runs go.

    `ablation.rows` names METHOD.md rows (ints) and may name variants (strings) to place them
    among the rows (a variant of row 3 right after row 3, say); variants it does not name run
    after it, in their own order. `ablation.row_set.row<N>` gives a METHOD.md row overrides of
    its own (row 5's FitNets needs a trainable encoder layer where the other rows keep the
    encoder frozen)."""
    row_set = ab.get("row_set") or {}
    variants = dict(ab.get("variants") or {})
    for name, v in variants.items():
        if v.row not in ROWS or v.row == 1:
            raise ValueError(f"ablation.variants.{name}.row={v.row}: choose a trained row 2-7")
    out = {}
    for key in (*ab.rows, *(n for n in variants if n not in ab.rows)):
        if isinstance(key, str):
            if key not in variants:
                raise ValueError(
                    f"ablation.rows names {key!r}: no such variant (have: {sorted(variants)})"
                )
            v = variants[key]
            out[key] = (int(v.row), str(v.label), tuple(tuple(o) for o in v.set))
        elif key in ROWS:
            out[key] = (key, ROWS[key], tuple(tuple(o) for o in row_set.get(f"row{key}", ())))
        else:
            raise ValueError(f"ablation.rows names {key!r}: METHOD.md rows are 1-7")
    for name, v in variants.items():
        if v.get("control") is not None and v.control not in out:
            raise ValueError(
                f"ablation.variants.{name}.control={v.control!r}: not a row or variant of this "
                f"ablation (have: {[_key_dir(k) for k in out]})"
            )
    return out


def check_run_configs(base: ConfigDict, todo: dict) -> None:
    """`validate` every run's config (each row and variant at every rate of the grid) before
    the corpus is hashed or base_ft trained: a bad override stops the ablation in seconds, not
    rows later. base_ft, built by the ablation, is checked by its `init` shape."""
    ab = base.ablation
    later = () if ab.base_ft_run else ("teachers.base_ft",)
    for key, (row, _, overrides) in todo.items():
        if row == 1:
            continue
        for lr in ab.lr_grid:
            cfg = row_config(base, row, lr=lr, seed=ab.seeds[0], overrides=overrides)
            if ab.base_ft_run and "base_ft" in cfg.teachers:
                with cfg.unlocked():
                    cfg.teachers.base_ft.checkpoint = ab.base_ft_run
            try:
                validate(cfg, shapes_only=later)
            except ValueError as e:
                raise ValueError(f"ablation run {_key_dir(key)} at LR {lr}: {e}") from None


def pairs(ab: ConfigDict) -> list[tuple]:
    """`(variant, against)` comparisons of the variants table: each variant against the row it
    varies, and against its `control` where it names one (row 6 on noised audio against row 2 on
    the same audio: the teacher's effect where it has something to teach)."""
    out = []
    for name, v in (ab.get("variants") or {}).items():
        out.append((name, int(v.row)))
        if v.get("control") is not None:
            out.append((name, v.control))
    return out


def corpus_digest(source: dict, skip_splits=()) -> str:
    """sha256 of the corpus the runs train and score on: the bytes of every data file of a saved
    dataset (the synthetic corpus: audio included) but those of `skip_splits` (splits added to a
    built corpus that no run reads, `unread_splits`), else of every file under the source's path.

    Synthesis is deterministic on one machine kind but not across CPUs (Kokoro's ONNX kernels
    differ between AVX2 and AVX-512: the same 1.3 h corpus rebuilt on another machine changed
    tiny.en's zero-shot dev WER from 10.24 to 9.95), so runs from another build never share a
    table (`check_corpus`). A source without local files (a hub dataset) is named by its
    description only."""
    import hashlib

    path = source.get("path")
    if not path or not Path(path).exists():  # a hub dataset: only its description is known
        text = json.dumps(source, sort_keys=True, default=str)
        return "source-" + hashlib.sha256(text.encode()).hexdigest()
    root = Path(path)
    if root.is_file():
        files, root = [root], root.parent
    else:
        files = (
            sorted(_dataset_files(root, skip_splits))
            or sorted(root.rglob("*.arrow"))
            or sorted(p for p in root.rglob("*") if p.is_file())
        )
    if not files:
        raise ValueError(f"data.source.path={str(root)!r}: no corpus files to fingerprint")
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def unread_splits(cfg) -> tuple[str, ...]:
    """Opt-in splits of the synthetic corpus (`real_train`, added to a built corpus by
    `synth --real-train`) that none of `cfg`'s runs train on: adding one leaves the build the
    ablation's finished runs were made on unchanged."""
    from mkd_jax.corpus.synth import REAL_TRAIN

    read = {cfg.data.train_split} | {m.split for m in cfg.data.mix.values()}
    return () if REAL_TRAIN in read else (REAL_TRAIN,)


def _dataset_files(root: Path, skip_splits=()) -> list[Path]:
    """The Arrow files a saved `datasets` dataset consists of: those each split's `state.json`
    names (but the splits in `skip_splits`). Not every `*.arrow` under it: `datasets` writes
    `cache-*.arrow` files beside a split whenever a program maps over it, and they are not the
    corpus."""
    files = []
    for state in root.rglob("state.json"):
        if state.parent.name in skip_splits and state.parent.parent == root:
            continue
        names = json.loads(state.read_text()).get("_data_files", [])
        files += [state.parent / f["filename"] for f in names]
    return files


def check_corpus(kept: Path, digest: str) -> None:
    """Keep `kept` (finished runs' reports) only if they were made on this corpus build: reports
    of another build move to `<kept>_stale_<digest>` (kept, never mixed into this table)."""
    mark = kept / "corpus.json"
    if kept.is_dir() and any(kept.iterdir()):
        old = json.loads(mark.read_text())["sha256"] if mark.is_file() else "unknown"
        if old == digest:
            return
        stale = kept.parent / f"{kept.name}_stale_{old[:12]}"
        n = 1
        while stale.exists():  # never overwrite reports set aside before
            n += 1
            stale = kept.parent / f"{kept.name}_stale_{old[:12]}_{n}"
        logging.warning(
            "%s: finished runs were made on another build of the corpus (%s, now %s); moved to "
            "%s and run again here",
            kept, old[:12], digest[:12], stale,
        )  # fmt: skip
        kept.rename(stale)
    kept.mkdir(parents=True, exist_ok=True)
    write_atomic(mark, json.dumps({"sha256": digest}) + "\n")


def check_workdir(root: Path, digest: str) -> None:
    """Refuse a `--workdir` whose runs were trained on another build of the corpus: `run_row`
    takes a report found there as finished, so it must come from this build. The build is
    marked in `<root>/corpus.json` when the folder is first used."""
    mark = root / "corpus.json"
    if mark.is_file():
        old = json.loads(mark.read_text())["sha256"]
        if old != digest:
            raise ValueError(
                f"--workdir {root}: its runs were trained on corpus build {old[:12]}, this corpus "
                f"is {digest[:12]}; pass another --workdir or delete that one"
            )
        return
    # A run's checkpoints count too: `train` would resume them on this build's audio.
    runs = (*root.glob("*/lr*/seed*/report.json"), *root.glob("*/lr*/seed*/checkpoints"))
    if root.is_dir() and runs:
        raise ValueError(
            f"--workdir {root}: holds runs ({runs[0].parent}) but no corpus.json naming the "
            "corpus build they were trained on; pass another --workdir or delete that one"
        )
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(mark, json.dumps({"sha256": digest}) + "\n")


def _key_dir(key) -> str:
    return f"row{key}" if isinstance(key, int) else str(key)


def _run_dir(root: Path, key, lr: float, seed: int) -> Path:
    return root / _key_dir(key) / f"lr{lr:g}" / f"seed{seed}"


def run_row(base, root: Path, kept: Path, key, entry, lr: float, seed: int) -> dict:
    """One run's report: from `kept` (committed results) if there, else trained in `root`."""
    from mkd_jax import train

    saved = _run_dir(kept, key, lr, seed) / "report.json"
    if saved.is_file():
        return _same_budget(saved, base, entry)
    row, _, overrides = entry
    workdir = _run_dir(root, key, lr, seed)
    done = workdir / "report.json"
    if done.is_file():
        _same_budget(done, base, entry)
    else:
        t0 = time.time()
        try:
            out = train.run(row_config(base, row, lr=lr, seed=seed, overrides=overrides), workdir)
        except cli.RunFailed as e:
            if not done.is_file():  # non-finite training: nothing to score
                raise
            # Degenerate output at this rate: its report (loops and all) is a result of the grid.
            logging.warning("%s lr %g seed %d: %s; kept in the table", key, lr, seed, e)
            out = {}
        if "stopped_by" in out:  # SIGTERM or Ctrl-C: the run is checkpointed, not finished
            raise cli.RunFailed(
                f"{workdir}: stopped at step {out['step']} ({out['stopped_by']}); rerun the "
                "same command to resume"
            )
        logging.info("%s lr %g seed %d took %.1f min", key, lr, seed, (time.time() - t0) / 60)
    saved.parent.mkdir(parents=True, exist_ok=True)
    # The kept copy names the row and overrides it ran, so an edited variant never reuses it.
    report = {**json.loads(done.read_text()), "ablation_entry": _entry_record(entry)}
    write_atomic(saved, json.dumps(report, indent=2))
    return report


def _entry_record(entry) -> dict:
    """A row's METHOD.md row and overrides (`entries`), as JSON reads them back."""
    row, _, overrides = entry
    return json.loads(json.dumps({"row": row, "set": [list(o) for o in overrides]}))


def _same_budget(path: Path, base, entry=None) -> dict:
    """The report at `path`, refused in one line when it trained another number of steps than
    this ablation's, or (where the report names it) another row or overrides than `entry`: a
    report from another config must not fill a row of this table."""
    report = json.loads(path.read_text())
    steps = report.get("total_steps")
    if steps != base.total_steps:
        raise ValueError(
            f"{path}: a run of {steps} steps, this ablation trains {base.total_steps}; move it "
            "aside or pass another --results/--workdir"
        )
    had, want = report.get("ablation_entry"), entry and _entry_record(entry)
    if had is not None and want is not None and had != want:
        raise ValueError(
            f"{path}: a run of {had}, this ablation's is {want} (the row's config changed); move "
            "it aside or pass another --results/--workdir"
        )
    return report


def zero_shot(base, kept: Path) -> dict:
    """Row 1: the untrained student through the same evaluation as the trained rows."""
    path = kept / "row1" / "report.json"
    if not path.is_file():
        from mkd_jax.agreement import load_split_if_present
        from mkd_jax.demo import _test_wer
        from mkd_jax.roles import resolve_source

        source = resolve_source(base.data.source)
        splits = (base.data.eval_split, base.data.test_split, OOD_SPLIT)
        after = {
            s: _test_wer(base.student.checkpoint, base, source, s, reuse_encoder=True)
            for s in splits
            if s != OOD_SPLIT or load_split_if_present(source, s) is not None
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(
            path, json.dumps({"after": after, "params": {"trainable": 0}, "median_step_s": None})
        )
    return json.loads(path.read_text())


def _stat(values):
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def _seed_mean(reports: list, split: str) -> dict | None:
    """A row's per-utterance word errors on a split, averaged over its seeds, as `compare` reads
    them; None where a report lacks them (older runs, or a split a run did not score)."""
    from mkd_jax.results import seed_mean

    if split == AGREEMENT:
        found = [(r.get("agreement") or {}).get("after") for r in reports]
    else:
        found = [r["after"].get(split) for r in reports]
    if not found or any(not res or not res.get("per_utt") for res in found):
        return None
    try:
        return seed_mean(found)
    except ValueError:  # runs that scored other utterances
        return None


def _wer_cell(reports: list, split: str) -> tuple[str, tuple | None]:
    """`mean [min, max] (n scored / total)` over seeds, and the stats for the plot."""
    results = [r["after"].get(split) for r in reports]
    if any(res is None for res in results):
        return "-", None
    stat = _stat([res["wer"] for res in results])
    first = results[0]
    n = f"{first['n_scored']} / {first['n_total']}" if "n_total" in first else str(first["n"])
    return f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}] ({n})", stat


def _vs(results: dict, ref, key, split: str, ci: bool = True) -> str:
    """Paired bootstrap 95% CI of (row `key` - row `ref`) seed-mean WER over shared utterances;
    with `ci=False` the difference alone (a split the rates were chosen on)."""
    from mkd_jax.evaluate import DifferentReferences, compare
    from mkd_jax.report import format_change

    if ref is None or key == ref or ref not in results:
        return "-"
    a, b = _seed_mean(results[ref][2], split), _seed_mean(results[key][2], split)
    if a is None or b is None:
        return "-"
    try:
        c = compare(a, b)
    except DifferentReferences:
        return "- (different references)"
    except ValueError:  # no shared utterance
        return "-"
    cell = format_change(c) if ci else f"{c['diff']:+.2f}"
    if c["n_only_a"] or c["n_only_b"]:  # say so: the difference covers part of the split
        cell += (
            f" (paired on {c['n_utts']}; {c['n_utts'] + c['n_only_a']} and "
            f"{c['n_utts'] + c['n_only_b']} scored)"
        )
    return cell


def best_baseline(results: dict, dev: str):
    """The baseline row (2-5: CE only, Hinton KD, interpolated KD, FitNets) with the lowest
    seed-mean dev WER; None when none ran. Selected on dev, like the learning rates."""
    wer = {
        k: np.mean([r["after"][dev]["wer"] for r in reports])
        for k, (_, _, reports) in results.items()
        if k in (2, 3, 4, 5) and all(r["after"].get(dev) for r in reports)
    }
    return min(wer, key=wer.get) if wer else None


def _agreement_cell(reports: list) -> str:
    """Real-audio agreement after training (WER % vs the reference's transcripts), seed mean,
    and its change from the zero-shot student's agreement (each run's "before") with the paired
    bootstrap CI over clips."""
    from mkd_jax.evaluate import compare
    from mkd_jax.report import format_change

    found = [r["agreement"]["after"] for r in reports if (r.get("agreement") or {}).get("after")]
    if not found:
        return "-"
    befores = [(r.get("agreement") or {}).get("before") or {} for r in reports]
    refs = {a.get("reference") for a in found} | {b.get("reference") for b in befores if b}
    if len(refs) > 1:  # a seed mean over different references means nothing
        return f"- (runs scored against different references: {sorted(map(str, refs))})"
    wer = np.mean([a["wer"] for a in found])
    cell = f"{wer:.2f} vs {found[0]['reference']} ({found[0]['n_scored']} / {found[0]['n_total']})"
    if len(found) < len(reports):
        cell += f", {len(found)} of {len(reports)} seeds"
    before = befores[0]
    after = _seed_mean([{"after": {"a": a}} for a in found], "a")
    if len(found) == len(reports) and before and before.get("per_utt") and after:
        try:
            cell += f"; {format_change(compare(before, after))} vs zero-shot"
        except ValueError:  # not the same clips or references
            pass
    return cell


def variants_table(base, results: dict, compared: list) -> list[str]:
    """Markdown lines: each `(variant, against)` of `compared` whose rows both ran, `variant -
    against` on dev, test, test_ood and the real-audio agreement, with paired bootstrap CIs."""
    dev, test = base.data.eval_split, base.data.test_split
    rows = [(k, a) for k, a in compared if k in results and a in results]
    if not rows:
        return []
    lines = [
        "",
        "Variants against the row they vary and their control: seed-mean WER of the variant "
        "minus the other's, paired bootstrap 95% CI over utterances (clips for the agreement, "
        f"where lower is closer to the reference). On {dev} the difference alone: each row's "
        "rate was chosen there, so an interval would not be of held-out data.",
        "",
        f"| variant | against | {dev} (no CI) | {test} | {OOD_SPLIT} | real-audio agreement |",
        "|---|---|---|---|---|---|",
    ]
    for key, against in rows:
        cells = [_vs(results, against, key, dev, ci=False)]
        cells += [_vs(results, against, key, sp) for sp in (test, OOD_SPLIT, AGREEMENT)]
        name = f"row {against}" if isinstance(against, int) else against
        lines.append(f"| {key} | {name} ({results[against][0]}) | " + " | ".join(cells) + " |")
    return lines


def summarise(
    base, results: dict, every: dict | None = None, compared: list = ()
) -> tuple[str, list]:
    """The markdown table and the plot's data. `results`: key -> `(label, lr, reports)` at the
    selected rate; `every`: key -> every run of the row (all rates), for its step time;
    `compared`: the variants table's `(variant, against)` pairs (`pairs`)."""
    dev, test = base.data.eval_split, base.data.test_split
    best = best_baseline(results, dev)
    every = every or {}
    # A row without a teacher (CE only) trains as many parameters as the others: its share is
    # given against the ablation's largest teacher too.
    largest = max(
        (n for _, _, reps in results.values() for r in reps
         for n in (r["params"].get("teachers") or {}).values()),
        default=0,
    )  # fmt: skip
    lines = [
        "| row | method | best LR (dev) | seeds | dev WER % mean [min, max] (n) | "
        "test WER % mean [min, max] (n) | test vs row 2 (95% CI) | test vs best baseline | "
        f"test vs zero-shot | {OOD_SPLIT} WER % mean [min, max] (n) | {OOD_SPLIT} vs row 2 "
        f"(95% CI) | {OOD_SPLIT} vs best baseline | {OOD_SPLIT} vs zero-shot | "
        "real-audio agreement WER % (n); change vs zero-shot (95% CI) | "
        "trainable % of largest teacher | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plot = []
    for key, (label, lr, reports) in results.items():
        (d_cell, d), (t_cell, t), (o_cell, o) = (
            _wer_cell(reports, s) for s in (dev, test, OOD_SPLIT)
        )
        params = reports[0]["params"]
        pct = params.get("pct_of_largest_teacher")
        if pct is None and params.get("trainable") and largest:
            pct = 100.0 * params["trainable"] / largest
        # Step time does not depend on the rate or seed, but runs that shared the cores with other
        # work are slower: the fastest run of the row is the row's cost.
        step = [r["median_step_s"] for r in every.get(key, reports) if r.get("median_step_s")]
        cells = [
            str(key), label, str(lr) if lr else "-", str(len(reports)) if lr else "-",
            d_cell, t_cell,
            _vs(results, 2, key, test), _vs(results, best, key, test), _vs(results, 1, key, test),
            o_cell, _vs(results, 2, key, OOD_SPLIT), _vs(results, best, key, OOD_SPLIT),
            _vs(results, 1, key, OOD_SPLIT),
            _agreement_cell(reports), f"{pct:.3f}" if pct else "-",
            f"{np.min(step):.2f}" if step else "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        plot.append((key, d, t, o))
    best_txt = f"row {best} ({results[best][0]})" if best is not None else "none ran"
    missing = [str(r) for r in (2, 3, 4, 5) if r not in results]
    if best is not None and missing:
        best_txt += f" (rows {', '.join(missing)} still to run)"
    lines += [
        "",
        "n: utterances scored / in the split. vs row 2: the row's seed-mean WER minus row 2's "
        "(CE-only LoRA), paired bootstrap 95% CI over utterances (seeds averaged per utterance); "
        f"an interval that excludes 0 is beyond resampling noise. Best baseline: {best_txt}, the "
        "row of 2-5 with the lowest dev WER. vs zero-shot: against row 1, the untrained student. "
        f"{OOD_SPLIT}: TTS engines never "
        "used in training. Real-audio agreement: the trained student's WER against a reference "
        "model's transcripts of real recordings (real_unlabelled; `eval.agreement_reference`, "
        "else the row's first teacher), seed mean; '-' where a run did not measure it. Step s: "
        "the lowest, over every run of the row (all rates and seeds), of each run's median "
        "training step, on the machine that ran it. Every row decodes at the training context, "
        "with 30 s for longer utterances.",
        *variants_table(base, results, list(compared)),
    ]
    return "\n".join(lines), plot


def write_plot(plot, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(plot)), 4))
    x = np.arange(len(plot))
    series = [(1, "dev"), (2, "test")] + [(3, OOD_SPLIT)] * any(p[3] for p in plot)
    width = 0.8 / len(series)
    for k, (idx, label) in enumerate(series):
        stats = [p[idx] or (np.nan, np.nan, np.nan) for p in plot]  # a missing split: no bar
        means = [st[0] for st in stats]
        err = [[st[0] - st[1] for st in stats], [st[2] - st[0] for st in stats]]
        off = (k - (len(series) - 1) / 2) * width
        ax.bar(x + off, means, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, [_key_dir(p[0]) for p in plot], rotation=30, ha="right")
    ax.set_ylabel("WER % (mean, min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    base = FLAGS.config
    if base is None:
        raise ValueError("--config is required: an ablation config, e.g. configs/ablation_power.py")
    if "ablation" not in base:
        raise ValueError(
            f"--config {FLAGS['config'].config_filename}: not an ablation config "
            "(it needs an `ablation` group; see configs/ablation_power.py)"
        )
    ab = base.ablation
    root, out = Path(FLAGS.workdir), Path(FLAGS.results)
    kept = out / "runs"
    todo = entries(ab)  # checks the variants before any run starts
    check_run_configs(base, todo)
    command = (
        f"python -m mkd_jax.ablate --config {FLAGS['config'].config_filename} "
        f"--workdir {FLAGS.workdir} --results {FLAGS.results}"
    )
    if FLAGS.table_only:
        print(table_only(base, todo, out, command))
        return
    from mkd_jax.roles import resolve_source

    # builds the corpus if missing
    digest = corpus_digest(resolve_source(base.data.source), unread_splits(base))
    # The workdir first (a refusal then leaves the kept runs where they are), and both before
    # base_ft's stage, which trains in the workdir too.
    check_workdir(root, digest)
    check_corpus(kept, digest)
    from mkd_jax.config_base import DEMO_CORPUS_HOURS
    from mkd_jax.demo import ensure_base_ft

    if "base_ft" in base.teachers and not ab.base_ft_run:
        # base_ft learns the ablation's own train split: tuned on another corpus's, it could
        # have seen this corpus's test sentences. The demo's corpus shares the demo's base_ft.
        src = base.data.source
        demo_corpus = src.hours == DEMO_CORPUS_HOURS and tuple(src.fractions) == (0.8, 0.1, 0.1)
        ft_work = assets.cache_dir() / "demo" if demo_corpus else root / "teacher_base_ft"
        with base.unlocked():
            base.teachers.base_ft.checkpoint = str(ensure_base_ft(ft_work, source=src))
    elif "base_ft" in base.teachers:
        with base.unlocked():
            base.teachers.base_ft.checkpoint = ab.base_ft_run
    t0 = time.time()
    results, every = {}, {}
    for key, entry in todo.items():
        row, label, _ = entry
        if row == 1:
            results[1] = (label, None, [zero_shot(base, kept)])
            continue
        best, chosen, runs = _row_runs(
            base, lambda lr, s, k=key, e=entry: run_row(base, root, kept, k, e, lr, s)
        )
        results[key], every[key] = (label, best, chosen), runs
        # After every finished row, so an ablation stopped part-way still has its table.
        write_results(base, results, every, out, time.time() - t0, command, complete=False)
    text = write_results(base, results, every, out, time.time() - t0, command, complete=True)
    print(text)


def _row_runs(base, get):
    """`(best LR, its runs over the seeds, every run of the row)` with `get(lr, seed)` giving a
    run's report: the rate chosen on dev at the first seed, the other seeds at that rate. None
    where `get` has no report for a run the row needs (a row still to finish)."""
    ab = base.ablation
    by_lr = {lr: get(lr, ab.seeds[0]) for lr in ab.lr_grid}
    if any(r is None for r in by_lr.values()):
        return None
    best = min(by_lr, key=lambda lr: _dev_wer(by_lr[lr], base.data.eval_split))
    more = [get(best, s) for s in ab.seeds[1:]]
    if any(r is None for r in more):
        return None
    return best, [by_lr[best], *more], [*by_lr.values(), *more]


def table_only(base, todo: dict, out: Path, command: str) -> str:
    """Rewrite `ablation.md`/`.png` from the reports in `<out>/runs` alone (nothing is trained,
    no corpus is read): the rows whose runs are all there; the others are listed as still to
    run. For a table made with changed table code, or one read while the runs go on elsewhere."""
    kept = out / "runs"
    if not (kept / "corpus.json").is_file():
        raise ValueError(f"--results {out}: no finished runs in {kept} (no corpus.json)")
    results, every = {}, {}
    for key, (row, label, overrides) in todo.items():
        if row == 1:
            zero = kept / "row1" / "report.json"
            if zero.is_file():
                results[1] = (label, None, [json.loads(zero.read_text())])
            continue

        def get(lr, seed, key=key, entry=(row, label, overrides)):
            path = _run_dir(kept, key, lr, seed) / "report.json"
            return _same_budget(path, base, entry) if path.is_file() else None

        found = _row_runs(base, get)
        if found:
            results[key], every[key] = (label, found[0], found[1]), found[2]
    done = all(k in results for k in todo)
    return write_results(base, results, every, out, None, command, complete=done)


def _dev_wer(report: dict, dev: str) -> float:
    """A run's dev WER for the rate choice; a non-finite one never wins it."""
    wer = float(report["after"][dev]["wer"])
    return wer if np.isfinite(wer) else float("inf")


def write_results(
    base,
    results: dict,
    every: dict,
    out: Path,
    wall_s: float | None,
    command: str,
    *,
    complete: bool,
) -> str:
    """`ablation.md` and `ablation.png` of the rows finished so far; returns the markdown.
    `every`: row key -> every run of the row (all rates and seeds)."""
    ab = base.ablation
    mark = out / "runs" / "corpus.json"
    corpus = json.loads(mark.read_text())["sha256"][:12] if mark.is_file() else "unknown"
    runs = [r for reps in every.values() for r in reps]
    zero = results.get(1)
    if zero and not zero[2][0].get("agreement"):  # row 1's agreement is every run's "before"
        before = [
            r["agreement"]["before"] for r in runs if (r.get("agreement") or {}).get("before")
        ]
        # The same zero-shot student against one reference in every run; else none is shown.
        if before and len({b.get("reference") for b in before}) == 1:
            zero[2][0]["agreement"] = {"after": before[0]}
    table, plot = summarise(base, results, every, pairs(ab))
    out.mkdir(parents=True, exist_ok=True)
    write_plot(plot, out / "ablation.png")
    seeds = ", ".join(str(s) for s in ab.seeds)
    walled = [r["wall_s"] for r in runs if r.get("wall_s") is not None]
    run_h = sum(walled) / 3600
    in_all = "in all" if len(walled) == len(runs) else f"in the {len(walled)} runs that record it"
    timed = [r["cpu_s"] for r in runs if r.get("cpu_s") is not None]
    cpu = (
        f"; {sum(timed) / 3600:.2f} h of CPU time in the {len(timed)} of {len(runs)} runs that "
        f"record it (every core's busy time, not counting a run stopped or waiting)"
        if timed
        else ""
    )
    missing = [_key_dir(k) for k in entries(ab) if k not in results]
    status = "" if complete else f"**Partial**: still to run: {', '.join(missing) or 'none'}.\n\n"
    text = (
        f"# Ablation ({base.total_steps} steps, seeds {seeds}, LR grid "
        f"{list(ab.lr_grid)})\n\n{status}Command: `{command}`\n\n{table}\n\n"
        f"Trained runs: {len(runs)}, {run_h:.2f} h of wall time {in_all} (the sum of each run's "
        f"training and evaluation, on the machine that ran it, the first build of each teacher "
        f"cache included; zero-shot apart)"
        f"{cpu}. "
        + (
            f"Wall time of this invocation: {wall_s / 60:.1f} min (runs whose report is in "
            f"{out / 'runs'} are reused; "
            if wall_s is not None
            else f"Table rebuilt by `--table_only` (from the reports in {out / 'runs'}; "
        )
        + f"all of them were made on the corpus build {corpus} named in "
        f"{out / 'runs' / 'corpus.json'}).\n"
    )
    write_atomic(out / "ablation.md", text)
    return text


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Ablation config.", lock_config=False)
    flags.DEFINE_string("workdir", "results/ablation_runs", "Per-run folders (resumable).")
    flags.DEFINE_string("results", "results", "Where ablation.md and ablation.png go.")
    flags.DEFINE_bool(
        "table_only", False, "Only rewrite the table from the reports in <results>/runs."
    )
    cli.run(main)
