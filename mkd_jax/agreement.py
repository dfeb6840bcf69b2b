"""Label-free agreement on real recordings: a student's WER against its teachers' transcripts.

The corpus's `real_unlabelled` split is real human speech with no transcripts, so no WER can be
measured there. What can be measured is how closely the student follows a teacher (or the
ensemble) on it: the teacher's transcript is taken as the reference, and the student is scored
against it with `evaluate.score`. A student that gains on the synthetic test split but drifts away
from its teachers on real speech has learned the corpus, not the teachers.

    real = load_split_if_present(source, SPLIT, require_text=False)
    ref = reference("base", [base_folder], lambda u: transcribe_utts(...), real,
                    n_frames=3000, cache=agreement_dir)  # decoded once, then read from JSON
    res = student_agreement((model, params, tok, spec), {"base": ref}, real,
                            batch_size=16, n_frames=1000)["base"]
    evaluate.compare(before, after)  # paired bootstrap CI of the change, same references

Rules:
- Utterances whose reference normalises to nothing (the teacher heard no words, or failed on
  them) are left out and counted in `n_empty_reference`; `n_scored / n_total` says how many
  were scored of the split.
- Reference transcripts are cached as JSON in `cache`, keyed by name, checkpoints, split and
  `n_frames`; a cache whose utterance ids, source or checkpoint weights (size and mtime of
  `model.safetensors`) no longer match is decoded again. So before/after and every ablation row
  reuse one decoding of each teacher.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import logging

from mkd_jax import assets
from mkd_jax.data import text
from mkd_jax.evaluate import Transcripts, load_scoring_split, score, transcribe_utts
from mkd_jax.results import write_atomic

SPLIT = "real_unlabelled"
FULL_FRAMES = 3000  # Whisper's 30 s window: references are decoded at the teachers' best
# Clips of the agreement check, evenly spaced over the split (every voice pack is represented).
# The clips are 0.3-4 s but decoded in 30 s windows, so each costs a 30 s encoder pass: the whole
# split (363 clips) took base 35 min on the busy 2-core machine; 64 clips keep it to minutes.
MAX_CLIPS = 64


def cache_dir() -> Path:
    """The shared folder of reference transcripts (train, demo and ablation rows reuse it)."""
    return assets.cache_dir() / "agreement"


def load_split_if_present(
    source: Mapping, split: str, *, require_text: bool = True, max_utts: int = 0
):
    """The split as scoring sees it (`evaluate.load_scoring_split`), or None if the corpus has
    no such split (a corpus built before it existed, or another source). `max_utts` keeps that
    many utterances, evenly spaced over the split (0: all)."""
    try:
        utts = load_scoring_split(dict(source, require_text=require_text), split)
    except (KeyError, FileNotFoundError) as e:
        logging.warning("no %s split (%s)", split, e)
        return None
    if max_utts and len(utts) > max_utts:
        keep = np.linspace(0, len(utts) - 1, max_utts).round().astype(int)
        utts = utts.select(keep)
    return utts


def fingerprint(checkpoints: Sequence) -> list:
    """Name, and where it is a folder, its weights' size and mtime: a rebuilt one differs."""
    out = []
    for c in checkpoints:
        weights = Path(str(c)) / "model.safetensors"
        if weights.is_file():
            st = weights.stat()
            out.append([str(c), st.st_size, st.st_mtime_ns])
        else:
            out.append([str(c)])
    return out


def _cache_path(
    cache: Path, name: str, checkpoints: Sequence, split: str, n_frames: int, settings: Mapping
) -> Path:
    key = json.dumps([name, [str(c) for c in checkpoints], split, n_frames, dict(settings)])
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:40] or "ref"
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return Path(cache) / f"{slug}.{split}.{n_frames}f.{digest}.json"


