"""One interface over speech corpora: `load_split(source, split) -> Utterances`.

Sources (`source["kind"]`): a LibriSpeech folder, a Hugging Face dataset (`load_dataset` or a
`save_to_disk` folder) and CSV/JSONL manifests. Loading reads only audio headers (sample rate,
length), never the samples, so a 100k-utterance corpus loads in seconds and `Utterances.audio(i)`
decodes one clip on demand. Audio is decoded with soundfile, not datasets' `Audio` feature, which
needs torch (STACK.md). Transcripts stay raw (only outer whitespace is stripped); WER normalises.

Bad input (missing, empty or unreadable audio, a header failing `audio.read_header`'s checks, a
sample rate outside 4 kHz..384 kHz, under `min_sample_rate` or unlike a declared `sampling_rate`
column, an empty transcript) is skipped with a warning naming the row and its file, and counted by
reason in a `BadInputReport`; so is any other error raised while probing one row. Loading fails
only when the bad fraction exceeds `max_bad_fraction`. Duration filtering (`min_seconds`,
`max_seconds`) is a deliberate choice, not bad data: it is counted and reported, but does not count
towards that fraction. Samples are checked only when decoded: `Utterances.audio(i)` raises
`AudioError` (NaN, Inf or absurd samples, audio longer than its header said, ...), which
`batching.BatchIterator` counts as `decode_failed` in its own report and skips.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from mkd_jax.data.audio import (
    MAX_SAMPLE_RATE,
    MAX_SECONDS,
    MIN_SAMPLE_RATE,
    AudioError,
    display_name,
    read_audio,
    read_header,
    to_16k_mono,
)

log = logging.getLogger(__name__)

KINDS = ("librispeech", "hf", "disk", "manifest")
DEFAULTS = {
    "kind": None, "path": None, "name": None, "config": None, "data_files": None,
    "data_dir": None, "audio_column": "audio", "text_column": "text", "id_column": "id",
    "rate_column": "sampling_rate", "min_seconds": 0.0, "max_seconds": 30.0,
    "min_sample_rate": 8000, "max_bad_fraction": 0.01, "limit": None, "require_text": True,
    "streaming": False,  # kind hf: training streams the train split (data/streaming.py)
}  # fmt: skip
BAD = {  # reasons that count towards max_bad_fraction
    "missing": "missing audio file", "empty_audio": "empty audio",
    "unreadable": "unreadable or corrupt audio", "sample_rate": "unexpected sample rate",
    "empty_text": "empty transcript", "decode_failed": "audio failed to decode",
}  # fmt: skip
FILTERED = {  # deliberate filters: reported, not counted as bad
    "too_short": "shorter than min_seconds", "too_long": "longer than max_seconds",
    "exceeds_bucket": "longer than the largest batching bucket",
}  # fmt: skip
_WARNINGS_PER_REASON = 20  # then one line saying further warnings are suppressed
_PROBE_CHUNK = 512


class BadInputError(ValueError):
    """Too much of a source is unusable; the message names the source, the counts and the limit."""


class UnknownSplitError(ValueError, KeyError):
    """A split the source does not have: a bad value (so every command's one-line error) and a
    missing key (so callers that look a split up can catch it as one)."""


@dataclass
class BadInputReport:
    """Per-reason counts of skipped utterances from one source, for the end-of-pass summary."""

    source: str
    seen: int = 0
    kept: int = 0
    counts: Counter = field(default_factory=Counter)
    filtered_seconds: float = 0.0  # audio dropped by duration/bucket filtering
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state):
        self.__dict__.update(state, _lock=threading.Lock())

    def skip(self, reason: str, where: str, detail: str = "", seconds: float = 0.0) -> None:
        """Counts one skipped utterance and logs a warning naming it (capped per reason)."""
        if reason not in BAD and reason not in FILTERED:
            raise ValueError(f"unknown skip reason {reason!r}")
        with self._lock:
            self.counts[reason] += 1
            n = self.counts[reason]
            if reason in FILTERED:
                self.filtered_seconds += seconds
        what = BAD.get(reason) or FILTERED[reason]
        if n <= _WARNINGS_PER_REASON:
            log.warning(
                "%s: skipping %s: %s%s", self.source, where, what, f" ({detail})" * bool(detail)
            )
        if n == _WARNINGS_PER_REASON:
            log.warning("%s: further %r warnings suppressed; see the summary", self.source, reason)

    @property
    def bad(self) -> int:
        return sum(n for r, n in self.counts.items() if r in BAD)

    @property
    def filtered(self) -> int:
        return sum(n for r, n in self.counts.items() if r in FILTERED)

    @property
    def bad_fraction(self) -> float:
        return self.bad / max(self.seen, 1)

    def summary(self) -> str:
        """One line: kept/seen, then the bad and the filtered utterances by reason."""
        bad = ", ".join(f"{BAD[r]}: {self.counts[r]}" for r in BAD if self.counts[r])
        flt = ", ".join(f"{FILTERED[r]}: {self.counts[r]}" for r in FILTERED if self.counts[r])
        return (
            f"{self.source}: kept {self.kept} of {self.seen} utterances; "
            f"bad {self.bad} ({self.bad_fraction:.2%}){f' [{bad}]' * bool(bad)}"
            + f"; filtered {self.filtered} ({self.filtered_seconds / 3600:.2f} h) [{flt}]"
            * bool(flt)
        )

    def check(self, max_bad_fraction: float) -> None:
        """Raises `BadInputError` if the bad fraction exceeds `max_bad_fraction`."""
        if self.bad_fraction > max_bad_fraction:
            raise BadInputError(
                f"{self.summary()}: bad fraction {self.bad_fraction:.2%} exceeds "
                f"max_bad_fraction={max_bad_fraction:.2%}"
            )


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


# audio.AudioError reasons -> the reasons counted here
_REASON_OF = {"missing": "missing", "not_a_file": "unreadable", "empty": "empty_audio",
              "unreadable": "unreadable", "sample_rate": "sample_rate", "too_long": "too_long",
              "bad_samples": "decode_failed"}  # fmt: skip


def _header(source) -> tuple[int, int]:
    """(sample rate, frames) from a checked audio header; raises `_Skip` with the reason."""
    try:
        head = read_header(source)
    except AudioError as e:
        raise _Skip(_REASON_OF[e.reason], e.detail) from e  # the skip line names the file
    return head.sample_rate, head.frames


class _Audio:
    """Audio by row, from path strings or an Arrow column: struct {bytes, path}, struct {array,
    sampling_rate} or paths. Encoded bytes are sliced out of the (memory-mapped) Arrow buffers
    without copying, so probing a header touches only the pages holding it."""

    def __init__(
        self, column: pa.ChunkedArray | list, name: str = "audio", root: Path | None = None
    ):
        listed = None
        if isinstance(column, list):  # kept as Python strings: Arrow rejects non-UTF-8 names
            listed, column = column, pa.chunked_array([pa.nulls(len(column), pa.string())])
        t, self.column, self.blobs = column.type, column, None
        self.kind = "array" if pa.types.is_struct(t) and t.get_field_index("array") >= 0 else "file"
        self.starts = np.cumsum([0] + [len(c) for c in column.chunks])
        self.paths = [None] * len(column)
        if listed is not None:
            self.paths = list(listed)
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            self.paths = column.to_pylist()
        elif pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            fields, self.paths, self.blobs = [f.name for f in t], [], []
            for chunk in column.chunks:
                kids = dict(zip(fields, chunk.flatten(), strict=True))  # flatten applies offsets
                b = kids["bytes"]
                width = np.int64 if pa.types.is_large_binary(b.type) else np.int32
                offs = np.frombuffer(b.buffers()[1], width)[b.offset : b.offset + len(b) + 1]
                self.blobs.append((b.buffers()[2], offs, b.is_valid().to_numpy(False)))
                self.paths += kids["path"].to_pylist() if "path" in kids else [None] * len(b)
        elif self.kind != "array":
            raise ValueError(
                f"audio column {name!r} has type {t}; expected a struct with 'bytes'/'path' "
                "or 'array'/'sampling_rate', or path strings"
            )
        if root is not None:
            self.paths = [p if not p or os.path.isabs(p) else str(root / p) for p in self.paths]
        self.max_seconds: float | None = MAX_SECONDS  # `load_split` sets the source's limit

    def _locate(self, row: int) -> tuple[int, int]:
        c = int(np.searchsorted(self.starts, row, side="right")) - 1
        return c, row - int(self.starts[c])

    def _blob(self, row: int) -> pa.Buffer | None:
        if self.blobs is None:
            return None
        c, j = self._locate(row)
        data, offs, valid = self.blobs[c]
        return data.slice(int(offs[j]), int(offs[j + 1] - offs[j])) if valid[j] else None

    def where(self, row: int) -> str:
        return display_name(self.paths[row]) if self.paths[row] else f"row {row}"

    def probe(self, row: int) -> tuple[int, int]:
        if self.kind == "array":
            item = self.column[row]
            n = len(item["array"]) if item["array"].is_valid else 0
            if n == 0:
                raise _Skip("empty_audio", "0 samples")
            return int(item["sampling_rate"].as_py() or 0), n
        blob = self._blob(row)
        if blob is not None:
            return _header(pa.BufferReader(blob))
        if self.paths[row] is None:
            raise _Skip("missing", "no bytes and no path")
        return _header(self.paths[row])

    def read(self, row: int) -> np.ndarray:
        if self.kind == "array":
            item = self.column[row]
            audio = item["array"].values.to_numpy(zero_copy_only=False)
            return to_16k_mono(audio, item["sampling_rate"].as_py(), where=self.where(row))
        blob = self._blob(row)
        if blob is None and self.paths[row] is None:
            raise AudioError(self.where(row), "no bytes and no path", "missing")
        source = self.paths[row] if blob is None else blob.to_pybytes()
        return read_audio(source, max_seconds=self.max_seconds)

    def stored(self, row: int):
        """Row `row`'s audio as stored, undecoded: its encoded bytes or file's bytes, or its
        samples and rate. What a content hash reads: cheaper than decoding, and just as exact."""
        if self.kind == "array":
            item = self.column[row]
            rate = str(item["sampling_rate"].as_py()).encode()
            return rate + b"\0" + item["array"].values.to_numpy(zero_copy_only=False).tobytes()
        blob = self._blob(row)
        if blob is not None:
            return memoryview(blob)
        if self.paths[row] is None:
            raise AudioError(self.where(row), "no bytes and no path", "missing")
        return Path(self.paths[row]).read_bytes()


@dataclass
class _Candidates:
    """Everything a source lists, before any audio is looked at."""

    ids: list[str]
    texts: list[str | None]
    audio: _Audio
    declared_rates: list | None = None
    extras: dict[str, list] = field(default_factory=dict)


@dataclass
class Utterances:
    """The usable utterances of one split; audio is decoded lazily by `audio(i)`."""

    source: str
    ids: list[str]
    texts: list[str]
    durations: np.ndarray  # [N] seconds, from the audio headers
    extras: dict[str, list]  # other per-utterance columns (voice, engine, ...), kept rows only
    report: BadInputReport
    _audio: _Audio | None
    _rows: np.ndarray  # [N] row of each utterance in the source
    _spec: tuple | None = None  # (source config, split): how to re-open the audio
    noise: tuple | None = None  # (snrs_db, kinds) of `with_noise`, else None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self):
        """Pickles without the audio (an embedded corpus would be copied whole): a worker process
        re-opens it from the source on first use."""
        state = dict(self.__dict__)
        if self._spec is not None:
            state["_audio"] = None
        return state

    def _reopen(self) -> _Audio:
        """The source's audio column again, without probing any header."""
        cfg = source_config(self._spec[0])
        _, cands = _reader(cfg)(cfg, self._spec[1])
        if any(cands.ids[int(r)] != u for r, u in zip(self._rows, self.ids, strict=True)):
            raise ValueError(f"{self.source}: the source changed since it was loaded; reload it")
        cands.audio.max_seconds = cfg["max_seconds"]
        return cands.audio

    def _opened(self) -> _Audio:
        if self._audio is None:
            self._audio = self._reopen()
        return self._audio

    def audio(self, i: int) -> np.ndarray:
        """Utterance `i` as 16 kHz mono float32; raises `AudioError` naming it if decoding fails."""
        try:
            clip = self._opened().read(int(self._rows[i]))
        except AudioError as e:
            raise AudioError(f"{self.source} id {self.ids[i]!r}", str(e), e.reason) from e
        if self.noise is None:
            return clip
        from mkd_jax.corpus.augment import training_noise

        return training_noise(clip, self.ids[i], *self.noise)

    def with_noise(self, snrs_db, kinds) -> Utterances:
        """These utterances with additive noise, one draw per utterance id
        (`corpus.augment.training_noise`): the same audio on every read."""
        if not snrs_db or not kinds:
            raise ValueError(f"with_noise needs SNRs and kinds, got {snrs_db!r}, {kinds!r}")
        return dataclasses.replace(self, noise=(tuple(map(float, snrs_db)), tuple(kinds)))

    def where(self, i: int) -> str:
        return f"id {self.ids[i]!r} ({self._opened().where(int(self._rows[i]))})"

    def audio_digest(self) -> str:
        """sha256 of every utterance's id and audio as stored (before any noise), in order:
        names the audio itself, which a rebuilt corpus can change under the same ids, texts and
        durations (synthesis differs across CPU instruction sets)."""
        import hashlib

        h, audio = hashlib.sha256(), self._opened()
        for uid, row in zip(self.ids, self._rows, strict=True):
            data = audio.stored(int(row))
            h.update(f"{uid}\0{len(data)}\0".encode())
            h.update(data)
        return h.hexdigest()

    def file(self, i: int) -> str | None:
        """The audio file utterance `i` is read from, or None when its audio is embedded."""
        row, audio = int(self._rows[i]), self._opened()
        if audio.kind == "array" or audio._blob(row) is not None:
            return None
        return audio.paths[row]

    def select(self, indices) -> Utterances:
        """The utterances at `indices` (in that order), sharing this split's audio and report."""
        idx = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self,
            ids=[self.ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            durations=self.durations[idx],
            extras={k: [v[i] for i in idx] for k, v in self.extras.items()},
            _rows=self._rows[idx],
        )


def source_config(source: Mapping) -> dict:
    """A source's loader config with every default filled in; raises on unknown keys."""
    cfg = dict(DEFAULTS)
    unknown = sorted(set(source.keys()) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown data source key(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg.update({k: source[k] for k in source.keys()})
    if cfg["kind"] not in KINDS:
        raise ValueError(f"data source kind must be one of {KINDS}, got {cfg['kind']!r}")
    if cfg["kind"] != "hf" and not cfg["path"]:
        raise ValueError(f"data source of kind {cfg['kind']!r} needs a 'path'")
    return cfg


def _librispeech(cfg: dict, split: str) -> tuple[str, _Candidates]:
    root = Path(cfg["path"]) / split
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech split folder {root} does not exist")
    ids, texts, paths = [], [], []
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        try:
            lines = trans.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise ValueError(f"{display_name(trans)}: not UTF-8 text ({e.reason} at byte "
                             f"{e.start})") from None  # fmt: skip
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            if not uid.startswith(f"{trans.parent.parent.name}-{trans.parent.name}-"):
                raise ValueError(f"{trans}:{n}: utterance id {uid!r} does not match its folder")
            ids.append(uid)
            texts.append(text)
            paths.append(str(trans.parent / f"{uid}.flac"))
    if not ids:
        raise FileNotFoundError(f"no */*/*.trans.txt transcripts under {root}")
    return str(root), _Candidates(ids, texts, _Audio(paths))


def _manifest_file(cfg: dict, split: str) -> Path:
    path = str(cfg["path"])
    if "{split}" in path:
        return Path(path.format(split=split))
    if os.path.isdir(path):
        found = [Path(path) / f"{split}{ext}" for ext in (".csv", ".jsonl", ".json")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise FileNotFoundError(f"no {split}.csv or {split}.jsonl manifest in {path}")
        return found[0]
    return Path(path)


def _manifest(cfg: dict, split: str) -> tuple[str, _Candidates]:
    file = _manifest_file(cfg, split)
    if not file.is_file():
        raise FileNotFoundError(f"manifest {file} does not exist")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = file.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{file}:{line}: not UTF-8 ({e.reason} at byte {e.start})") from None
    if file.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames or []
        rows = list(reader)
        if cfg["text_column"] not in header or not {"path", "audio_filepath"} & set(header):
            raise ValueError(
                f"{file}: CSV header needs 'path' and {cfg['text_column']!r}, got {header}"
            )
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{file}:{n}: not valid JSON ({e})") from e
                if not isinstance(rows[-1], dict):
                    raise ValueError(f"{file}:{n}: a {type(rows[-1]).__name__}, not a JSON object")
    paths, ids, extras = [], [], {}
    for n, row in enumerate(rows, start=1):
        p = row.get("path", row.get("audio_filepath"))
        if not isinstance(p, str) or not p:
            raise ValueError(f"{file}: entry {n} has no 'path' or 'audio_filepath': {row}")
        paths.append(p if os.path.isabs(p) else str(file.parent / p))
        ids.append(
            str(row[cfg["id_column"]]) if row.get(cfg["id_column"]) else os.path.splitext(p)[0]
        )
    for key in {k for row in rows for k in row} - {"path", "audio_filepath", cfg["text_column"]}:
        extras[key] = [row.get(key) for row in rows]
    texts = [row.get(cfg["text_column"]) for row in rows]
    rates = extras.get(cfg["rate_column"])
    return str(file), _Candidates(ids, texts, _Audio(paths), rates, extras)


def split_files(data_files, split: str):
    """`data_files` of an hf source; a string with "{split}" names the split's own files."""
    if isinstance(data_files, str) and "{split}" in data_files:
        return {split: data_files.format(split=split)}
    return data_files


def _hf(cfg: dict, split: str) -> tuple[str, _Candidates]:
    import datasets  # heavy import, only for these sources

    if cfg["kind"] == "hf":
        if not cfg["name"]:
            raise ValueError("data source of kind 'hf' needs a 'name'")
        where = f"{cfg['name']}" + (f"/{cfg['config']}" if cfg["config"] else "") + f"[{split}]"
        ds = datasets.load_dataset(
            cfg["name"],
            cfg["config"],
            split=split,
            data_files=split_files(cfg["data_files"], split),
            data_dir=cfg["data_dir"],
        )
    else:
        where = f"{cfg['path']}[{split}]"
        ds = datasets.load_from_disk(cfg["path"])
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise UnknownSplitError(f"{cfg['path']} has splits {sorted(ds)}, not {split!r}")
            ds = ds[split]
    for key in ("audio_column", "text_column"):
        if cfg[key] not in ds.column_names:
            raise ValueError(f"{where}: no {key} {cfg[key]!r}; columns are {ds.column_names}")
    if getattr(ds, "_indices", None) is not None:  # a selected/shuffled view: make rows physical
        ds = ds.flatten_indices()
    table = ds.data.table
    root = Path(cfg["path"]) if cfg["path"] and os.path.isdir(cfg["path"]) else None
    audio = _Audio(table.column(cfg["audio_column"]), cfg["audio_column"], root)
    ids = [f"{split}-{i:07d}" for i in range(table.num_rows)]
    if cfg["id_column"] in ds.column_names:
        ids = [str(i) for i in table.column(cfg["id_column"]).to_pylist()]
    skip = (cfg["audio_column"], cfg["text_column"], cfg["id_column"])
    scalar = (pa.types.is_string, pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    extras = {
        name: table.column(name).to_pylist()
        for name in ds.column_names
        if name not in skip and any(f(table.schema.field(name).type) for f in scalar)
    }
    texts = table.column(cfg["text_column"]).to_pylist()
    return where, _Candidates(ids, texts, audio, extras.get(cfg["rate_column"]), extras)


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _check(cands: _Candidates, row: int, cfg: dict) -> float:
    """Duration in seconds of a usable row; raises `_Skip` with the reason otherwise."""
    text = cands.texts[row]
    if cfg["require_text"] and (not isinstance(text, str) or not text.strip()):
        raise _Skip("empty_text", f"transcript {text!r}")
    sr, frames = cands.audio.probe(row)
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:  # files are checked already; arrays are not
        raise _Skip("sample_rate", f"{sr} Hz is outside {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    if sr < cfg["min_sample_rate"]:
        raise _Skip("sample_rate", f"{sr} Hz < min_sample_rate {cfg['min_sample_rate']} Hz")
    declared = cands.declared_rates[row] if cands.declared_rates is not None else None
    if declared not in (None, "") and _number(declared) != sr:
        raise _Skip("sample_rate", f"file is {sr} Hz, {cfg['rate_column']} says {declared}")
    return frames / sr


def _reader(cfg: dict):
    return {"librispeech": _librispeech, "manifest": _manifest}.get(cfg["kind"], _hf)


def load_split(source: Mapping, split: str) -> Utterances:
    """Lists the usable utterances of one split of a corpus, reading only audio headers.

    Args:
      source: dict-like config: `kind` in ("librispeech", "hf", "disk", "manifest") and the keys of
        `DEFAULTS` (`path`; `name`/`config`/`data_files`/`data_dir` for hf; column names;
        `min_seconds`/`max_seconds`; `min_sample_rate`; `max_bad_fraction`; `limit`, a cap on
        the number of utterances kept, taken in source order).
      split: e.g. "train", "dev-clean"; a LibriSpeech subfolder of `path`, a manifest name (or
        `{split}` in `path`), or a dataset split.

    Returns:
      `Utterances`, with `report` counting what was skipped and why.

    Raises:
      ValueError: for a bad config; `BadInputError` if too much is bad; FileNotFoundError.
    """
    cfg = source_config(source)
    where, cands = _reader(cfg)(cfg, split)
    report = BadInputReport(where)
    cands.audio.max_seconds = cfg["max_seconds"]
    limit = cfg["limit"] if cfg["limit"] is not None else len(cands.ids)
    keep, durations = [], []

    def probe(row: int):
        try:
            return _check(cands, row, cfg), None
        except _Skip as e:
            return None, e
        except Exception as e:  # one odd file (or row) must not end the whole load
            return None, _Skip("unreadable", f"{type(e).__name__}: {e}")

    # Header reads are I/O bound and libsndfile releases the GIL, so threads overlap them.
    with ThreadPoolExecutor(8) as pool:
        for start in range(0, len(cands.ids), _PROBE_CHUNK):
            if len(keep) >= limit:
                break
            rows = range(start, min(start + _PROBE_CHUNK, len(cands.ids)))
            for row, (dur, skip) in zip(rows, pool.map(probe, rows), strict=True):
                if len(keep) >= limit:
                    break
                report.seen += 1
                label = f"id {cands.ids[row]!r} ({cands.audio.where(row)})"
                if skip is not None:
                    report.skip(skip.reason, label, skip.detail)
                elif dur < cfg["min_seconds"]:
                    report.skip("too_short", label, f"{dur:.2f} s", seconds=dur)
                elif dur > cfg["max_seconds"]:
                    report.skip("too_long", label, f"{dur:.2f} s", seconds=dur)
                else:
                    keep.append(row)
                    durations.append(dur)
    report.kept = len(keep)
    ids = [cands.ids[r] for r in keep]
    dup = [k for k, n in Counter(ids).items() if n > 1]
    if dup:
        raise ValueError(f"{where}: duplicate utterance ids, e.g. {dup[:5]}; ids key caches")
    log.info("%s", report.summary())
    report.check(cfg["max_bad_fraction"])
    if not keep:
        raise BadInputError(f"{report.summary()}: no usable utterances")
    return Utterances(
        source=where,
        ids=ids,
        texts=[(cands.texts[r] or "").strip() for r in keep],
        durations=np.asarray(durations, np.float64),
        extras={k: [v[r] for r in keep] for k, v in cands.extras.items()},
        report=report,
        _audio=cands.audio,
        _rows=np.asarray(keep, np.int64),
        _spec=(dict(source), split),
    )
