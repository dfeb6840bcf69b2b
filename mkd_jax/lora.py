"""LoRA as a functional split of a parameter tree: `init` the factors, `merge` them into a new tree.

Model code knows nothing about LoRA. `init` returns a tree that holds only the targeted kernels,
each replaced by `{"a": [..., in, r], "b": [..., r, out]}`; `merge` returns a new parameter tree
with `W + (alpha / r) * a @ b` at those kernels (an einsum over leading dims, so scanned
`[L, in, out]` kernels work too). `b` starts at zero, so merging an initialised adapter is the
identity.

Targets are regexes matched with `re.fullmatch` against `/`-joined parameter paths such as
`decoder/layers_0/self_attn/q_proj/kernel`. A pattern that matches nothing is an error: a LoRA whose
target names silently miss (the paper code's defect 2, METHOD.md) trains something else than
intended.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from flax.core import meta

_ATTN = r"(q_proj|k_proj|v_proj|out_proj)/kernel"
# Every decoder layer: self- and cross-attention q/k/v/out, fc1 and fc2 (METHOD.md "LoRA").
DECODER_TARGETS = rf"decoder/layers_\d+/((self_attn|encoder_attn)/{_ATTN}|(fc1|fc2)/kernel)"
# The optional encoder counterpart: self-attention q/k/v/out, fc1 and fc2 of every encoder layer.
ENCODER_TARGETS = rf"encoder/layers_\d+/(self_attn/{_ATTN}|(fc1|fc2)/kernel)"
DEFAULT_TARGETS = DECODER_TARGETS


def _shape(x) -> tuple[int, ...]:
    # `jax.ShapeDtypeStruct` has `.shape` but is not array-like for numpy.
    return tuple(x.shape) if hasattr(x, "shape") else np.shape(x)


def _as_patterns(targets: str | Sequence[str]) -> list[str]:
    patterns = [targets] if isinstance(targets, str) else list(targets)
    if not patterns:
        raise ValueError("LoRA targets are empty; give at least one regex")
    for p in patterns:
        if not isinstance(p, str):
            raise ValueError(f"LoRA target {p!r} is not a regex string")
        try:
            re.compile(p)
        except re.error as e:
            raise ValueError(f"LoRA target {p!r} is not a valid regex: {e}") from e
    return patterns


def resolve_targets(params: dict, targets: str | Sequence[str]) -> list[str]:
    """The sorted `/`-joined paths of the kernels that `targets` select.

    Args:
      params: a parameter tree (nested dicts).
      targets: one regex or several; each is `re.fullmatch`ed against every parameter path.

    Returns:
      Matching paths, sorted. The list is logged.

    Raises:
      ValueError: if a pattern matches no parameter (the message names it and shows example
        paths), or matches a parameter with fewer than 2 dims (a bias or norm scale).
    """
    patterns = _as_patterns(targets)
    flat = traverse_util.flatten_dict(params, sep="/")
    boxed = [path for path, x in flat.items() if isinstance(x, meta.AxisMetadata)]
    if boxed:
        raise ValueError(f"params hold boxed leaves such as {boxed[0]!r}; pass nn.unbox(params)")
    paths = sorted(flat)
    unmatched, chosen = [], set()
    for p in patterns:
        hits = [path for path in paths if re.fullmatch(p, path)]
        if not hits:
            unmatched.append(p)
        chosen.update(hits)
    if unmatched:
        examples = ", ".join(paths[:3] + ["..."] + paths[-2:]) if len(paths) > 5 else paths
        raise ValueError(
            f"LoRA target pattern(s) {unmatched} match no parameter path; paths look like "
            f"{examples}"
        )
    not_kernels = sorted(path for path in chosen if len(_shape(flat[path])) < 2)
    if not_kernels:
        raise ValueError(f"LoRA targets must be kernels ([..., in, out]); got {not_kernels[:5]}")
    resolved = sorted(chosen)
    logging.info(
        "LoRA targets %s resolve to %d kernel(s):\n  %s",
        patterns,
        len(resolved),
        "\n  ".join(resolved),
    )
    return resolved


def init(rng: jax.Array, params: dict, *, targets: str | Sequence[str], rank: int) -> dict:
    """LoRA factors for the kernels of `params` that `targets` select.

    `a` is drawn as PEFT draws `lora_A` (kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(in))) and
    `b` is zero, so `merge` at init returns the pretrained weights exactly. Each kernel's key is
    `rng` folded with a hash of its path, so adding a target does not redraw the others.

    Args:
      rng: PRNG key.
      params: the base parameter tree (arrays or `jax.ShapeDtypeStruct`s).
      targets: regex or regexes over `/`-joined paths (see `resolve_targets`).
      rank: LoRA rank r > 0.

    Returns:
      A nested dict with only the targeted kernels, each `{"a": [..., in, r], "b": [..., r, out]}`
      in float32.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"LoRA rank must be a positive int, got {rank!r}")
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for path in resolve_targets(params, targets):
        *lead, d_in, d_out = _shape(flat[path])
        key = jax.random.fold_in(rng, zlib.crc32(path.encode()))
        bound = 1.0 / np.sqrt(d_in)
        a = jax.random.uniform(key, (*lead, d_in, rank), jnp.float32, -bound, bound)
        out[path] = {"a": a, "b": jnp.zeros((*lead, rank, d_out), jnp.float32)}
    return traverse_util.unflatten_dict(out, sep="/")