def reference(
    name: str,
    checkpoints: Sequence,
    transcribe: Callable[..., Transcripts],
    utts,
    *,
    n_frames: int,
    cache: Path,
    split: str = SPLIT,
    settings: Mapping | None = None,
) -> dict:
    """Reference transcripts of a split from a teacher or an ensemble, decoded once.

    Args:
      name: the label shown in tables, e.g. "base" or "ensemble(base, base_ft)".
      checkpoints: the checkpoint names or folders that produce the transcripts (part of the
        cache key and of its validity check).
      transcribe: `utts -> Transcripts` (`evaluate.transcribe_utts` or `transcribe_ensemble`
        decoding at `n_frames`); called only when no valid cache exists.
      utts: the split, e.g. from `load_split_if_present(source, SPLIT, require_text=False)`.
      n_frames: the context `transcribe` decodes at (part of the cache key).
      cache: the folder of the JSON cache.
      split: the split's name (part of the cache key).
      settings: other decoding settings that change the transcripts (e.g. max_new_tokens), as a
        JSON-able dict (part of the cache key).

    Returns:
      JSON-able dict: name, checkpoints, split, n_frames, settings, source, ids, hyps, context,
      failures, flagged, n_total (`as_transcripts` turns it back into `Transcripts`).
    """
    settings = dict(settings or {})
    path = _cache_path(cache, name, checkpoints, split, n_frames, settings)
    weights = fingerprint(checkpoints)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            logging.warning("unreadable reference cache %s (%s); decoding again", path, e)
        else:
            same = (
                cached.get("ids") == list(utts.ids)
                and cached.get("source") == utts.source
                and cached.get("fingerprint") == weights
            )
            if same:
                return cached
            logging.warning("reference cache %s is stale (split or weights changed)", path)
    tr = transcribe(utts)
    if tr.limit:
        raise ValueError(f"reference {name!r} decoded only the {tr.limit}; decode the whole split")
    out = {
        "name": name,
        "checkpoints": [str(c) for c in checkpoints],
        "fingerprint": weights,
        "split": split,
        "n_frames": n_frames,
        "settings": settings,
        "source": utts.source,
        "ids": list(tr.ids),
        "hyps": list(tr.hyps),
        "context": tr.context,
        "failures": list(tr.failures),
        "flagged": list(tr.flagged),
        "n_total": tr.n_total,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(out))
    return out


def as_transcripts(ref: dict) -> Transcripts:
    """A cached `reference(...)` as the `Transcripts` it was made from (e.g. a fixed student's
    zero-shot output, cached like a teacher's so every ablation row reuses it)."""
    return Transcripts(
        ids=list(ref["ids"]),
        hyps=list(ref["hyps"]),
        n_total=ref["n_total"],
        context=ref["context"],
        failures=list(ref["failures"]),
        flagged=list(ref.get("flagged", [])),
    )


def agreement(student: Transcripts, ref: dict, utts) -> dict:
    """The student's WER and CER against `ref`'s transcripts (taken as the reference).

    Returns:
      `evaluate.score(...)["all"]` on the utterances whose reference is not empty after
      normalisation (n_scored of n_total, per_utt for `evaluate.compare`, the student's context
      and failures), plus `reference`, `reference_context`, `reference_n_frames`,
      `reference_failures` and `n_empty_reference` (the utterances left out).
    """
    ref_of = dict(zip(ref["ids"], ref["hyps"], strict=True))
    missing = [i for i in student.ids if i not in ref_of]
    if missing:
        raise ValueError(
            f"reference {ref['name']!r} lacks {len(missing)} of the student's utterances, "
            f"e.g. {missing[:3]}: not the same split"
        )
    hyp_of = dict(zip(student.ids, student.hyps, strict=True))
    keep = [i for i in student.ids if text.normalize(ref_of[i])]
    if not keep:
        raise ValueError(f"reference {ref['name']!r} is empty on every scored utterance")
    ref_utts = dataclasses.replace(utts, texts=[ref_of.get(i, "") for i in utts.ids])
    res = score(ref_utts, keep, [hyp_of[i] for i in keep], transcripts=student)["all"]
    kept = set(keep)
    res["failures"] = [f for f in res.get("failures", []) if f["id"] in kept]
    res["flagged"] = [f for f in res.get("flagged", []) if f["id"] in kept]
    res.update(
        reference=ref["name"],
        reference_context=ref["context"],
        reference_n_frames=ref["n_frames"],
        reference_failures=len(ref["failures"]),
        n_empty_reference=len(student.ids) - len(keep),
    )
    return res


def student_agreement(
    student: tuple,
    refs: Mapping[str, dict],
    utts,
    *,
    batch_size: int,
    n_frames: int,
    desc: str = "agreement",
    reuse_encoder: bool = False,
) -> dict[str, dict]:
    """Decode the student once at `n_frames` and score it against each reference.

    Args:
      student: `(model, params, tokenizer, spec)`, as `evaluate.transcribe_utts` takes them.
      refs: `{label: reference(...)}`.
      reuse_encoder: as `evaluate.transcribe_utts`.

    Returns:
      `{label: agreement(...)}`, each with the `n_frames` the student was decoded at.
    """
    model, params, tok, spec = student
    tr = transcribe_utts(
        model, params, tok, spec, utts, batch_size=batch_size, n_frames=n_frames, desc=desc,
        reuse_encoder=reuse_encoder,
    )  # fmt: skip
    out = {}
    for label, ref in refs.items():
        out[label] = {**agreement(tr, ref, utts), "n_frames": n_frames}
    return out


def summary(res: dict) -> str:
    """One line: `WER x% (CER y%, n scored / total, student at <context>; reference ...)`."""
    return (
        f"{res['wer']:.2f}% (CER {res['cer']:.2f}%; {res['n_scored']} / {res['n_total']} "
        f"scored, {res['n_empty_reference']} empty references left out; student at "
        f"{res.get('context', '?')}; reference {res['reference']} at {res['reference_context']})"
    )
