"""Layer- and point-wise projection mappers from student features into each teacher's space.

A layer map is a list of `Pair(student_site, teacher, teacher_site)`; a site names an entry of a
model's `out` dict: `encoder/layer_{i}`, `encoder/output`, `decoder/layer_{i}`, `decoder/output`.
Each pair owns one point-wise map P: R^{d_s} -> R^{d_t}, shared by every frame or token of that
layer. Only the student side is learned: a learned teacher-side map could collapse both sides to a
constant and make the loss trivially zero (METHOD.md).
"""

from __future__ import annotations

import fractions
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mkd_jax import losses

SIDES = ("encoder", "decoder")
_SITE = re.compile(r"(encoder|decoder)/(output|layer_(\d+))")


class Pair(NamedTuple):
    """One alignment: the student's `student_site` is mapped onto `teacher`'s `teacher_site`."""

    student_site: str
    teacher: str
    teacher_site: str


def layer_counts(hf_config: Mapping) -> dict[str, int]:
    """`{"encoder": L_enc, "decoder": L_dec}` from a Hugging Face Whisper config dict."""
    return {
        "encoder": int(hf_config["encoder_layers"]),
        "decoder": int(hf_config["decoder_layers"]),
    }


def _sites(layers: Mapping[str, int]) -> list[str]:
    return [
        site
        for side in SIDES
        if side in layers
        for site in [f"{side}/layer_{i}" for i in range(layers[side])] + [f"{side}/output"]
    ]


def _check_site(site: str, layers: Mapping[str, int], who: str, where: str) -> None:
    m = _SITE.fullmatch(site) if isinstance(site, str) else None
    ok = m is not None and m.group(1) in layers
    if ok and m.group(3) is not None:
        ok = int(m.group(3)) < layers[m.group(1)]
    if not ok:
        valid = ", ".join(
            f"{side}/layer_0..{side}/layer_{layers[side] - 1}, {side}/output"
            for side in SIDES
            if side in layers
        )
        raise ValueError(f"{where}: {who} has no site {site!r}; valid sites are {valid}")


def uniform_index(i: int, student_layers: int, teacher_layers: int) -> int:
    """Teacher layer for student layer i: `round((i + 1) * L_t / L_s) - 1`, clamped at 0.

    `round` is Python's, on exact fractions: halves go to the even integer (so 4 -> 6 layers gives
    [1, 2, 3, 5]). The clamp only matters when the student is more than twice as deep.
    """
    return max(round(fractions.Fraction((i + 1) * teacher_layers, student_layers)) - 1, 0)


def _parse_explicit(entry, k: int) -> Pair:
    if isinstance(entry, str):
        parts = entry.split(":")
    else:
        parts = list(entry)
    if len(parts) != 3 or not all(isinstance(p, str) for p in parts):
        raise ValueError(
            f"explicit layer map entry {k} {entry!r}: expected (student_site, teacher, "
            "teacher_site) or 'student_site:teacher:teacher_site'"
        )
    return Pair(*(p.strip() for p in parts))


