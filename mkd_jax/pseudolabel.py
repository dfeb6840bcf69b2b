"""Label audio without transcripts: every teacher transcribes, the ensemble picks one label per
utterance, and filters drop the labels that are likely wrong.

    python -m mkd_jax.pseudolabel --config configs/demo.py --source disk:PATH --split train \
        --out DIR [--max_ref_wer=10] [--min_agreement=80] [--max_words_per_second=6]

Every teacher of the config decodes every utterance greedily with the project's jitted batched
decoder at Whisper's 30 s window (longer audio long-form, as `transcribe` does it), each shard's
utterances split over this process's devices (`--devices`, default all). Then, per
utterance:

- **The ensemble label** is the teachers' medoid: the hypothesis whose mean distance to the other
  teachers' hypotheses is smallest; ties go to the teacher listed first in the config. The distance
  of two hypotheses is their word edit distance after Whisper's English normaliser, divided by the
  longer one's word count (symmetric, 0..1). With one teacher its hypothesis is the label.
- **Signals** (columns of the output): every teacher's hypothesis (`hyp:<teacher>`); `agreement`,
  100 x (1 - the largest pairwise distance), in %; `words_per_second` of the label; with a
  reference transcript, each hypothesis's WER against it (`ref_wer:<teacher>`, `label_ref_wer`).
- **Filters** (a label is dropped for the first that applies, in this order): the decode failed
  (`decode_failed`); the label is empty after normalisation (`empty_label`); more than
  `max_words_per_second` words per second of audio (audio under 1 s counts as 1 s): the length
  check against hallucination loops (`too_many_words`); `agreement` under `min_agreement`
  (`low_agreement`); `label_ref_wer` over `max_ref_wer` (`ref_wer`, distil-whisper's recipe uses
  10% after normalisation). A filter set to 0 is off.

Output: a manifest dataset in `--out` that `loaders.load_split({"kind": "manifest", "path": OUT},
split)` reads: `<split>.jsonl` holds the kept utterances, with the label in column `label` and the
reference (if any) in `text`; `<split>.all.jsonl` every utterance with its `dropped` reason;
`<split>.summary.json` the counts. Audio stored in files is referenced where it lies; audio
embedded in a dataset is written once as FLAC under `audio/<split>/`. Train on the labels with
`--config.data.train_labels=OUT` (see `roles.train_source`).

Work is done in shards of `--shard_size` utterances, each written atomically under
`.work/<split>/`, so an interrupted run resumes at the first missing shard. With several processes
(`--process_index/--process_count`, by default JAX's), process `p` labels shards `p, p + count,
...`; whichever process finishes last writes the dataset (the folder must be shared). The work's
key (teachers' weights, source, split, ids, decoding settings) is checked on resume: labelling
different work into the same folder is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from mkd_jax import cli
from mkd_jax.data import text
from mkd_jax.results import write_atomic

FLAGS = flags.FLAGS

REASONS = ("decode_failed", "empty_label", "too_many_words", "low_agreement", "ref_wer")
WORK = ".work"
# Thresholds whose kept fractions the summary lists, to choose a filter without relabelling.
REF_WER_GRID = (0.0, 5.0, 10.0, 20.0, 50.0)
AGREEMENT_GRID = (50.0, 70.0, 80.0, 90.0, 100.0)


@dataclasses.dataclass(frozen=True)
class Filters:
    """Thresholds; 0 turns a filter off."""

    max_ref_wer: float = 0.0  # %, of the label against the reference, where there is one
    min_agreement: float = 0.0  # %, the teachers' lowest pairwise agreement
    max_words_per_second: float = 0.0

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"--{name}={value}: must be a finite number >= 0 (0: off)")
        if self.min_agreement > 100:
            raise ValueError(f"--min_agreement={self.min_agreement}: a percentage, at most 100")


# ----- the ensemble rule and the filters (pure functions of the hypotheses) -----


def _words(s: str) -> list[str]:
    return text.normalize(s).split()


def distance(a: Sequence[str], b: Sequence[str]) -> float:
    """Word edit distance of two normalised word lists over the longer one's length (0..1)."""
    if not a and not b:
        return 0.0
    import jiwer

    if not a or not b:
        return 1.0
    out = jiwer.process_words(" ".join(a), " ".join(b))
    edits = out.substitutions + out.deletions + out.insertions
    return edits / max(len(a), len(b))


