"""Transcribe audio files with any Whisper checkpoint.

    python -m mkd_jax.transcribe --model tiny.en clip1.wav clip2.flac
    python -m mkd_jax.transcribe --model /path/to/hf_or_ct2_folder --beam_size 4 *.wav

Prints one `path<TAB>text` line per file. Files longer than 30 s are cut into consecutive 30 s
windows whose transcripts are joined. Unreadable files are reported and skipped.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from mkd_jax import decode
from mkd_jax.data import features
from mkd_jax.data.audio import AudioError, read_audio
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

WINDOW = features.N_FRAMES * features.HOP


class Transcriber:
    """A loaded model plus its jitted decoder; `__call__` maps 16 kHz clips to text."""

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

    def __call__(self, clips: list[np.ndarray], progress: bool = False) -> list[str]:
        windows, owner = [], []
        for i, clip in enumerate(clips):
            for start in range(0, max(len(clip), 1), WINDOW):
                windows.append(clip[start : start + WINDOW])
                owner.append(i)
        texts = [[] for _ in clips]
        for start in tqdm(
            range(0, len(windows), self.batch_size),
            disable=not progress,
            desc="decoding",
            unit="batch",
        ):
            chunk = windows[start : start + self.batch_size]
            # Pad the last batch to the static batch size so it reuses the compiled program.
            padded = chunk + [np.zeros(1, np.float32)] * (self.batch_size - len(chunk))
            mel = features.log_mel(padded, n_mels=self.model.num_mel_bins)
            tokens = decode.strip(np.asarray(self.generate(self.params, mel)), self.spec.eot)
            for j in range(len(chunk)):
                texts[owner[start + j]].append(self.tokenizer.decode(tokens[j]).strip())
        return [" ".join(t for t in parts if t) for parts in texts]


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give one or more audio files")
    clips, kept = [], []
    for path in paths:
        try:
            clips.append(read_audio(path))
            kept.append(path)
        except AudioError as e:
            logging.warning("skipping %s", e)
    if not clips:
        sys.exit("no readable audio files")
    t = Transcriber(
        FLAGS.model,
        beam_size=FLAGS.beam_size,
        max_new_tokens=FLAGS.max_new_tokens,
        language=FLAGS.language,
        batch_size=FLAGS.batch_size,
    )
    for path, text in zip(kept, t(clips, progress=True), strict=True):
        print(f"{path}\t{text}")


if __name__ == "__main__":
    app.run(main)
