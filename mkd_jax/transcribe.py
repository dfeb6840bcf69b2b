"""Transcribe audio files with any Whisper checkpoint.

    python -m mkd_jax.transcribe --model tiny.en clip1.wav clip2.flac
    python -m mkd_jax.transcribe --model /path/to/hf_or_ct2_folder --beam_size 4 *.wav

Prints one `name<TAB>text` line per file on stdout, in input order. Files longer than 30 s are cut
into consecutive 30 s windows whose transcripts are joined. A file that cannot be used (missing,
corrupt, a header out of range, NaN or absurd samples, longer than `--max_seconds`, ...) gets one
`FAILED name: reason` line on stderr and is skipped; the other files are all transcribed. The run
ends with `N transcribed, M failed` on stderr and exits 1 if any file failed. Names are shown with
undecodable bytes as `\\xNN` and control characters escaped (`audio.display_name`), so any file
name prints on one line.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TextIO

import numpy as np
from absl import app, flags
from tqdm import tqdm

from mkd_jax import cli, decode
from mkd_jax.data import features
from mkd_jax.data.audio import MAX_SECONDS, AudioError, display_name, read_audio
from mkd_jax.data.tokenizers import load_tokenizer
from mkd_jax.models.whisper import load

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "tiny.en", "Model name (tiny.en, base), HF folder or CTranslate2 folder."
)
flags.DEFINE_integer("batch_size", 16, "Windows decoded together.")
flags.DEFINE_integer("beam_size", 1, "1 = greedy.")
flags.DEFINE_integer("max_new_tokens", 128, "Token limit per 30 s window.")
flags.DEFINE_string("language", "en", "Language code for multilingual checkpoints.")
flags.DEFINE_float(
    "max_seconds", MAX_SECONDS, "Files longer than this fail (checked before decoding)."
)

WINDOW = features.N_FRAMES * features.HOP


@dataclasses.dataclass
class _Job:
    """One clip on its way through the batches."""

    key: object
    parts: list  # text of each window, filled as batches finish
    left: int  # windows not yet decoded
    error: str | None = None


class Transcriber:
    """A loaded model plus its jitted decoder; maps 16 kHz clips to text."""

    def __init__(
        self, model_name: str, *, beam_size=1, max_new_tokens=128, language="en", batch_size=16
    ):
        self.model, self.params, config = load(model_name)
        folder = config["_folder"]
        self.tokenizer = load_tokenizer(folder, model_vocab_size=self.model.vocab_size)
        self.spec = decode.spec_from_folder(
            folder,
            self.tokenizer,
            max_new_tokens=max_new_tokens,
            beam_size=beam_size,
            language=language,
        )
        self.generate = decode.make_generate_fn(self.model, self.spec)
        self.batch_size = batch_size

    def __call__(self, clips: Sequence[np.ndarray], progress: bool = False) -> list[str]:
        """Texts of `clips`; raises ValueError naming the first clip whose features fail."""
        texts = []
        for i, text, error in self.stream(enumerate(clips), progress=progress):
            if error is not None:
                raise ValueError(f"clip {i}: {error}")
            texts.append(text)
        return texts

    def stream(
        self, clips: Iterable[tuple[object, np.ndarray]], progress: bool = False
    ) -> Iterator[tuple[object, str | None, str | None]]:
        """`(key, text, None)` or `(key, None, error)` per `(key, clip)`, in input order.

        Clips are read from `clips` only as batches need them, so a long list of files is never
        all in memory; a clip whose features cannot be computed fails alone.
        """
        jobs: deque[_Job] = deque()
        windows: list[tuple[_Job, int, np.ndarray]] = []
        bar = tqdm(disable=not progress, desc="decoding", unit="window")
        for key, clip in clips:
            starts = range(0, max(len(clip), 1), WINDOW)
            job = _Job(key, [""] * len(starts), len(starts))
            jobs.append(job)
            windows += [(job, k, clip[s : s + WINDOW]) for k, s in enumerate(starts)]
            while len(windows) >= self.batch_size:
                self._run(windows[: self.batch_size])
                bar.update(self.batch_size)
                del windows[: self.batch_size]
                yield from self._finished(jobs)
        if windows:
            self._run(windows)
            bar.update(len(windows))
        yield from self._finished(jobs)
        bar.close()

    @staticmethod
    def _finished(jobs: deque[_Job]) -> Iterator[tuple[object, str | None, str | None]]:
        while jobs and jobs[0].left == 0:
            job = jobs.popleft()
            text = " ".join(t for t in job.parts if t) if job.error is None else None
            yield job.key, text, job.error

    def _mel(self, batch: list[np.ndarray], jobs: list[_Job]) -> np.ndarray:
        try:
            return features.log_mel(batch, n_mels=self.model.num_mel_bins)
        except ValueError:
            pass
        # Rare (read_audio checks samples already): find the windows at fault and blank them.
        for j, (clip, job) in enumerate(zip(batch, jobs, strict=True)):
            try:
                features.log_mel([clip], n_mels=self.model.num_mel_bins)
            except ValueError as e:
                job.error = job.error or f"features: {e}"
                batch[j] = np.zeros(1, np.float32)
        return features.log_mel(batch, n_mels=self.model.num_mel_bins)

    def _run(self, windows: list[tuple[_Job, int, np.ndarray]]) -> None:
        """Decodes one batch of windows into their jobs' `parts`."""
        batch = [w for _, _, w in windows]
        jobs = [job for job, _, _ in windows]
        # Pad the last batch to the static batch size so it reuses the compiled program.
        pad = self.batch_size - len(batch)
        mel = self._mel(batch + [np.zeros(1, np.float32)] * pad, jobs + [_Job(None, [], 0)] * pad)
        tokens = decode.strip(np.asarray(self.generate(self.params, mel)), self.spec.eot)
        for (job, k, _), row in zip(windows, tokens, strict=False):
            job.parts[k] = self.tokenizer.decode(row).strip()
            job.left -= 1


