"""Two systems, each run with several seeds: their seed-mean WER difference, with a CI.

    python -m mkd_jax.compare --a RUN_A0,RUN_A1,RUN_A2 --b RUN_B0,RUN_B1,RUN_B2 \
        [--splits dev,test_ood,test] [--pool dev,test_ood] [--n_resamples 10000]

Each run is a training workdir or its `report.json` (`#before` for the untrained student), an
`evaluate --output` file (`FILE#SYSTEM`) or a `score` result: whatever `results.load_result`
reads. On each split, a system's per-utterance word errors are averaged over its runs (every
run must have scored the same utterances), and `b - a` gets the paired bootstrap 95% interval
over utterances (`evaluate.compare`). `--pool` adds one row over several splits together: the
selection rule of a method search that picks on dev and test_ood at once. A split named after a
report's real-audio agreement check (`real_unlabelled`) compares the runs' agreement with the
reference model's transcripts. Every row says its n; runs that scored other utterances are
refused in one line, never silently paired.
"""

from __future__ import annotations

from absl import flags

from mkd_jax import cli

FLAGS = flags.FLAGS


def side(specs: list[str], splits: list[str]) -> dict[str, dict]:
    """`{split: seed-mean result}` of one system's runs; `"+".join(splits)` when pooled."""
    from mkd_jax.results import load_result, pooled, seed_mean

    per_run = [{s: load_result(spec, s)[0] for s in splits} for spec in specs]
    if len(splits) > 1:
        runs = [pooled(r) for r in per_run]
    else:
        runs = [r[splits[0]] for r in per_run]
    where = f"{','.join(specs)} on {' + '.join(splits)}"
    references = {r.get("reference") for r in runs}
    if len(references) > 1:
        raise ValueError(
            f"{where}: scored against different references {sorted(map(str, references))}"
        )
    try:
        return {**seed_mean(runs), "reference": references.pop()}
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e


def check_pair(name: str, a: dict, b: dict) -> None:
    """Raises ValueError unless `a` and `b` can be paired: one reference, the same utterances."""
    from mkd_jax.evaluate import paired_counts

    if a["reference"] != b["reference"]:
        raise ValueError(
            f"{name}: a scored against {a['reference']}'s transcripts, b against {b['reference']}'s"
        )
    try:
        *_, only_a, only_b = paired_counts(a, b)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    if only_a or only_b:
        raise ValueError(
            f"{name}: a and b scored different utterances ({only_a} only in a, "
            f"{only_b} only in b); compare systems on the same whole split"
        )


def row(name: str, a: dict, b: dict, n_resamples: int) -> str:
    """One table row of a pair `check_pair` accepted."""
    from mkd_jax.evaluate import compare
    from mkd_jax.report import format_change

    if a["reference"]:
        name += f" (vs {a['reference']}'s transcripts)"
    c = compare(a, b, n_resamples=n_resamples)

    def cell(r):
        return f"{r['wer']:.2f} [{min(r['wers']):.2f}, {max(r['wers']):.2f}]"

    return (
        f"| {name} | {c['n_utts']} ({c['n_words']}) | {cell(a)} | {cell(b)} | "
        f"{format_change(c)} | {c['n_better']} / {c['n_worse']} |"
    )


def table(
    specs_a: list[str], specs_b: list[str], splits: list[str], pool: list[str], n_resamples: int
) -> str:
    groups = [[s] for s in splits] + ([pool] if pool else [])
    lines = [
        f"a: {len(specs_a)} run(s): {', '.join(specs_a)}",
        f"b: {len(specs_b)} run(s): {', '.join(specs_b)}",
        "",
        "| split | utterances (words) | a: WER % seed mean [min, max] | "
        "b: WER % seed mean [min, max] | b - a, points (95% CI) | utterances better / worse |",
        "|---|---|---|---|---|---|",
    ]
    # Every run is read and every pair checked before the first bootstrap runs.
    pairs = [(" + ".join(g), side(specs_a, g), side(specs_b, g)) for g in groups]
    for name, a, b in pairs:
        check_pair(name, a, b)
    lines += [row(name, a, b, n_resamples) for name, a, b in pairs]
    lines += [
        "",
        "Seed mean: each utterance's word errors averaged over a system's runs. CI: paired "
        f"percentile bootstrap over utterances ({n_resamples} resamples, seed 0); an interval "
        "that excludes 0 is beyond resampling noise. Better / worse: utterances with fewer / "
        "more seed-mean word errors in b.",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.splits and not FLAGS.pool:
        raise ValueError("--splits and --pool are both empty: name at least one split")
    if len(FLAGS.pool) == 1:
        raise ValueError(f"--pool={FLAGS.pool[0]}: pool two splits or more (or use --splits)")
    print(table(FLAGS.a, FLAGS.b, FLAGS.splits, FLAGS.pool, FLAGS.n_resamples))


if __name__ == "__main__":
    flags.DEFINE_list("a", None, "Runs of system a (the reference), comma-separated.")
    flags.DEFINE_list("b", None, "Runs of system b, comma-separated.")
    flags.DEFINE_list("splits", ["dev", "test", "test_ood"], "Splits compared one by one.")
    flags.DEFINE_list("pool", [], "Splits also compared together, as one row.")
    flags.DEFINE_integer("n_resamples", 10_000, "Bootstrap resamples.")
    flags.mark_flags_as_required(["a", "b"])
    cli.run(main)
