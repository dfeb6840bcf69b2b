"""Unpack Debian packages into a private folder with `apt-get download` and `dpkg -x`.

The synthetic corpus needs text (wordnet, fortunes) and a TTS engine (flite) from Debian. Nothing
here installs a package system-wide: each `.deb` is downloaded into a cache folder and extracted
there, so the host stays untouched and a second run reuses the files.

`extract_closure` does the same for packages outside the host's enabled components (RHVoice and
pico live in Debian's non-free, festival's British voices in contrib): it copies the host's apt
sources into a private apt configuration with those components added, lets apt resolve the
dependencies the host lacks (`apt-get --download-only install` against the host's dpkg status,
into a private archive folder) and unpacks them all. The host's sources and lists stay as they are.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

# Components added to the host's apt sources, by distribution (`ID` in /etc/os-release).
EXTRA_COMPONENTS = {
    "debian": ("main", "contrib", "non-free"),
    "ubuntu": ("main", "universe", "multiverse"),
}


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


def _distro() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "debian"
    ids = re.findall(r"^(?:ID|ID_LIKE)=\"?([^\"\n]+)", text, flags=re.M)
    words = " ".join(ids).split()
    return next((w for w in words if w in EXTRA_COMPONENTS), "debian")


def private_sources(
    host: list[tuple[str, str]], components: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The host's apt source files with `components` added to every entry.

    Args:
        host: `(file name, text)` of each source file: one-line `.list` or deb822 `.sources`.
        components: Components every entry should carry.

    Returns:
        `(file name, text)` pairs in the same formats.
    """
    out = []
    for name, text in host:
        lines = []
        for line in text.splitlines():
            stripped = line.strip()
            if name.endswith(".sources") and stripped.lower().startswith("components:"):
                have = stripped.split(":", 1)[1].split()
                line = "Components: " + " ".join(have + [c for c in components if c not in have])
            elif name.endswith(".list") and re.match(r"deb(-src)?\s", stripped):
                # deb [options] uri suite component...
                m = re.match(r"(deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?\S+\s+\S+)(.*)", stripped)
                if m and not m.group(2).strip().startswith("/") and not m.group(1).endswith("/"):
                    have = m.group(2).split()
                    extra = [c for c in components if c not in have]
                    line = " ".join([m.group(1), *have, *extra])
            lines.append(line)
        out.append((name, "\n".join(lines) + "\n"))
    return out


def _apt_options(state: Path) -> list[str]:
    return [
        f"-oDir::Etc::SourceList={state / 'sources.list'}",
        f"-oDir::Etc::SourceParts={state / 'sources.list.d'}",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        f"-oDir::Cache::Archives={state / 'archives'}",
        "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root",  # private folders that _apt cannot read
    ]


def private_apt(state: Path) -> list[str]:
    """apt options for a private configuration with non-free/contrib (or universe/multiverse).

    The first call writes the sources into `state` and runs `apt-get update` there (about 10 MB
    of package lists); later calls reuse them.

    Returns:
        Options to pass to `apt-get` and `apt-cache`.
    """
    _require_tools()
    marker = state / ".updated"
    options = _apt_options(state)
    if marker.exists():
        return options
    etc = Path("/etc/apt")
    host = []
    if (etc / "sources.list").is_file():
        host.append(("sources.list", (etc / "sources.list").read_text()))
    for f in sorted((etc / "sources.list.d").glob("*")):
        if f.suffix in (".list", ".sources") and f.is_file():
            host.append((f"sources.list.d/{f.name}", f.read_text()))
    if not host:
        raise RuntimeError(f"no apt sources in {etc}: cannot fetch Debian packages")
    parts = state / "sources.list.d"
    for d in (parts, state / "lists" / "partial", state / "archives" / "partial", state / "cache"):
        d.mkdir(parents=True, exist_ok=True)
    (state / "sources.list").write_text("")
    for name, text in private_sources(host, EXTRA_COMPONENTS[_distro()]):
        (state / name).write_text(text)
    result = _run(["apt-get", *options, "update"], state)
    if result.returncode != 0:
        raise RuntimeError(
            f"`apt-get update` with the private sources in {state} failed:\n{result.stderr.strip()}"
        )
    marker.write_text("ok")
    return options


def extract_closure(packages: list[str], root: Path, state: Path) -> Path:
    """Unpack `packages` and every dependency the host lacks into `root`.

    Args:
        packages: Debian package names, from any component of the host's distribution.
        root: Target folder; files land under `root/usr/...`.
        state: Private apt configuration, package lists and archives (shared between calls).

    Returns:
        `root`.

    Raises:
        RuntimeError: apt is unavailable or cannot resolve or fetch the packages.
    """
    marker = root / ".extracted"
    wanted = "\n".join(sorted(packages))
    if marker.exists() and marker.read_text() == wanted:
        return root
    options = private_apt(state)
    archives = state / "archives"
    base = ["apt-get", *options, "-y", "--no-install-recommends", "install"]
    # What the host lacks: `Inst NAME (...)` lines of a simulated install. Upgrades of packages
    # the host has (`Inst NAME [old] (new)`) are left out: a newer libc beside the host's loader
    # would break every program.
    plan = _run([*base, "-s", *packages], state)
    names = set(re.findall(r"^Inst (\S+) \(", plan.stdout, flags=re.M))
    result = _run([*base, "--download-only", *packages], state)
    if plan.returncode != 0 or result.returncode != 0:
        err = (result.stderr or plan.stderr).strip()
        raise RuntimeError(f"apt cannot fetch {' '.join(packages)} from {state}:\n{err}")
    debs = [p for p in sorted(archives.glob("*.deb")) if p.name.split("_", 1)[0] in names]
    missing = names - {p.name.split("_", 1)[0] for p in debs}
    if missing:
        raise RuntimeError(f"apt did not fetch {sorted(missing)} into {archives}")
    root.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        result = _run(["dpkg", "-x", str(deb), str(root)], root)
        if result.returncode != 0:
            raise RuntimeError(f"`dpkg -x {deb}` failed:\n{result.stderr}")
    marker.write_text(wanted)
    return root


def library_dirs(root: Path) -> list[str]:
    """Folders under `root` holding shared libraries (for `LD_LIBRARY_PATH`)."""
    dirs = {str(p.parent) for p in root.glob("usr/lib/**/*.so*")}
    dirs |= {str(p.parent) for p in root.glob("lib/**/*.so*")}
    return sorted(dirs)
