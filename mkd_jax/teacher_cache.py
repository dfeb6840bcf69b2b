"""The teacher-output cache: frozen work computed once per utterance, read by every step.

Teachers never change and the corpus has no online augmentation, so what they produce is a
function of the utterance alone. Per training utterance and teacher the cache holds

- the KD target (tempered, mapped onto student ids, restricted to the KD support: exactly what
  `distill.teacher_outputs` gives the uncached step) as its top-k ids and probabilities plus the
  remaining `tail` mass, at every student decoder position up to the last label (`top_k=0`
  keeps the whole vocabulary: the cached step then equals the uncached one);
- the summed NLL of its reference (ensemble mode "best"), top-1 hits and label counts
  (diagnostics), across tokenizers the mass its vocabulary mapping kept;
- its features at every mapped teacher site in `cache.dtype` (bfloat16 by default), only frames
  that hold audio and positions that hold tokens;

and, when no LoRA target lies in the student encoder (the encoder is frozen), the student's
encoder output at float32 over the whole context (the decoder's cross-attention reads every
frame) and its mapped encoder sites: the step then runs only the student decoder.

Format: safetensors shards (`shard-PPPPP-NNNNN.safetensors`, one per process and block of
batches, tensors named `<utterance id>/<field>`). safetensors is already a core dependency (the
checkpoints use it), reads lazily through mmap, stores bfloat16, and writes a shard in one
call, so a shard is either complete or absent (written to a temporary name, then renamed).
`progress-P.json` records finished blocks per process (resume) and `manifest.json` the content
key, sizes and build time once the whole cache is complete. The key hashes everything that
changes the content: each model's weights (file content), tokenizers, the corpus (ids, texts,
durations), n_frames, buckets, k, temperature, KD support, sites and dtype. A cache whose key
differs is stale and rebuilt; a partial one is resumed; training reads only complete ones. A new
cache whose student fields a complete sibling already holds (same student encoder, corpus and
context: another teacher set of an ablation) copies them instead of running the student encoder;
and a teacher whose frozen encoder was the student of a complete sibling (base in base_ft's
supervised stage, at the teachers' context) reads its encoder output there and runs only its
decoder (`_encoder_donors`).

    python -m mkd_jax.cache --config configs/demo.py [--config.a.b=v]
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
from absl import logging

FORMAT = 1
# Batches per shard file: the unit of resumption.
SHARD_BATCHES = 8
MANIFEST = "manifest.json"
_DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


class CacheError(ValueError):
    """A cache that cannot be built or used here (one line, with the fix)."""


@dataclasses.dataclass(frozen=True, eq=False)
class CacheSpec:
    """What the cache holds, and so what a cached batch carries.

    Attributes:
      top_k: target ids kept per position (0: the whole student vocabulary).
      dtype: storage dtype of teacher features.
      sites: teacher name -> its mapped sites (stored features).
      student_sites: the student encoder sites the cache holds, its frozen part. The first is
        the entry the step starts from (stored for every frame of the context): with a frozen
        encoder "encoder/output" (the step runs only the decoder); with LoRA only from encoder
        layer k >= 1 up, "encoder/layer_{k-1}" (the step runs layers k.. and the decoder). The
        rest are mapped sites below the entry. Empty when the whole encoder trains.
    """

    top_k: int
    dtype: str
    sites: dict
    student_sites: tuple[str, ...]


def first_trainable_encoder_layer(lora_targets, params_s) -> int | None:
    """The lowest student encoder layer a LoRA target reaches; None when the encoder is frozen,
    0 when a target reaches its layer 0 or a part before the layers."""
    from flax.traverse_util import flatten_dict

    paths = [p for p in flatten_dict(params_s, sep="/") if p.startswith("encoder/")]
    hit = [p for p in paths if any(re.fullmatch(t, p) for t in lora_targets)]
    if not hit:
        return None
    layers = [re.match(r"encoder/layers_(\d+)/", p) for p in hit]
    return min(int(m.group(1)) if m else 0 for m in layers)


def encoder_frozen(lora_targets, params_s) -> bool:
    """No LoRA target matches a student encoder parameter."""
    return first_trainable_encoder_layer(lora_targets, params_s) is None


def _site_layer(site: str) -> int | None:
    m = re.fullmatch(r"encoder/layer_(\d+)", site)
    return int(m.group(1)) if m else None


def make_spec(cfg, params_s, pairs) -> CacheSpec:
    """The spec of a config (`pairs`: the resolved layer map, or () without mappers)."""
    sites = {name: () for name in cfg.teachers}
    for p in pairs:
        sites[p.teacher] = tuple(sorted({*sites[p.teacher], p.teacher_site}))
    enc = sorted({p.student_site for p in pairs if p.student_site.startswith("encoder/")})
    first = first_trainable_encoder_layer(tuple(cfg.lora.targets), params_s)
    student_sites = ()
    if first is None:
        student_sites = ("encoder/output", *[s for s in enc if s != "encoder/output"])
    elif first > 0:  # the layers below `first` are frozen: cache their output once
        entry = f"encoder/layer_{first - 1}"
        below = [
            s for s in enc if s != entry and _site_layer(s) is not None and _site_layer(s) < first
        ]
        student_sites = (entry, *below)
    return CacheSpec(int(cfg.cache.top_k), str(cfg.cache.dtype), sites, student_sites)


def entry_layer(spec: CacheSpec) -> int | None:
    """The encoder layer a cached step starts at: None for the decoder alone (frozen encoder),
    k for a cached `encoder/layer_{k-1}`; only meaningful when `spec.student_sites` is set."""
    layer = _site_layer(spec.student_sites[0])
    return None if layer is None else layer + 1


# ----- fields: name -> (axis kind, trailing shape, dtype) -----
# Axis kinds: "pos" (student decoder positions, stored up to the last label), "frame" (encoder
# frames holding audio), "context" (every encoder frame), None (one value per utterance).


def fields(spec: CacheSpec, setup) -> dict[str, tuple[str | None, tuple, str]]:
    v_s = setup.student.vocab_size
    k = spec.top_k or v_s
    out = {"c:audio_frames": (None, (), "int32")}
    for name, model in setup.teachers.items():
        c = f"c:{name}/"
        out.update(
            {
                c + "ids": ("pos", (k,), "int32"),
                c + "p": ("pos", (k,), "float32"),
                c + "tail": ("pos", (), "float32"),
                c + "nll": (None, (), "float32"),
                c + "hits": (None, (), "float32"),
                c + "count": (None, (), "float32"),
            }
        )
        if setup.vocab_index[name] is not None:
            out[c + "kept"] = ("pos", (), "float32")
        for site in spec.sites[name]:
            kind = "frame" if site.startswith("encoder/") else "pos"
            out[c + site] = (kind, (model.d_model,), spec.dtype)
    for site in spec.student_sites:
        kind = "context" if site == spec.student_sites[0] else "frame"
        out["c:student/" + site] = (kind, (setup.student.d_model,), "float32")
    return out


def _length(kind, n_tokens: int, n_enc: int) -> int:
    return {"pos": n_tokens, "frame": n_enc, "context": n_enc}[kind]


def abstract_fields(spec: CacheSpec, setup, batch: int, n_tokens: int, n_frames: int) -> dict:
    """ShapeDtypeStructs of the cached fields of one batch (for AOT and shardings)."""
    import jax
    import jax.numpy as jnp

    out = {}
    for key, (kind, shape, dtype) in fields(spec, setup).items():
        lead = () if kind is None else (_length(kind, n_tokens, n_frames // 2),)
        out[key] = jax.ShapeDtypeStruct((batch, *lead, *shape), jnp.dtype(dtype))
    return out


# ----- the key -----


def _sha256_file(path: Path, memo: dict) -> str:
    st = path.stat()
    tag = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    if tag not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        memo[tag] = h.hexdigest()
    return memo[tag]


_WEIGHT_FILES = re.compile(r"(model.*\.(safetensors|bin)|pytorch_model.*\.bin|.*\.index\.json)")


def weights_digest(role_cfg, params, folder, memo: dict) -> str:
    """Content hash of a role's weights: its checkpoint files, or for a random init the params."""
    if role_cfg.checkpoint:
        files = sorted(p for p in Path(folder).iterdir() if _WEIGHT_FILES.fullmatch(p.name))
        if not files:
            raise CacheError(f"{folder}: no weight files to fingerprint for the teacher cache")
        return hashlib.sha256(
            "".join(f"{p.name}:{_sha256_file(p, memo)}" for p in files).encode()
        ).hexdigest()
    from flax.traverse_util import flatten_dict

    h = hashlib.sha256()
    for path, leaf in sorted(flatten_dict(params, sep="/").items()):
        h.update(path.encode() + np.asarray(leaf).tobytes())
    return h.hexdigest()


