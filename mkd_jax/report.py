"""What a run shows its user: one log line per interval, JSONL and TensorBoard metrics, and the
final report (WER before and after, trainable share of the teachers, throughput) with a PNG."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from mkd_jax import lora
from mkd_jax.results import write_atomic

_SHORT = {
    "train/loss": "loss",
    "train/ce": "ce",
    "train/kd_kl": "kd",
    "train/grad_norm": "gnorm",
    "train/acc/student": "acc",
}
# In metrics.jsonl, TensorBoard and the report, but not on the one console line per interval.
_NOT_ON_CONSOLE = (
    "train/lr", "train/tokens", "train/coverage", "train/feat/", "train/kd/", "train/acc/",
    "train/finite",
)  # fmt: skip


def param_budget(roles, n_trainable: int) -> dict:
    """Trainable parameters against the largest teacher and against the whole ensemble."""
    sizes = {n: lora.count(r.params) for n, r in roles["teachers"].items()}
    out = {
        "trainable": n_trainable,
        "student": lora.count(roles["student"].params),
        "teachers": sizes,
    }
    if sizes:
        out["pct_of_largest_teacher"] = 100.0 * n_trainable / max(sizes.values())
        out["pct_of_ensemble"] = 100.0 * n_trainable / sum(sizes.values())
    return out


class _NullWriter:
    def add_scalar(self, *args) -> None:
        pass

    def close(self) -> None:
        pass


class RunLog:
    """Metrics sinks for one workdir: `metrics.jsonl`, TensorBoard events and the console."""

    def __init__(self, workdir: Path, cfg, roles, n_trainable: int):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.total_steps = cfg.total_steps
        # Only process 0 writes files; the others log to nowhere.
        self.primary = jax.process_index() == 0
        sink = workdir / "metrics.jsonl" if self.primary else os.devnull
        self.jsonl = open(sink, "a")  # noqa: SIM115 - lives as long as the run
        self.tb = SummaryWriter(str(workdir / "tb")) if self.primary else _NullWriter()
        self.history: dict = {}
        self.t0 = time.time()
        budget = param_budget(roles, n_trainable)
        logging.info("parameters: %s", json.dumps(budget))
        print(
            f"trainable {n_trainable:,} params"
            + (
                f" = {budget['pct_of_largest_teacher']:.3f}% of the largest teacher, "
                f"{budget['pct_of_ensemble']:.3f}% of the ensemble"
                if "pct_of_largest_teacher" in budget
                else ""
            ),
            flush=True,
        )

    def scalar(self, step: int, key: str, value: float) -> None:
        self.tb.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, key: value}) + "\n")
        self.jsonl.flush()
        self.history.setdefault("curves", {}).setdefault(key, []).append((step, float(value)))

    def interval(
        self, step, metrics: list[dict], utts: float, audio_s: float, wall: float, lrs: dict, bar
    ) -> None:
        """Average the interval's step metrics, write them everywhere, print one line."""
        mean = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        mean.update({f"train/lr/{k}": v for k, v in lrs.items()})
        mean["perf/utt_per_s"] = utts / max(wall, 1e-9)
        mean["perf/audio_x_realtime"] = audio_s / max(wall, 1e-9)
        mean["perf/step_s"] = wall / max(len(metrics), 1)
        if self.history.get("rows_read", 0.0) is not None:  # None: resumed from before counting
            self.history["rows_read"] = self.history.get("rows_read", 0.0) + utts
        for k, v in mean.items():
            self.tb.add_scalar(k, v, step)
            self.history.setdefault("curves", {}).setdefault(k, []).append((step, v))
        self.jsonl.write(json.dumps({"step": step, **mean}) + "\n")
        self.jsonl.flush()
        eta = mean["perf/step_s"] * (self.total_steps - step)
        shown = {
            _SHORT.get(k, k.removeprefix("train/")): v
            for k, v in mean.items()
            if k.startswith("train/")
            and not k.startswith(_NOT_ON_CONSOLE)
            or k == "train/acc/student"
        }
        feats = [v for k, v in mean.items() if k.startswith("train/feat/")]
        if feats:  # each mapper's term is in metrics.jsonl and TensorBoard
            shown["feat"] = float(np.mean(feats))
        terms = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        line = (
            f"step {step}/{self.total_steps} {terms} lr={lrs.get('lora', 0):.2e} "
            f"{mean['perf/utt_per_s']:.1f} utt/s {mean['perf/audio_x_realtime']:.1f}x rt "
            f"ETA {eta / 60:.1f} min"
        )
        bar.write(line) if bar is not None else print(line)

    def close(self) -> None:
        self.tb.close()
        self.jsonl.close()


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = history.get("curves", {})
    keys = [
        k
        for k in curves
        if k.startswith(("train/", "eval/wer"))
        and not k.startswith(("train/lr", "train/tokens", "train/coverage"))
    ]
    if not keys:
        return
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = zip(*curves[key], strict=True)
        ax.plot(steps, values)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def format_change(c: dict | None) -> str:
    """`+0.52 [-1.10, +2.30]`: an `evaluate.compare` WER difference (points) and its 95% CI."""
    if not c:
        return "-"
    return f"{c['diff']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"


