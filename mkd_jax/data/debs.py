"""Unpack Debian packages into a private folder with `apt-get download` and `dpkg -x`.

The synthetic corpus needs text (wordnet, fortunes) and a TTS engine (flite) from Debian. Nothing
here installs a package system-wide: each `.deb` is downloaded into a cache folder and extracted
there, so the host stays untouched and a second run reuses the files.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)


def _require_tools() -> None:
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found on PATH: the synthetic corpus fetches Debian "
            "packages (wordnet-base, fortunes, flite) with `apt-get download` and `dpkg -x`, "
            "so it needs a Debian or Ubuntu host"
        )


def download(package: str, dest: Path) -> Path:
    """Download one `.deb` into `dest` (no install), running `apt-get update` once if needed.

    Args:
        package: Debian package name, e.g. "wordnet-base".
        dest: Folder that receives the `.deb`.

    Returns:
        Path of the downloaded `.deb`.

    Raises:
        RuntimeError: apt is unavailable, or the package cannot be downloaded even after
            `apt-get update`.
    """
    _require_tools()
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    result = _run(["apt-get", "download", package], dest)
    if result.returncode != 0:
        # A fresh container often has empty package lists; one update fixes that.
        update = _run(["apt-get", "update"], dest)
        if update.returncode != 0:
            raise RuntimeError(
                f"`apt-get update` failed while fetching {package}:\n{update.stderr}"
            )
        result = _run(["apt-get", "download", package], dest)
    found = sorted(dest.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"`apt-get download {package}` failed in {dest}:\n{result.stderr.strip()}"
        )
    return found[-1]


def extract(packages: list[str], root: Path) -> Path:
    """Download `packages` and unpack them all into `root` with `dpkg -x`.

    A marker file records completion, so an interrupted extraction is redone rather than
    trusted.

    Args:
        packages: Debian package names.
        root: Target folder; files land under `root/usr/...` as they would under `/`.

    Returns:
        `root`.
    """
    marker = root / ".extracted"
    wanted = "\n".join(sorted(packages))
    if marker.exists() and marker.read_text() == wanted:
        return root
    root.mkdir(parents=True, exist_ok=True)
    debs = root.parent / "debs"
    for package in packages:
        deb = download(package, debs)
        result = _run(["dpkg", "-x", str(deb), str(root)], root)
        if result.returncode != 0:
            raise RuntimeError(f"`dpkg -x {deb}` failed:\n{result.stderr}")
    marker.write_text(wanted)
    return root
