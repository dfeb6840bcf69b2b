"""Every config value and cross-field rule, checked before any model is built or traced.

`validate(cfg)` raises `ConfigError` naming the key, the value and the fix, in one line. It reads
only config files of checkpoints (for mel bins and layer counts), never weights, so a bad config
stops in seconds instead of after a zero-shot WER pass. Train, cache, ablate (every run's config)
and aot call it first; the demo's stages are train runs.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mkd_jax.corpus.augment import NOISE_KINDS

SOURCE_KINDS = ("synth", "disk", "librispeech", "hf", "manifest")
MAPPER_STRATEGIES = ("last", "uniform", "explicit")
MAPPER_KINDS = ("linear", "mlp")
MAPPER_ALIGN = ("auto", "avgpool", "interp")
ENSEMBLES = ("mean", "weights", "best")
KD_SUPPORTS = ("shared", "student")
DTYPES = ("float32", "bfloat16")
# Whisper's decoder has 448 learned positions; its encoder 1500 frames = 3000 mel frames (30 s).
MAX_TARGET_POSITIONS = 448
MAX_MEL_FRAMES = 3000


class ConfigError(ValueError):
    """A config value that cannot work: `key=value: why; fix`."""

    def __init__(self, key: str, value, why: str, fix: str = ""):
        self.key = key
        super().__init__(f"{key}={value!r}: {why}" + (f"; {fix}" if fix else ""))


def _num(cfg, key: str):
    """The value at dotted `key`, which must be a finite real number."""
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, value, "must be a finite number")
    return value


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _int(cfg, key: str, lo: int | None = None, hi: int | None = None):
    value = _get(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, value, "must be an integer")
    _range(key, value, lo, hi)
    return value


def _range(key, value, lo=None, hi=None, *, lo_open=False, hi_open=False):
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(key, value, f"must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ConfigError(key, value, f"must be {'<' if hi_open else '<='} {hi}")


def _choice(cfg, key: str, choices):
    value = _get(cfg, key)
    if value not in choices:
        raise ConfigError(key, value, f"choose one of {', '.join(map(repr, choices))}")
    return value


def _role_dims(role, where: str) -> dict:
    """Dims of a role without loading weights: from the checkpoint's config.json, else `init`."""
    if role.checkpoint:
        from mkd_jax import assets  # imports flax: only once a checkpoint is named

        try:
            folder = assets.resolve_model(role.checkpoint)
            hf = json.loads((Path(folder) / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"{where}.checkpoint",
                role.checkpoint,
                f"not a usable model ({str(e).splitlines()[0]})",
                f"use one of {', '.join(assets.MODELS)}, an HF Whisper folder or a CTranslate2 "
                "folder",
            ) from None
        return {
            "num_mel_bins": int(hf.get("num_mel_bins", 80)),
            "encoder_layers": int(hf.get("encoder_layers", 0)),
            "decoder_layers": int(hf.get("decoder_layers", 0)),
            "max_target_positions": int(hf.get("max_target_positions", MAX_TARGET_POSITIONS)),
            "max_source_positions": int(hf.get("max_source_positions", MAX_MEL_FRAMES // 2)),
        }
    return dict(role.init.to_dict())


def _check_roles(cfg, shapes_only=()) -> dict:
    roles = {"student": cfg.student, **{f"teachers.{n}": c for n, c in cfg.teachers.items()}}
    for where, role in roles.items():
        if role.dtype not in DTYPES:
            raise ConfigError(f"{where}.dtype", role.dtype, f"choose one of {DTYPES}")
        abstract = role.get("random_init", False) or where in shapes_only
        if not role.checkpoint and not abstract:
            fix = (
                "run `python -m mkd_jax.demo` once (it builds base_ft), or pass "
                f"--config.{where}.checkpoint=<HF or CTranslate2 folder>"
                if where == "teachers.base_ft"
                else f"pass --config.{where}.checkpoint=<model name or folder>"
            )
            raise ConfigError(
                f"{where}.checkpoint",
                role.checkpoint,
                "no checkpoint, so this role would be randomly initialised",
                fix + " (test configs opt into random weights with random_init=True)",
            )
        if not role.checkpoint and not role.tokenizer:
            raise ConfigError(
                f"{where}.tokenizer", role.tokenizer, "a randomly initialised role needs one",
                "name a model (tiny.en, base) or a folder with tokenizer.json",
            )  # fmt: skip
        if where.startswith("teachers."):
            w = _num(cfg, f"{where}.weight")
            _range(f"{where}.weight", w, 0.0)
    dims = {where: _role_dims(role, where) for where, role in roles.items()}
    mels = {where: d["num_mel_bins"] for where, d in dims.items()}
    if len(set(mels.values())) > 1:
        raise ConfigError(
            "teachers",
            mels,
            "roles take different mel bin counts",
            "the batcher builds one log-mel per batch: use teachers with the student's mel bins",
        )
    return dims


def _check_data(cfg, dims) -> None:
    d = cfg.data
    _choice(cfg, "data.source.kind", SOURCE_KINDS)
    if d.source.kind != "synth" and not d.source.path and d.source.kind != "hf":
        raise ConfigError("data.source.path", d.source.path, f"kind {d.source.kind!r} needs a path")
    if d.source.kind in ("disk", "librispeech") and not Path(d.source.path).is_dir():
        raise ConfigError(
            "data.source.path", d.source.path, "no such folder",
            "name a corpus folder (`python -m mkd_jax.corpus.synth` builds one)"
            if d.source.kind == "disk" else "name the LibriSpeech root folder",
        )  # fmt: skip
    if d.source.kind == "synth":
        _range("data.source.hours", _num(cfg, "data.source.hours"), 0.0, lo_open=True)
        fr = tuple(d.source.get("fractions", (0.8, 0.1, 0.1)))
        if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1.0) > 1e-6:
            raise ConfigError(
                "data.source.fractions",
                fr,
                "needs three positive train, dev, test shares summing to 1",
            )
    lo, hi = _num(cfg, "data.source.min_seconds"), _num(cfg, "data.source.max_seconds")
    _range("data.source.min_seconds", lo, 0.0)
    if hi <= lo:
        raise ConfigError("data.source.max_seconds", hi, f"must exceed min_seconds={lo}")
    _range("data.source.max_bad_fraction", _num(cfg, "data.source.max_bad_fraction"), 0.0, 1.0)
    _int(cfg, "data.source.limit", 0)
    n = _int(cfg, "data.n_frames", 2, MAX_MEL_FRAMES)
    if n % 2:
        raise ConfigError("data.n_frames", n, "must be even (the encoder halves it)")
    if d.source.get("streaming", False):
        if d.source.kind != "hf":
            raise ConfigError(
                "data.source.streaming", True, f"kind {d.source.kind!r} is listed, not streamed",
                "stream a Hugging Face dataset (kind='hf')",
            )  # fmt: skip
        for key, on in (("cache.enabled", cfg.cache.enabled), ("data.mix", bool(d.get("mix"))),
                        ("data.train_labels", bool(d.get("train_labels")))):  # fmt: skip
            if on:
                raise ConfigError(
                    "data.source.streaming", True, f"a streamed source cannot be used with {key}",
                    "list the source (streaming=False) for that",
                )  # fmt: skip
    noise = d.get("train_noise")
    if noise is not None and tuple(noise.snr_db):
        snrs, kinds = tuple(noise.snr_db), tuple(noise.kinds)
        if not all(isinstance(x, (int, float)) and -20 <= x <= 60 for x in snrs):
            raise ConfigError("data.train_noise.snr_db", snrs, "needs SNRs in dB within [-20, 60]")
        if not kinds or not set(kinds) <= set(NOISE_KINDS):
            raise ConfigError(
                "data.train_noise.kinds", kinds, f"needs one or more of {NOISE_KINDS}"
            )
        if d.source.get("streaming", False):
            raise ConfigError(
                "data.train_noise.snr_db", snrs, "a streamed source cannot be noised",
                "list the source (streaming=False) or set snr_db=()",
            )  # fmt: skip
    labels = d.get("train_labels", "")
    if labels and not (Path(labels) / f"{d.train_split}.jsonl").is_file():
        raise ConfigError(
            "data.train_labels",
            labels,
            f"has no {d.train_split}.jsonl",
            f"label the split first: python -m mkd_jax.pseudolabel --split {d.train_split} "
            f"--out {labels}",
        )
    t = int(d.get("teacher_frames", 0) or 0)
    for where, x in dims.items():  # each role's context must fit its encoder
        key, value = ("teacher_frames", t) if where != "student" and t else ("n_frames", n)
        frames = 2 * int(x.get("max_source_positions", MAX_MEL_FRAMES // 2))
        if value > frames:
            raise ConfigError(f"data.{key}", value, f"exceeds {where}'s {frames}-frame window")
    if "teacher_frames" in d:
        t = _int(cfg, "data.teacher_frames", 0, n)
        if t % 2:
            raise ConfigError("data.teacher_frames", t, "must be even (the encoder halves it)")
        if 0 < t and t < 100 * hi and cfg.teachers:
            raise ConfigError(
                "data.teacher_frames", t,
                f"the teachers would hear only the first {t / 100:g} s of utterances up to "
                f"data.source.max_seconds={hi:g}",
                f"set teacher_frames >= {int(100 * hi + 1) // 2 * 2} or 0 (the student's)",
            )  # fmt: skip
        on_encoder = "encoder" in tuple(cfg.mappers.sides) or any(
            "encoder/" in str(e) for e in cfg.mappers.explicit
        )
        if 0 < t < n and cfg.teachers and cfg.mappers.weight > 0 and on_encoder:
            raise ConfigError(
                "data.teacher_frames",
                t,
                f"teachers at a shorter context than the student's {n} frames have other encoder "
                "frames, so encoder-site mappers cannot pair them",
                "map decoder sites only (mappers.sides=('decoder',)) or set teacher_frames=0",
            )
    buckets = tuple(d.token_buckets)
    max_pos = min(x.get("max_target_positions", MAX_TARGET_POSITIONS) for x in dims.values())
    if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 4:
        raise ConfigError("data.token_buckets", buckets, "must be increasing integers >= 4")
    if buckets[-1] > max_pos:
        raise ConfigError(
            "data.token_buckets", buckets, f"largest exceeds the decoder's {max_pos} positions"
        )
    _int(cfg, "data.batch_size", 1)
    _int(cfg, "data.eval_batch_size", 1)
    _int(cfg, "data.prefetch", 0)
    if "workers" in cfg.data:
        _int(cfg, "data.workers", 0, 64)
    for name in cfg.data.get("mix", {}):
        key = f"data.mix.{name}"
        _choice(cfg, f"{key}.source.kind", SOURCE_KINDS)
        _range(f"{key}.weight", _num(cfg, f"{key}.weight"), 0.0, lo_open=True)
    if cfg.data.get("mix", {}):
        _range("data.source_weight", _num(cfg, "data.source_weight"), 0.0, lo_open=True)
    for key in ("train_split", "eval_split", "test_split"):
        if not d[key]:
            raise ConfigError(f"data.{key}", d[key], "must name a split")
    if d.source.kind == "disk":
        check_splits(cfg, d.source)


def check_splits(cfg, source) -> None:
    """The train, eval and test split names against a corpus folder's own list (its
    `dataset_dict.json`), so a typo stops the run before any model loads, not after training.
    Other sources (a synthetic corpus before it is built, LibriSpeech, the hub) pass."""
    listing = Path(source.get("path") or "") / "dataset_dict.json"
    if source.get("kind") != "disk" or not listing.is_file():
        return
    have = json.loads(listing.read_text()).get("splits", [])
    for key in ("train_split", "eval_split", "test_split"):
        if have and cfg.data[key] not in have:
            raise ConfigError(f"data.{key}", cfg.data[key], f"{source['path']} has splits {have}")


def _check_mesh(cfg) -> None:
    axes = list(cfg.mesh)
    names = [str(a) for a, _ in axes]
    if sorted(names) != sorted(set(names)):
        raise ConfigError("mesh", axes, "axis names repeat")
    sizes = [s for _, s in axes]
    if any((not isinstance(s, int)) or (s < 1 and s != -1) for s in sizes) or sizes.count(-1) > 1:
        raise ConfigError("mesh", axes, "sizes must be positive integers, at most one -1")
    rule_axes = {
        m for _, v in cfg.sharding_rules for m in ((v,) if isinstance(v, str) else v or ())
    }
    unknown = sorted(rule_axes - set(names))
    if unknown:
        raise ConfigError("sharding_rules", unknown, f"name mesh axes not in {names}")


def _lora_targets_upstream(cfg, site: str, dims: dict) -> bool:
    """Whether some LoRA target lies upstream of a student site (so its mapper has a learner)."""
    side, _, rest = site.partition("/")
    n_enc = dims["student"]["encoder_layers"]
    n_dec = dims["student"]["decoder_layers"]
    if side == "encoder":
        upto = n_enc - 1 if rest == "output" else int(rest.removeprefix("layer_"))
        kernels = [f"encoder/layers_{i}/self_attn/q_proj/kernel" for i in range(upto + 1)]
        kernels += [f"encoder/layers_{i}/{k}/kernel" for i in range(upto + 1) for k in _KERNELS]
    else:
        upto = n_dec - 1 if rest == "output" else int(rest.removeprefix("layer_"))
        kernels = [f"encoder/layers_{i}/{k}/kernel" for i in range(n_enc) for k in _KERNELS]
        kernels += [
            f"decoder/layers_{i}/{a}/{k}/kernel"
            for i in range(upto + 1)
            for a in ("self_attn", "encoder_attn")
            for k in ("q_proj", "k_proj", "v_proj", "out_proj")
        ]
        kernels += [
            f"decoder/layers_{i}/{k}/kernel" for i in range(upto + 1) for k in ("fc1", "fc2")
        ]
    return any(re.fullmatch(t, k) for t in cfg.lora.targets for k in kernels)


_KERNELS = (
    "self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/out_proj", "fc1", "fc2",
)  # fmt: skip


def _check_mappers(cfg, dims) -> None:
    m = cfg.mappers
    _range("mappers.weight", _num(cfg, "mappers.weight"), 0.0)
    if not cfg.teachers or m.weight == 0:
        return
    _choice(cfg, "mappers.strategy", MAPPER_STRATEGIES)
    _choice(cfg, "mappers.kind", MAPPER_KINDS)
    _choice(cfg, "mappers.loss", ("mse", "cosine", "geodesic"))
    _choice(cfg, "mappers.align", MAPPER_ALIGN)
    _int(cfg, "mappers.hidden", 0)
    if m.kind == "mlp" and m.hidden <= 0:
        raise ConfigError("mappers.hidden", m.hidden, "an mlp mapper needs a hidden width > 0")
    if m.kind == "linear" and m.hidden:
        raise ConfigError(
            "mappers.hidden", m.hidden, "a linear mapper has no hidden layer", "set 0"
        )
    if m.strategy != "explicit" and tuple(m.explicit):
        raise ConfigError(
            "mappers.explicit", tuple(m.explicit), f"ignored by mappers.strategy={m.strategy!r}",
            "set mappers.strategy='explicit' or drop the pairs",
        )  # fmt: skip
    bad = [s for s in m.sides if s not in ("encoder", "decoder")]
    if bad or not m.sides:
        raise ConfigError("mappers.sides", tuple(m.sides), "choose from 'encoder', 'decoder'")
    from mkd_jax.mappers import resolve_layer_map

    layers = {
        w: {"encoder": d["encoder_layers"], "decoder": d["decoder_layers"]} for w, d in dims.items()
    }
    try:
        pairs = resolve_layer_map(
            m.strategy,
            student_layers=layers["student"],
            teachers={w.removeprefix("teachers."): x for w, x in layers.items() if w != "student"},
            sides=tuple(m.sides),
            explicit=list(m.explicit) or None,
        )
    except ValueError as e:
        raise ConfigError("mappers", m.strategy, str(e)) from None
    for pair in pairs:
        if not _lora_targets_upstream(cfg, pair.student_site, dims):
            raise ConfigError(
                "mappers.sides",
                tuple(m.sides),
                f"the mapper on student site {pair.student_site} has no LoRA target upstream, so "
                "it would only train itself",
                "add encoder LoRA targets (config_base.LORA_ENCODER) or map decoder sites",
            )


def dense_kernels(dims: dict) -> list[str]:
    """Every Dense kernel of a Whisper of these dims: what a LoRA target can match (LoRA wraps
    Dense layers only; the convolutions and embeddings are not)."""
    attn = ("q_proj", "k_proj", "v_proj", "out_proj")
    out = [
        f"encoder/layers_{i}/{k}/kernel" for i in range(dims["encoder_layers"]) for k in _KERNELS
    ]
    for i in range(dims["decoder_layers"]):
        out += [
            f"decoder/layers_{i}/{a}/{k}/kernel"
            for a in ("self_attn", "encoder_attn")
            for k in attn
        ]
        out += [f"decoder/layers_{i}/{k}/kernel" for k in ("fc1", "fc2")]
    return out


def _check_lora(cfg, dims) -> None:
    lo = cfg.lora
    targets = tuple(lo.targets)
    kernels = dense_kernels(dims["student"])
    for t in targets:
        try:
            re.compile(t)
        except re.error as e:
            raise ConfigError("lora.targets", t, f"not a regex ({e})") from None
        if not any(re.fullmatch(t, k) for k in kernels):
            raise ConfigError(
                "lora.targets", t, "matches no Dense kernel of the student",
                f"LoRA wraps Dense kernels only, e.g. {kernels[0]}",
            )  # fmt: skip
    if not targets and (not cfg.teachers or cfg.mappers.weight == 0):
        raise ConfigError("lora.targets", targets, "no LoRA target and no mapper: nothing trains")
    if targets:
        _int(cfg, "lora.rank", 1)
        _range("lora.alpha", _num(cfg, "lora.alpha"), 0.0, lo_open=True)
    _range("lora.dropout", _num(cfg, "lora.dropout"), 0.0, 1.0, hi_open=True)


def _check_loss(cfg) -> None:
    ls = cfg.loss
    for key in ("w_ce", "w_kd"):
        _range(f"loss.{key}", _num(cfg, f"loss.{key}"), 0.0)
    _range("loss.temperature", _num(cfg, "loss.temperature"), 0.1, 100.0)
    _choice(cfg, "loss.ensemble", ENSEMBLES)
    _choice(cfg, "loss.kd_support", KD_SUPPORTS)
    weights = ls.ensemble_weights
    if not hasattr(weights, "keys"):
        raise ConfigError(
            "loss.ensemble_weights",
            weights,
            "must map teacher names to weights, not a positional list",
            "e.g. --config.loss.ensemble_weights=\"{'base': 0.7, 'base_ft': 0.3}\"",
        )
    if ls.ensemble == "weights":
        names = set(cfg.teachers.keys())
        if set(weights.keys()) != names:
            raise ConfigError(
                "loss.ensemble_weights",
                dict(weights),
                f"needs exactly one weight per teacher {sorted(names)}",
            )
        values = [weights[n] for n in names]
        if any(
            isinstance(v, bool) or not isinstance(v, int | float) or not v >= 0 or math.isinf(v)
            for v in values
        ):
            raise ConfigError(
                "loss.ensemble_weights", dict(weights), "weights must be finite and >= 0"
            )
        if sum(values) <= 0:
            raise ConfigError("loss.ensemble_weights", dict(weights), "weights must sum to > 0")
    elif len(weights):
        raise ConfigError(
            "loss.ensemble_weights", dict(weights), f"set but loss.ensemble={ls.ensemble!r}",
            "set --config.loss.ensemble=weights, or drop the weights",
        )  # fmt: skip
    lambdas = tuple(ls.lambdas)
    if ls.interpolate and (not lambdas or any(not 0.0 <= x <= 1.0 for x in lambdas)):
        raise ConfigError("loss.lambdas", lambdas, "need one or more values in [0, 1]")
    # A teacher's `weight` scales its mapper losses (KD follows loss.ensemble): at 0 they vanish.
    mapped = any(t.weight > 0 for t in cfg.teachers.values())
    w_map = cfg.mappers.weight if mapped else 0.0
    if ls.w_ce == 0 and (not cfg.teachers or (ls.w_kd == 0 and w_map == 0)):
        raise ConfigError("loss.w_ce", ls.w_ce, "every loss weight is 0: nothing would train")


def _check_optim(cfg) -> None:
    o = cfg.optim
    total = _int(cfg, "total_steps", 1)
    _range("optim.lr", _num(cfg, "optim.lr"), 0.0, lo_open=True)
    _range("optim.mapper_lr", _num(cfg, "optim.mapper_lr"), 0.0)
    _int(cfg, "optim.warmup_steps", 0)
    _range("optim.weight_decay", _num(cfg, "optim.weight_decay"), 0.0)
    for key in ("b1", "b2"):
        _range(f"optim.{key}", _num(cfg, f"optim.{key}"), 0.0, 1.0, hi_open=True)
    _range("optim.clip_norm", _num(cfg, "optim.clip_norm"), 0.0, lo_open=True)
    acc = _int(cfg, "optim.accum_steps", 1)
    if total % acc:
        raise ConfigError("optim.accum_steps", acc, f"must divide total_steps={total}")
    updates = total // acc
    if updates < 2:
        raise ConfigError(
            "total_steps", total, f"gives {updates} optimizer update(s) with accum_steps={acc}",
            "the schedule starts at LR 0, so train for at least 2 updates",
        )  # fmt: skip
    _int(cfg, "optim.max_nonfinite_steps", 0, total - 1)
    if o.warmup_steps >= updates:
        raise ConfigError(
            "optim.warmup_steps", o.warmup_steps,
            f"must be < the {updates} optimizer updates (total_steps={total} / accum_steps={acc})",
        )  # fmt: skip


def _check_cache(cfg, dims) -> None:
    if "cache" not in cfg:
        return
    _choice(cfg, "cache.enabled", (True, False))
    if not cfg.cache.enabled:
        return
    first = [f"encoder/layers_0/{k}/kernel" for k in _KERNELS]
    if not cfg.teachers and any(re.fullmatch(t, k) for t in cfg.lora.targets for k in first):
        raise ConfigError(
            "cache.enabled",
            True,
            "without teachers the cache holds only the student's frozen encoder layers, but "
            "lora.targets reach encoder layer 0, so nothing could be cached",
            "keep the encoder LoRA targets above layer 0 or set cache.enabled=False",
        )
    v_s = dims["student"].get("vocab_size", 51864)
    _int(cfg, "cache.top_k", 0, v_s)
    _choice(cfg, "cache.dtype", ("bfloat16", "float16", "float32"))
    if not isinstance(cfg.cache.dir, str):
        raise ConfigError("cache.dir", cfg.cache.dir, "must be a folder path or empty")


def _check_cadences(cfg, dims) -> None:
    _int(cfg, "seed", 0, 2**32 - 1)  # PRNGKey wraps larger seeds onto smaller ones
    _int(cfg, "log_every_steps", 1)
    _int(cfg, "ckpt.every_steps", 1)
    _int(cfg, "ckpt.max_to_keep", 1)
    _int(cfg, "eval.every_steps", 0)
    _int(cfg, "eval.max_batches", -1)
    if cfg.eval.every_steps > 0 and cfg.eval.max_batches < 0:
        raise ConfigError(
            "eval.every_steps", cfg.eval.every_steps,
            "asks for WER passes that eval.max_batches=-1 turns off",
            "set eval.every_steps=0 or eval.max_batches >= 0",
        )  # fmt: skip
    _int(cfg, "eval.beam_size", 1, 16)
    max_pos = dims["student"].get("max_target_positions", MAX_TARGET_POSITIONS)
    _int(cfg, "eval.max_new_tokens", 1, max_pos - 8)
    ref = cfg.eval.get("agreement_reference", "")
    if not isinstance(ref, str):
        raise ConfigError("eval.agreement_reference", ref, "must be a model name, a folder or ''")
    if ref:
        from mkd_jax import assets  # imports flax: only once a reference is named

        try:
            assets.resolve_model(ref)
        except (OSError, ValueError) as e:
            raise ConfigError(
                "eval.agreement_reference",
                ref,
                f"not a usable model ({str(e).splitlines()[0]})",
                f"use one of {', '.join(assets.MODELS)}, an HF Whisper folder or ''",
            ) from None


def validate(cfg, shapes_only=()) -> None:
    """Check every value and cross-field rule of a training config; raise `ConfigError`.

    `shapes_only`: roles (`"student"`, `"teachers.base_ft"`) whose empty checkpoint is filled in
    later by the caller (the ablation's base_ft) or never loaded (aot's `--init_shapes`); their
    `init` dimensions stand in for the checkpoint's."""
    for group in (
        "data",
        "student",
        "teachers",
        "mappers",
        "lora",
        "loss",
        "optim",
        "ckpt",
        "eval",
    ):
        if group not in cfg:
            raise ConfigError(group, None, "missing config group", "build configs on base_config()")
    _check_optim(cfg)
    _check_mesh(cfg)
    dims = _check_roles(cfg, shapes_only)  # teacher weights are numbers from here on
    _check_loss(cfg)
    _check_lora(cfg, dims)
    _check_data(cfg, dims)
    _check_mappers(cfg, dims)
    _check_cache(cfg, dims)
    _check_cadences(cfg, dims)