def format_spread(c: dict) -> str:
    """`9 better, 12 worse; largest one +29 words`: how the utterances moved under a change."""
    if "n_better" not in c:
        return ""
    return (
        f"{c['n_better']} better, {c['n_worse']} worse; "
        f"largest single change {c['max_utt_diff']:+d} words of {c['n_words']}"
    )


def _secs(frames) -> str:
    return f"{frames / 100:g} s" if frames else "?"


def _wer_cell(r: dict) -> str:
    """`4.12% (CER 1.80%; 34 / 34 scored at 10 s (1000 frames))`, n and context when known."""
    n = f"{r['n_scored']} / {r['n_total']}" if "n_total" in r else str(r.get("n", "?"))
    context = r.get("context") or (
        f"{_secs(r['n_frames'])} ({r['n_frames']} frames)" if r.get("n_frames") else ""
    )
    partial = "; PARTIAL: " + r["limit"] if r.get("limit") else ""
    fails = f"; {len(r['failures'])} scored as all deletions" if r.get("failures") else ""
    return (
        f"{r['wer']:.2f}% (CER {r['cer']:.2f}%; {n} scored"
        + f" at {context}" * bool(context)
        + f"{partial}{fails})"
    )


def _change_of(before: dict | None, after: dict | None) -> dict | None:
    """`evaluate.compare(before, after)` where both hold per-utterance counts, else None."""
    from mkd_jax.evaluate import compare

    if not (before and after and before.get("per_utt") and after.get("per_utt")):
        return None
    try:
        return compare(before, after)
    except ValueError as e:  # no shared utterance (e.g. different splits)
        logging.warning("no before/after interval: %s", e)
        return None