def corpus_digest(utts) -> str:
    h = hashlib.sha256()
    for uid, text, dur in zip(utts.ids, utts.texts, np.asarray(utts.durations), strict=True):
        h.update(f"{uid}\0{text}\0{float(dur)!r}\n".encode())
    return h.hexdigest()


def key_material(cfg, roles, setup, utts, buckets, source) -> dict:
    """Everything that changes the cache's content, as JSON-able values."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    memo_path = root / "weights_digests.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    spec = setup.cache
    role_s = roles["student"]
    student = {"tokenizer": role_s.tokenizer.fingerprint(), "sites": spec.student_sites}
    if spec.student_sites:
        student["weights"] = weights_digest(cfg.student, role_s.params, role_s.folder, memo)
        student["dtype"] = cfg.student.dtype
    teachers = {}
    for name, role in roles["teachers"].items():
        teachers[name] = {
            "weights": weights_digest(cfg.teachers[name], role.params, role.folder, memo),
            "tokenizer": role.tokenizer.fingerprint(),
            "dtype": cfg.teachers[name].dtype,
            "sites": list(spec.sites[name]),
        }
    tmp = memo_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(memo))
    os.replace(tmp, memo_path)
    corpus = {
        "source": source.get("path") or source.get("name") or "",
        "split": cfg.data.train_split,
        "utterances": len(utts),
        "digest": corpus_digest(utts),
        # The audio itself: a corpus rebuilt on another CPU kind keeps its ids, texts and
        # durations but not its samples, and must not reuse this cache.
        "audio": utts.audio_digest(),
    }
    if utts.noise is not None:  # only when on: clean keys stay what they were
        corpus["train_noise"] = [list(x) for x in utts.noise]
    return {
        "format": FORMAT,
        "student": student,
        "teachers": teachers,
        "corpus": corpus,
        "n_frames": int(cfg.data.n_frames),
        "teacher_frames": setup.teacher_frames,
        "buckets": [[b.n_frames, b.n_tokens, b.batch_size] for b in buckets],
        "top_k": spec.top_k,
        "dtype": spec.dtype,
        "temperature": float(cfg.loss.temperature),
        "kd_support": cfg.loss.kd_support,
        "prompt": ["en", "transcribe", "leading_space"],
    }


def digest(material: dict) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def cache_root() -> Path:
    from mkd_jax import assets

    return assets.cache_dir() / "teacher_cache"


def folder_for(cfg, key: str) -> Path:
    """The cache's folder, named by its content key under `cache.dir` (default: the asset
    cache's), so runs with equal keys (seeds and learning rates of an ablation) share one cache
    and the sources of a mixture each have their own."""
    return (Path(cfg.cache.dir) if cfg.cache.dir else cache_root()) / key[:16]


# ----- size -----


def projected_bytes(spec: CacheSpec, setup, positions, frames, n_frames: int) -> int:
    """Bytes the cache will take for utterances with `positions` decoder positions and `frames`
    encoder frames holding audio (arrays, one entry per utterance)."""
    positions, frames = np.asarray(positions, np.int64), np.asarray(frames, np.int64)
    total = 0
    for kind, shape, dtype in fields(spec, setup).values():
        per = int(np.prod(shape, dtype=np.int64)) * np.dtype(_np_dtype(dtype)).itemsize
        if kind is None:
            total += per * len(positions)
        elif kind == "context":
            total += per * (n_frames // 2) * len(positions)
        else:
            total += per * int((positions if kind == "pos" else frames).sum())
    return total


def _np_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# ----- building -----


def _targets(frozen, batch, *, setup, student=True, encoded=()):
    """Per-utterance cache fields of one batch (rows as in the batch, padded to its shapes);
    `student=False` leaves out the student's encoder fields (copied from a donor cache), and the
    teacher encoders named in `encoded` do not run: their outputs are in the batch, as
    `c:encoded/<teacher>` (copied from a cache where that model was the student)."""
    import jax
    import jax.numpy as jnp

    from mkd_jax.distill import teacher_outputs

    spec = setup.cache
    out = {}
    if setup.teachers:
        given = {name: batch[ENCODED + name] for name in encoded}
        for name, t in teacher_outputs(frozen, batch, setup, encoded=given).items():
            c = f"c:{name}/"
            p = t["probs"]
            if spec.top_k:
                vals, ids = jax.lax.top_k(p, spec.top_k)
                tail = jnp.maximum(jnp.sum(p, -1) - jnp.sum(vals, -1), 0.0)
            else:
                vals = p
                ids = jnp.broadcast_to(jnp.arange(p.shape[-1], dtype=jnp.int32), p.shape)
                tail = jnp.zeros(p.shape[:-1], jnp.float32)
            out.update({c + "ids": ids.astype(jnp.int32), c + "p": vals, c + "tail": tail})
            out.update({c + k: t[k] for k in ("nll", "hits", "count")})
            if "dropped" in t:
                out[c + "kept"] = t["kept"]
            dtype = jnp.dtype(spec.dtype)
            out.update({c + s: t["feats"][s].astype(dtype) for s in spec.sites[name]})
    if spec.student_sites and student:
        _, enc = setup.student.apply(
            {"params": frozen["student"]}, batch["mel"], method=type(setup.student).encode
        )
        out.update({"c:student/" + s: enc[s].astype(jnp.float32) for s in spec.student_sites})
    return out


def _positions(mask_row: np.ndarray) -> int:
    """Decoder positions up to and including the last label (0 for an empty row)."""
    hits = np.nonzero(mask_row > 0)[0]
    return int(hits[-1]) + 1 if len(hits) else 0


def _rows(out: dict, batch: dict, table: dict) -> dict[str, dict[str, np.ndarray]]:
    """Split one computed batch into per-utterance arrays trimmed to the data they hold."""
    per = {}
    for r, uid in enumerate(batch["ids"]):
        if not uid or batch["valid"][r] < 1:
            continue
        n_pos = _positions(batch["mask"][r])
        n_fr = (int(batch["audio_frames"][r]) + 1) // 2
        item = {"c:audio_frames": np.asarray(batch["audio_frames"][r], np.int32)}
        for key, (kind, _, _) in table.items():
            if key == "c:audio_frames":
                continue
            value = out[key][r]
            if kind == "pos":
                value = value[:n_pos]
            elif kind == "frame":
                value = value[:n_fr]
            item[key] = np.array(value, copy=True)  # not ascontiguousarray: it makes 0-d 1-d
        per[uid] = item
    return per


# What a cache's student fields depend on: two caches that agree on these hold the same student
# encoder outputs, whatever their teachers.
_STUDENT_MATERIAL = ("format", "student", "corpus", "n_frames", "buckets", "prompt")
# Batch field of a teacher encoder's output copied from another cache (`_encoder_donors`).
ENCODED = "c:encoded/"


class _Shards:
    """Lazy reads of a cache folder's tensors by utterance: which shard holds each utterance
    (from the shards' metadata), each shard opened (mmap) on first use."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder, self.where, self._files = Path(folder), {}, {}
        for path in sorted(self.folder.glob("shard-*.safetensors")):
            with safe_open(str(path), "numpy") as f:
                for uid in json.loads(f.metadata()["uids"]):
                    self.where[uid] = path

    def get(self, uid: str, key: str) -> np.ndarray:
        path = self.where.get(uid)
        if path is None:
            raise CacheError(
                f"{self.folder}: utterance {uid!r} is not in the teacher cache; delete the "
                "folder to rebuild it"
            )
        if path not in self._files:
            from safetensors import safe_open

            self._files[path] = safe_open(str(path), "numpy")
        return self._files[path].get_tensor(f"{uid}/{key}")

    def __getstate__(self):
        """Open files stay behind (a Grain worker re-opens them as it reads)."""
        return dict(self.__dict__, _files={})


def _sibling(folder: Path, utts, matches) -> tuple[str, _Shards] | None:
    """`(key, shards)` of the first complete sibling of `folder` (same parent) whose material
    `matches` and that holds every utterance of `utts`; None if there is none."""
    for other in sorted(folder.parent.glob(f"*/{MANIFEST}")):
        m = _read(other)
        if other.parent == folder or not m or not m.get("complete") or m.get("failed"):
            continue
        if not matches(m.get("material", {})):
            continue
        shards = _Shards(other.parent)
        if set(utts.ids) <= shards.where.keys():
            return m["key"], shards
    return None


def _donor(folder: Path, material: dict, utts) -> tuple[str, _Shards] | None:
    """`(key, shards)` of a complete sibling of `folder` (same parent) whose student material
    equals ours and that holds every utterance: its student fields are ours. None if there is
    none, or when the cache holds no student fields.

    The student's frozen encoder output is most of a cache's build time (a student-only cache of
    tiny.en at 30 s on the 1.3 h corpus took 514 s here) and does not depend on the teachers, so
    a cache for a new teacher set copies it from a sibling instead of recomputing it."""
    if not material["student"].get("sites"):
        return None
    want = json.loads(json.dumps({k: material[k] for k in _STUDENT_MATERIAL}))  # as stored
    return _sibling(folder, utts, lambda om: {k: om.get(k) for k in _STUDENT_MATERIAL} == want)


def _encoder_donors(folder: Path, material: dict, setup, utts) -> dict[str, tuple[str, _Shards]]:
    """Teacher -> `(key, shards)` of a complete sibling cache whose student is that teacher's
    encoder: the same weights and dtype, frozen, at the teachers' context, on the same corpus.
    Its stored encoder output (float32, every frame) is what the teacher's encoder would give,
    so the teacher runs only its decoder. In the demo, base_ft's supervised stage caches base's
    encoder on the train split at 10 s, and the distillation cache's teachers base and base_ft
    (one shared encoder) read it instead of encoding the split again.

    Only for teachers whose own encoder runs (not one sharing another's) and for which no
    teacher reading it maps an encoder site (the donor holds the output alone)."""
    frames = material["teacher_frames"] or material["n_frames"]
    want = json.loads(json.dumps({"format": material["format"], "corpus": material["corpus"]}))

    def student_is(t):
        def matches(om):
            st = om.get("student", {})
            return (
                st.get("weights") == t["weights"]
                and st.get("dtype") == t["dtype"]
                and (st.get("sites") or [None])[0] == "encoder/output"
                and om.get("n_frames") == frames
                and {k: om.get(k) for k in want} == want
            )

        return matches

    out = {}
    for name, t in material["teachers"].items():
        readers = [n for n in setup.teachers if setup.shared_encoder.get(n, n) == name]
        if name in setup.shared_encoder or any(
            site.startswith("encoder/") for n in readers for site in setup.cache.sites[n]
        ):
            continue
        found = _sibling(folder, utts, student_is(t))
        if found is not None:
            out[name] = found
    return out


def _progress_path(folder: Path, process: int) -> Path:
    return folder / f"progress-{process:05d}.json"


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def ensure(cfg, roles, setup, utts, tokenizers, buckets, source, *, mesh, rules) -> Path:
    """The folder of a complete cache for this config: used as is, resumed, or (stale) rebuilt.

    Raises:
      CacheError: the projected size does not fit the disk (before any work).
    """
    import jax

    material = key_material(cfg, roles, setup, utts, buckets, source)
    key = digest(material)
    folder = folder_for(cfg, key)
    manifest = _read(folder / MANIFEST)
    partial = sorted(folder.glob("progress-*.json")) if folder.is_dir() else []
    found = manifest or (_read(partial[0]) if partial else None)
    if found is not None and found.get("key") != key:
        old = found.get("material", {})
        changed = sorted(k for k in material if old.get(k) != material[k])
        logging.warning("teacher cache %s is stale (changed: %s); rebuilding it", folder, changed)
        if jax.process_index() == 0:
            shutil.rmtree(folder)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("stale teacher cache removed")
        manifest = None
    if manifest is not None and manifest.get("complete"):
        logging.info(
            "teacher cache: %s (%s, %d utterances, built in %.0f s)",
            folder, _gb(manifest["bytes"]), manifest["utterances"], manifest["build_seconds"],
        )  # fmt: skip
        return folder
    _build(cfg, roles, setup, utts, tokenizers, buckets, folder, key, material, mesh, rules)
    return folder


def savings(cfg, builds: list[tuple[Path, float]], rows_read: float | None) -> dict | None:
    """What the caches a run read saved it, estimated from their own builds.

    The frozen work per utterance is each cache's build time, plus the build time of every cache
    it took encoder outputs from, over its utterances. Times the utterance rows the steps read,
    that is the work the steps did not run; less the time this run spent building or finding the
    caches, the time saved. An estimate: inside the step the same work would run at the step's
    batch shapes, not the build's.

    Args:
      builds: `(folder, seconds this run spent in ensure())` of each cache the run read.
      rows_read: real (not padding) utterance rows the training steps read.

    Returns:
      `{frozen_s_per_utterance, rows_read, recompute_s, build_s, saved_s}`, or None when there
      is no cache, no row was read, or a manifest (of a cache or a donor) is gone.
    """
    if not builds or not rows_read:
        return None
    frozen, utts = 0.0, 0
    for folder, _ in builds:
        m = _read(Path(folder) / MANIFEST)
        if m is None:
            return None
        donors = set((m.get("teacher_encoders_from") or {}).values())
        donors |= {m["student_from"]} if m.get("student_from") else set()
        found = [_read(folder_for(cfg, k) / MANIFEST) for k in sorted(donors)]
        if any(d is None for d in found):
            return None
        frozen += m["build_seconds"] + sum(d["build_seconds"] for d in found)
        utts += m["utterances"]
    per = frozen / max(utts, 1)
    spent = sum(t for _, t in builds)
    return {
        "frozen_s_per_utterance": per,
        "rows_read": rows_read,
        "recompute_s": per * rows_read,
        "build_s": spent,
        "saved_s": per * rows_read - spent,
    }


def format_savings(s: dict) -> str:
    """One line for reports and the demo."""
    return (
        f"frozen work {s['frozen_s_per_utterance']:.2f} s an utterance, computed once; the steps "
        f"read {s['rows_read']:,.0f} utterance rows, about {s['recompute_s'] / 60:.1f} min they "
        f"did not recompute; about {s['saved_s'] / 60:.1f} min saved after "
        f"{s['build_s'] / 60:.1f} min building or finding the cache (an estimate from the "
        "build's own time)"
    )


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _build(cfg, roles, setup, utts, tokenizers, buckets, folder, key, material, mesh, rules):
    import flax.linen as nn
    import jax
    from safetensors.numpy import save_file
    from tqdm import tqdm

    from mkd_jax import sharding
    from mkd_jax.data import batching
    from mkd_jax.models.whisper import abstract_params
    from mkd_jax.roles import frozen_params

    spec = setup.cache
    proc, n_proc = jax.process_index(), jax.process_count()
    it = batching.BatchIterator(
        utts, tokenizers, buckets=buckets, n_mels=setup.student.num_mel_bins,
        shuffle=False, repeat=False, prefetch=2,
    )  # fmt: skip
    n_batches = it.batches_per_epoch()
    table = fields(spec, setup)

    # Projection from the corpus itself: decoder positions of the student's tokens, audio frames.
    prompt, ids = it.tokens()
    positions = np.array([len(prompt) + len(i) for i in ids])
    frames = np.ceil(np.asarray(utts.durations) * batching.FRAMES_PER_SECOND / 2).astype(int)
    projected = projected_bytes(spec, setup, positions, frames, cfg.data.n_frames)
    hours = float(np.sum(utts.durations)) / 3600
    folder.mkdir(parents=True, exist_ok=True)
    progress = _read(_progress_path(folder, proc)) or {}
    if progress.get("key") != key:
        progress = {"key": key, "material": material, "blocks": 0, "failed": [], "bytes": 0,
                    "seconds": 0.0}  # fmt: skip
    free = shutil.disk_usage(folder).free
    need = projected - sum(f.stat().st_size for f in folder.glob("shard-*.safetensors"))
    logging.info(
        "teacher cache: %s projected for %d utterances (%.2f h, %s per hour of audio) at %s",
        _gb(projected), len(utts), hours, _gb(projected / max(hours, 1e-9)), folder,
    )  # fmt: skip
    if need * 1.05 > free:
        raise CacheError(
            f"the teacher cache needs {_gb(need)} more at {folder} but the disk has {_gb(free)} "
            "free; set cache.dir to a larger disk, lower cache.top_k or map fewer sites"
        )

    frozen = frozen_params(roles)
    sh = {
        "student": sharding.param_shardings(abstract_params(setup.student), mesh, rules),
        "teachers": {
            n: sharding.param_shardings(abstract_params(m), mesh, rules)
            for n, m in setup.teachers.items()
        },
    }
    frozen = sharding.put(frozen, sh)
    donor = _donor(folder, material, utts)
    if donor is not None:
        logging.info(
            "teacher cache: the student encoder's outputs come from %s (same student, corpus "
            "and context); only the teachers run", donor[1].folder,
        )  # fmt: skip
    student_keys = [k for k in table if k.startswith("c:student/")] if donor else []
    enc_donors = _encoder_donors(folder, material, setup, utts)
    for name, (_, shards) in enc_donors.items():
        logging.info(
            "teacher cache: teacher %s's encoder outputs come from %s, where it was the "
            "student; it runs only its decoder", name, shards.folder,
        )  # fmt: skip
    fn = jax.jit(
        functools.partial(
            _targets, setup=setup, student=donor is None, encoded=tuple(sorted(enc_donors))
        )
    )

    def with_encoded(batch):
        """The batch plus each donated teacher encoder's output, rows as in the batch."""
        frames = (setup.teacher_frames or cfg.data.n_frames) // 2
        for name, (_, shards) in enc_donors.items():
            # Batch padding (no utterance, no target kept) gets zeros.
            pad = np.zeros((frames, setup.teachers[name].d_model), np.float32)
            rows = [
                shards.get(u, "c:student/encoder/output") if u in shards.where else pad
                for u in batch["ids"]
            ]
            batch[ENCODED + name] = np.stack(rows)
        return batch

    def compute(batch):
        dev = {
            k: jax.make_array_from_process_local_data(
                sharding.batch_sharding(mesh, rules, v.ndim), v, (v.shape[0] * n_proc, *v.shape[1:])
            )
            for k, v in batch.items()
            if v.dtype.kind not in "USO"
        }
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            out = fn(frozen, dev)
        return {k: _local_rows(v) for k, v in out.items()}

    n_blocks = -(-n_batches // SHARD_BATCHES)
    start = progress["blocks"]
    if start:
        logging.info("teacher cache: resuming at block %d of %d", start, n_blocks)
        it.restore({**it.state(), "position": start * SHARD_BATCHES})
    bar = tqdm(total=n_batches, initial=start * SHARD_BATCHES, desc="teacher cache", unit="batch")
    for block in range(start, n_blocks):
        t0 = time.time()
        tensors, uids = {}, []
        for _ in range(min(SHARD_BATCHES, n_batches - block * SHARD_BATCHES)):
            batch = next(it)
            out = compute(with_encoded(batch))
            per = _rows(out, batch, {k: v for k, v in table.items() if k not in student_keys})
            for uid, item in per.items():
                item.update({k: donor[1].get(uid, k) for k in student_keys})
            for uid in batch["ids"]:
                if uid and uid not in per:
                    progress["failed"].append(str(uid))
            for uid, item in per.items():
                uids.append(uid)
                tensors.update({f"{uid}/{k}": v for k, v in item.items()})
            bar.update(1)
        path = folder / f"shard-{proc:05d}-{block:05d}.safetensors"
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"key": key, "uids": json.dumps(uids)})
        os.replace(tmp, path)
        progress["blocks"] = block + 1
        progress["bytes"] += path.stat().st_size
        progress["seconds"] += time.time() - t0
        _write_json(_progress_path(folder, proc), progress)
    bar.close()
    it.close()
    if n_proc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("teacher cache built")
    if proc == 0:
        parts = [_read(_progress_path(folder, p)) for p in range(n_proc)]
        size = sum(p["bytes"] for p in parts)
        seconds = max(p["seconds"] for p in parts)
        manifest = {
            "key": key,
            "material": material,
            "complete": True,
            "utterances": len(utts),
            "failed": sorted({u for p in parts for u in p["failed"]}),
            "audio_hours": hours,
            "bytes": size,
            "bytes_per_hour": size / max(hours, 1e-9),
            "projected_bytes": projected,
            "build_seconds": seconds,
            "student_from": donor[0] if donor else None,
            "teacher_encoders_from": {n: d[0] for n, d in enc_donors.items()},
        }
        _write_json(folder / MANIFEST, manifest)
        logging.info(
            "teacher cache built: %s (%s per hour of audio) in %.0f s at %s",
            _gb(size), _gb(manifest["bytes_per_hour"]), seconds, folder,
        )  # fmt: skip
    if n_proc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("teacher cache manifest")


