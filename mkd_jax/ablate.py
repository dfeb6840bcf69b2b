"""Run METHOD.md's ablation rows with one budget and write a table and a plot.

    python -m mkd_jax.ablate --config configs/ablation_demo.py --workdir results/ablation_runs

Each (row, learning rate, seed) trains in its own workdir and is skipped once its report exists,
so an interrupted ablation resumes row by row. The learning rate of each row is selected on the
dev split (seed 0); test WER is read only at the selected rate. Spread is over seeds (min-max).
Each split shows n scored / total; test and test_ood (engines never used in training) add the
paired bootstrap 95% CI of each row's difference from row 2 (CE-only LoRA), and the real-audio
agreement with the first teacher (from each run's report) stands beside them.
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

FLAGS = flags.FLAGS
OOD_SPLIT = "test_ood"  # TTS engines never used in training (data/synth.py)

ROWS = {
    1: "student zero-shot",
    2: "LoRA, CE only",
    3: "LoRA + logit KD (Hinton)",
    4: "LoRA + interpolated-target KD",
    5: "LoRA + KD + FitNets MSE, last encoder layer (paper code)",
    6: "LoRA + KD + layer-wise geodesic mappers, one teacher (ours)",
    7: "row 6 with the teacher ensemble (ours)",
}


def row_config(base: ConfigDict, row: int, *, lr: float, seed: int) -> ConfigDict:
    """The config of one ablation row; everything not named here is shared by all rows."""
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
    return cfg


def _run_dir(root: Path, row: int, lr: float, seed: int) -> Path:
    return root / f"row{row}" / f"lr{lr:g}" / f"seed{seed}"


def run_row(base, root: Path, row: int, lr: float, seed: int) -> dict:
    from mkd_jax import train

    workdir = _run_dir(root, row, lr, seed)
    done = workdir / "report.json"
    if not done.is_file():
        t0 = time.time()
        train.run(row_config(base, row, lr=lr, seed=seed), workdir)
        logging.info("row %d lr %g seed %d took %.1f min", row, lr, seed, (time.time() - t0) / 60)
    return json.loads(done.read_text())


def zero_shot(base, root: Path) -> dict:
    """Row 1: the untrained student through the same evaluation as the trained rows."""
    path = root / "row1" / "report.json"
    if not path.is_file():
        from mkd_jax.agreement import load_split_if_present
        from mkd_jax.demo import _test_wer
        from mkd_jax.roles import resolve_source

        source = resolve_source(base.data.source)
        splits = (base.data.eval_split, base.data.test_split, OOD_SPLIT)
        after = {
            s: _test_wer(base.student.checkpoint, base, source, s)
            for s in splits
            if s != OOD_SPLIT or load_split_if_present(source, s) is not None
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"after": after, "params": {"trainable": 0}, "median_step_s": None})
        )
    return json.loads(path.read_text())


def _stat(values):
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def _seed_mean(reports: list, split: str) -> dict | None:
    """A row's per-utterance word errors on a split, averaged over its seeds, as `compare` reads
    them; None where a report lacks them (older runs, or a split a run did not score)."""
    results = [r["after"].get(split) for r in reports]
    if not results or any(not res or not res.get("per_utt") for res in results):
        return None
    ids = results[0]["per_utt"]["ids"]
    if any(res["per_utt"]["ids"] != ids for res in results):
        return None
    errs = np.mean([res["per_utt"]["word_errors"] for res in results], axis=0)
    ref_words = results[0]["per_utt"]["ref_words"]
    return {"per_utt": {"ids": ids, "word_errors": errs.tolist(), "ref_words": ref_words}}


def _wer_cell(reports: list, split: str) -> tuple[str, tuple | None]:
    """`mean [min, max] (n scored / total)` over seeds, and the stats for the plot."""
    results = [r["after"].get(split) for r in reports]
    if any(res is None for res in results):
        return "-", None
    stat = _stat([res["wer"] for res in results])
    first = results[0]
    n = f"{first['n_scored']} / {first['n_total']}" if "n_total" in first else str(first["n"])
    return f"{stat[0]:.2f} [{stat[1]:.2f}, {stat[2]:.2f}] ({n})", stat


def _vs_row2(results: dict, row: int, split: str) -> str:
    """Paired bootstrap 95% CI of (this row - row 2) seed-mean WER over shared utterances."""
    from mkd_jax.evaluate import compare
    from mkd_jax.report import format_change

    if row == 2 or 2 not in results:
        return "-"
    a, b = _seed_mean(results[2][1], split), _seed_mean(results[row][1], split)
    if a is None or b is None:
        return "-"
    try:
        return format_change(compare(a, b))
    except ValueError:  # no shared utterance, or different references
        return "-"


def _agreement_cell(reports: list) -> str:
    """Real-audio agreement after training (WER % vs the first teacher's transcripts), mean."""
    found = [r["agreement"]["after"] for r in reports if (r.get("agreement") or {}).get("after")]
    if not found:
        return "-"
    wer = np.mean([a["wer"] for a in found])
    return f"{wer:.2f} vs {found[0]['reference']} ({found[0]['n_scored']} / {found[0]['n_total']})"


def summarise(base, results: dict) -> tuple[str, list]:
    dev, test = base.data.eval_split, base.data.test_split
    lines = [
        "| row | method | best LR (dev) | dev WER % mean [min, max] (n) | "
        "test WER % mean [min, max] (n) | test vs row 2 (95% CI) | "
        f"{OOD_SPLIT} WER % mean [min, max] (n) | {OOD_SPLIT} vs row 2 (95% CI) | "
        "real-audio agreement WER % (n) | trainable % of largest teacher | step s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    plot = []
    for row, (lr, reports) in results.items():
        (d_cell, d), (t_cell, t), (o_cell, o) = (
            _wer_cell(reports, s) for s in (dev, test, OOD_SPLIT)
        )
        pct = reports[0]["params"].get("pct_of_largest_teacher")
        step = [r["median_step_s"] for r in reports if r.get("median_step_s")]
        cells = [
            str(row), ROWS[row], str(lr) if lr else "-", d_cell, t_cell,
            _vs_row2(results, row, test), o_cell, _vs_row2(results, row, OOD_SPLIT),
            _agreement_cell(reports), f"{pct:.3f}" if pct else "-",
            f"{np.mean(step):.1f}" if step else "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
        plot.append((row, d, t, o))
    lines += [
        "",
        "n: utterances scored / in the split. vs row 2: the row's seed-mean WER minus row 2's "
        "(CE-only LoRA), paired bootstrap 95% CI over utterances (seeds averaged per utterance); "
        f"an interval that excludes 0 is beyond resampling noise. {OOD_SPLIT}: TTS engines never "
        "used in training. Real-audio agreement: the trained student's WER against its first "
        "teacher's transcripts of real recordings (real_unlabelled), seed mean; rows without "
        "teachers have none. Every row decodes at the training context, with 30 s for longer "
        "utterances.",
    ]
    return "\n".join(lines), plot


def write_plot(plot, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(plot))
    series = [(1, "dev"), (2, "test")] + [(3, OOD_SPLIT)] * any(p[3] for p in plot)
    width = 0.8 / len(series)
    for k, (idx, label) in enumerate(series):
        stats = [p[idx] or (np.nan, np.nan, np.nan) for p in plot]  # a missing split: no bar
        means = [st[0] for st in stats]
        err = [[st[0] - st[1] for st in stats], [st[2] - st[0] for st in stats]]
        off = (k - (len(series) - 1) / 2) * width
        ax.bar(x + off, means, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, [f"row {p[0]}" for p in plot])
    ax.set_ylabel("WER % (mean, min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    base = FLAGS.config
    ab = base.ablation
    root = Path(FLAGS.workdir)
    from mkd_jax.demo import ensure_base_ft

    with base.unlocked():
        base.teachers.base_ft.checkpoint = ab.base_ft_run or str(
            ensure_base_ft(assets.cache_dir() / "demo")
        )
    t0 = time.time()
    results = {}
    for row in ab.rows:
        if row == 1:
            results[1] = (None, [zero_shot(base, root)])
            continue
        by_lr = {lr: run_row(base, root, row, lr, ab.seeds[0]) for lr in ab.lr_grid}
        best = min(by_lr, key=lambda lr: by_lr[lr]["after"][base.data.eval_split]["wer"])
        reports = [by_lr[best]] + [run_row(base, root, row, best, s) for s in ab.seeds[1:]]
        results[row] = (best, reports)
    table, plot = summarise(base, results)
    out = Path(FLAGS.results)
    out.mkdir(parents=True, exist_ok=True)
    write_plot(plot, out / "ablation.png")
    seeds = ", ".join(str(s) for s in ab.seeds)
    text = (
        f"# Ablation ({base.total_steps} steps, seeds {seeds}, LR grid "
        f"{list(ab.lr_grid)})\n\nCommand: `python -m mkd_jax.ablate --config "
        f"{FLAGS['config'].config_filename} --workdir {FLAGS.workdir}`\n\n{table}\n\n"
        f"Wall time of this invocation: {(time.time() - t0) / 60:.1f} min "
        "(finished runs are reused).\n"
    )
    (out / "ablation.md").write_text(text)
    print(text)


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Ablation config.", lock_config=False)
    flags.DEFINE_string("workdir", "results/ablation_runs", "Per-run folders (resumable).")
    flags.DEFINE_string("results", "results", "Where ablation.md and ablation.png go.")
    cli.run(main)