def choose_label(hyps: Mapping[str, str]) -> tuple[str, float | None]:
    """`(teacher whose hypothesis is the label, agreement in % or None for one teacher)`.

    `hyps` is ordered as the config lists the teachers: ties of the mean distance go to the
    earlier one.
    """
    names = list(hyps)
    if not names:
        raise ValueError("choose_label needs at least one hypothesis")
    if len(names) == 1:
        return names[0], None
    words = {n: _words(h) for n, h in hyps.items()}
    d = np.array([[distance(words[a], words[b]) for b in names] for a in names])
    mean = d.sum(axis=1) / (len(names) - 1)
    best = names[int(np.flatnonzero(mean <= mean.min() + 1e-12)[0])]
    return best, 100.0 * (1.0 - float(d.max()))


def ref_wer(reference: str, hyp: str) -> float | None:
    """WER in % of one hypothesis against a reference (None when there is no reference word)."""
    ref = _words(reference or "")
    if not ref:
        return None
    import jiwer

    out = jiwer.process_words(" ".join(ref), " ".join(_words(hyp)) or "")
    return 100.0 * (out.substitutions + out.deletions + out.insertions) / len(ref)


def judge(row: Mapping, filters: Filters) -> str:
    """The first filter that drops a labelled row (`REASONS`), or "" to keep it."""
    if row.get("failed"):
        return "decode_failed"
    n_words = len(_words(row["label"]))
    if n_words == 0:
        return "empty_label"
    if filters.max_words_per_second and n_words > filters.max_words_per_second * max(
        row["duration"], 1.0
    ):
        return "too_many_words"
    agreement = row.get("agreement")
    if filters.min_agreement and agreement is not None and agreement < filters.min_agreement:
        return "low_agreement"
    wer = row.get("label_ref_wer")
    if filters.max_ref_wer and wer is not None and wer > filters.max_ref_wer:
        return "ref_wer"
    return ""


def label_row(uid: str, duration: float, reference: str, hyps: Mapping[str, str], failed) -> dict:
    """One utterance's label and signals (without audio location or the filter decision)."""
    name, agreement = choose_label(hyps)
    label = hyps[name]
    row = {
        "id": uid,
        "duration": float(duration),
        "text": reference or "",
        "label": label,
        "label_from": name,
        "agreement": agreement,
        "words_per_second": len(_words(label)) / max(float(duration), 1e-6),
        "failed": sorted(failed),
    }
    for n, h in hyps.items():
        row[f"hyp:{n}"] = h
    if reference:
        for n, h in hyps.items():
            row[f"ref_wer:{n}"] = ref_wer(reference, h)
        row["label_ref_wer"] = ref_wer(reference, label)
    return row


# ----- labelling a split -----


def _teachers(cfg, max_new_tokens: int) -> list[tuple[str, tuple, list]]:
    """`[(name, (model, params, tokenizer, spec), fingerprint)]` in config order."""
    from mkd_jax import decode
    from mkd_jax.agreement import fingerprint
    from mkd_jax.roles import build_role

    out = []
    for name, role in cfg.teachers.items():
        model, params, tok, folder = build_role(role, f"teachers.{name}", seed=cfg.seed)
        spec = decode.spec_from_folder(folder, tok, max_new_tokens=max_new_tokens)
        key = fingerprint([folder]) if role.checkpoint else [role.to_json(), cfg.seed]
        out.append((name, (model, params, tok, spec), key))
    return out


def _key(teachers, utts, split: str, shard_size: int, max_new_tokens: int) -> dict:
    ids = hashlib.sha256("\0".join(utts.ids).encode()).hexdigest()[:16]
    return {
        "teachers": [[name, fp] for name, _, fp in teachers],
        "source": utts.source,
        "split": split,
        "n": len(utts),
        "ids": ids,
        "shard_size": shard_size,
        "max_new_tokens": max_new_tokens,
    }


def _write_json(path: Path, obj, *, lines: bool = False) -> None:
    """Atomic write: an interrupted run leaves the old file or none, never half of one."""
    if lines:
        write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in obj))
    else:
        write_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


def _audio_file(utts, i: int, out: Path, split: str) -> str:
    """The utterance's audio file; embedded audio is written once as FLAC under `out`."""
    import soundfile as sf

    from mkd_jax.data import features

    path = utts.file(i)
    if path:
        return os.path.abspath(path)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", utts.ids[i])[:80]
    digest = hashlib.sha1(utts.ids[i].encode()).hexdigest()[:8]
    dest = out / "audio" / split / f"{slug}.{digest}.flac"
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.stem}.tmp{os.getpid()}.flac")
        sf.write(tmp, utts.audio(i), features.SAMPLE_RATE, format="FLAC")
        tmp.replace(dest)
    return str(dest.resolve())


