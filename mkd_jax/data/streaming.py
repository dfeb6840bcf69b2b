"""Training batches from a source that streams: a Hugging Face dataset read with
`streaming=True` (a hub dataset, or local parquet/JSON/CSV files through `name="parquet"` and
`data_files`), never listed or downloaded whole.

A stream cannot be planned by length as `batching.BatchIterator` plans a listed split, so it has
one bucket (the config's largest frames x tokens, global batch `batch_size`): utterances that do
not fit are skipped and counted, as are clips that fail to decode. Each process reads its own
shard of the stream (`datasets.distributed.split_dataset_by_node`) and fills its rows of every
global batch from it, so every process makes batches of the same shape at every step. Examples
come in stream order, epoch after epoch (`set_epoch`); no shuffle buffer, because the buffer is
not part of `datasets`' iterator state and resume would not be exact. The state is that iterator
state (`IterableDataset.state_dict`) after the last batch returned: resume is exact.

    it = StreamingBatches({"kind": "hf", "name": "parquet", "data_files": {"train": "a/*.parquet"},
                           "streaming": True}, "train", tokenizers, bucket)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping

import numpy as np

from mkd_jax.data import token_align
from mkd_jax.data.audio import AudioError, read_audio, to_16k_mono
from mkd_jax.data.batching import FAILURES, FRAMES_PER_SECOND, STUDENT, Bucket, assemble
from mkd_jax.data.loaders import BadInputReport, source_config, split_files

log = logging.getLogger(__name__)


def _clip(value, where: str, max_seconds: float) -> np.ndarray:
    """A 16 kHz clip from a streamed audio cell: {bytes, path}, {array, sampling_rate} or a path."""
    if isinstance(value, Mapping) and value.get("array") is not None:
        return to_16k_mono(np.asarray(value["array"]), value["sampling_rate"], where=where)
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if not value:
        raise AudioError(where, "no bytes and no path", "missing")
    return read_audio(value, max_seconds=max_seconds)


class StreamingBatches:
    """Endless batches of one streamed split for this process (see the module docstring).

    Args:
      source: a loader config of kind "hf" (`name`, `config`, `data_files`, `data_dir`, column
        names, `min_seconds`/`max_seconds`).
      split: the split to stream.
      tokenizers: name -> `WhisperTokenizer`; "student" is required.
      bucket: the one batch shape.
      n_mels: mel bins.
      audio: decode audio and compute `mel` (off: a cache holds the student's encoder output).
      process_index, process_count: this host's shard; default JAX's.
    """

    def __init__(
        self,
        source: Mapping,
        split: str,
        tokenizers: Mapping,
        bucket: Bucket,
        *,
        n_mels: int = 80,
        audio: bool = True,
        language: str = "en",
        task: str = "transcribe",
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        import datasets
        from datasets.distributed import split_dataset_by_node

        cfg = source_config(source)
        if cfg["kind"] != "hf" or not cfg["name"]:
            raise ValueError("a streamed source is of kind 'hf' with a 'name' (e.g. 'parquet')")
        if process_index is None or process_count is None:
            import jax

            process_index = jax.process_index() if process_index is None else process_index
            process_count = jax.process_count() if process_count is None else process_count
        if bucket.batch_size % process_count:
            raise ValueError(f"batch size {bucket.batch_size} not divisible by {process_count}")
        self.cfg, self.split, self.bucket = cfg, split, bucket
        self.n_mels, self.audio = n_mels, audio
        self.rows = bucket.batch_size // process_count
        self.where = f"{cfg['name']}[{split}] (streamed)"
        files = split_files(cfg["data_files"], split)
        ds = datasets.load_dataset(
            cfg["name"], cfg["config"], split=split, data_files=files, data_dir=cfg["data_dir"],
            streaming=True,
        )  # fmt: skip
        if cfg["audio_column"] in (ds.features or {}):
            ds = ds.cast_column(cfg["audio_column"], datasets.Audio(decode=False))
        self.ds = split_dataset_by_node(ds, rank=process_index, world_size=process_count)
        self.tokenizers = dict(tokenizers)
        if STUDENT not in self.tokenizers:
            raise ValueError(f"tokenizers need a {STUDENT!r} entry")
        self.prompts = {n: t.prompt_ids(language, task) for n, t in self.tokenizers.items()}
        self.vmaps = {
            n: token_align.vocab_map(t, self.tokenizers[STUDENT])
            for n, t in self.tokenizers.items()
            if n != STUDENT
        }
        self.report = BadInputReport(self.where)
        self._epoch, self._state, self._it = 0, None, None

    # ----- state -----

    def state(self) -> dict:
        """JSON-able: the epoch and `datasets`' iterator state after the last batch returned."""
        bucket = list(dataclasses.astuple(self.bucket))
        return {"epoch": self._epoch, "stream": self._state, "bucket": bucket}

    def restore(self, state: Mapping) -> None:
        if list(state["bucket"]) != list(dataclasses.astuple(self.bucket)):
            raise ValueError(f"state has bucket {state['bucket']}, this stream {self.bucket}")
        self.close()
        self._epoch, self._state = int(state["epoch"]), state["stream"]

    def close(self) -> None:
        self._it = None

    # ----- batches -----

    def _examples(self):
        """Examples from the restored position on, epoch after epoch."""
        while True:
            self.ds.set_epoch(self._epoch)
            if self._state is not None:
                self.ds.load_state_dict(json.loads(json.dumps(self._state)))
            seen = False
            for ex in self.ds:
                seen = True
                yield ex
            if not seen and self._state is None:
                raise ValueError(f"{self.where}: the stream is empty")
            self._epoch, self._state = self._epoch + 1, None

    def _usable(self, ex):
        """`(uid, clip or None, tokens, aligns)` of an example, or None if it is skipped."""
        cfg = self.cfg
        text = ex.get(cfg["text_column"])
        uid = str(ex.get(cfg["id_column"]) or f"{self.split}-{self.report.seen}")
        where = f"id {uid!r}"
        self.report.seen += 1
        if not isinstance(text, str) or not text.strip():
            self.report.skip("empty_text", where, f"transcript {text!r}")
            return None
        clip = None
        if self.audio:
            try:
                clip = _clip(ex.get(cfg["audio_column"]), where, cfg["max_seconds"])
            except AudioError as e:
                self.report.skip("decode_failed", where, str(e))
                return None
            seconds = len(clip) / 16000
            if seconds < cfg["min_seconds"]:
                self.report.skip("too_short", where, f"{seconds:.2f} s", seconds=seconds)
                return None
            if np.ceil(seconds * FRAMES_PER_SECOND - 1e-6) > self.bucket.n_frames:
                self.report.skip("exceeds_bucket", where, f"{seconds:.2f} s", seconds=seconds)
                return None
        spaced = " " + text.strip()
        tokens = {n: t.encode(spaced) for n, t in self.tokenizers.items()}
        if max(len(self.prompts[n]) + len(t) for n, t in tokens.items()) > self.bucket.n_tokens:
            self.report.skip("exceeds_bucket", where, "too many tokens")
            return None
        aligns = {
            n: token_align.align_positions(
                spaced, self.tokenizers[n], self.tokenizers[STUDENT], vmap=v
            )
            for n, v in self.vmaps.items()
        }
        self.report.kept += 1
        return uid, clip, tokens, aligns

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._examples()
        rows = []
        while len(rows) < self.rows:
            row = self._usable(next(self._it))
            if row is not None:
                rows.append(row)
        self._state = self.ds.state_dict()  # after this batch's last example
        clips = [r[1] for r in rows]
        batch = assemble(
            self.bucket,
            [r[0] for r in rows],
            (lambda i: clips[i]) if self.audio else None,
            lambda i: f"id {rows[i][0]!r}",
            {
                n: (self.prompts[n], t.eot, [r[2][n] for r in rows])
                for n, t in self.tokenizers.items()
            },
            {n: [r[3][n] for r in rows] for n in self.vmaps},
            n_mels=self.n_mels,
        )
        batch.pop(FAILURES)  # clips are decoded above; failures are counted there
        return batch
