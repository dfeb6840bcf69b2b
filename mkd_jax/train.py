"""Distil teachers into a LoRA student with projection mappers.

    python -m mkd_jax.train --config configs/tiny.py --workdir /tmp/mkd_tiny [--config.a.b=v]

Rerunning with the same workdir resumes from its latest checkpoint (state, optimizer, RNG and
data position), bit-exactly. SIGTERM/SIGINT save a checkpoint and exit cleanly. Writes
`config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/`, `report.json`/`report.md`
and `curves.png` into the workdir. With no teachers configured, it trains the LoRA student with
CE only (the supervised mode).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from absl import flags, logging
from ml_collections import ConfigDict, config_flags

from mkd_jax import cli
from mkd_jax.cli import RunFailed
from mkd_jax.validate import check_splits, validate

# jax, flax, orbax and transformers take seconds to import: each function imports them after the
# config is validated, so a bad config stops in about two seconds.

FLAGS = flags.FLAGS


def _device_batch(batch: dict, shardings: dict) -> dict:
    """Global arrays from this process's rows (each process holds 1/process_count of a batch)."""
    import jax

    n = jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(shardings[k], v, (v.shape[0] * n, *v.shape[1:]))
        for k, v in batch.items()
        if k in shardings
    }


def _wer(cfg, roles, merged, utts, split, max_batches, *, zero_shot: bool = False) -> dict:
    """WER of `merged` on a split. `zero_shot=True` (the untrained student, the same in every
    run of a checkpoint) decodes once and caches the transcripts in the asset cache, so
    reruns, seeds and ablation rows reuse them."""
    from mkd_jax import agreement, decode
    from mkd_jax.evaluate import score, transcribe_utts

    role = roles["student"]
    student, tok, folder = role.model, role.tokenizer, role.folder
    spec = decode.spec_from_folder(
        folder, tok, max_new_tokens=cfg.eval.max_new_tokens, beam_size=cfg.eval.beam_size
    )

    def transcribe(u):
        return transcribe_utts(
            student,
            merged,
            tok,
            spec,
            u,
            batch_size=cfg.data.eval_batch_size,
            n_frames=cfg.data.n_frames,
            max_batches=max_batches,
            desc=f"decode {split}",
            reuse_encoder=True,
        )

    if zero_shot and cfg.student.checkpoint and max_batches == 0:
        settings = {"max_new_tokens": cfg.eval.max_new_tokens, "beam_size": cfg.eval.beam_size}
        ref = agreement.reference(
            f"{cfg.student.checkpoint} zero-shot", [folder], transcribe, utts,
            n_frames=cfg.data.n_frames, cache=agreement.cache_dir(), split=split,
            settings=settings,
        )  # fmt: skip
        tr = agreement.as_transcripts(ref)
    else:
        tr = transcribe(utts)
    res = score(utts, tr.ids, tr.hyps, transcripts=tr)["all"]  # n scored / total, context
    res["n_frames"] = cfg.data.n_frames
    return res


def _agreement_reference(cfg, roles):
    """`(name, Role)` whose transcripts the student is compared with: `eval.agreement_reference`
    (a model name or folder, so runs without teachers, e.g. CE only, are compared too), else the
    first teacher; None when there is neither or the teacher is randomly initialised."""
    from mkd_jax.roles import build_role

    ref = cfg.eval.get("agreement_reference", "")
    if ref:
        return ref, build_role(ConfigDict(dict(checkpoint=ref, tokenizer="", dtype="float32")), ref)
    if not roles["teachers"]:
        return None
    name = next(iter(roles["teachers"]))
    if not cfg.teachers[name].checkpoint:
        logging.info("teachers.%s is randomly initialised: no real-audio agreement", name)
        return None
    return name, roles["teachers"][name]