class _Devices:
    """Data parallelism over this process's devices: each takes an equal slice of a shard's
    utterances, in its own thread, with its own copy of the teacher's weights (made once)."""

    def __init__(self, n: int):
        import jax

        local = jax.local_devices()
        if not 0 <= n <= len(local):
            raise ValueError(f"--devices={n}: this process has {len(local)} (0: all of them)")
        self.devices = local[: n or len(local)]
        self._params = {}

    def transcribe(self, name: str, member, sub, *, batch_size: int, desc: str):
        """`transcribe_utts` of `sub`, its utterances split over the devices; one `Transcripts`."""
        import jax

        from mkd_jax.evaluate import Transcripts, transcribe_utts

        model, params, tok, spec = member
        if len(self.devices) == 1:
            return transcribe_utts(*member, sub, batch_size=batch_size, n_frames=0, desc=desc)
        parts = [p for p in np.array_split(np.arange(len(sub)), len(self.devices)) if len(p)]

        def run(k: int):
            device = self.devices[k]
            if (name, k) not in self._params:
                self._params[name, k] = jax.device_put(params, device)
            with jax.default_device(device):
                return transcribe_utts(
                    model, self._params[name, k], tok, spec, sub.select(parts[k]),
                    batch_size=batch_size, n_frames=0, desc=f"{desc} [{device}]",
                )  # fmt: skip

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(parts)) as pool:
            results = list(pool.map(run, range(len(parts))))
        return Transcripts(
            ids=[u for r in results for u in r.ids],
            hyps=[h for r in results for h in r.hyps],
            n_total=len(sub),
            context=results[0].context,
            failures=[f for r in results for f in r.failures],
            flagged=[f for r in results for f in r.flagged],
        )


def _label_shard(teachers, utts, idx, split: str, out: Path, filters, batch_size, devices):
    sub = utts.select(idx)
    hyps = {}
    failed = {uid: [] for uid in sub.ids}
    for name, member, _ in teachers:
        tr = devices.transcribe(name, member, sub, batch_size=batch_size, desc=f"{name} {split}")
        hyps[name] = dict(zip(tr.ids, tr.hyps, strict=True))
        for f in tr.failures:
            failed[f["id"]].append(name)
    rows = []
    for j, uid in enumerate(sub.ids):
        row = label_row(
            uid,
            sub.durations[j],
            sub.texts[j],
            {n: hyps[n][uid] for n, _, _ in teachers},
            failed[uid],
        )
        row["path"] = None
        if not row["failed"]:
            try:
                row["path"] = _audio_file(sub, j, out, split)
            except (OSError, ValueError) as e:  # AudioError is a ValueError
                logging.warning("%s: %s", sub.where(j), e)
                row["failed"] = ["audio"]
        row["dropped"] = judge(row, filters)
        rows.append(row)
    return rows


def summarise(rows: Sequence[Mapping], teachers: Sequence[str], filters: Filters) -> dict:
    """Kept/dropped per reason, hours, and label WER against references where there are any."""
    reasons = Counter(r["dropped"] or "kept" for r in rows)
    hours = sum(r["duration"] for r in rows) / 3600
    kept_hours = sum(r["duration"] for r in rows if not r["dropped"]) / 3600
    out = {
        "n": len(rows),
        "kept": reasons.get("kept", 0),
        "hours": hours,
        "kept_hours": kept_hours,
        "dropped": {k: reasons[k] for k in REASONS if reasons[k]},
        "filters": dataclasses.asdict(filters),
        "label_from": dict(Counter(r["label_from"] for r in rows)),
    }
    with_ref = [r for r in rows if r.get("label_ref_wer") is not None]
    if with_ref:
        from mkd_jax import stats

        def wer(key, subset=with_ref):
            errs, words = stats.utterance_errors(
                [r["text"] for r in subset], [r[key] for r in subset]
            )
            return stats.corpus_wer(errs, words)

        out["n_with_reference"] = len(with_ref)
        out["label_wer"] = {f"teacher {t}": wer(f"hyp:{t}") for t in teachers}
        out["label_wer"]["ensemble label"] = wer("label")
        kept = [r for r in with_ref if not r["dropped"]]
        if kept:
            out["label_wer"]["ensemble label, kept only"] = wer("label", kept)
        out["kept_fraction_by_max_ref_wer"] = {
            f"{t:g}": float(np.mean([r["label_ref_wer"] <= t for r in with_ref]))
            for t in REF_WER_GRID
        }
    agree = [r["agreement"] for r in rows if r.get("agreement") is not None]
    if agree:
        out["kept_fraction_by_min_agreement"] = {
            f"{t:g}": float(np.mean([a >= t for a in agree])) for t in AGREEMENT_GRID
        }
    if agree and with_ref:  # is agreement a label-quality signal? The labels' WER per threshold
        out["label_wer_by_min_agreement"] = {}
        for t in AGREEMENT_GRID:
            kept = [r for r in with_ref if r.get("agreement") is not None and r["agreement"] >= t]
            if kept:
                out["label_wer_by_min_agreement"][f"{t:g}"] = wer("label", kept)
    return out


