"""Run METHOD.md's ablation rows with one budget and write a table and a plot.

    python -m mkd_jax.ablate --config configs/ablation_demo.py --workdir results/ablation_runs

Each (row, learning rate, seed) trains in its own workdir and is skipped once its report exists,
so an interrupted ablation resumes row by row. The learning rate of each row is selected on the
dev split (seed 0); test WER is read only at the selected rate. Spread is over seeds (min-max).
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
        from mkd_jax.demo import _test_wer
        from mkd_jax.roles import resolve_source

        source = resolve_source(base.data.source)
        after = {
            s: _test_wer(base.student.checkpoint, base, source, s)
            for s in (base.data.eval_split, base.data.test_split)
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"after": after, "params": {"trainable": 0}, "median_step_s": None})
        )
    return json.loads(path.read_text())


def _stat(values):
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def summarise(base, results: dict) -> tuple[str, list]:
    dev, test = base.data.eval_split, base.data.test_split
    lines = [
        "| row | method | best LR (dev) | dev WER % mean [min, max] | "
        "test WER % mean [min, max] | trainable % of largest teacher | step s |",
        "|---|---|---|---|---|---|---|",
    ]
    plot = []
    for row, (lr, reports) in results.items():
        d = _stat([r["after"][dev]["wer"] for r in reports])
        t = _stat([r["after"][test]["wer"] for r in reports])
        pct = reports[0]["params"].get("pct_of_largest_teacher")
        step = [r["median_step_s"] for r in reports if r.get("median_step_s")]
        lines.append(
            f"| {row} | {ROWS[row]} | {lr if lr else '-'} | {d[0]:.2f} [{d[1]:.2f}, "
            f"{d[2]:.2f}] | {t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}] | "
            f"{f'{pct:.3f}' if pct else '-'} | "
            f"{f'{np.mean(step):.1f}' if step else '-'} |"
        )
        plot.append((row, d, t))
    return "\n".join(lines), plot


def write_plot(plot, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(plot))
    for off, idx, label in ((-0.2, 1, "dev"), (0.2, 2, "test")):
        means = [p[idx][0] for p in plot]
        err = [[p[idx][0] - p[idx][1] for p in plot], [p[idx][2] - p[idx][0] for p in plot]]
        ax.bar(x + off, means, 0.4, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, [f"row {p[0]}" for p in plot])
    ax.set_ylabel("WER % (mean, min-max over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    from mkd_jax.report import quiet_library_logs

    quiet_library_logs()
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