def _local_rows(x) -> np.ndarray:
    """This process's rows of a batch-sharded global array, in order."""
    import jax

    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, parts = set(), []
    for s in shards:
        start = s.index[0].start or 0
        if start not in seen:
            seen.add(start)
            parts.append(np.asarray(s.data))
    return np.concatenate(parts)


# ----- reading -----


class CachedBatches:
    """The batch iterator with each batch's cached fields attached (and, with a cached student
    encoder, no `mel`). State and restore are the wrapped iterator's, so resuming is exact.

    Raises:
      CacheError: an utterance of a batch is missing from a cache that claims to be complete.
    """

    def __init__(self, batches, folder: Path, spec: CacheSpec, setup, n_frames: int):
        self.batches, self.folder, self.n_enc = batches, Path(folder), n_frames // 2
        manifest = _read(self.folder / MANIFEST)
        if not manifest or not manifest.get("complete"):
            raise CacheError(f"{folder}: no complete teacher cache (rerun to build it)")
        self.failed = set(manifest["failed"])
        self.table = fields(spec, setup)
        self.student_cached = bool(spec.student_sites)
        self.shards = _Shards(self.folder)

    def attach(self, batch: dict) -> dict:
        rows = len(batch["ids"])
        n_tokens = batch["decoder_input"].shape[1]
        n_enc = self.n_enc
        out = dict(batch)
        if self.student_cached:
            out.pop("mel", None)  # the step starts from the cached encoder states instead
        arrays = {}
        for key, (kind, shape, dtype) in self.table.items():
            lead = () if kind is None else (_length(kind, n_tokens, n_enc),)
            arrays[key] = np.zeros((rows, *lead, *shape), _np_dtype(dtype))
        valid = batch["valid"].copy()
        for r, uid in enumerate(batch["ids"]):
            if not uid:
                continue
            if uid in self.failed:
                valid[r] = 0.0
                continue
            for key, (kind, _, _) in self.table.items():
                value = self.shards.get(uid, key)
                if kind is None:
                    arrays[key][r] = value
                else:
                    arrays[key][r, : len(value)] = value
        out.update(arrays)
        out["audio_frames"] = arrays["c:audio_frames"]
        out["valid"] = valid
        for key in list(out):
            if key == "mask" or key.endswith("/mask"):
                out[key] = out[key] * valid[:, None]
        return out

    def __getstate__(self):
        """What `attach` needs in a Grain worker: the wrapped iterator stays behind."""
        return dict(self.__dict__, batches=None)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return self.attach(next(self.batches))

    # As a source of a mixture (data/mixture.py):
    @property
    def repeat(self) -> bool:
        return self.batches.repeat

    def dataset(self):
        return self.batches.dataset().map(self.attach)

    def fingerprint(self) -> str:
        return self.batches.fingerprint()

    def count_failures(self, batch: dict) -> None:
        self.batches.count_failures(batch)

    def state(self) -> dict:
        return self.batches.state()

    def restore(self, state) -> None:
        self.batches.restore(state)

    def close(self) -> None:
        self.batches.close()

    @property
    def report(self):
        return self.batches.report
