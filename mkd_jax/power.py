"""How many utterances a split needs to show a WER difference beyond noise.

    python -m mkd_jax.power --a ZERO_SHOT.json --b TRAINED.json --split test \
        [--sizes 34,100,200,321] [--sims 300]

Given two systems' per-utterance results on one split, it simulates fresh splits of each size
(utterances drawn with replacement from the observed ones, `stats.paired_power`) and prints how
often the paired bootstrap 95% interval of `b - a` would exclude zero: the power to see a
difference of the observed size. Each of `--a` and `--b` is a JSON file holding per-utterance
results, as `results.load_result` reads them: a training report or its workdir (`FILE#before`
for the untrained student's), an `evaluate --output` file (`FILE#SYSTEM` where it holds several
systems), or one `score` result (the demo's `eval/*.json`).
"""

from __future__ import annotations

from absl import flags

from mkd_jax import cli
from mkd_jax.results import load_result

FLAGS = flags.FLAGS


def format_power(label_a: str, label_b: str, split: str, out: dict) -> str:
    obs = out["observed"]
    lines = [
        f"b - a on {split}: {label_b} - {label_a}",
        f"observed: {obs['diff']:+.2f} WER points [{obs['low']:+.2f}, {obs['high']:+.2f}] "
        f"(95% paired bootstrap; {obs['n_utts']} utterances, {obs['n_words']} words)",
        "",
        "| split size (utterances) | power: CI excludes 0 on the observed side | CI excludes 0 "
        "on the other side | mean CI half-width (points) |",
        "|---|---|---|---|",
    ]
    for s in out["sizes"]:
        lines.append(
            f"| {s['n']} | {s['power']:.2f} | {s['wrong_sign']:.2f} | {s['half_width']:.2f} |"
        )
    enough = [s["n"] for s in out["sizes"] if s["power"] >= 0.8]
    lines += [
        "",
        f"{out['sims']} simulated splits per size, {out['n_resamples']} bootstrap resamples each; "
        "the observed utterances stand in for their population and the observed difference "
        "for the true one.",
        f"smallest size tried with power >= 0.8: {min(enough)}"
        if enough
        else "no size tried reaches power 0.8",
    ]
    return "\n".join(lines)


def main(argv):
    del argv
    from mkd_jax import stats
    from mkd_jax.evaluate import paired_counts

    sizes = cli.positive_ints("sizes", FLAGS.sizes)
    a, label_a = load_result(FLAGS.a, FLAGS.split)
    b, label_b = load_result(FLAGS.b, FLAGS.split)
    errs_a, errs_b, words, only_a, only_b = paired_counts(a, b)
    if only_a or only_b:
        raise ValueError(
            f"{FLAGS.a} and {FLAGS.b} scored different utterances ({only_a} only in a, {only_b} "
            "only in b): power needs both systems on the same whole split"
        )
    out = stats.paired_power(errs_a, errs_b, words, sizes, sims=FLAGS.sims, seed=FLAGS.seed)
    print(format_power(label_a, label_b, FLAGS.split, out))


if __name__ == "__main__":
    flags.DEFINE_string("a", None, "Results of system a (the reference, e.g. zero-shot).")
    flags.DEFINE_string("b", None, "Results of system b (e.g. the trained student).")
    flags.DEFINE_string("split", "test", "Split both files scored.")
    flags.DEFINE_list("sizes", ["34", "68", "100", "150", "200", "321"], "Split sizes to simulate.")
    flags.DEFINE_integer("sims", 300, "Simulated splits per size.")
    flags.DEFINE_integer("seed", 0, "Seed of the simulation.")
    flags.mark_flags_as_required(["a", "b"])
    cli.run(main)