def _real_agreement(cfg, roles, merged, source) -> dict | None:
    """The student's WER against a reference model's transcripts of `real_unlabelled` (see
    `_agreement_reference`), before and after training, both at the training context (like for
    like).

    The reference decodes once at its whole context (30 s for Whisper), greedy; its transcripts
    and the untrained student's are cached under the asset cache (`agreement.cache_dir()`), so
    reruns and ablation rows decode only the trained student. None without a reference or
    without that split.
    """
    from mkd_jax import agreement, decode
    from mkd_jax.evaluate import transcribe_utts

    real = agreement.load_split_if_present(
        source, agreement.SPLIT, require_text=False, max_utts=agreement.MAX_CLIPS
    )
    if real is None:
        return None
    found = _agreement_reference(cfg, roles)
    if found is None:
        return None
    name, reference_role = found
    bs, cache, tokens = cfg.data.eval_batch_size, agreement.cache_dir(), cfg.eval.max_new_tokens

    def decoder(model, params, tok, spec, n_frames, desc, reuse_encoder=False):
        return lambda utts: transcribe_utts(
            model, params, tok, spec, utts, batch_size=bs, n_frames=n_frames, desc=desc,
            reuse_encoder=reuse_encoder,
        )  # fmt: skip

    t_model, t_params, t_tok, t_folder = reference_role
    t_spec = decode.spec_from_folder(t_folder, t_tok, max_new_tokens=tokens)
    t_frames = 2 * t_model.max_source_positions
    # Through the memo: a later ensemble reference (the demo's) reuses this encoder's outputs.
    t_decode = decoder(t_model, t_params, t_tok, t_spec, t_frames, f"reference {name}", True)
    ref = agreement.reference(
        name, [t_folder], t_decode, real, n_frames=t_frames, cache=cache,
        settings={"max_new_tokens": tokens},
    )  # fmt: skip
    student, params_s, tok, folder = roles["student"]
    spec = decode.spec_from_folder(folder, tok, max_new_tokens=tokens, beam_size=cfg.eval.beam_size)
    n_frames = cfg.data.n_frames
    before = decoder(student, params_s, tok, spec, n_frames, "agreement before", True)
    if cfg.student.checkpoint:  # the untrained student is the same in every run: cache it
        settings = {"max_new_tokens": tokens, "beam_size": cfg.eval.beam_size}
        zero_shot = agreement.as_transcripts(
            agreement.reference(
                f"{cfg.student.checkpoint} zero-shot", [folder], before, real,
                n_frames=n_frames, cache=cache, settings=settings,
            )
        )  # fmt: skip
    else:
        zero_shot = before(real)
    after = decoder(student, merged, tok, spec, n_frames, "agreement after", True)(real)
    out = {"split": agreement.SPLIT, "reference": name}
    for when, tr in (("before", zero_shot), ("after", after)):
        out[when] = {**agreement.agreement(tr, ref, real), "n_frames": n_frames}
        logging.info("real-audio agreement %s: %s", when, agreement.summary(out[when]))
    return out