def transcribe_files(
    paths: Iterable[str],
    transcriber: Transcriber,
    *,
    max_seconds: float | None = MAX_SECONDS,
    out: TextIO | None = None,
    err: TextIO | None = None,
    progress: bool = False,
) -> tuple[int, int]:
    """Writes `name<TAB>text` to `out` per usable file and `FAILED name: reason` to `err` per other.

    Every file is attempted whatever happened to the ones before it; lines are flushed as each
    file finishes. Returns `(transcribed, failed)`.
    """
    out, err = out or sys.stdout, err or sys.stderr
    failed = 0

    def fail(line: str) -> None:
        nonlocal failed
        failed += 1
        line = line.replace("\r", " ").replace("\n", " ")  # names are escaped already
        print(f"FAILED {line}", file=err, flush=True)

    def clips() -> Iterator[tuple[str, np.ndarray]]:
        for path in paths:
            name = display_name(path)
            try:
                yield name, read_audio(path, max_seconds=max_seconds)
            except AudioError as e:
                fail(str(e))
            except Exception as e:  # whatever one file does, the others still get transcribed
                fail(f"{name}: {type(e).__name__}: {e}")

    done = 0
    for name, text, error in transcriber.stream(clips(), progress=progress):
        if error is not None:
            fail(f"{name}: {error}")
            continue
        print(f"{name}\t{text}", file=out, flush=True)
        done += 1
    return done, failed


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more audio files")
    for stream in (sys.stdout, sys.stderr):  # a transcript in an ASCII-only locale still prints
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    t = Transcriber(
        FLAGS.model,
        beam_size=FLAGS.beam_size,
        max_new_tokens=FLAGS.max_new_tokens,
        language=FLAGS.language,
        batch_size=FLAGS.batch_size,
    )
    done, failed = transcribe_files(
        paths, t, max_seconds=FLAGS.max_seconds, progress=sys.stderr.isatty()
    )
    print(f"{done} transcribed, {failed} failed", file=sys.stderr, flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
