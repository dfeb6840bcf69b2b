"""WER/CER with jitted batched decoding, for any model or a trained workdir's student.

    python -m mkd_jax.evaluate --model base --source disk:/path/to/corpus --split test
    python -m mkd_jax.evaluate --workdir /tmp/run --split test --group_by voice_seen,engine

Transcripts and references are normalised with Whisper's English normaliser before scoring
(corpus-level WER via jiwer). `--group_by` adds one row per value of a corpus column.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from mkd_jax import decode
from mkd_jax.data import batching, loaders, text

FLAGS = flags.FLAGS


def transcribe_utts(
    model,
    params,
    tokenizer,
    spec,
    utts,
    *,
    batch_size: int,
    n_frames: int,
    max_batches: int = 0,
    desc: str = "eval",
) -> tuple[list[str], list[str]]:
    """`(ids, hypotheses)` for a split, decoded in one static shape per `n_frames`."""
    buckets = batching.make_buckets((model.max_target_positions,), (n_frames,), batch_size)
    it = batching.BatchIterator(
        utts,
        {batching.STUDENT: tokenizer},
        buckets=buckets,
        n_mels=model.num_mel_bins,
        shuffle=False,
        repeat=False,
        process_index=0,
        process_count=1,
    )
    generate = decode.make_generate_fn(model, spec)
    ids, hyps = [], []
    total = it.batches_per_epoch() if not max_batches else min(max_batches, it.batches_per_epoch())
    for k, batch in enumerate(tqdm(it, total=total, desc=desc, unit="batch", leave=False)):
        if max_batches and k >= max_batches:
            break
        rows = decode.strip(np.asarray(generate(params, batch["mel"])), spec.eot)
        for uid, ok, row in zip(batch["ids"], batch["valid"], rows, strict=True):
            if ok:
                ids.append(str(uid))
                hyps.append(tokenizer.decode(row).strip())
    it.close()
    return ids, hyps


def score(utts, ids: list[str], hyps: list[str], group_by: tuple[str, ...] = ()) -> dict:
    """`{"all": {...}, "<column>=<value>": {...}}` with wer, cer (in %) and utterance counts."""
    ref_of = dict(zip(utts.ids, utts.texts, strict=True))
    refs = [ref_of[i] for i in ids]
    groups = defaultdict(list)
    groups["all"] = list(range(len(ids)))
    index = {uid: k for k, uid in enumerate(utts.ids)}
    for col in group_by:
        values = utts.extras.get(col)
        if values is None:
            raise ValueError(f"--group_by {col!r}: the corpus has no such column")
        for j, uid in enumerate(ids):
            groups[f"{col}={values[index[uid]]}"].append(j)
    out = {}
    for name, rows in groups.items():
        r, h = [refs[j] for j in rows], [hyps[j] for j in rows]
        pairs = text.normalize_pairs(r, h)
        out[name] = {
            "wer": 100 * text.wer(r, h),
            "cer": 100 * text.cer(r, h),
            "n": len(rows),
            "dropped_empty_refs": pairs.dropped,
        }
    return out


def format_table(results: dict[str, dict], title: str = "") -> str:
    lines = [title] if title else []
    lines += ["| set | n | WER % | CER % |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['n']} | {r['wer']:.2f} | {r['cer']:.2f} |")
    return "\n".join(lines)


def _parse_source(spec: str) -> dict:
    kind, _, path = spec.partition(":")
    if kind not in loaders.KINDS or not path:
        raise app.UsageError(f"--source={spec!r}: use KIND:PATH with KIND in {loaders.KINDS}")
    return {"kind": kind, "path": path}


def main(argv):
    del argv
    from mkd_jax.data.tokenizers import load_tokenizer
    from mkd_jax.models.whisper import load

    if FLAGS.workdir:
        from mkd_jax.roles import resolve_source
        from mkd_jax.state import restore_student

        model, params, tokenizer, folder, cfg = restore_student(FLAGS.workdir)
        source = _parse_source(FLAGS.source) if FLAGS.source else resolve_source(cfg.data.source)
        n_frames = FLAGS.n_frames or cfg.data.n_frames
    else:
        model, params, config = load(FLAGS.model)
        folder = config["_folder"]
        tokenizer = load_tokenizer(folder, model_vocab_size=model.vocab_size)
        if not FLAGS.source:
            raise app.UsageError("--source is required without --workdir")
        source = _parse_source(FLAGS.source)
        n_frames = FLAGS.n_frames or 3000
    utts = loaders.load_split(source, FLAGS.split)
    spec = decode.spec_from_folder(
        folder, tokenizer, max_new_tokens=FLAGS.max_new_tokens, beam_size=FLAGS.beam_size
    )
    ids, hyps = transcribe_utts(
        model, params, tokenizer, spec, utts, batch_size=FLAGS.batch_size, n_frames=n_frames
    )
    results = score(utts, ids, hyps, tuple(FLAGS.group_by or ()))
    name = FLAGS.workdir or FLAGS.model
    print(
        format_table(
            results,
            f"{name} on {source['path']} [{FLAGS.split}], "
            f"normaliser: Whisper EnglishTextNormalizer",
        )
    )
    if FLAGS.output:
        Path(FLAGS.output).write_text(
            json.dumps(
                {"results": results, "hypotheses": dict(zip(ids, hyps, strict=True))}, indent=1
            )
        )
        logging.info("wrote %s", FLAGS.output)


if __name__ == "__main__":
    flags.DEFINE_string("model", "tiny.en", "Model name or folder (ignored with --workdir).")
    flags.DEFINE_string("workdir", None, "A training workdir: evaluate its merged student.")
    flags.DEFINE_string("source", None, "KIND:PATH of the data (disk, librispeech, manifest, hf).")
    flags.DEFINE_string("split", "test", "Split to score.")
    flags.DEFINE_integer("batch_size", 16, "Decoding batch size.")
    flags.DEFINE_integer("n_frames", 0, "Mel frames per window (0: training's, or 3000).")
    flags.DEFINE_integer("max_new_tokens", 128, "Token limit.")
    flags.DEFINE_integer("beam_size", 1, "1 = greedy.")
    flags.DEFINE_list("group_by", [], "Corpus columns to break WER down by.")
    flags.DEFINE_string("output", None, "Write results and hypotheses as JSON here.")
    app.run(main)
