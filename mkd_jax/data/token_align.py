"""Logit distillation across tokenizers, the host side: align positions and map vocabularies by
string identity (numpy, run by the batcher and at set-up; the jitted side is `kd_targets.py`).

Teacher and student may tokenize the transcript differently (multilingual vs English-only Whisper:
" the" is 264 in one and 262 in the other). Slicing both vocabularies to a common size compares
unrelated tokens (the paper code's defect 1, METHOD.md). Instead:

1. `vocab_map`: teacher id -> student id of the token with the same bytes (specials by name,
   timestamps by offset), or -1.
2. `align_positions`: a student token is aligned with a teacher token when both cover the same
   character span of the text and are the same bytes.
3. `label_rows`: per student label position, the teacher logits row that predicts the same
   string from the same text prefix (or -1), including the final EOT.
4. `student_index`: the inverse map, student id -> teacher id or -1.
5. `student_support`: the student ids the teacher can speak about. The KL renormalises the
   student over them too (`losses.kd_kl(..., support=)`, the default `loss.kd_support="shared"`),
   so student tokens the teacher lacks (41% of tiny.en's text tokens have no byte-identical base
   token, e.g. " Password", which base spells " Pass" + "word") get no gradient at all, instead of
   being pushed toward zero probability at every aligned position.

Teachers whose vocabulary is the student's skip all of this (`same_vocabulary`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mkd_jax.data.tokenizers import WhisperTokenizer


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet inverted: vocabulary character -> the byte it stands for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_BYTES = _byte_decoder()


def _text_vocab(tok: WhisperTokenizer) -> dict[bytes, int]:
    """Bytes of every non-special, non-timestamp token -> its id.

    Token bytes are exact where `decode([id])` is not: a token holding part of a UTF-8 character
    decodes to U+FFFD, so distinct byte tokens would all look alike.
    """
    # WhisperTokenizer exposes no vocabulary listing; read it from the wrapped `tokenizers` object.
    vocab = tok._tok.get_vocab(with_added_tokens=True)
    out = {}
    for piece, i in vocab.items():
        if i in tok.special_ids or i >= tok.timestamp_begin:
            continue
        try:
            out[bytes(_BYTES[c] for c in piece)] = i
        except KeyError as e:
            raise ValueError(
                f"token {i} {piece!r} is not in the byte-level alphabet; a Whisper tokenizer is "
                "byte-level BPE"
            ) from e
    return out


def _special_names(tok: WhisperTokenizer) -> dict[str, int]:
    return {tok._tok.id_to_token(i): i for i in tok.special_ids}


def vocab_map(teacher_tok: WhisperTokenizer, student_tok: WhisperTokenizer) -> np.ndarray:
    """Student id of each teacher token with the same bytes, or -1 -> [V_teacher] int32.

    V_teacher is the teacher model's logit count (`model_vocab_size`). Specials map by name
    (`<|endoftext|>` -> the student's EOT) and timestamps by their offset from `<|0.00|>`.
    """
    out = np.full(teacher_tok.model_vocab_size, -1, np.int32)
    student = _text_vocab(student_tok)
    for piece, i in _text_vocab(teacher_tok).items():
        out[i] = student.get(piece, -1)
    student_specials = _special_names(student_tok)
    for name, i in _special_names(teacher_tok).items():
        out[i] = student_specials.get(name, -1)
    n_ts = min(
        teacher_tok.model_vocab_size - teacher_tok.timestamp_begin,
        student_tok.model_vocab_size - student_tok.timestamp_begin,
    )
    ts = np.arange(n_ts)
    out[teacher_tok.timestamp_begin + ts] = student_tok.timestamp_begin + ts
    mapped = out[out >= 0]
    if len(np.unique(mapped)) != len(mapped):  # holds for BPE vocabularies; gathers rely on it
        raise ValueError("vocab_map is not one-to-one: two teacher tokens share student bytes")
    return out


def same_vocabulary(vmap: np.ndarray, student_vocab_size: int) -> bool:
    """Whether the map is the identity, so the teacher's logits are already on student ids."""
    return len(vmap) == student_vocab_size and bool(np.all(vmap == np.arange(len(vmap))))


def align_positions(
    text: str,
    teacher_tok: WhisperTokenizer,
    student_tok: WhisperTokenizer,
    *,
    vmap: np.ndarray | None = None,
) -> np.ndarray:
    """For each student token of `text`, the index of the aligned teacher token, or -1.

    Aligned means: same `[start, end)` character span and the same bytes (`vmap[t_id] == s_id`).

    Returns:
      [n_student_tokens] int32.
    """
    if vmap is None:
        vmap = vocab_map(teacher_tok, student_tok)
    t_ids, t_spans = teacher_tok.encode_with_offsets(text)
    s_ids, s_spans = student_tok.encode_with_offsets(text)
    by_span = {span: k for k, span in enumerate(t_spans)}
    out = np.full(len(s_ids), -1, np.int32)
    for j, (s_id, span) in enumerate(zip(s_ids, s_spans, strict=True)):
        k = by_span.get(span)
        if k is not None and vmap[t_ids[k]] == s_id:
            out[j] = k
    return out


def label_rows(
    student_to_teacher: np.ndarray,
    *,
    n_teacher_tokens: int,
    student_prompt_len: int,
    teacher_prompt_len: int,
    pad_len: int,
) -> np.ndarray:
    """Teacher logits row for each student label position of one utterance, or -1 -> [pad_len].

    With `losses.make_labels`, logits row `P - 1 + j` predicts text token j and row `P - 1 + n`
    predicts EOT. A student row gets the teacher row predicting the aligned teacher token: both see
    the same text prefix (aligned tokens start at the same character) and predict the same string.
    The EOT rows always align.

    Args:
      student_to_teacher: `align_positions` output for the utterance.
      n_teacher_tokens: number of teacher text tokens of the utterance.
      student_prompt_len, teacher_prompt_len: decoder prompt lengths.
      pad_len: student sequence length.
    """
    n_s = len(student_to_teacher)
    if student_prompt_len + n_s > pad_len:
        raise ValueError(f"{student_prompt_len} + {n_s} student tokens exceed pad_len={pad_len}")
    rows = np.full(pad_len, -1, np.int32)
    k = np.asarray(student_to_teacher)
    rows[student_prompt_len - 1 : student_prompt_len - 1 + n_s] = np.where(
        k >= 0, teacher_prompt_len - 1 + k, -1
    )
    rows[student_prompt_len - 1 + n_s] = teacher_prompt_len - 1 + n_teacher_tokens
    return rows


def coverage(alignments: Sequence[np.ndarray]) -> float:
    """Share of student text tokens (over all utterances) that have an aligned teacher token."""
    total = sum(len(a) for a in alignments)
    if total == 0:
        raise ValueError("coverage of zero student tokens is undefined")
    return sum(int(np.sum(np.asarray(a) >= 0)) for a in alignments) / total


def student_index(vmap: np.ndarray, student_vocab_size: int) -> np.ndarray:
    """The inverse map, student id -> teacher id or -1 -> [V_s] int32 (precompute it once)."""
    inv = np.full(student_vocab_size, -1, np.int32)
    ok = (vmap >= 0) & (vmap < student_vocab_size)
    inv[vmap[ok]] = np.nonzero(ok)[0]
    return inv


def student_support(vmap: np.ndarray, student_vocab_size: int, *, index=None) -> np.ndarray:
    """Student ids that have a teacher counterpart -> bool [V_s] (the teacher's KD support)."""
    inv = student_index(vmap, student_vocab_size) if index is None else np.asarray(index)
    return inv >= 0
