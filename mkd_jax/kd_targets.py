"""The jitted side of cross-tokenizer KD: teacher logits rows at student label positions, and the
teacher's distribution moved onto student ids (`data/token_align.py` builds the maps on the host).

`gather_rows` + `map_teacher_probs`: the teacher's distribution on student ids, the unmapped mass
dropped and the rest renormalised. Unaligned positions get no target (mask them).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mkd_jax.data.token_align import student_index


def gather_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    """`x` [B, S_t, ...] gathered at `rows` [B, S_s] -> [B, S_s, ...]; rows of -1 give zeros."""
    valid = rows >= 0
    idx = jnp.where(valid, rows, 0).astype(jnp.int32)
    idx = idx.reshape(*idx.shape, *([1] * (x.ndim - 2)))
    out = jnp.take_along_axis(x, idx, axis=1)
    return jnp.where(valid.reshape(idx.shape), out, 0)


def map_teacher_probs(
    p_teacher: jax.Array,
    vmap: np.ndarray,
    student_vocab_size: int,
    *,
    index=None,
    return_kept: bool = False,
):
    """Teacher probabilities [..., V_t] on student ids [..., V_s], renormalised.

    Mass on teacher tokens without a student counterpart is dropped and the rest renormalised;
    an all-zero row (e.g. from `gather_rows` at an unaligned position) stays zero. Because
    `vmap` is one-to-one, the scatter-add onto student ids is a gather through the inverse index,
    which is cheaper on accelerators.

    Args:
      p_teacher: teacher probabilities, last axis the teacher vocabulary.
      vmap: `vocab_map` output (a static numpy array).
      student_vocab_size: V_s.
      index: `student_index(vmap, V_s)`, to skip recomputing it on every trace.
      return_kept: also return the mass that had a student counterpart, [...] (before the
        renormalisation; 1 - it is the mass the mapping dropped).
    """
    if p_teacher.shape[-1] != len(vmap):
        raise ValueError(f"teacher probs have {p_teacher.shape[-1]} classes, vmap {len(vmap)}")
    inv = student_index(vmap, student_vocab_size) if index is None else np.asarray(index)
    p = jnp.take(p_teacher.astype(jnp.float32), jnp.asarray(np.maximum(inv, 0)), axis=-1)
    p = jnp.where(jnp.asarray(inv >= 0), p, 0.0)
    total = jnp.sum(p, axis=-1, keepdims=True)
    mapped = p / jnp.where(total > 0, total, 1.0)
    return (mapped, total[..., 0]) if return_kept else mapped
