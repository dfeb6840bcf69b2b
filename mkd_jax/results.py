"""Per-utterance results read back from the project's JSON files, their seed means, and the
atomic write every finished result goes through.

A result is `evaluate.score(...)["all"]`: WER, CER, counts and `per_utt` (ids, word errors,
reference words), which is what `evaluate.compare` pairs. It can be read from:
- a training report (`report.json`, or the workdir holding it): its `after` results, `#before`
  for the untrained student's (on the run's eval split only); on the split of its real-audio
  agreement check (`real_unlabelled`), the agreement's results, scored against the reference
  model's transcripts;
- an `evaluate --output` file (`FILE#SYSTEM` where it holds several systems);
- one `score` result (the demo's `eval/*.json`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that an interrupted write leaves the old file or none, never a
    truncated one that a resumed run or ablation would read as finished."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no stray file


def load_result(spec: str, split: str) -> tuple[dict, str]:
    """`(result, label)` of `FILE[#PART]` on `split` (see the module doc)."""
    path, _, part = spec.partition("#")
    p = Path(path)
    if p.is_dir():
        if not (p / "report.json").is_file():
            raise FileNotFoundError(f"{path}: a folder without report.json (not a finished run)")
        p = p / "report.json"
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: holds a {type(data).__name__}, not a report, evaluate output or score"
        )
    res, label = _find_result(data, path, spec, part, split)
    return _checked(res, path), label


def _checked(res, path: str) -> dict:
    """`res` if its per-utterance results are whole: ids, word errors and reference words, one
    of each per utterance."""
    per = res.get("per_utt") if isinstance(res, dict) else None
    fields = ("ids", "word_errors", "ref_words")
    if not isinstance(per, dict) or any(not isinstance(per.get(f), list) for f in fields):
        raise ValueError(f"{path}: per-utterance results lack one of {fields} (a damaged file?)")
    if len({len(per[f]) for f in fields}) != 1:
        raise ValueError(f"{path}: per-utterance {fields} differ in length (a damaged file?)")
    return res


def _find_result(data: dict, path: str, spec: str, part: str, split: str) -> tuple[dict, str]:
    label = spec
    if "per_utt" in data:  # one score result
        return data, label
    if "systems" in data:  # evaluate --output
        names = list(data["systems"])
        if data.get("split") != split:
            raise ValueError(f"{path}: scored split {data.get('split')!r}, not {split!r}")
        if not part and len(names) != 1:
            raise ValueError(f"{path}: holds systems {names}; name one as {path}#SYSTEM")
        name = part or names[0]
        if name not in data["systems"]:
            raise ValueError(f"{path}: no system {name!r} (have {names})")
        return data["systems"][name]["all"], label
    when = part or "after"
    if when not in data or not isinstance(data[when], dict):
        raise ValueError(f"{path}: no {when!r} results: not a report, evaluate output or score")
    by_split = data[when]
    if "per_utt" in by_split:
        # A report's `before`: the untrained student on the run's eval split alone, which the
        # report does not name; it is the `after` split that scored the same utterances.
        ids = by_split["per_utt"]["ids"]
        after = data.get("after") or {}
        by_split = {s: data[when] for s, r in after.items() if r["per_utt"]["ids"] == ids}
    agreement = data.get("agreement") or {}
    if split in by_split:
        res = by_split[split]
    elif agreement.get("split") == split and agreement.get(when):
        res = agreement[when]
        label = f"{spec} (vs {res.get('reference', agreement.get('reference'))}'s transcripts)"
    else:
        have = sorted(by_split) + ([agreement["split"]] if agreement.get(when) else [])
        raise ValueError(f"{path}: {when!r} has no split {split!r} (have {have})")
    if "per_utt" not in res:
        raise ValueError(f"{path}: {when} {split} has no per-utterance results (a partial pass?)")
    return res, label


def seed_mean(results: list[dict]) -> dict:
    """One result whose per-utterance word errors are the mean over `results` (runs of one
    system that differ in their seed), as `evaluate.compare` reads it, with `wer` the mean of
    the runs' and `wers` each run's, and the runs' `reference` where they were scored against a
    reference model's transcripts. Raises ValueError unless every run scored the same
    utterances against the same reference words and model."""
    if not results:
        raise ValueError("no runs to average")
    references = {res.get("reference") for res in results}
    if len(references) > 1:
        raise ValueError(
            f"the runs were scored against different references {sorted(map(str, references))}"
        )
    first = results[0]["per_utt"]
    for k, res in enumerate(results[1:], 1):
        per = res["per_utt"]
        if per["ids"] != first["ids"] or per["ref_words"] != first["ref_words"]:
            raise ValueError(
                f"run {k + 1} of {len(results)} scored other utterances or references than run 1"
            )
    errors = np.mean([res["per_utt"]["word_errors"] for res in results], axis=0)
    per_utt = {"ids": first["ids"], "word_errors": errors.tolist(), "ref_words": first["ref_words"]}
    wers = [float(res["wer"]) for res in results]
    out = {"wer": float(np.mean(wers)), "wers": wers, "per_utt": per_utt}
    reference = references.pop()
    return out if reference is None else {**out, "reference": reference}


def pooled(results: dict[str, dict]) -> dict:
    """One result over several splits (`{split: result}`): their utterances side by side, ids
    prefixed with the split so they stay apart, WER over all their words; `reference` names the
    reference model of each split scored against one (`"real_unlabelled: base"`)."""
    ids, errors, words = [], [], []
    references = [f"{s}: {r['reference']}" for s, r in results.items() if r.get("reference")]
    for split, res in results.items():
        per = res["per_utt"]
        ids += [f"{split}/{u}" for u in per["ids"]]
        errors += list(per["word_errors"])
        words += list(per["ref_words"])
    wer = 100.0 * float(np.sum(errors)) / max(float(np.sum(words)), 1.0)
    out = {"wer": wer, "per_utt": {"ids": ids, "word_errors": errors, "ref_words": words}}
    return {**out, "reference": ", ".join(references)} if references else out