def resolve_layer_map(
    strategy: str,
    *,
    student_layers: Mapping[str, int],
    teachers: Mapping[str, Mapping[str, int]],
    sides: Sequence[str] = ("encoder",),
    explicit: Sequence | None = None,
) -> list[Pair]:
    """The list of (student site, teacher, teacher site) pairs a strategy selects.

    Args:
      strategy: "last" (each side's `output` to each teacher's `output`, as in the paper),
        "uniform" (student layer i to teacher layer `uniform_index(i, L_s, L_t)` on each side),
        or "explicit" (the pairs in `explicit`, validated).
      student_layers: layer counts `{"encoder": L, "decoder": L}` (see `layer_counts`).
      teachers: teacher name to its layer counts.
      sides: which sides "last" and "uniform" map.
      explicit: for "explicit", entries `(student_site, teacher, teacher_site)` or strings
        `"student_site:teacher:teacher_site"`.

    Raises:
      ValueError: unknown strategy or side, unknown teacher, a site that does not exist, or a
        duplicated pair.
    """
    if not teachers:
        raise ValueError("resolve_layer_map needs at least one teacher")
    bad_sides = [s for s in sides if s not in SIDES]
    if bad_sides:
        raise ValueError(f"sides must be among {SIDES}, got {bad_sides}")
    pairs: list[Pair] = []
    if strategy == "last":
        pairs = [Pair(f"{s}/output", name, f"{s}/output") for s in sides for name in teachers]
    elif strategy == "uniform":
        for side in sides:
            l_s = student_layers[side]
            for name, t_layers in teachers.items():
                pairs += [
                    Pair(
                        f"{side}/layer_{i}",
                        name,
                        f"{side}/layer_{uniform_index(i, l_s, t_layers[side])}",
                    )
                    for i in range(l_s)
                ]
    elif strategy == "explicit":
        if not explicit:
            raise ValueError("strategy 'explicit' needs a non-empty `explicit` list of pairs")
        pairs = [_parse_explicit(e, k) for k, e in enumerate(explicit)]
    else:
        raise ValueError(
            f"layer map strategy must be 'last', 'uniform' or 'explicit', got {strategy!r}"
        )
    for k, pair in enumerate(pairs):
        where = f"layer map entry {k} {tuple(pair)}"
        if pair.teacher not in teachers:
            raise ValueError(f"{where}: unknown teacher {pair.teacher!r}; have {sorted(teachers)}")
        _check_site(pair.student_site, student_layers, "the student", where)
        _check_site(pair.teacher_site, teachers[pair.teacher], f"teacher {pair.teacher!r}", where)
    dupes = sorted({p for p in pairs if pairs.count(p) > 1})
    if dupes:
        raise ValueError(f"layer map lists these pairs more than once: {dupes}")
    return pairs


def format_layer_map(pairs: Sequence[Pair]) -> str:
    """One line per pair, `student_site -> teacher:teacher_site  [mapper name]`, for logs."""
    width = max((len(p.student_site) for p in pairs), default=0)
    return "\n".join(
        f"{p.student_site:<{width}} -> {p.teacher}:{p.teacher_site}  [{mapper_name(p)}]"
        for p in pairs
    )


def _short(site: str) -> str:
    side, _, rest = site.partition("/")
    return f"{side[:3]}_{rest}"


def mapper_name(pair: Pair) -> str:
    """Stable parameter name: `enc_output__base`, or `enc_layer_3__large_enc_layer_31`."""
    if pair.student_site == pair.teacher_site:
        return f"{_short(pair.student_site)}__{pair.teacher}"
    return f"{_short(pair.student_site)}__{pair.teacher}_{_short(pair.teacher_site)}"


# ----- frame alignment -----


def _interp_linear(x: jax.Array, t_out: int) -> jax.Array:
    # Half-pixel centres (PyTorch's `interpolate(mode="linear", align_corners=False)`).
    t_in = x.shape[1]
    src = (jnp.arange(t_out, dtype=jnp.float32) + 0.5) * (t_in / t_out) - 0.5
    src = jnp.clip(src, 0.0, t_in - 1)
    lo = jnp.floor(src).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, t_in - 1)
    frac = (src - lo)[None, :, None]
    x = x.astype(jnp.float32)
    return x[:, lo] * (1.0 - frac) + x[:, hi] * frac


