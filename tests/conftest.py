"""Test set-up: 8 fake CPU devices (before jax is imported) and an offline hub."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)

from mkd_jax import host_memory  # noqa: E402

host_memory.keep_freed_memory()  # as every command does (cli.run)


import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mkd_jax.corpus.sentences import HARVARD  # noqa: E402

TINY_TEXTS = HARVARD[:8]


def make_librispeech(root, splits=(("train", 16), ("dev", 8), ("test", 8)), seed=0):
    """A LibriSpeech-layout folder of short tones with real sentences (content is irrelevant)."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for split, n in splits:
        folder = root / split / "19" / "198"
        folder.mkdir(parents=True)
        lines = []
        for i in range(n):
            uid = f"19-198-{i:04d}"
            t = np.arange(int(16000 * rng.uniform(1.5, 4.0))) / 16000
            tone = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 800) * t)
            sf.write(folder / f"{uid}.flac", tone.astype(np.float32), 16000)
            lines.append(f"{uid} {TINY_TEXTS[i % len(TINY_TEXTS)]}")
        (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_librispeech(tmp_path_factory):
    return make_librispeech(tmp_path_factory.mktemp("librispeech"))
