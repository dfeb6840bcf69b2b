"""Transcribe audio files or folders of any length with any Whisper checkpoint, with timestamps.

    python -m mkd_jax.transcribe --model tiny.en clip1.wav talk.flac
    python -m mkd_jax.transcribe --model base --format srt --output_dir subs/ recordings/
    python -m mkd_jax.transcribe --model /path/to/hf_or_ct2_folder --long_form chunked *.wav

Decoding always predicts Whisper's timestamp tokens (`decode.timestamp_rules`), and audio longer
than 30 s is transcribed long-form (`longform`): `--long_form sequential` (the default, Whisper's
reference algorithm: each window starts at the last complete timestamp of the one before) or
`--long_form chunked` (overlapping `--chunk_s` windows every `chunk_s - 2 * stride_s` seconds,
decoded in parallel and stitched at the overlaps). Windows of several files are batched together.

Output (`--format`): `txt` prints one `name<TAB>text` line per file on stdout, in input order;
`json` prints one JSON object per file (text and timed segments); with `--output_dir` each file
gets `<output_dir>/<stem>.<format>` instead (`srt` and `vtt` need it). A folder argument stands for
the audio files under it (sorted). A file that cannot be used (missing, corrupt, a header out of
range, NaN or absurd samples, longer than `--max_seconds`, ...) gets one `FAILED name: reason`
line on stderr and is skipped; the other files are all transcribed. The run ends with
`N transcribed, M failed` on stderr and exits 1 if any file failed. Names are shown with
undecodable bytes as `\\xNN` and control characters escaped (`audio.display_name`), so any file
name prints on one line.

A window Whisper finds without speech gives no text (`transcriber.NoSpeechGate`: a no-speech
probability above `--no_speech_threshold`, together with either a mean token log-probability
below -1 or audio that never rises above -70 dBFS), so silence is not transcribed as "you";
`--no_speech_threshold=1` turns the gate off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from absl import app, flags

from mkd_jax import cli, longform, subtitles
from mkd_jax.config_base import MATMUL_DTYPE_NAMES
from mkd_jax.data.audio import MAX_SECONDS, AudioError, display_name, read_audio

if TYPE_CHECKING:  # jax and transformers load in `main`, after the flags and inputs are checked
    from mkd_jax.transcriber import Transcriber

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "model", "tiny.en", "Model name (tiny.en, base), HF folder or CTranslate2 folder."
)
flags.DEFINE_integer("batch_size", 16, "Windows decoded together.")
flags.DEFINE_integer("beam_size", 1, "1 = greedy.")
flags.DEFINE_integer("max_new_tokens", 224, "Token limit per 30 s window (timestamps included).")
flags.DEFINE_string("language", "en", "Language code for multilingual checkpoints.")
flags.DEFINE_float(
    "max_seconds", MAX_SECONDS, "Files longer than this fail (checked before decoding)."
)
flags.DEFINE_enum("long_form", "sequential", longform.STRATEGIES,
                  "How audio longer than one window is transcribed.")  # fmt: skip
flags.DEFINE_float("chunk_s", 30.0, "Chunked mode: window length in seconds (at most 30).")
flags.DEFINE_float("stride_s", 5.0, "Chunked mode: overlap on each side of a window, seconds.")
flags.DEFINE_enum("matmul_dtype", "float32", list(MATMUL_DTYPE_NAMES),
                  "Matmul operands: bfloat16 (float32 sums) decodes ~1.3x faster on a CPU with "
                  "AVX512-BF16, slower without it.")  # fmt: skip
flags.DEFINE_float("no_speech_threshold", 0.6,
                   "Windows whose no-speech probability is above this (and that Whisper is unsure "
                   "of, or that are silent) give no text; 1 turns this off.")  # fmt: skip
flags.DEFINE_enum("format", "txt", subtitles.FORMATS, "Output format.")
flags.DEFINE_string("output_dir", "", "Write <stem>.<format> per file here instead of stdout.")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


def audio_paths(args: Sequence[str]) -> Iterator[str]:
    """Each argument, or for a folder the audio files under it (sorted, by suffix); see
    `check_inputs` for a folder with none."""
    for arg in args:
        if os.path.isdir(arg):
            found = sorted(
                str(p) for p in Path(arg).rglob("*")
                if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )  # fmt: skip
            yield from found
        else:
            yield arg


def check_inputs(args: Sequence[str], output_dir: str | None) -> None:
    """Refuse, before a model loads, a folder argument with no audio file under it and an
    `--output_dir` that is a file. A missing or unreadable file fails on its own line later."""
    for arg in args:
        if os.path.isdir(arg) and next(audio_paths([arg]), None) is None:
            raise ValueError(
                f"{arg}: folder has no audio files ({', '.join(AUDIO_SUFFIXES)}, in any subfolder)"
            )
    if output_dir and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir}: is a file, not a folder")


def transcribe_files(
    paths: Iterable[str],
    transcriber: Transcriber,
    *,
    max_seconds: float | None = MAX_SECONDS,
    out: TextIO | None = None,
    err: TextIO | None = None,
    progress: bool = False,
    fmt: str = "txt",
    output_dir: str | Path | None = None,
) -> tuple[int, int]:
    """Transcribes every file; `FAILED name: reason` to `err` per file that cannot be used.

    Without `output_dir`: `name<TAB>text` (txt) or one JSON object per line (json) to `out`.
    With it: `<output_dir>/<stem>.<fmt>` per file (`-2`, `-3`, ... when stems repeat), and the
    written path to `out`. Every file is attempted whatever happened to the ones before it; output
    is flushed as each group of files finishes. Returns `(transcribed, failed)`.

    Raises:
      ValueError: srt or vtt without `output_dir`, or an unknown format (before any decoding).
    """
    out, err = out or sys.stdout, err or sys.stderr
    if fmt not in subtitles.FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(subtitles.FORMATS)}")
    if fmt in ("srt", "vtt") and not output_dir:
        raise ValueError(f"format {fmt!r} writes one file per input: give an output_dir")
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    failed = 0
    stems: dict[str, int] = {}
    path_of: dict[str, str] = {}

    def fail(line: str) -> None:
        nonlocal failed
        failed += 1
        line = line.replace("\r", " ").replace("\n", " ")  # names are escaped already
        print(f"FAILED {line}", file=err, flush=True)

    def clips() -> Iterator[tuple[str, np.ndarray]]:
        for path in paths:
            name = display_name(path)
            path_of[name] = path
            try:
                yield name, read_audio(path, max_seconds=max_seconds)
            except AudioError as e:
                fail(str(e))
            except Exception as e:  # whatever one file does, the others still get transcribed
                fail(f"{name}: {type(e).__name__}: {e}")

    done = 0
    for name, segments, error in transcriber.stream(clips(), progress=progress):
        if error is not None:
            fail(f"{name}: {error}")
            continue
        if output_dir:
            stem = Path(os.fsdecode(path_of.get(name, name))).stem or "audio"
            stems[stem] = stems.get(stem, 0) + 1
            suffix = f"-{stems[stem]}" * (stems[stem] > 1)
            target = Path(output_dir) / f"{stem}{suffix}.{fmt}"
            target.write_text(subtitles.render(fmt, name, segments), encoding="utf-8")
            print(display_name(str(target)), file=out, flush=True)
        elif fmt == "json":
            print(subtitles.as_json(name, segments), file=out, flush=True)
        else:
            print(f"{name}\t{longform.join_text(segments)}", file=out, flush=True)
        done += 1
    return done, failed


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more audio files or folders")
    if FLAGS.format in ("srt", "vtt") and not FLAGS.output_dir:
        raise app.UsageError(f"--format={FLAGS.format} writes one file per input: add --output_dir")
    check_inputs(paths, FLAGS.output_dir)
    if not FLAGS.max_seconds > 0 or FLAGS.max_seconds == float("inf"):
        raise ValueError(f"--max_seconds={FLAGS.max_seconds}: must be a positive number of seconds")
    if not 0 <= FLAGS.no_speech_threshold <= 1:
        raise ValueError(f"--no_speech_threshold={FLAGS.no_speech_threshold}: must be in [0, 1]")
    for stream in (sys.stdout, sys.stderr):  # a transcript in an ASCII-only locale still prints
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    from mkd_jax.transcriber import NoSpeechGate, Transcriber

    t = Transcriber(
        FLAGS.model,
        beam_size=FLAGS.beam_size,
        max_new_tokens=FLAGS.max_new_tokens,
        language=FLAGS.language,
        batch_size=FLAGS.batch_size,
        long_form=FLAGS.long_form,
        chunk_s=FLAGS.chunk_s,
        stride_s=FLAGS.stride_s,
        matmul_dtype=FLAGS.matmul_dtype,
        gate=NoSpeechGate(FLAGS.no_speech_threshold) if FLAGS.no_speech_threshold < 1 else None,
    )
    done, failed = transcribe_files(
        audio_paths(paths),
        t,
        max_seconds=FLAGS.max_seconds,
        progress=sys.stderr.isatty(),
        fmt=FLAGS.format,
        output_dir=FLAGS.output_dir or None,
    )
    print(f"{done} transcribed, {failed} failed", file=sys.stderr, flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
