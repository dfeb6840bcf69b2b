"""Is there anything to distil on this audio? The transcripts' likelihood under each model.

    python -m mkd_jax.headroom --config configs/ablation_power.py --split train [--limit 200]

KD trains the student toward each teacher's next-token distribution on the training audio, with
the transcript as the prefix. Where a teacher gives the transcripts no higher likelihood than the
student already does, KD on that audio has little to transfer, however long it runs: check this
before spending a training budget, and compare the training split with the splits you care about.

Each model (the config's student and every teacher with a checkpoint) scores every utterance
teacher-forced, at its own window (`data.n_frames` for the student, `data.teacher_frames` for the
teachers), on `" " + transcript` plus end-of-text after its decoder prompt, as training's labels:
- nats per word: the utterance's summed token negative log-likelihood over its words. Two
  tokenizers score the same string, so this compares across vocabularies (per token does not);
- top-1: the share of label tokens that are the model's argmax (per tokenizer).
The training split is read as training reads it: with `data.train_noise` when that is on.
Per teacher, `student - teacher` nats per word with a paired bootstrap 95% CI over utterances:
above zero, the teacher knows these transcripts better than the student.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
from absl import flags
from ml_collections import config_flags
from tqdm import tqdm

from mkd_jax import cli
from mkd_jax.data import features, loaders
from mkd_jax.data.batching import decoder_arrays
from mkd_jax.stats import paired_bootstrap

FLAGS = flags.FLAGS
TOKEN_BUCKET = 16  # label lengths are padded to a multiple of this: few shapes, few compiles


class Scores(NamedTuple):
    """Per-utterance teacher-forced scores of one model."""

    nll: np.ndarray  # [N] summed negative log-likelihood of the label tokens (nats)
    correct: np.ndarray  # [N] label tokens that are the model's argmax
    tokens: np.ndarray  # [N] label tokens (text tokens + end-of-text)


def forced_scores(model, params, tokenizer, clips, texts, *, n_frames: int, batch_size: int = 8,
                  desc: str = "") -> Scores:  # fmt: skip
    """Teacher-forced scores of `texts` (transcripts) given `clips` (16 kHz float audio)."""
    import jax  # seconds to import: `main` checks its input first
    import jax.numpy as jnp

    prompt = tokenizer.prompt_ids()
    seqs = [tokenizer.encode(" " + t.strip()) for t in texts]

    @jax.jit
    def step(params, mel, dec, labels, mask):
        logits, _ = model.apply({"params": params}, mel, dec)
        logits = logits.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, axis=-1)
        ll = jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
        hit = jnp.argmax(logits, axis=-1) == labels
        return -(ll * mask).sum(-1), (hit * mask).sum(-1)

    n = len(texts)
    nll, correct = np.zeros(n), np.zeros(n)
    tokens = np.array([len(s) + 1 for s in seqs], np.float64)
    for start in tqdm(range(0, n, batch_size), desc=desc or "score", unit="batch", leave=False):
        rows = list(range(start, min(start + batch_size, n)))
        longest = max(len(prompt) + len(seqs[r]) for r in rows)
        width = -(-longest // TOKEN_BUCKET) * TOKEN_BUCKET
        arrays = [decoder_arrays(prompt, seqs[r], tokenizer.eot, width) for r in rows]
        pad = batch_size - len(rows)  # a short last batch keeps the compiled shape
        dec, labels, mask = (np.stack(list(a) + [a[0]] * pad) for a in zip(*arrays, strict=True))
        mask[len(rows) :] = 0.0
        audio = [clips[r] for r in rows] + [clips[rows[0]]] * pad
        mel = features.log_mel(audio, n_mels=model.num_mel_bins, n_frames=n_frames)
        out = step(params, *(jnp.asarray(x) for x in (mel, dec, labels, mask)))
        a, b = (np.asarray(x, np.float64)[: len(rows)] for x in out)
        nll[rows], correct[rows] = a, b
    if not np.all(np.isfinite(nll)):
        bad = [i for i in range(n) if not np.isfinite(nll[i])]
        raise cli.RunFailed(f"{desc}: non-finite likelihood for utterances {bad[:5]}")
    return Scores(nll, correct, tokens)


def word_counts(texts) -> np.ndarray:
    """Words per transcript (whitespace-separated, as written): the per-word denominator."""
    return np.array([max(1, len(t.split())) for t in texts], np.float64)


def compare(student: Scores, teacher: Scores, words: np.ndarray, *, seed: int = 0) -> dict:
    """`student - teacher` nats per word over the utterances, with a paired bootstrap 95% CI."""
    r = paired_bootstrap(teacher.nll, student.nll, words, seed=seed)
    return {
        "diff": r["diff"] / 100.0,
        "low": r["low"] / 100.0,
        "high": r["high"] / 100.0,
        "n_utts": r["n_utts"],
        # paired_bootstrap counts b (the student) lower as "better"
        "teacher_better": r["n_worse"],
        "teacher_worse": r["n_better"],
    }


def select(n: int, limit: int) -> np.ndarray:
    """`limit` utterance indices spread evenly over the split (all when `limit` is 0)."""
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def format_table(split: str, n: int, n_all: int, rows: dict, comparisons: dict) -> str:
    lines = [
        f"teacher-forced likelihood of the {split!r} transcripts ({n} of {n_all} utterances)",
        "",
        "| model | window | nats / word | nats / token | top-1 | label tokens |",
        "|---|---|---|---|---|---|",
    ]
    for name, (scores, frames, words) in rows.items():
        lines.append(
            f"| {name} | {frames / 100:g} s | {scores.nll.sum() / words.sum():.3f} "
            f"| {scores.nll.sum() / scores.tokens.sum():.3f} "
            f"| {scores.correct.sum() / scores.tokens.sum():.4f} | {int(scores.tokens.sum())} |"
        )
    lines.append("")
    for name, c in comparisons.items():
        verdict = (
            "the teacher knows these transcripts better: there is something to distil"
            if c["low"] > 0
            else "no headroom beyond noise: KD on this audio has little to transfer"
        )
        lines.append(
            f"student - {name}: {c['diff']:+.3f} nats/word [{c['low']:+.3f}, {c['high']:+.3f}] "
            f"(95% CI, {c['n_utts']} utterances; teacher better on {c['teacher_better']}, worse "
            f"on {c['teacher_worse']}): {verdict}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    cfg = FLAGS.config
    if cfg is None:
        raise ValueError("--config is required: its student and teachers are scored")
    if FLAGS.limit < 0:
        raise ValueError(f"--limit={FLAGS.limit}: use 0 (every utterance) or a positive count")
    if FLAGS.batch_size < 1:
        raise ValueError(f"--batch_size={FLAGS.batch_size}: must be >= 1")
    from mkd_jax.evaluate import parse_source
    from mkd_jax.roles import build_role, noised, resolve_source

    student_frames = int(cfg.data.n_frames)
    teacher_frames = int(cfg.data.get("teacher_frames", 0)) or student_frames
    where = {"student": (cfg.student, student_frames)}
    for name, role_cfg in cfg.teachers.items():
        if not role_cfg.checkpoint:
            print(f"teachers.{name}: no checkpoint (randomly initialised); not scored")
            continue
        where[f"teachers.{name}"] = (role_cfg, teacher_frames)
    if len(where) < 2:
        raise ValueError("the config has no teacher with a checkpoint: nothing to compare with")
    if FLAGS.source:  # other audio, read with the config's duration filter
        keep = ("min_seconds", "max_seconds", "max_bad_fraction")
        source = dict({k: cfg.data.source[k] for k in keep}, **parse_source(FLAGS.source))
    else:
        source = resolve_source(cfg.data.source)
    utts = loaders.load_split(source, FLAGS.split)
    if len(utts) == 0:
        raise ValueError(f"split {FLAGS.split!r} of {source.get('path')} has no usable utterance")
    if FLAGS.split == cfg.data.train_split:
        utts = noised(cfg, utts)
        if utts.noise is not None:
            print(f"{FLAGS.split}: noised as training reads it (data.train_noise {utts.noise})")
    idx = select(len(utts), FLAGS.limit)
    longest = max(float(utts.durations[i]) for i in idx)
    for label, (_, frames) in where.items():
        if longest > frames / 100:
            raise ValueError(
                f"an utterance of {longest:.2f} s is longer than {label}'s {frames / 100:g} s "
                "window (data.n_frames / data.teacher_frames): lower data.source.max_seconds"
            )
    texts = [utts.texts[i] for i in idx]
    clips = [utts.audio(int(i)) for i in idx]
    words = word_counts(texts)
    rows = {}
    for label, (role_cfg, frames) in where.items():
        role = build_role(role_cfg, label, seed=cfg.seed)
        scores = forced_scores(
            role.model, role.params, role.tokenizer, clips, texts,
            n_frames=frames, batch_size=FLAGS.batch_size, desc=label,
        )  # fmt: skip
        rows[f"{label} ({role_cfg.checkpoint})"] = (scores, frames, words)
        logging.info("%s scored", label)
    names = list(rows)  # the student first
    student = rows[names[0]][0]
    comparisons = {name: compare(student, rows[name][0], words) for name in names[1:]}
    print(format_table(FLAGS.split, len(idx), len(utts), rows, comparisons))


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config whose student and teachers to score.")
    flags.DEFINE_string("source", None, "KIND:PATH of the audio (default: the config's source).")
    flags.DEFINE_string("split", "train", "Split to score.")
    flags.DEFINE_integer("limit", 0, "Score this many utterances spread over the split; 0: all.")
    flags.DEFINE_integer("batch_size", 8, "Utterances per forward pass.")
    cli.run(main)