def _factors(lora: dict) -> dict[str, tuple[jax.Array, jax.Array]]:
    """`path -> (a, b)` for a LoRA tree, checking that every leaf pair is `{"a", "b"}`."""
    flat = traverse_util.flatten_dict(lora, sep="/")
    grouped: dict[str, dict] = {}
    for path, leaf in flat.items():
        head, _, name = path.rpartition("/")
        if name not in ("a", "b"):
            raise ValueError(f"LoRA tree leaf {path!r} is neither .../a nor .../b")
        grouped.setdefault(head, {})[name] = leaf
    missing = sorted(p for p, g in grouped.items() if len(g) != 2)
    if missing:
        raise ValueError(f"LoRA entries {missing} lack their a or b factor")
    return {p: (g["a"], g["b"]) for p, g in grouped.items()}


def merge(
    params: dict,
    lora: dict,
    *,
    alpha: float,
    rank: int,
    dropout_rng: jax.Array | None = None,
    dropout: float = 0.0,
) -> dict:
    """A new parameter tree with `W + (alpha / rank) * a @ b` at every LoRA kernel.

    Inputs are never mutated; untargeted leaves are shared with `params`. The update is computed
    in float32 and cast to the kernel's dtype.

    LoRA dropout: PEFT drops the adapter's *input* per token, `(alpha/r) * dropout(x) @ a @ b`. A
    merged weight is one matrix for the whole batch, so a per-token input mask cannot be written
    into it. Instead each kernel gets one Bernoulli mask over the rank dimension of `a` (scaled by
    1/(1-p), so the merged weight is unbiased), i.e. whole rank-1 components of the update are
    dropped for the step. With `dropout == 0` or `dropout_rng is None` the merge is exact.

    Args:
      params: base parameter tree.
      lora: a tree from `init` (or trained from it).
      alpha: LoRA alpha; the update scale is `alpha / rank`.
      rank: LoRA rank; must equal the last dim of every `a`.
      dropout_rng: key for the rank mask; None disables dropout.
      dropout: drop probability in [0, 1).

    Raises:
      ValueError: on a LoRA path missing from `params`, a shape mismatch, or a bad rank/dropout.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    flat = dict(traverse_util.flatten_dict(params, sep="/"))
    scale = alpha / rank
    for path, (a, b) in sorted(_factors(lora).items()):
        if path not in flat:
            raise ValueError(f"LoRA kernel {path!r} is not in the parameter tree")
        w = flat[path]
        expected_a = (*w.shape[:-1], rank)
        expected_b = (*w.shape[:-2], rank, w.shape[-1])
        if a.shape != expected_a or b.shape != expected_b:
            raise ValueError(
                f"LoRA {path}: kernel {w.shape} with rank {rank} needs a {expected_a} and "
                f"b {expected_b}, got {a.shape} and {b.shape}"
            )
        a = a.astype(jnp.float32)
        if dropout_rng is not None and dropout > 0.0:
            key = jax.random.fold_in(dropout_rng, zlib.crc32(path.encode()))
            keep = jax.random.bernoulli(key, 1.0 - dropout, (*a.shape[:-2], 1, rank))
            a = a * keep / (1.0 - dropout)
        delta = jnp.einsum("...ir,...ro->...io", a, b.astype(jnp.float32))
        flat[path] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
    return traverse_util.unflatten_dict(flat, sep="/")


def count(tree) -> int:
    """Number of scalars in a tree (arrays or `jax.ShapeDtypeStruct`s)."""
    return int(sum(int(np.prod(_shape(x))) for x in jax.tree.leaves(tree)))


def adapter(
    lora: dict,
    *,
    alpha: float,
    rank: int,
    dropout_rng: jax.Array | None = None,
    dropout: float = 0.0,
):
    """A flax method interceptor that adds `(alpha / rank) * dropout(x) @ a @ b` to the output of
    every targeted `nn.Dense`, leaving the frozen kernel as it is (the unmerged forward).

    Use as `with nn.intercept_methods(adapter(...)): model.apply(...)`. Against `merge` it avoids
    the full weight-gradient of every targeted kernel (`x^T dy`, as costly as the matmul itself):
    the factors' gradients go through rank-r products. Dropout is PEFT's, per token on the
    adapter's input. Equal to `merge` up to float rounding when `dropout == 0`.
    """
    import flax.linen as nn

    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    factors = _factors(lora)
    scale = alpha / rank

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or not isinstance(context.module, nn.Dense):
            return out
        path = "/".join(context.module.path) + "/kernel"
        if path not in factors:
            return out
        a, b = factors[path]
        x = args[0].astype(jnp.float32)
        if dropout_rng is not None and dropout > 0.0:
            key = jax.random.fold_in(dropout_rng, zlib.crc32(path.encode()))
            x = x * jax.random.bernoulli(key, 1.0 - dropout, x.shape) / (1.0 - dropout)
        delta = (x @ a.astype(jnp.float32)) @ b.astype(jnp.float32)
        return (out.astype(jnp.float32) + scale * delta).astype(out.dtype)

    return intercept
