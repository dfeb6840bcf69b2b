"""Real human speech from ordinary Debian packages, without transcripts: `real_unlabelled` for
evaluation, `real_train` for training.

`real_unlabelled`: the student's transcript is scored against the best teacher's on these clips
(agreement, not WER), so a student that only learned the TTS corpus shows up. Sources:

- `hedgewars-data` (main, GFDL-1.3 for `Data/Sounds/*` per its copyright file): the English
  voice packs of the game, short lines acted by several people (British, Classic, Default,
  HillBilly, Mobster, Pirate, Singer, Surfer): "Leave me alone", "You'll regret that", "Take
  cover", ... Grunts, coughs and laughs (`Ow1`, `Ooff2`, `Laugh`, ...) are left out, and so are
  the processed `Robot` pack and the packs in other languages.
- `alsa-utils` (main, GPL-2+): the speaker-test voice naming each channel ("Front Left", ...).

`real_train` (`TRAIN_PACKAGES`): real speech a teacher can label and a student can be distilled
on, from another package and other people than the evaluation clips:

- `warzone2100-data` (main, GPL-2+): the game's spoken lines inside `base.wz` (a zip), 455 clips
  and 13.5 min: the tutorial narration, command and status messages ("Research completed",
  "Transport under attack"), countdowns, taunts. Radio clicks and laughs are left out.

Debian's `asterisk-core-sounds-en*` and `pocketsphinx-testdata` are reserved for an external
evaluation (METHOD.md) and must never be used here.

Only the `.deb` files are cached; clips are read straight out of them with `dpkg-deb
--fsys-tarfile`, decoded with soundfile and resampled to 16 kHz mono.
"""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

from mkd_jax.corpus import augment, debs

SAMPLE_RATE = 16000
HEDGEWARS_PACKS = ("British", "Classic", "Default", "HillBilly", "Mobster", "Pirate", "Singer",
                   "Surfer")  # fmt: skip
_HEDGEWARS = re.compile(
    r"^\./usr/share/games/hedgewars/Data/Sounds/voices/(?P<voice>[^/]+)/(?P<name>[^/]+)\.ogg$"
)
_NOT_SPEECH = re.compile(r"^((Ow|Ooff|Firepunch|Jump)\d+|Laugh|PoisonCough|PoisonMoan|Hmm)$")
_ALSA = re.compile(r"^\./usr/share/sounds/alsa/(?P<name>[^/]+)\.wav$")
_WARZONE_ARCHIVE = "./usr/share/games/warzone2100/base.wz"
_WARZONE = re.compile(r"^audio/(?P<group>[^/]+)/(?:(?P<sub>[^/]+)/)?(?P<name>[^/]+)\.ogg$")
_WARZONE_NOT_SPEECH = re.compile(r"^(radclik\d*|haha\w*|laugh\d*)$")
RESERVED = ("asterisk-core-sounds-en", "pocketsphinx-testdata")
EVAL_PACKAGES = ("hedgewars-data", "alsa-utils")
TRAIN_PACKAGES = ("warzone2100-data",)


def _members(deb: Path):
    """`(path, bytes)` of every regular file in a `.deb`'s data archive, and of every file in a
    zip archive among them (`ARCHIVE!MEMBER`)."""
    proc = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`dpkg-deb --fsys-tarfile {deb}` failed: {proc.stderr.decode()}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for member in tar:
            if member.isfile():
                data = tar.extractfile(member).read()
                yield member.name, data
                if member.name == _WARZONE_ARCHIVE:
                    with zipfile.ZipFile(io.BytesIO(data)) as z:
                        for inner in z.infolist():
                            if not inner.is_dir():
                                yield f"{member.name}!{inner.filename}", z.read(inner)


def _decode(data: bytes, where: str) -> np.ndarray:
    try:
        x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise RuntimeError(f"cannot decode {where}: {e}") from e
    return augment.resample(x.mean(axis=1), sr, SAMPLE_RATE)


def select(package: str, path: str) -> tuple[str, str, str] | None:
    """`(id, engine, voice)` if the file at `path` in `package` is a clip we use, else None."""
    if any(package.startswith(r) for r in RESERVED):
        raise ValueError(f"{package} is reserved for the external evaluation (METHOD.md)")
    if package == "hedgewars-data":
        m = _HEDGEWARS.match(path)
        if m and m["voice"] in HEDGEWARS_PACKS and not _NOT_SPEECH.match(m["name"]):
            return f"real-hedgewars-{m['voice']}-{m['name']}", package, f"hedgewars:{m['voice']}"
    elif package == "alsa-utils":
        m = _ALSA.match(path)
        if m and m["name"] != "Noise":
            return f"real-alsa-{m['name']}", package, "alsa:speaker-test"
    elif package == "warzone2100-data":
        archive, _, inner = path.partition("!")
        m = _WARZONE.match(inner) if archive == _WARZONE_ARCHIVE else None
        if m and m["group"] != "sfx" and not _WARZONE_NOT_SPEECH.match(m["name"]):
            where = "-".join(x for x in (m["group"], m["sub"], m["name"]) if x)
            return f"real-warzone2100-{where}", package, f"warzone2100:{m['group']}"
    return None


def collect(cache: Path, packages: tuple[str, ...] = EVAL_PACKAGES) -> list:
    """All clips of `packages`, sorted by id: dicts with `id`, `engine` (the package), `voice`
    (the speaker or pack) and `audio` (`[N]` float32 at 16 kHz).

    Raises:
        RuntimeError: a package cannot be fetched, holds no clips, or a clip does not decode.
    """
    clips = []
    for package in packages:
        deb = debs.download(package, cache / "debs")
        found = 0
        for path, data in _members(deb):
            picked = select(package, path)
            if picked:
                uid, engine, voice = picked
                audio = _decode(data, f"{deb.name}:{path}")
                clips.append({"id": uid, "engine": engine, "voice": voice, "audio": audio})
                found += 1
        if not found:
            raise RuntimeError(f"{deb} holds none of the expected speech clips")
    return sorted(clips, key=lambda c: c["id"])