def align_frames(x: jax.Array, t_s: int, how: str = "auto") -> jax.Array:
    """Resamples teacher frames `x` [B, T_t, D] to the student's count T_s.

    Args:
      x: teacher features.
      t_s: student frame count.
      how: "avgpool" (mean of each run of T_t / T_s frames; needs T_t a multiple of T_s),
        "interp" (linear interpolation, half-pixel centres) or "auto" (the default): average
        pooling when T_t is an integer multiple of T_s, else linear interpolation. Pooling is
        preferred because it keeps every teacher frame's information, e.g. 1500 -> 750.
    """
    t_t = x.shape[1]
    if t_t == t_s:
        return x
    if how == "auto":
        how = "avgpool" if t_t % t_s == 0 else "interp"
    if how == "avgpool":
        if t_t % t_s:
            raise ValueError(f"avgpool needs teacher frames {t_t} to be a multiple of {t_s}")
        b, _, d = x.shape
        return x.reshape(b, t_s, t_t // t_s, d).astype(jnp.float32).mean(axis=2)
    if how == "interp":
        return _interp_linear(x, t_s)
    raise ValueError(f"frame alignment must be 'auto', 'avgpool' or 'interp', got {how!r}")


def feature_loss(kind: str, pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """The alignment loss `kind` ("mse", "cosine" or "geodesic") from `mkd_jax.losses`."""
    if kind not in losses.FEATURE_LOSSES:
        raise ValueError(
            f"feature loss must be one of {sorted(losses.FEATURE_LOSSES)}, got {kind!r}"
        )
    return losses.FEATURE_LOSSES[kind](pred, target, mask)


# ----- learned maps -----


class Mapper(nn.Module):
    """Point-wise map R^{d_s} -> R^{d_t} applied to every frame/token: linear or a 2-layer MLP."""

    features: int
    kind: str = "linear"
    hidden: int | None = None  # MLP width; defaults to `features`

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.kind == "linear":
            return nn.Dense(self.features, name="proj")(x)
        if self.kind == "mlp":
            h = nn.Dense(self.hidden or self.features, name="fc1")(x)
            return nn.Dense(self.features, name="fc2")(jax.nn.gelu(h, approximate=False))
        raise ValueError(f"mapper kind must be 'linear' or 'mlp', got {self.kind!r}")


class Mappers(nn.Module):
    """One `Mapper` per layer-map pair, named by `mapper_name`.

    Attributes:
      pairs: the resolved layer map.
      teacher_dims: `((teacher name, d_model), ...)`.
      kind, hidden: passed to each `Mapper`.
      align: frame alignment for encoder sites whose frame counts differ (see `align_frames`).
    """

    pairs: tuple[Pair, ...]
    teacher_dims: tuple[tuple[str, int], ...]
    kind: str = "linear"
    hidden: int | None = None
    align: str = "auto"

    @nn.compact
    def __call__(
        self, student_out: Mapping[str, jax.Array], teacher_outs: Mapping[str, Mapping]
    ) -> dict[str, tuple[jax.Array, jax.Array]]:
        """`mapper name -> (P(student feature) [B, T_s, d_t], teacher feature [B, T_s, d_t])`.

        The teacher feature carries no gradient; encoder frames are aligned to the student's.
        """
        dims = dict(self.teacher_dims)
        result = {}
        for pair in self.pairs:
            name = mapper_name(pair)
            if name in result:
                raise ValueError(f"two layer-map pairs share the mapper name {name!r}")
            x_s = _lookup(student_out, pair.student_site, "student")
            x_t = _lookup(
                teacher_outs[pair.teacher], pair.teacher_site, f"teacher {pair.teacher!r}"
            )
            x_t = jax.lax.stop_gradient(x_t)
            if x_t.shape[1] != x_s.shape[1]:
                if not pair.teacher_site.startswith("encoder/"):
                    raise ValueError(
                        f"{name}: teacher has {x_t.shape[1]} positions at {pair.teacher_site}, "
                        f"student {x_s.shape[1]}; only encoder frames can be resampled"
                    )
                x_t = align_frames(x_t, x_s.shape[1], self.align)
            pred = Mapper(dims[pair.teacher], self.kind, self.hidden, name=name)(x_s)
            result[name] = (pred, x_t.astype(jnp.float32))
        return result


def _lookup(out: Mapping[str, jax.Array], site: str, who: str) -> jax.Array:
    if site not in out:
        raise KeyError(f"{who} outputs have no {site!r}; available: {sorted(out)}")
    return out[site]