def _train_batches(cfg, train, tokenizers, buckets, n_mels: int, setup, cache_for):
    """The training stream: the train split's batches, or with `data.mix` a Grain mixture of it
    (weight `data.source_weight`) and every further source, interleaved by weight. With the
    teacher cache each source reads its own (`cache_for(source, utts)` builds or finds it).

    Args:
      train: `(source, utts)` of the train split.
    """
    from mkd_jax import teacher_cache
    from mkd_jax.data import batching, loaders
    from mkd_jax.roles import resolve_source

    audio = setup.cache is None or not setup.cache.student_sites

    def batches(source, split_utts, prefetch, workers):
        it = batching.BatchIterator(
            split_utts, tokenizers, buckets=buckets, n_mels=n_mels, seed=cfg.seed,
            prefetch=prefetch, workers=workers, audio=audio,
        )  # fmt: skip
        dropped, limit = it.report.counts["exceeds_bucket"], cfg.data.source.max_bad_fraction
        if dropped > limit * len(split_utts):  # training on a silently smaller split
            raise ValueError(
                f"data.token_buckets={tuple(cfg.data.token_buckets)}, data.n_frames="
                f"{cfg.data.n_frames}: {dropped} of {len(split_utts)} training utterances of "
                f"{split_utts.source} fit no bucket, more than data.source.max_bad_fraction="
                f"{limit:g}; raise the largest bucket or n_frames"
            )
        if setup.cache is None:
            return it
        folder = cache_for(source, split_utts)
        return teacher_cache.CachedBatches(it, folder, setup.cache, setup, cfg.data.n_frames)

    if train[0].get("streaming", False):
        from mkd_jax.data.streaming import StreamingBatches

        largest = max(buckets, key=lambda b: (b.n_frames, b.n_tokens))
        logging.info("streaming %s with one bucket %s", cfg.data.train_split, largest)
        return StreamingBatches(
            train[0], cfg.data.train_split, tokenizers, largest, n_mels=n_mels, audio=audio
        )
    mix = cfg.data.get("mix", {})
    workers = cfg.data.get("workers", 0)
    if not mix:
        return batches(*train, cfg.data.prefetch, workers)
    from mkd_jax.data.mixture import Mixture

    sources = {"data.source": batches(*train, 0, 0)}
    weights = {"data.source": float(cfg.data.source_weight)}
    for name, entry in mix.items():
        source = resolve_source(entry.source)
        sources[f"data.mix.{name}"] = batches(source, loaders.load_split(source, entry.split), 0, 0)
        weights[f"data.mix.{name}"] = float(entry.weight)
    logging.info("training mixture: %s", ", ".join(f"{n} {w:g}" for n, w in weights.items()))
    return Mixture(sources, weights, prefetch=cfg.data.prefetch, workers=workers)


# Settings that do not shape the steps: what a run logs and evaluates, where it checkpoints and
# caches, and the device mesh. A resume under changes to any other is named in the report.
UNSHAPING = ("log_every_steps", "eval", "ckpt", "cache.dir", "mesh", "sharding_rules")


def config_changes(workdir: Path, cfg_json: str) -> list[str]:
    """Settings (`key old -> new`) in which `cfg_json` differs from the config that trained the
    checkpoints in `workdir` (its `config.json`), but the `UNSHAPING` ones; [] for a fresh run.
    Resuming under them is allowed (lowering optim.lr after a non-finite stop is the usual fix),
    but the run's report names them, so its numbers are never taken for one config's."""
    import json

    from flax.traverse_util import flatten_dict

    saved, ckpts = workdir / "config.json", workdir / "checkpoints"
    if not saved.is_file() or not ckpts.is_dir():
        return []
    if not any(p.name.isdigit() for p in ckpts.iterdir()):
        return []
    old = flatten_dict(json.loads(saved.read_text()), sep=".")
    new = flatten_dict(json.loads(cfg_json), sep=".")
    gone = "(absent)"
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k, gone) != new.get(k, gone))
    return [
        f"{k} {old.get(k, gone)!r} -> {new.get(k, gone)!r}"
        for k in changed
        if not any(k == p or k.startswith(p + ".") for p in UNSHAPING)
    ]


# Over this share of the eval split looping (no end-of-text) or failing to decode, the trained
# student's output is garbage, not a worse model.
DEGENERATE_SHARE = 0.25


def degenerate(before: dict | None, after: dict | None) -> str | None:
    """Why the trained student's eval-split result `after` is garbage, or None: decodes that loop
    or fail on over `DEGENERATE_SHARE` of the utterances, or a WER over 100%, where the untrained
    student's `before` (if scored) did not already show the same."""
    if not after:
        return None

    def looping(r):
        n = r.get("n_total", r.get("n", 0))
        bad = len(r.get("flagged") or []) + len(r.get("failures") or [])
        return bad, n, n > 0 and bad > DEGENERATE_SHARE * n

    bad, n, loops = looping(after)
    if loops and not (before and looping(before)[2]):
        return f"{bad} of {n} utterances loop without end-of-text or fail to decode"
    if after["wer"] > 100.0 and not (before and before["wer"] > 100.0):
        return f"WER {after['wer']:.1f}%, more words inserted than the references hold"
    return None


