"""An offline English speech corpus from TTS: `python -m mkd_jax.corpus.synth --out DIR --hours H`.

Sentences (`sentences.py`) are split by a hash of their text; voices (`voices.py`) are split by
holding whole voices out for test. The build is planned up front from the seed, so it is
deterministic, then synthesised in shards of `--shard-size` utterances by a pool of worker
processes (one TTS session each). Each finished shard is written atomically to `DIR/shards/`,
so an interrupted build resumes where it stopped. At the end the shards become a Hugging Face
`DatasetDict` saved with `save_to_disk(DIR)`, plus `DIR/manifest.jsonl`.

Splits:
    train: seen voices (base voices and their blends), train sentences.
    dev: seen voices, dev sentences.
    test: held-out voices (never in train or in any blend), test sentences.
    test_seen: seen voices, test sentences not used by `test` (a small slice).
    test_ood: `--ood-utterances` utterances spoken only by engines that never speak in training
        (festival, RHVoice, Piper; `ood_voices.py`), balanced over engines, on test-hash
        sentences that no other split uses, at the engines' own rate, with the test split's mix
        of augmentations.
    real_unlabelled: real human recordings shipped by a Debian package (`real_speech.py`), no
        transcripts (empty `text`): for agreement with the teachers, not WER.
    real_train (only with `--real-train`): real human speech from another package and other
        people (`real_speech.TRAIN_PACKAGES`), no transcripts: audio to distil on, labelled by
        the teachers (`python -m mkd_jax.pseudolabel`). Opt-in, so a corpus built without it
        keeps its content digest (the ablation's runs name it).

The last three are additions: planned apart from the others (`plan_test_ood.json`), saved as
their own split folders and registered in `dataset_dict.json`, so rebuilding or resuming a
corpus made before they existed adds them without touching train, dev, test or test_seen.

For single clips, `synthesize(text, voice)` and `list_voices()` (from `voices.py`) give 16 kHz
float32 audio for a named voice such as "kokoro:af_heart" or "flite:slt".
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
from tqdm import tqdm

from mkd_jax.corpus import augment, kokoro_gemm, ood_voices, real_speech, sentences, voices
from mkd_jax.corpus.voices import list_voices, synthesize

__all__ = ["Config", "build", "list_voices", "main", "make_plan", "synthesize"]
DATASET_SPLITS = ("train", "dev", "test", "test_seen")  # planned together in plan.json
EXTRA_SPLITS = ("test_ood", "real_unlabelled")
REAL_TRAIN = "real_train"  # opt-in (`real_train`): a corpus built without it keeps its digest
EXTRA_FIELDS = ("ood_utterances", "ood_voices", "real_speech", "real_train")  # not in plan.json
SENTENCE_SPLIT = {"train": "train", "dev": "dev", "test": "test", "test_seen": "test"}
PLAN_VERSION = 1
# Mean speaking rate of Kokoro and flite at speed 1.0, measured on the sentence pool (15-17.6
# characters a second); used only to plan how many sentences fill the requested hours.
CHARS_PER_SECOND = 16.0
# Disk a corpus takes per hour of planned audio: FLAC shards plus the assembled splits (measured
# 139 MB on the 1.3 h build, BUILD_NOTES), with a margin for voices and manifests.
BYTES_PER_PLANNED_HOUR = 160e6
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("sampling_rate", pa.int32()),
        ("duration", pa.float32()),
        ("engine", pa.string()),
        ("voice", pa.string()),
        ("voice_seen", pa.bool_()),
        ("augment", pa.string()),
    ]
)


@dataclass(frozen=True)
class Config:
    """What the corpus is made of; two builds with equal configs are identical."""

    hours: float
    seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    test_seen_fraction: float = 0.05
    shard_size: int = 32
    blends: int = 12
    held_out: tuple[str, ...] = voices.DEFAULT_HELD_OUT
    template_fraction: float = 0.1
    n_templates: int = 6000
    clean_fraction: float = 0.4
    speed_range: tuple[float, float] = (0.85, 1.15)
    ood_utterances: int = 160
    ood_voices: tuple[str, ...] = ood_voices.OOD_VOICES
    real_speech: bool = True
    real_train: bool = False


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------


def split_voices(cfg: Config) -> tuple[list[str], list[str]]:
    """`(seen, unseen)` voices: base voices not held out plus blends of them, and held-out ones.

    Raises:
        ValueError: a held-out voice is unknown, or none of them is a Kokoro voice.
    """
    all_voices = voices.list_voices()
    unknown = [v for v in cfg.held_out if v not in all_voices]
    if unknown:
        raise ValueError(f"held-out voices {unknown} are not among list_voices()")
    if not any(v.startswith("kokoro:") for v in cfg.held_out):
        raise ValueError(f"held-out voices {cfg.held_out} include no Kokoro voice")
    seen_base = [v for v in all_voices if v not in cfg.held_out]
    return seen_base + voices.make_blends(seen_base, cfg.blends, cfg.seed), list(cfg.held_out)


def _cycle(items: list, r: random.Random):
    """Yield `items` in shuffled order forever, reshuffling on each pass (balanced use)."""
    if not items:
        raise ValueError("cannot draw from an empty list")
    while True:
        order = list(items)
        r.shuffle(order)
        yield from order


def estimate_seconds(text: str, speed: float, augmentation: str) -> float:
    """Planned duration of an utterance: speech at `CHARS_PER_SECOND`, plus padding."""
    seconds = len(text) / CHARS_PER_SECOND / speed
    for effect in augmentation.split(","):
        if effect.startswith("speed="):
            seconds /= float(effect[6:])
    return seconds + 0.5


def _utt_seed(seed: int, utt_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{utt_id}".encode()).digest()[:8], "big")


def make_plan(cfg: Config, natural: list[str]) -> dict[str, list[dict]]:
    """Every utterance of every split: text, voice, speed and augmentation, from the seed.

    Args:
        cfg: Build configuration.
        natural: Natural sentences (order matters for determinism).

    Returns:
        `{split: [utterance, ...]}` for `DATASET_SPLITS`; each utterance is a dict with `id`,
        `split`, `text`, `engine`, `voice`, `voice_seen`, `tts_speed`, `augment`, `seed`.
    """
    seen, unseen = split_voices(cfg)
    nat = sentences.by_split(natural, cfg.fractions)
    tpl = sentences.by_split(sentences.templates(cfg.n_templates, cfg.seed), cfg.fractions)
    # One sentence stream per sentence split, so test and test_seen never share a sentence.
    streams = {
        s: (_cycle(nat[s], random.Random(f"{cfg.seed}/nat/{s}")),
            _cycle(tpl[s], random.Random(f"{cfg.seed}/tpl/{s}")))
        for s in sentences.SPLITS
    }  # fmt: skip
    fracs = dict(zip(("train", "dev", "test"), cfg.fractions, strict=True))
    fracs["test_seen"] = cfg.test_seen_fraction
    plan = {}
    for split in DATASET_SPLITS:
        r = random.Random(f"{cfg.seed}/plan/{split}")
        voice_pool = unseen if split == "test" else seen
        voice_stream = _cycle(voice_pool, random.Random(f"{cfg.seed}/voices/{split}"))
        natural_stream, template_stream = streams[SENTENCE_SPLIT[split]]
        target, total, utts = cfg.hours * 3600 * fracs[split], 0.0, []
        while total < target:
            use_template = r.random() < cfg.template_fraction
            text = next(template_stream if use_template else natural_stream)
            voice = next(voice_stream)
            speed = round(r.uniform(*cfg.speed_range), 2)
            aug = augment.choose(r, cfg.clean_fraction)
            utt_id = f"{split}-{len(utts):06d}"
            utts.append(
                {
                    "id": utt_id,
                    "split": split,
                    "text": text,
                    "engine": voice.split(":", 1)[0],
                    "voice": voice,
                    "voice_seen": split != "test",
                    "tts_speed": speed,
                    "augment": aug,
                    "seed": _utt_seed(cfg.seed, utt_id),
                }
            )
            total += estimate_seconds(text, speed, aug)
        plan[split] = utts
    return plan


def plan_test_ood(cfg: Config, plan: dict[str, list[dict]], natural: list[str]) -> list[dict]:
    """The `test_ood` utterances: held-out engines on unused test-hash sentences.

    Args:
        cfg: Build configuration (`ood_utterances`, `ood_voices`, and the sentence settings).
        plan: The other splits' plan (`make_plan`); its sentences are not reused.
        natural: Natural sentences, as given to `make_plan`.

    Returns:
        Utterance dicts like `make_plan`'s, engines taking turns and each cycling its voices.

    Raises:
        ValueError: an `ood_voices` entry is a training engine's voice or unknown, or the test
            sentences run out.
    """
    train_engines = {v.split(":", 1)[0] for v in voices.list_voices()}
    for v in cfg.ood_voices:
        engine, _ = voices.parse_voice(v)
        if engine in train_engines:
            raise ValueError(f"ood_voices entry {v!r} is a training engine's voice")
    used = {sentences.normalize(u["text"]) for utts in plan.values() for u in utts}
    templates = sentences.templates(cfg.n_templates, cfg.seed)
    pools = []
    for kind, texts in (("nat", natural), ("tpl", templates)):
        texts = sentences.by_split(texts, cfg.fractions)["test"]
        fresh = [t for t in texts if sentences.normalize(t) not in used]
        random.Random(f"{cfg.seed}/ood/{kind}").shuffle(fresh)
        pools.append(iter(fresh))
    engines = sorted({v.split(":", 1)[0] for v in cfg.ood_voices})
    by_engine = {
        e: _cycle([v for v in cfg.ood_voices if v.startswith(f"{e}:")],
                  random.Random(f"{cfg.seed}/voices/test_ood/{e}"))
        for e in engines
    }  # fmt: skip
    r, utts = random.Random(f"{cfg.seed}/plan/test_ood"), []
    for i in range(cfg.ood_utterances):
        engine = engines[i % len(engines)]
        pool = pools[1] if r.random() < cfg.template_fraction else pools[0]
        text = next(pool, None)
        if text is None:
            raise ValueError(f"test sentences ran out after {i} test_ood utterances")
        utt_id = f"test_ood-{i:06d}"
        utts.append(
            {
                "id": utt_id,
                "split": "test_ood",
                "text": text,
                "engine": engine,
                "voice": next(by_engine[engine]),
                "voice_seen": False,
                "tts_speed": 1.0,  # each engine's own rate; speed= augmentation may still apply
                "augment": augment.choose(r, cfg.clean_fraction),
                "seed": _utt_seed(cfg.seed, utt_id),
            }
        )
    return utts


def shard_jobs(plan: dict[str, list[dict]], shard_size: int) -> list[tuple[str, list[dict]]]:
    """`(shard_name, utterances)` for every shard, in split then index order."""
    jobs = []
    for split, utts in plan.items():
        for k in range(0, len(utts), shard_size):
            jobs.append((f"{split}-{k // shard_size:05d}", utts[k : k + shard_size]))
    return jobs


# ---------------------------------------------------------------------------------------------
# Synthesis (runs in worker processes)
# ---------------------------------------------------------------------------------------------

_PROGRESS = None


def _init_worker(cache: Path, threads: int, progress, kokoro_model: Path | None = None) -> None:
    global _PROGRESS
    voices.configure(cache=cache, threads=threads, kokoro_model=kokoro_model)
    _PROGRESS = progress


def render(utt: dict) -> np.ndarray:
    """The final 16 kHz audio of one planned utterance (TTS, padding, augmentation, level)."""
    x = voices.synthesize(utt["text"], utt["voice"], utt["tts_speed"], seed=utt["seed"])
    rng = np.random.default_rng(utt["seed"])
    x = augment.pad(x, rng)
    x = augment.apply(x, utt["augment"], rng)
    return augment.set_level(x, rng)


def _flac(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0), voices.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def make_shard(job: tuple[Path, str, list[dict]]) -> tuple[str, list[float], float]:
    """Synthesise one shard and write it atomically as `shards/NAME.parquet`.

    Returns:
        `(name, durations in seconds, wall seconds)`.
    """
    shard_dir, name, utts = job
    start = time.perf_counter()
    rows = {field: [] for field in SCHEMA.names}
    for utt in utts:
        x = render(utt)
        rows["id"].append(utt["id"])
        rows["text"].append(utt["text"])
        rows["audio"].append({"bytes": _flac(x), "path": f"{utt['id']}.flac"})
        rows["sampling_rate"].append(voices.SAMPLE_RATE)
        rows["duration"].append(len(x) / voices.SAMPLE_RATE)
        for key in ("engine", "voice", "voice_seen", "augment"):
            rows[key].append(utt[key])
        if _PROGRESS is not None:
            _PROGRESS.put(1)
    tmp = shard_dir / f"{name}.parquet.tmp"
    pq.write_table(pa.table(rows, schema=SCHEMA), tmp)
    os.replace(tmp, shard_dir / f"{name}.parquet")
    return name, rows["duration"], time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


def _check_plan(out: Path, record: dict, name: str = "plan.json") -> None:
    """Write `out/name`, or check that an existing one (from an earlier run) is the same."""
    text = json.dumps(record, sort_keys=True)
    path = out / name
    if path.exists():
        if path.read_text() != text:
            raise ValueError(
                f"{path} was written by a build with other settings or sentences; resume with "
                f"the same arguments or choose a new --out (config there: "
                f"{json.loads(path.read_text()).get('config')})"
            )
        return
    path.with_suffix(".tmp").write_text(text)
    path.with_suffix(".tmp").replace(path)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def check_disk(out: Path, plans: list[dict[str, list[dict]]]) -> float:
    """Projected bytes of the corpus the plans describe; raises ValueError, before anything is
    written, when the disk under `out` cannot hold what is not yet there."""
    hours = sum(
        estimate_seconds(u["text"], u["tts_speed"], u["augment"])
        for plan in plans for utts in plan.values() for u in utts
    ) / 3600  # fmt: skip
    need = hours * BYTES_PER_PLANNED_HOUR
    existing = out
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    missing = need - _folder_bytes(out)
    if missing > free:
        raise ValueError(
            f"--out {out}: the corpus needs about {need / 1e9:.1f} GB ({hours:.1f} h of planned "
            f"audio), {missing / 1e9:.1f} GB of it not yet written, and {free / 1e9:.1f} GB are "
            "free there; free space or plan fewer --hours"
        )
    print(f"corpus: about {need / 1e9:.2f} GB for {hours:.2f} h of planned audio", flush=True)
    return need


def _core_config(cfg: Config) -> dict:
    """The settings `plan.json` records: all but the additions, so adding them keeps it valid."""
    return {k: v for k, v in asdict(cfg).items() if k not in EXTRA_FIELDS}


def _ood_config(cfg: Config) -> dict:
    keys = ("seed", "fractions", "n_templates", "template_fraction", "clean_fraction")
    return {k: getattr(cfg, k) for k in keys + ("ood_utterances", "ood_voices")}


def _run_jobs(
    jobs, out: Path, workers: int, threads: int, total_utts: int, done_utts: int, kokoro_model=None
):
    """Run shard jobs on a process pool with a per-utterance progress bar; yield results."""
    shard_dir, cache = out / "shards", voices.default_cache()
    bar = tqdm(total=total_utts, initial=done_utts, unit="utt", desc="synth", file=sys.stderr)
    if workers <= 1:
        _init_worker(cache, threads, None, kokoro_model)
        for name, utts in jobs:
            result = make_shard((shard_dir, name, utts))
            bar.update(len(utts))
            yield result
        bar.close()
        return
    ctx = mp.get_context("spawn")  # onnxruntime and espeak keep process-global state
    progress = ctx.Queue()
    with ctx.Pool(workers, _init_worker, (cache, threads, progress, kokoro_model)) as pool:
        pending = [pool.apply_async(make_shard, ((shard_dir, n, u),)) for n, u in jobs]
        while pending:
            while not progress.empty():
                bar.update(progress.get())
            ready = [p for p in pending if p.ready()]
            for p in ready:
                pending.remove(p)
                yield p.get()
            if not ready:
                time.sleep(0.2)
        while not progress.empty():
            bar.update(progress.get())
    bar.close()


def _split_table(out: Path, plan: dict[str, list[dict]], split: str, shard_size: int) -> pa.Table:
    names = [n for n, _ in shard_jobs({split: plan[split]}, shard_size)]
    table = pa.concat_tables([pq.read_table(out / "shards" / f"{n}.parquet") for n in names])
    if table.column("id").to_pylist() != [u["id"] for u in plan[split]]:
        raise RuntimeError(f"shards of {split} in {out / 'shards'} do not match the plan")
    return table


def _manifest_entries(utts: list[dict], table: pa.Table) -> list[dict]:
    entries = []
    for utt, duration in zip(utts, table.column("duration").to_pylist(), strict=True):
        entry = {k: utt[k] for k in ("id", "split", "text", "engine", "voice", "voice_seen")}
        entry.update(tts_speed=utt["tts_speed"], augment=utt["augment"])
        entry.update(duration=round(duration, 4), sampling_rate=voices.SAMPLE_RATE)
        entries.append(entry)
    return entries


def _update_manifest(out: Path, entries: dict[str, list[dict]]) -> None:
    """Replace the `manifest.jsonl` lines of the splits in `entries`, keeping the others."""
    path = out / "manifest.jsonl"
    old = [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []
    merged: dict[str, list[dict]] = {}
    for e in old:
        if e["split"] not in entries:
            merged.setdefault(e["split"], []).append(e)
    merged.update(entries)
    order = [*DATASET_SPLITS, *EXTRA_SPLITS, REAL_TRAIN]
    ranked = sorted(merged, key=lambda s: order.index(s) if s in order else len(order))
    tmp = out / "manifest.jsonl.tmp"
    tmp.write_text("".join(json.dumps(e) + "\n" for split in ranked for e in merged[split]))
    tmp.replace(path)


def registered_splits(out: Path) -> list[str]:
    """The splits `dataset_dict.json` in `out` lists (empty if there is none)."""
    path = out / "dataset_dict.json"
    return json.loads(path.read_text())["splits"] if path.exists() else []


def _register(out: Path, splits: list[str]) -> None:
    have = registered_splits(out)
    tmp = out / "dataset_dict.json.tmp"
    tmp.write_text(json.dumps({"splits": have + [s for s in splits if s not in have]}))
    tmp.replace(out / "dataset_dict.json")


def assemble(out: Path, plan: dict[str, list[dict]], shard_size: int) -> dict[str, float]:
    """Join the shards of `DATASET_SPLITS` into a `DatasetDict` saved to `out`, and write their
    `manifest.jsonl` lines; splits added earlier (`EXTRA_SPLITS`) stay registered.

    Returns:
        Seconds of audio per split.
    """
    import datasets  # noqa: PLC0415  (slow import; only the final step needs it)

    extras = [s for s in registered_splits(out) if s not in DATASET_SPLITS]
    splits, entries, seconds = {}, {}, {}
    for split in DATASET_SPLITS:
        if not plan[split]:
            continue
        table = _split_table(out, plan, split, shard_size)
        splits[split] = datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))
        seconds[split] = float(np.sum(table.column("duration").to_numpy()))
        entries[split] = _manifest_entries(plan[split], table)
    datasets.DatasetDict(splits).save_to_disk(str(out))
    _register(out, extras)
    _update_manifest(out, entries)
    return seconds


def save_split(out: Path, split: str, table: pa.Table, entries: list[dict]) -> None:
    """Save one more split into the corpus folder `out` without touching the others."""
    import datasets  # noqa: PLC0415

    ds = datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))
    tmp, final = out / f"{split}.tmp", out / split
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    _register(out, [split])
    _update_manifest(out, {split: entries})


def _real_shard(out: Path, cache: Path, split: str, packages: tuple[str, ...]) -> pa.Table:
    """`shards/<split>-00000.parquet`: real recordings of `packages` as 16 kHz FLAC, made once."""
    path = out / "shards" / f"{split}-00000.parquet"
    if not path.exists():
        rows = {field: [] for field in SCHEMA.names}
        for clip in real_speech.collect(cache / "real", packages):
            rows["id"].append(clip["id"])
            rows["text"].append("")
            rows["audio"].append({"bytes": _flac(clip["audio"]), "path": f"{clip['id']}.flac"})
            rows["sampling_rate"].append(voices.SAMPLE_RATE)
            rows["duration"].append(len(clip["audio"]) / voices.SAMPLE_RATE)
            rows["engine"].append(clip["engine"])
            rows["voice"].append(clip["voice"])
            rows["voice_seen"].append(False)
            rows["augment"].append("none")
        pq.write_table(pa.table(rows, schema=SCHEMA), path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return pq.read_table(path)


def build(
    out: Path, cfg: Config, workers: int = 0, threads: int = 1, max_shards: int | None = None
) -> dict | None:
    """Plan, synthesise (resuming finished shards) and assemble a corpus in `out`.

    A corpus folder from an earlier build (with the same settings) keeps its splits as they
    are; `test_ood` and `real_unlabelled` are added to it when missing.

    Args:
        out: Output folder.
        cfg: Build configuration.
        workers: Worker processes; 0 means one per CPU core.
        threads: onnxruntime threads per Kokoro session.
        max_shards: Stop after this many new shards without assembling (for tests and
            time-boxed runs); rerun to continue.

    Returns:
        Build statistics, or None when stopped by `max_shards` before the end.
    """
    t0 = time.perf_counter()
    cache = voices.default_cache()
    pool = sentences.natural_pool(cache)
    natural = pool["wordnet"] + pool["fortunes"]
    # Everything is planned, and the disk checked, before anything is written.
    plan = make_plan(cfg, natural)
    extra = {"test_ood": plan_test_ood(cfg, plan, natural)} if cfg.ood_utterances else {}
    check_disk(out, [plan, extra])
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    for stale in (out / "shards").glob("*.tmp"):
        stale.unlink()  # a shard being written when the last run was killed
    _check_plan(out, {"version": PLAN_VERSION, "config": _core_config(cfg), "plan": plan})
    if extra:
        record = {"version": PLAN_VERSION, "config": _ood_config(cfg), "plan": extra}
        _check_plan(out, record, "plan_test_ood.json")
    # Fetch assets once here, so workers do not race to download them.
    kokoro_model, kokoro_voices = voices.ensure_kokoro(cache / "kokoro")
    voices.ensure_flite(cache / "flite")
    jobs = shard_jobs(plan, cfg.shard_size) + shard_jobs(extra, cfg.shard_size)
    todo = todo_all(jobs, out)
    if any(n.startswith("test_ood-") for n, _ in todo):
        ood_voices.prepare(cache / "ood", {u["engine"] for u in extra["test_ood"]})
    total = sum(len(u) for _, u in jobs)
    done = total - sum(len(u) for _, u in todo)
    if max_shards is not None:
        todo = todo[:max_shards]
    if any(u["engine"] == "kokoro" for _, utts in todo for u in utts):
        kokoro_model = kokoro_gemm.prepare(kokoro_model, kokoro_voices)
    workers = workers or os.cpu_count() or 1
    t1 = time.perf_counter()
    audio_s = 0.0
    n_workers = min(workers, len(todo) or 1)
    for _, durations, _ in _run_jobs(todo, out, n_workers, threads, total, done, kokoro_model):
        audio_s += sum(durations)
    synth_s = time.perf_counter() - t1
    remaining = todo_all(jobs, out)
    if remaining:
        print(f"stopped with {len(remaining)} of {len(jobs)} shards left; rerun to resume")
        return None

    new = {n.rsplit("-", 1)[0] for n, _ in todo}
    have = registered_splits(out)
    if new & set(DATASET_SPLITS) or not set(DATASET_SPLITS) <= set(have):
        seconds = assemble(out, plan, cfg.shard_size)
    else:  # already assembled: leave it untouched
        seconds = {
            s: float(np.sum(_split_table(out, plan, s, cfg.shard_size)["duration"].to_numpy()))
            for s in DATASET_SPLITS if plan[s]
        }  # fmt: skip
    counts = {s: len(plan[s]) for s in seconds}
    if extra:
        table = _split_table(out, extra, "test_ood", cfg.shard_size)
        if "test_ood" in new or "test_ood" not in have:
            save_split(out, "test_ood", table, _manifest_entries(extra["test_ood"], table))
        seconds["test_ood"] = float(np.sum(table["duration"].to_numpy()))
        counts["test_ood"] = table.num_rows
    real = {"real_unlabelled": real_speech.EVAL_PACKAGES} if cfg.real_speech else {}
    if cfg.real_train:
        real[REAL_TRAIN] = real_speech.TRAIN_PACKAGES
    for split, packages in real.items():
        table = _real_shard(out, cache, split, packages)
        if split not in have:
            utts = [
                {"split": split, "tts_speed": 1.0, **row}
                for row in table.drop_columns(["audio"]).to_pylist()
            ]
            save_split(out, split, table, _manifest_entries(utts, table))
        seconds[split] = float(np.sum(table["duration"].to_numpy()))
        counts[split] = table.num_rows
    return {
        "utterances": counts,
        "hours": {s: round(d / 3600, 4) for s, d in seconds.items()},
        "synthesised_audio_s": round(audio_s, 1),
        "synthesis_wall_s": round(synth_s, 1),
        "total_wall_s": round(time.perf_counter() - t0, 1),
        "rtf_audio_per_wall": round(audio_s / synth_s, 3) if audio_s else None,
        "workers": workers,
    }


def todo_all(jobs: list[tuple[str, list[dict]]], out: Path) -> list[tuple[str, list[dict]]]:
    """The jobs whose shard file does not exist yet."""
    return [(n, u) for n, u in jobs if not (out / "shards" / f"{n}.parquet").exists()]


def main(argv: list[str] | None = None) -> None:
    """Command line entry point; see the module docstring."""
    p = argparse.ArgumentParser(
        prog="python -m mkd_jax.corpus.synth", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable)")
    p.add_argument("--hours", type=float, required=True, help="train+dev+test hours")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0.8,0.1,0.1", help="train,dev,test shares of --hours")
    p.add_argument("--test-seen-fraction", type=float, default=0.05,
                   help="extra test_seen slice, as a share of --hours")  # fmt: skip
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--blends", type=int, default=12, help="Kokoro blend voices for training")
    p.add_argument("--held-out", default=",".join(voices.DEFAULT_HELD_OUT),
                   help="comma-separated test-only voices")  # fmt: skip
    p.add_argument("--ood-utterances", type=int, default=160,
                   help="test_ood size (held-out engines); 0 leaves it out")  # fmt: skip
    p.add_argument(
        "--no-real-speech",
        action="store_true",
        help="leave out the real_unlabelled split (Debian hedgewars-data, alsa-utils)",
    )
    p.add_argument(
        "--real-train",
        action="store_true",
        help="add the real_train split: real speech without transcripts to distil on "
        "(Debian warzone2100-data); label it with `mkd_jax.pseudolabel`",
    )
    p.add_argument("--workers", type=int, default=0, help="0: one per CPU core")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads per worker")
    p.add_argument("--max-shards", type=int, default=None, help="stop after N new shards")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    try:
        _run(args)
    except (ValueError, OSError) as e:  # one line, as every mkd_jax command ends on bad input
        if args.verbose:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


def check_args(args) -> tuple[float, float, float]:
    """The command line's values, checked before anything is planned or written; returns the
    split fractions."""
    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError:
        raise ValueError(
            f"--fractions {args.fractions!r}: expected three numbers like 0.8,0.1,0.1"
        ) from None
    if (
        len(fractions) != 3
        or not all(math.isfinite(f) and f > 0 for f in fractions)
        or abs(sum(fractions) - 1) > 1e-6
    ):
        raise ValueError(
            f"--fractions {args.fractions!r}: expected three positive shares summing to 1"
        )
    if not (math.isfinite(args.hours) and args.hours > 0):
        raise ValueError(f"--hours {args.hours}: must be a positive number of hours")
    if not (math.isfinite(args.test_seen_fraction) and 0 <= args.test_seen_fraction < 1):
        raise ValueError(f"--test-seen-fraction {args.test_seen_fraction}: must be in [0, 1)")
    for flag, value, lo in (
        ("--shard-size", args.shard_size, 1), ("--blends", args.blends, 0),
        ("--ood-utterances", args.ood_utterances, 0), ("--workers", args.workers, 0),
        ("--threads", args.threads, 1),
    ):  # fmt: skip
        if value < lo:
            raise ValueError(f"{flag} {value}: must be >= {lo}")
    out = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "plan.json").is_file():
        raise ValueError(
            f"--out {out}: holds other files and no plan.json, so it is not a corpus to resume; "
            "name an empty or new folder"
        )
    return fractions


def _run(args) -> None:
    fractions = check_args(args)
    cfg = Config(
        hours=args.hours,
        seed=args.seed,
        fractions=fractions,
        test_seen_fraction=args.test_seen_fraction,
        shard_size=args.shard_size,
        blends=args.blends,
        held_out=tuple(v.strip() for v in args.held_out.split(",") if v.strip()),
        ood_utterances=args.ood_utterances,
        real_speech=not args.no_real_speech,
        real_train=args.real_train,
    )
    stats = build(args.out, cfg, args.workers, args.threads, args.max_shards)
    if stats is None:
        return
    for split, n in stats["utterances"].items():
        print(f"{split:10s} {n:6d} utterances {stats['hours'][split]:.3f} h")
    print(
        f"synthesised {stats['synthesised_audio_s']:.0f} s of audio in "
        f"{stats['synthesis_wall_s']:.0f} s: RTF {stats['rtf_audio_per_wall']} audio s / wall s "
        f"({stats['workers']} workers); total wall {stats['total_wall_s']:.0f} s"
    )
    (args.out / "build_stats.json").write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