def write_report(
    workdir: Path,
    cfg,
    roles,
    log: RunLog,
    after: dict,
    n_trainable: int,
    clocks: dict,
    *,
    agreement: dict | None = None,
    degenerate: str | None = None,
    cache_savings: dict | None = None,
) -> str:
    """Write `report.json`, `report.md` and `curves.png`; return the markdown.

    Args:
      after: `{split: score(...)["all"]}` of the trained student (n, context, per_utt).
      clocks: `{"wall_s", "cpu_s"}` of the run over all its processes; either None where an
        earlier process did not record it.
      agreement: optional real-audio agreement, `{"split", "reference", "before", "after"}` with
        `agreement.agreement` results (the student's WER against the reference's transcripts).
      degenerate: why the trained student's output is garbage (`train.degenerate`), if it is.
      cache_savings: `teacher_cache.savings` of the run's teacher caches, if it read any.
    """
    budget = param_budget(roles, n_trainable)
    curves = log.history.get("curves", {})
    step_s = [v for _, v in curves.get("perf/step_s", [])]
    rt = [v for _, v in curves.get("perf/audio_x_realtime", [])]
    # Cross-tokenizer and agreement diagnostics: first and last logged interval of each.
    diagnostics = {
        k.removeprefix("train/"): {"first": v[0][1], "last": v[-1][1]}
        for k, v in curves.items()
        if k.startswith(("train/acc/", "train/kd/", "train/agree/", "train/coverage/")) and v
    }
    before = log.history.get("before")
    change = _change_of(before, after.get(cfg.data.eval_split))
    agreement = agreement or None
    agree_change = (
        _change_of(agreement.get("before"), agreement.get("after")) if agreement else None
    )
    report = {
        "before": before,
        "change": change,  # after - before on the eval split, paired bootstrap
        "agreement": agreement,
        "agreement_change": agree_change,
        "diagnostics": diagnostics,
        "nonfinite_steps": log.history.get("nonfinite_steps", []),
        # Resumed under settings other than those that took the earlier steps (train.py).
        "config_changes": log.history.get("config_changes", []),
        "after": after,
        "params": budget,
        "median_step_s": float(np.median(step_s)) if step_s else None,
        "median_audio_x_realtime": float(np.median(rt)) if rt else None,
        "wall_s": clocks["wall_s"],
        "cpu_s": clocks["cpu_s"],
        "total_steps": cfg.total_steps,
        "degenerate": degenerate,
        "teacher_cache": cache_savings,
    }
    if log.primary:
        # Atomic: `ablate` and resumes take a report.json as a finished run.
        write_atomic(workdir / "report.json", json.dumps(report, indent=2))
        plot_curves(log.history, workdir / "curves.png")
    log.close()
    lines = ["| metric | value |", "|---|---|"]
    if degenerate:
        lines.append(f"| **DEGENERATE OUTPUT** | {degenerate} |")
    if before:
        lines.append(f"| {cfg.data.eval_split} WER before | {_wer_cell(before)} |")
    for split, res in after.items():
        lines.append(f"| {split} WER after | {_wer_cell(res)} |")
    if change:
        lines.append(
            f"| {cfg.data.eval_split} WER change, after - before (95% CI) | "
            f"{format_change(change)} points over {change['n_utts']} utterances "
            f"({format_spread(change)}) |"
        )
    if agreement:
        ref_context = (agreement.get("after") or agreement["before"])["reference_context"]
        where = (
            f"{agreement['split']} agreement with {agreement['reference']} "
            f"(its transcripts at {ref_context} as reference)"
        )
        for when in ("before", "after"):
            if agreement.get(when):
                lines.append(f"| {where}, {when} | {_wer_cell(agreement[when])} |")
        if agree_change:
            lines.append(
                f"| {where}, change (95% CI) | {format_change(agree_change)} points over "
                f"{agree_change['n_utts']} clips ({format_spread(agree_change)}) |"
            )
    for k, v in diagnostics.items():
        lines.append(f"| {k} (first -> last interval) | {v['first']:.4f} -> {v['last']:.4f} |")
    lines.append(f"| trainable params | {n_trainable:,} |")
    if "pct_of_largest_teacher" in budget:
        lines.append(
            f"| % of largest teacher / ensemble | "
            f"{budget['pct_of_largest_teacher']:.3f}% / {budget['pct_of_ensemble']:.3f}% |"
        )
    if report["median_step_s"]:
        lines.append(f"| median step time | {report['median_step_s']:.2f} s |")
        lines.append(f"| throughput | {report['median_audio_x_realtime']:.1f}x real time |")
    if cache_savings:
        from mkd_jax.teacher_cache import format_savings

        lines.append(f"| teacher cache | {format_savings(cache_savings)} |")
    if clocks["wall_s"] is None:  # resumed from a checkpoint that did not record it
        lines.append("| wall time | unknown (resumed from a checkpoint without it) |")
    else:
        lines.append(f"| wall time | {clocks['wall_s'] / 60:.1f} min |")
    if clocks["cpu_s"] is not None and clocks["wall_s"] is not None:
        lines.append(
            f"| CPU time | {clocks['cpu_s'] / 60:.1f} min "
            f"({clocks['cpu_s'] / max(clocks['wall_s'], 1e-9):.2f} cores busy on average) |"
        )
    for c in report["config_changes"]:
        lines.append(
            f"| config changed on resume at step {c['step']} | {'; '.join(c['changed'])} |"
        )
    md = "\n".join(lines)
    if log.primary:
        (workdir / "report.md").write_text(md + "\n")
    return md