def format_summary(s: Mapping) -> str:
    lines = [
        f"pseudo-labels: kept {s['kept']} of {s['n']} utterances "
        f"({s['kept_hours']:.3f} of {s['hours']:.3f} h); dropped: "
        + (", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "none")
    ]
    if "label_wer" in s:
        lines.append(
            f"label WER vs the reference ({s['n_with_reference']} utterances): "
            + ", ".join(f"{k} {v:.2f}%" for k, v in s["label_wer"].items())
        )
        lines.append(
            "kept fraction by max_ref_wer: "
            + ", ".join(f"<={k}%: {v:.1%}" for k, v in s["kept_fraction_by_max_ref_wer"].items())
        )
    if "kept_fraction_by_min_agreement" in s:
        lines.append(
            "kept fraction by min_agreement: "
            + ", ".join(f">={k}%: {v:.1%}" for k, v in s["kept_fraction_by_min_agreement"].items())
        )
    if s.get("label_wer_by_min_agreement"):
        lines.append(
            "label WER of the kept by min_agreement: "
            + ", ".join(f">={k}%: {v:.2f}%" for k, v in s["label_wer_by_min_agreement"].items())
        )
    return "\n".join(lines)


def _manifest_row(r: Mapping) -> dict:
    return {k: v for k, v in r.items() if k not in ("failed", "dropped")}


def label_split(
    cfg,
    utts,
    split: str,
    out: Path,
    filters: Filters,
    *,
    batch_size: int = 16,
    shard_size: int = 128,
    max_new_tokens: int = 128,
    devices: int = 1,
    process_index: int = 0,
    process_count: int = 1,
) -> dict | None:
    """Labels this process's shards of `utts`; writes the dataset once every shard exists.

    Returns the summary when the dataset was written, else None (other processes' shards are
    still missing). `devices`: how many of this process's devices share each shard (0: all).
    """
    if not cfg.teachers:
        raise ValueError("the config has no teachers: pseudo-labelling needs at least one")
    if filters.min_agreement and len(cfg.teachers) < 2:
        raise ValueError("--min_agreement needs at least two teachers to compare")
    if not 0 <= process_index < process_count:
        raise ValueError(f"--process_index={process_index} not in [0, {process_count})")
    if shard_size < 1:
        raise ValueError(f"--shard_size={shard_size}: must be at least 1")
    on_devices = _Devices(devices)
    teachers = _teachers(cfg, max_new_tokens)
    work = out / WORK / split
    work.mkdir(parents=True, exist_ok=True)
    key = _key(teachers, utts, split, shard_size, max_new_tokens)
    key_file = work / "key.json"
    if key_file.is_file():
        old = json.loads(key_file.read_text())
        if old != key:
            diff = sorted(k for k in key if old.get(k) != key[k])
            raise ValueError(
                f"{out}: holds labelling of other work (differs in {', '.join(diff)}); "
                "use another --out or delete it"
            )
    else:
        _write_json(key_file, key)
    n_shards = -(-len(utts) // shard_size)
    shards = [s for s in range(n_shards) if s % process_count == process_index]
    todo = [s for s in shards if not (work / f"shard-{s:05d}.jsonl").is_file()]
    ms = {s: int(1000 * utts.durations[s * shard_size : (s + 1) * shard_size].sum()) for s in todo}
    logging.info(
        "pseudo-labelling %s[%s]: %d utterances in %d shards; this process: %d to do of %d",
        utts.source, split, len(utts), n_shards, len(todo), len(shards),
    )  # fmt: skip
    t0 = time.time()
    bar = "{l_bar}{bar}| {n:.3f}/{total:.3f} h of audio [{elapsed}<{remaining}]"
    with tqdm(
        total=sum(ms.values()), unit_scale=1 / 3.6e6, bar_format=bar, desc="labelling"
    ) as bar:
        for s in todo:
            idx = np.arange(s * shard_size, min((s + 1) * shard_size, len(utts)))
            rows = _label_shard(teachers, utts, idx, split, out, filters, batch_size, on_devices)
            _write_json(work / f"shard-{s:05d}.jsonl", rows, lines=True)
            bar.update(ms[s])
    missing = [s for s in range(n_shards) if not (work / f"shard-{s:05d}.jsonl").is_file()]
    if missing:
        logging.info(
            "%d shards of other processes are still missing; the last process to finish writes "
            "the dataset", len(missing),
        )  # fmt: skip
        return None
    rows = []
    for s in range(n_shards):
        lines = (work / f"shard-{s:05d}.jsonl").read_text().splitlines()
        rows += [json.loads(x) for x in lines if x]
    if [r["id"] for r in rows] != list(utts.ids):
        raise ValueError(f"{work}: the shards do not cover the split in order; delete {out}")
    # The filters may differ from the run that labelled a shard: judge every row now.
    for r in rows:
        r["dropped"] = judge(r, filters)
    summary = summarise(rows, [n for n, _, _ in teachers], filters)
    summary["seconds"] = time.time() - t0
    _write_json(out / f"{split}.all.jsonl", [dict(r) for r in rows], lines=True)
    kept = [_manifest_row(r) for r in rows if not r["dropped"]]
    _write_json(out / f"{split}.jsonl", kept, lines=True)
    _write_json(out / f"{split}.summary.json", summary)
    return summary


# ----- command line -----


def main(argv):
    del argv
    from mkd_jax.evaluate import load_scoring_split, parse_source
    from mkd_jax.roles import resolve_source

    cfg = FLAGS.config
    if cfg is None:
        raise ValueError("--config is required: its teachers label the audio")
    if not FLAGS.out:
        raise ValueError("--out is required: the folder of the labelled dataset")
    filters = Filters(FLAGS.max_ref_wer, FLAGS.min_agreement, FLAGS.max_words_per_second)
    random = [f"teachers.{n}" for n, r in cfg.teachers.items() if not r.checkpoint]
    if random:  # a test config's random weights would label every utterance with noise
        raise ValueError(
            f"{', '.join(random)}: no checkpoint, so the labels would come from random weights; "
            f"pass --config.{random[0]}.checkpoint=<model name or folder>"
        )
    source = parse_source(FLAGS.source) if FLAGS.source else resolve_source(cfg.data.source)
    # Every utterance, with or without a transcript (the label is what this program makes).
    utts = load_scoring_split(dict(source, require_text=False), FLAGS.split)
    import jax

    pi = jax.process_index() if FLAGS.process_index < 0 else FLAGS.process_index
    pc = jax.process_count() if FLAGS.process_count < 1 else FLAGS.process_count
    summary = label_split(
        cfg, utts, FLAGS.split, Path(FLAGS.out), filters,
        batch_size=FLAGS.batch_size, shard_size=FLAGS.shard_size,
        max_new_tokens=FLAGS.max_new_tokens, devices=FLAGS.devices,
        process_index=pi, process_count=pc,
    )  # fmt: skip
    if summary is not None:
        print(format_summary(summary))
        print(f"wrote {Path(FLAGS.out) / (FLAGS.split + '.jsonl')} (manifest:{FLAGS.out})")
        if summary["kept"] == 0:
            raise cli.RunFailed("every label was dropped; loosen the filters or check the teachers")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Config whose teachers label the audio.")
    flags.DEFINE_string("source", None, "KIND:PATH of the audio (default: the config's source).")
    flags.DEFINE_string("split", "train", "Split to label.")
    flags.DEFINE_string("out", None, "Folder of the labelled manifest dataset.")
    flags.DEFINE_float("max_ref_wer", 0.0, "Drop labels over this WER (%) vs a reference; 0 off.")
    flags.DEFINE_float("min_agreement", 0.0, "Drop labels the teachers agree on less (%); 0 off.")
    flags.DEFINE_float("max_words_per_second", 0.0, "Drop labels with more words a second; 0 off.")
    flags.DEFINE_integer("max_new_tokens", 128, "Token limit per 30 s window.")
    flags.DEFINE_integer("batch_size", 16, "Decoding batch size.")
    flags.DEFINE_integer("shard_size", 128, "Utterances per resumable shard.")
    flags.DEFINE_integer("devices", 0, "Devices of this process sharing the decoding (0: all).")
    flags.DEFINE_integer("process_index", -1, "This process (default: JAX's).")
    flags.DEFINE_integer("process_count", 0, "Processes sharing the work (default: JAX's).")
    cli.run(main)
