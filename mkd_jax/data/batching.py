"""Length-bucketed batches with checkpointable order, per-host slices and background prefetch.

Every utterance goes to the smallest bucket `(n_frames, n_tokens)` that holds its audio and its
longest token sequence, so JAX compiles one program per bucket, not per length. An epoch's plan
(which utterances form which global batch, and the batch order) is a pure function of the seed,
the epoch and the data, so the iterator's state is four numbers plus a fingerprint, and restoring
it replays the same batches. Each process builds the same plan and decodes only its own rows of
each global batch; `make_global_batch` joins the slices into one `jax.Array`.

Token layout (Whisper's): `decoder_input = prompt + text`, `labels` is it shifted left by one and
ending in EOT. Prompt positions carry no loss except the last, which predicts the first text token;
EOT is a real target, and only padding (filled with EOT) has `mask == 0`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass

import numpy as np

from mkd_jax.data import features, token_align
from mkd_jax.data.audio import AudioError
from mkd_jax.data.loaders import Utterances

log = logging.getLogger(__name__)

FRAMES_PER_SECOND = features.SAMPLE_RATE // features.HOP  # 100
STUDENT = "student"
FAILURES = "decode_failures"  # per batch: clips that failed to decode, counted by the consumer


@dataclass(frozen=True)
class Bucket:
    """One static batch shape: mel frames, decoder positions and the global batch size."""

    n_frames: int
    n_tokens: int
    batch_size: int


def make_buckets(
    token_buckets: Sequence[int] = (32, 64, 128, 224),
    frame_buckets: Sequence[int] = (features.N_FRAMES,),
    batch_size: int | Mapping = 16,
) -> list[Bucket]:
    """The cross product of frame and token lengths, each with its global batch size.

    Args:
      token_buckets: decoder lengths (prompt + text; Whisper allows at most 448).
      frame_buckets: mel frames, 100 a second; 3000 is Whisper's 30 s context, fewer a shorter one.
      batch_size: one size for all, or a mapping from `n_tokens` or `(n_frames, n_tokens)` to size.
    """
    buckets = []
    for f in sorted(set(frame_buckets)):
        for t in sorted(set(token_buckets)):
            if isinstance(batch_size, Mapping):
                b = batch_size.get((f, t), batch_size.get(t))
                if b is None:
                    raise ValueError(f"batch_size has no entry for bucket ({f}, {t}) or {t}")
            else:
                b = batch_size
            if min(f, t, b) < 1:
                raise ValueError(
                    f"bucket sizes must be positive, got frames {f} tokens {t} batch {b}"
                )
            buckets.append(Bucket(int(f), int(t), int(b)))
    return buckets


def decoder_arrays(prompt: Sequence[int], text: Sequence[int], eot: int, n_tokens: int):
    """`(decoder_input, labels, mask)` of one utterance, each `[n_tokens]`, padded with EOT."""
    seq = np.asarray(list(prompt) + list(text), np.int32)
    n = len(seq)
    if n > n_tokens:
        raise ValueError(f"{n} decoder positions do not fit a bucket of {n_tokens}")
    dec = np.full(n_tokens, eot, np.int32)
    labels = np.full(n_tokens, eot, np.int32)
    mask = np.zeros(n_tokens, np.float32)
    dec[:n] = seq
    labels[: n - 1] = seq[1:]  # position n - 1 predicts EOT, already in place
    mask[len(prompt) - 1 : n] = 1.0
    return dec, labels, mask


class _Batches:
    """Batch `j` of a split's stream, a pure function of `j` (epoch `j // n`, position `j % n`).

    Picklable and light (the split re-opens its audio lazily, `loaders.Utterances.__getstate__`),
    so Grain's worker processes make batches from the same plan as the main process.
    """

    def __init__(self, it: BatchIterator):
        self.utts, self.n_mels, self.seed, self.shuffle = it.utts, it.n_mels, it.seed, it.shuffle
        self.audio, self.buckets, self.members = it.audio, it.buckets, it._members
        self.toks, self.align = it._toks, it._align
        self.process_index, self.process_count = it.process_index, it.process_count
        self.digest = it._digest.copy()
        self._plans: dict[int, tuple[list, str]] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        # hashlib objects do not pickle; workers make batches and never need the fingerprint.
        state = dict(self.__dict__, _plans={}, digest=None)
        state.pop("_lock")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def plan(self, epoch: int) -> tuple[list[tuple[int, np.ndarray]], str]:
        """`([(bucket, global indices with -1 padding)], fingerprint)` of one epoch."""
        with self._lock:
            if epoch not in self._plans:
                rng = np.random.default_rng([self.seed, epoch])
                plan = []
                for k, members in enumerate(self.members):
                    order = rng.permutation(members) if self.shuffle else members
                    size = self.buckets[k].batch_size
                    for start in range(0, len(order), size):
                        idx = np.full(size, -1, np.int64)
                        chunk = order[start : start + size]
                        idx[: len(chunk)] = chunk
                        plan.append((k, idx))
                if self.shuffle:
                    plan = [plan[j] for j in rng.permutation(len(plan))]
                fingerprint = ""
                if self.digest is not None:
                    digest = self.digest.copy()
                    for k, idx in plan:
                        digest.update(np.int64(k).tobytes() + idx.tobytes())
                    fingerprint = digest.hexdigest()[:16]
                self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
                self._plans[epoch] = (plan, fingerprint)
            return self._plans[epoch]

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        plan, _ = self.plan(0)
        epoch, position = divmod(int(j), len(plan))
        return self.batch(*self.plan(epoch)[0][position])

    def batch(self, k: int, global_idx: np.ndarray) -> dict[str, np.ndarray]:
        rows = len(global_idx) // self.process_count
        idx = global_idx[self.process_index * rows : (self.process_index + 1) * rows]
        real = [int(i) for i in idx if i >= 0]
        pad = len(idx) - len(real)  # padding rows come last in a plan's index list
        return assemble(
            self.buckets[k],
            [self.utts.ids[i] for i in real] + [""] * pad,
            (lambda r: self.utts.audio(real[r])) if self.audio else None,
            lambda r: self.utts.where(real[r]),
            {n: (p, e, [t[i] for i in real]) for n, (p, e, t) in self.toks.items()},
            {n: [a[i] for i in real] for n, a in self.align.items()},
            n_mels=self.n_mels,
        )


def assemble(bucket, ids, clip_of, where_of, toks, align, *, n_mels: int) -> dict:
    """One process's rows of a batch (the layout `BatchIterator` documents).

    Args:
      bucket: the batch's shape.
      ids: utterance id per row, "" for padding rows (which come after every real row).
      clip_of: real row -> 16 kHz clip (raising `AudioError` if it fails to decode); None: no
        audio in the batch (training from a cache holding the student's encoder output).
      where_of: real row -> a readable location, for failure lines.
      toks: tokenizer name -> (prompt, eot, token ids per real row).
      align: cross-vocabulary tokenizer name -> `align_positions` per real row.
      n_mels: mel bins.
    """
    n_real = sum(1 for u in ids if u)
    valid = np.zeros(len(ids), np.float32)
    valid[:n_real] = 1.0
    frames = np.zeros(len(ids), np.int32)  # mel frames that hold audio, for feature-loss masks
    failures = []  # "where\tdetail" of clips that failed to decode, counted by the consumer
    batch = {"audio_frames": frames, "ids": np.array(ids, dtype=str), "valid": valid}
    if clip_of is not None:
        audio = np.zeros((len(ids), bucket.n_frames * features.HOP), np.float32)
        for r in range(n_real):
            try:
                clip = clip_of(r)[: audio.shape[1]]
            except AudioError as e:
                failures.append(f"{where_of(r)}\t{e}")
                valid[r] = 0.0
                continue
            audio[r, : len(clip)] = clip
            frames[r] = -(-len(clip) // features.HOP)
        batch["mel"] = features.log_mel(audio, n_mels=n_mels, n_frames=bucket.n_frames)
    batch[FAILURES] = np.array(failures, dtype=str)
    student_prompt = len(toks[STUDENT][0])
    for name, aligns in align.items():
        prompt, _, tokens = toks[name]
        batch[f"t:{name}/rows"] = np.stack(
            [
                token_align.label_rows(
                    aligns[r],
                    n_teacher_tokens=len(tokens[r]),
                    student_prompt_len=student_prompt,
                    teacher_prompt_len=len(prompt),
                    pad_len=bucket.n_tokens,
                )
                for r in range(n_real)
            ]
            + [np.full(bucket.n_tokens, -1, np.int32)] * (len(ids) - n_real)
        )
    for name, (prompt, eot, tokens) in toks.items():
        prefix = "" if name == STUDENT else f"t:{name}/"
        arrays = [
            decoder_arrays(prompt, tokens[r] if r < n_real else [], eot, bucket.n_tokens)
            for r in range(len(ids))
        ]
        dec, labels, mask = (np.stack(a) for a in zip(*arrays, strict=True))
        batch[prefix + "decoder_input"] = dec
        batch[prefix + "labels"] = labels
        batch[prefix + "mask"] = mask * valid[:, None]
    return batch


def _worker_init(worker_index: int = 0, worker_count: int = 1) -> None:
    """Grain workers compute log-mel with JAX on the host CPU, never on the accelerator."""
    del worker_index, worker_count
    import jax

    jax.config.update("jax_platforms", "cpu")


class Stream(abc.ABC):
    """Batches `position, position + 1, ...` of a map-style Grain dataset of batches, prepared
    ahead by `prefetch` threads of this process or by `workers` Grain worker processes.

    The position is the whole iterator state: batch `j` is a pure function of `j`, so a restored
    position replays the same batches bit for bit, whatever the prefetch or worker settings.
    Subclasses give `dataset()` (a `grain.MapDataset`) and `_received(j, batch)`.
    """

    prefetch: int = 2
    workers: int = 0
    _position: int = 0
    _iter = None
    _error: BaseException | None = None

    @abc.abstractmethod
    def dataset(self):
        """Every batch of the stream, as a Grain `MapDataset` indexed by position."""

    @abc.abstractmethod
    def _received(self, j: int, batch: dict) -> None:
        """Bookkeeping on a batch as it reaches the consumer (counts, log lines)."""

    def _start(self):
        import grain

        ds = self.dataset()
        if self._position >= len(ds):
            return iter(())
        ds = ds[self._position :]
        if self.workers > 0:
            from absl import flags

            if not flags.FLAGS.is_parsed():  # Grain reads absl flags; a library caller parsed none
                flags.FLAGS.mark_as_parsed()
            opts = grain.MultiprocessingOptions(
                num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1)
            )
            return iter(ds.to_iter_dataset().mp_prefetch(opts, worker_init_fn=_worker_init))
        if self.prefetch <= 0:
            return (ds[j] for j in range(len(ds)))
        read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=self.prefetch)
        return iter(ds.to_iter_dataset(read))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._error is not None:
            raise self._error  # a failed pipeline answers every later call the same way
        if self._iter is None:
            self._iter = self._start()
        try:
            batch = next(self._iter)
        except StopIteration:
            raise
        except BaseException as e:
            self._error = e
            raise
        self._received(self._position, batch)
        self._position += 1
        return batch

    def close(self) -> None:
        """Stops the prefetch threads or workers; the next `__next__` restarts at the position."""
        it, self._iter, self._error = self._iter, None, None
        if it is not None and hasattr(it, "close"):
            it.close()
        del it


class BatchIterator(Stream):
    """Endless (or one-pass) iterator of numpy batch dicts for this process.

    Each batch holds `mel [B, n_mels, F]` float32, `decoder_input`, `labels` `[B, S]` int32,
    `mask [B, S]` float32, `ids [B]` str ("" for padding), `valid [B]` float32 (0 for padding rows
    of a final partial batch and for clips that failed to decode), and for each extra tokenizer
    `t:<name>/decoder_input`, `t:<name>/labels`, `t:<name>/mask`. `B` is the bucket's global batch
    size divided by `process_count`.

    Args:
      utts: the split, from `loaders.load_split`.
      tokenizers: name -> `WhisperTokenizer`; "student" is required and unprefixed.
      buckets: from `make_buckets`.
      n_mels: 80 or 128.
      seed: shuffling seed; epoch `e` shuffles with `default_rng([seed, e])`.
      shuffle: shuffle within buckets and the batch order; off, batches go bucket by bucket.
      repeat: run epoch after epoch; off, stop after one pass.
      language, task: prompt of every tokenizer.
      leading_space: encode `" " + text`, as Whisper emits its first word with a space.
      prefetch: batches prepared ahead (0: none, prepared on demand; with workers, per worker).
      workers: Grain worker processes that decode audio and compute log-mel (0: a thread of this
        process). Batches and their order do not depend on it.
      audio: decode audio and compute `mel`; off (training from a cache that holds the student's
        encoder output), batches carry no `mel`, `audio_frames` is 0 and every real row is valid
        (the cache knows which clips failed).
      process_index, process_count: this host's slice; default `jax.process_index()/count()`.
    """

    def __init__(
        self,
        utts: Utterances,
        tokenizers: Mapping,
        *,
        buckets: Sequence[Bucket] | None = None,
        n_mels: int = 80,
        seed: int = 0,
        shuffle: bool = True,
        repeat: bool = True,
        language: str = "en",
        task: str = "transcribe",
        leading_space: bool = True,
        prefetch: int = 2,
        workers: int = 0,
        audio: bool = True,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        if STUDENT not in tokenizers:
            raise ValueError(f"tokenizers need a {STUDENT!r} entry, got {sorted(tokenizers)}")
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if workers < 0 or prefetch < 0:
            raise ValueError(f"workers ({workers}) and prefetch ({prefetch}) must be >= 0")
        self.buckets = list(buckets) if buckets is not None else make_buckets()
        bad = [b for b in self.buckets if b.batch_size % process_count]
        if bad:
            raise ValueError(f"batch sizes of {bad} are not divisible by {process_count} processes")
        self.utts, self.n_mels, self.seed = utts, n_mels, int(seed)
        self.shuffle, self.repeat, self.prefetch, self.workers = shuffle, repeat, prefetch, workers
        self.audio = audio
        self.process_index, self.process_count = process_index, process_count
        self._toks = {}  # name -> (prompt, eot, [token ids per utterance])
        self._align = {}  # name -> [student token -> teacher token index or -1, per utterance]
        lengths = np.zeros(len(utts), np.int64)
        texts = [" " + t if leading_space else t for t in utts.texts]
        student = tokenizers[STUDENT]
        for name, tok in tokenizers.items():
            prompt = tok.prompt_ids(language, task)
            ids = [tok.encode(t) for t in texts]
            self._toks[name] = (prompt, tok.eot, ids)
            lengths = np.maximum(lengths, [len(prompt) + len(i) for i in ids])
            if name != STUDENT:
                vmap = token_align.vocab_map(tok, student)
                self._align[name] = [
                    token_align.align_positions(t, tok, student, vmap=vmap) for t in texts
                ]
        # A copy, so several iterators over one split do not count each other's skips.
        self.report = dataclasses.replace(utts.report, counts=Counter(utts.report.counts))
        self._members = self._assign(lengths)
        # Fingerprint of the buckets and their members, so a state restored on other data fails.
        self._digest = hashlib.sha256(repr(self.buckets).encode())
        for k, members in enumerate(self._members):
            self._digest.update(f"{k}:".encode() + "\0".join(utts.ids[i] for i in members).encode())
        self._batches = _Batches(self)
        self._position = 0

    def tokens(self, name: str = STUDENT) -> tuple[list[int], list[list[int]]]:
        """`(prompt, token ids per utterance)` of one tokenizer, as batches lay them out."""
        prompt, _, ids = self._toks[name]
        return prompt, ids

    def _assign(self, lengths: np.ndarray) -> list[np.ndarray]:
        """Members of each bucket: the smallest (frames first, then tokens) that fits."""
        frames = np.ceil(self.utts.durations * FRAMES_PER_SECOND - 1e-6).astype(np.int64)
        order = sorted(range(len(self.buckets)), key=lambda k: astuple(self.buckets[k]))
        members = [[] for _ in self.buckets]
        for i in range(len(self.utts)):
            fits = (k for k in order if self.buckets[k].n_frames >= frames[i])
            k = next((k for k in fits if self.buckets[k].n_tokens >= lengths[i]), None)
            if k is None:
                detail = f"{frames[i]} frames, {lengths[i]} decoder positions"
                dur = float(self.utts.durations[i])
                self.report.skip("exceeds_bucket", self.utts.where(i), detail, seconds=dur)
                continue
            members[k].append(i)
        kept = sum(len(m) for m in members)
        self.report.kept -= len(self.utts) - kept
        if kept == 0:
            raise ValueError(f"{self.utts.source}: no utterance fits buckets {self.buckets}")
        return [np.asarray(m, np.int64) for m in members]

    def batches_per_epoch(self) -> int:
        return len(self._batches.plan(0)[0])

    def fingerprint(self) -> str:
        """The first epoch's plan fingerprint: changes with the data, tokens and buckets."""
        return self._batches.plan(0)[1]

    def dataset(self):
        """Every batch of the stream as a Grain `MapDataset` (endless: 2**40 epochs)."""
        import grain

        n = self.batches_per_epoch()
        return grain.MapDataset.range(0, n * (2**40 if self.repeat else 1)).map(self._batches)

    def count_failures(self, batch: dict) -> None:
        """Counts the batch's decode failures (made in a worker) in this iterator's report."""
        for failure in batch.pop(FAILURES):
            where, _, detail = str(failure).partition("\t")
            self.report.skip("decode_failed", where, detail)

    def _received(self, j: int, batch: dict) -> None:
        self.count_failures(batch)
        n = self.batches_per_epoch()
        if (j + 1) % n == 0:
            log.info("epoch %d done: %s", j // n, self.report.summary())

    def state(self) -> dict:
        """JSON-able position after the last batch returned; `restore` continues from it."""
        epoch, position = divmod(self._position, self.batches_per_epoch())
        if position == 0 and epoch > 0 and not self.repeat:
            epoch, position = epoch - 1, self.batches_per_epoch()
        return {
            "seed": self.seed,
            "epoch": epoch,
            "position": position,
            "buckets": [[b.n_frames, b.n_tokens, b.batch_size] for b in self.buckets],
            "plan": self._batches.plan(epoch)[1],
        }

    def restore(self, state: Mapping) -> None:
        """Continues after the batch at which `state` was taken.

        Raises:
          ValueError: if the buckets or the data differ from when the state was saved.
        """
        self.close()
        buckets = [[b.n_frames, b.n_tokens, b.batch_size] for b in self.buckets]
        if [list(b) for b in state["buckets"]] != buckets:
            raise ValueError(f"state has buckets {state['buckets']}, this iterator {buckets}")
        self.seed, epoch = int(state["seed"]), int(state["epoch"])
        self._batches = _Batches(self)
        plan, digest = self._batches.plan(epoch)
        if digest != state["plan"] or not 0 <= int(state["position"]) <= len(plan):
            raise ValueError(
                f"{self.utts.source}: the batch plan of epoch {epoch} differs from the "
                f"saved state ({digest} vs {state['plan']}); the data or tokenizers changed"
            )
        self._position = epoch * len(plan) + int(state["position"])


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh, sharding=None) -> dict:
    """Joins every process's slice of a batch into global `jax.Array`s.

    Args:
      local_batch: this process's batch from `BatchIterator`.
      mesh: the device mesh.
      sharding: a `NamedSharding` or `PartitionSpec` for the batch dimension; by default the batch
        is split over the mesh axes "data" and "fsdp" that exist.

    Returns:
      Every numeric array of the batch as a global array (leading dim times
      `jax.process_count()`), ready for a jitted step. `ids` is left out: strings cannot be device
      arrays, and the local batch still has this process's ids.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    if sharding is None:
        sharding = PartitionSpec(tuple(a for a in mesh.axis_names if a in ("data", "fsdp")))
    if isinstance(sharding, PartitionSpec):
        sharding = NamedSharding(mesh, sharding)
    out = {}
    for key, value in local_batch.items():
        if value.dtype.kind in "USO":
            continue
        shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(sharding, value, shape)
    return out