def earlier_clocks(history: dict | None) -> tuple[float | None, float | None]:
    """`(wall_s, cpu_s)` of a run's earlier processes, up to their last checkpoint (the time of
    steps lost to a hard kill after it is not counted), from the restored checkpoint's history;
    None for a fresh run. CPU time (every thread of the process; Grain's worker processes, with
    data.workers > 0, apart) does not count time spent stopped or waiting for a shared machine.
    A checkpoint from before either was recorded leaves it unknown (None), not undercounted."""
    if history is None:
        return 0.0, 0.0
    return history.get("wall_s"), history.get("cpu_s")


def run(cfg, workdir: Path, *, stop_at: int | None = None) -> dict:
    """Train (or resume) one run; returns the final trainable tree and run facts.

    `stop_at` ends this invocation after that step with a checkpoint, as SIGTERM would (for
    time-boxed sessions); rerunning continues to `cfg.total_steps`.
    """
    validate(cfg)  # every value and cross-field rule, before anything is built
    import flax.linen as nn
    import jax
    from tqdm import tqdm

    from mkd_jax import assets, lora, sharding
    from mkd_jax.checkpoint import Checkpointer
    from mkd_jax.distill import merged_student, nonfinite_terms
    from mkd_jax.evaluate import load_scoring_split
    from mkd_jax.report import RunLog, write_report
    from mkd_jax.roles import build_roles, resolve_source, train_input
    from mkd_jax.state import (
        abstract_batch,
        init_state,
        init_trainable,
        make_setup,
        make_step_fn,
        make_tx,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("MKD_JAX_DISTRIBUTED") == "1":
        jax.distributed.initialize()  # coordinator and ranks from the launcher's environment
    jax.config.update("jax_threefry_partitionable", True)
    # Reruns, resumes and ablation rows share compiled programs through the persistent cache.
    jax.config.update("jax_compilation_cache_dir", str(assets.cache_dir() / "xla"))
    t_start, cpu_start = time.time(), time.process_time()

    # ----- mesh, roles, data -----
    mesh = sharding.make_mesh(cfg.mesh)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    dp = sharding.data_parallel_size(mesh, rules)
    if cfg.data.batch_size % dp:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size} is not a multiple of the "
            f"{dp}-way data parallelism of mesh {dict(mesh.shape)}"
        )
    # After the checks above, so a config refused on this machine leaves the workdir as it was.
    cfg_json = cfg.to_json_best_effort(indent=2)
    changes = config_changes(workdir, cfg_json)
    if changes:
        logging.warning("resuming %s under a changed config: %s", workdir, "; ".join(changes))
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(cfg_json)
    source = resolve_source(cfg.data.source)  # a synthetic corpus is built here on first use
    check_splits(cfg, source)
    roles = build_roles(cfg)
    student, params_s = roles["student"].model, roles["student"].params
    setup = make_setup(cfg, roles)
    train_src, train_utts, tokenizers, buckets = train_input(cfg, roles, setup)
    eval_utts = load_scoring_split(source, cfg.data.eval_split)

    cache_builds = []  # (folder, seconds spent in ensure) of each teacher cache read

    def cache_for(src, utts):  # build (or resume) a source's teacher-output cache
        from mkd_jax import teacher_cache

        t = time.perf_counter()
        folder = teacher_cache.ensure(
            cfg, roles, setup, utts, tokenizers, buckets, src, mesh=mesh, rules=rules
        )
        cache_builds.append((folder, time.perf_counter() - t))
        return folder

    train_iter = _train_batches(
        cfg, (train_src, train_utts), tokenizers, buckets, student.num_mel_bins, setup, cache_for
    )

    # ----- state, shardings, restore -----
    rng = jax.random.PRNGKey(cfg.seed)
    init_rng, state_rng = jax.random.split(rng)
    tx, schedules = make_tx(cfg)
    state = jax.jit(lambda r1, r2: init_state(init_trainable(cfg, roles, setup, r1), tx, r2))(
        init_rng, state_rng
    )
    batch_like = abstract_batch(cfg, setup, student)
    jitted_step, sh = make_step_fn(setup, tx, roles, state, batch_like, mesh, rules)
    state_sh, batch_sh = sh["state"], sh["batch"]
    teachers = {n: r.params for n, r in roles["teachers"].items() if n in sh["frozen"]["teachers"]}
    frozen = sharding.put({"student": params_s, "teachers": teachers}, sh["frozen"])
    state = jax.device_put(state, state_sh)
    n_train = lora.count(state["trainable"])
    log = RunLog(workdir, cfg, roles, n_train)
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.ckpt.max_to_keep)
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, meta, start = restored
        train_iter.restore(meta["data"])
        log.history = meta.get("history", {})
        logging.info("resumed from step %d", start)
        if changes:  # the report names them, with the step they took effect at
            log.history.setdefault("config_changes", []).append({"step": start, "changed": changes})
    wall_before, cpu_before = earlier_clocks(log.history if restored is not None else None)
    # The first process's cache time (a resumed one finds its caches built); checkpoints keep it,
    # and the rows the steps read. A checkpoint from before they were kept gives no estimate.
    if restored is not None:
        log.history.setdefault("rows_read", None)
    log.history.setdefault("cache_build_s", [t for _, t in cache_builds])

    def clocks() -> dict:
        wall = None if wall_before is None else wall_before + time.time() - t_start
        cpu = None if cpu_before is None else cpu_before + time.process_time() - cpu_start
        return {"wall_s": wall, "cpu_s": cpu}

    # ----- jit -----
    def step_fn(state, frozen, batch):
        # The model's logical activation constraints resolve against these rules when traced.
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            return jitted_step(state, frozen, batch)

    merge_fn = jax.jit(lambda t, f: merged_student(t, f, setup))

    # ----- WER before training -----
    if "before" not in log.history and cfg.eval.max_batches >= 0:  # -1 skips every WER pass
        merged = merge_fn(state["trainable"], frozen)
        log.history["before"] = _wer(
            cfg, roles, merged, eval_utts, cfg.data.eval_split, cfg.eval.max_batches,
            zero_shot=True,
        )  # fmt: skip
        logging.info(
            "%s WER before training: %.2f%%", cfg.data.eval_split, log.history["before"]["wer"]
        )

    # ----- loop -----
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signal.Signals(signum).name

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    # On a CPU the step runs on the cores that would run ahead of it: with steps queued behind
    # a running one, the demo's step took 0.96-1.23 s instead of 0.84 s, with four times the
    # page faults (BUILD_NOTES "Steps queued ahead"). Accelerators keep dispatching ahead.
    wait_each_step = jax.default_backend() == "cpu"
    step = int(jax.device_get(state["step"]))
    bar = tqdm(total=cfg.total_steps, initial=step, desc="train", unit="step")
    pending, t_window = [], time.time()
    skipped = log.history.setdefault("nonfinite_steps", [])

    def check_finite(first_step: int, metrics: list) -> None:
        """Record skipped (non-finite) steps; stop the run past `max_nonfinite_steps`."""
        for k, m in enumerate(metrics):
            if m["train/finite"] < 1.0:
                bad = [t for t in nonfinite_terms(m) if t != "train/finite"]
                skipped.append({"step": first_step + k, "terms": bad})
                logging.warning("step %d: non-finite %s; update skipped", first_step + k, bad)
        if len(skipped) > cfg.optim.max_nonfinite_steps:
            first, latest = skipped[0], ckpt.latest_step()
            ckpt.close()
            train_iter.close()
            raise RunFailed(
                f"step {first['step']}: non-finite {', '.join(first['terms'])} "
                f"({len(skipped)} non-finite step(s), optim.max_nonfinite_steps="
                f"{cfg.optim.max_nonfinite_steps}); the latest checkpoint (step {latest}) holds "
                f"the last finite state. Lower optim.lr (now {cfg.optim.lr:g}) or check the data"
            )

    while step < cfg.total_steps and stop["signal"] is None:
        if stop_at is not None and step >= stop_at:
            stop["signal"] = f"stop_at={stop_at}"
            break
        batch = next(train_iter)
        state, metrics = step_fn(state, frozen, _device_batch(batch, batch_sh))
        if wait_each_step:
            jax.block_until_ready(metrics)
        step += 1
        bar.update(1)
        pending.append(
            (  # this process's rows times the process count: the global batch
                metrics,
                float(batch["valid"].sum()) * jax.process_count(),
                float(batch["audio_frames"].sum()) / 100.0 * jax.process_count(),
            )
        )
        save_now = step % cfg.ckpt.every_steps == 0 or step == cfg.total_steps
        if step % cfg.log_every_steps == 0 or step == cfg.total_steps or save_now:
            fetched = jax.device_get([m for m, _, _ in pending])
            check_finite(step - len(pending) + 1, fetched)
            log.interval(
                step,
                fetched,
                sum(u for _, u, _ in pending),
                sum(a for _, _, a in pending),
                time.time() - t_window,
                {k: float(s(step)) for k, s in schedules.items()},
                bar,
            )
            pending, t_window = [], time.time()
        if cfg.eval.every_steps and step % cfg.eval.every_steps == 0 and step < cfg.total_steps:
            res = _wer(
                cfg,
                roles,
                merge_fn(state["trainable"], frozen),
                eval_utts,
                cfg.data.eval_split,
                cfg.eval.max_batches,
            )
            log.scalar(step, "eval/wer", res["wer"])
            log.scalar(step, "eval/cer", res["cer"])
        if save_now:
            log.history.update(clocks())
            ckpt.save(step, state, {"data": train_iter.state(), "history": log.history})
    bar.close()
    if stop["signal"] is not None:
        log.history.update(clocks())
        ckpt.save(step, state, {"data": train_iter.state(), "history": log.history}, force=True)
        ckpt.close()
        train_iter.close()
        log.close()
        logging.warning(
            "%s: saved step %d to %s; rerun to resume",
            stop["signal"],
            step,
            workdir / "checkpoints",
        )
        return {"step": step, "stopped_by": stop["signal"]}
    for s, h in old_handlers.items():
        signal.signal(s, h)
    ckpt.close()
    train_iter.close()

    # ----- final report -----
    # Whole splits as scoring sees them (no duration filter), with n and context in each result;
    # test_ood (engines never used in training) where the corpus has it.
    merged = merge_fn(state["trainable"], frozen)
    after = {}
    scored = cfg.eval.max_batches >= 0
    splits = [cfg.data.eval_split, cfg.data.test_split, "test_ood"] if scored else []
    for split in dict.fromkeys(splits):
        try:
            utts = eval_utts if split == cfg.data.eval_split else load_scoring_split(source, split)
        except (ValueError, FileNotFoundError, KeyError) as e:
            logging.warning("no %s split to score (%s)", split, e)
            continue
        after[split] = _wer(cfg, roles, merged, utts, split, cfg.eval.max_batches)
    agree = _real_agreement(cfg, roles, merged, source) if scored else None
    why = degenerate(log.history.get("before"), after.get(cfg.data.eval_split))
    from mkd_jax.teacher_cache import savings

    built = log.history["cache_build_s"]
    timed = [(f, t) for (f, _), t in zip(cache_builds, built, strict=False)]
    report = write_report(
        workdir, cfg, roles, log, after, n_train, clocks(), agreement=agree, degenerate=why,
        cache_savings=savings(cfg, timed, log.history.get("rows_read")),
    )  # fmt: skip
    print(report)
    if why:  # never exit 0 with garbage; the report and checkpoints stay for a look
        raise RunFailed(
            f"{workdir}: the trained student's {cfg.data.eval_split} output is degenerate ({why}); "
            f"its report.md says more. Lower optim.lr (now {cfg.optim.lr:g}) or check the data"
        )
    return {
        "step": step,
        "trainable": jax.device_get(state["trainable"]),
        "after": after,
        "train_step_compiles": jitted_step._cache_size(),
    }


def main(argv):
    del argv
    run(FLAGS.config, Path(FLAGS.workdir))


if __name__ == "__main__":
    # Flags exist only when run as a program, so demo/ablate/export can import `run`.
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Run folder; rerun with the same one to resume.")
    flags.mark_flags_as_required(["config", "workdir"])
    cli.run(main)
