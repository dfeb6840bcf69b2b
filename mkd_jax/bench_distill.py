"""`python -m mkd_jax.bench distill`: whole training steps, ours against the PyTorch + PEFT way.

The work (identical for every implementation): Whisper base -> tiny.en (cross-tokenizer KD), a
batch of 4 utterances, 30 s log-mel features (computed once, before timing), 32 decoder
positions, LoRA r=32 (alpha 32, no dropout) on the ten decoder linears of every decoder layer,
a linear projector from the student's last encoder output onto the teacher's with a masked MSE,
loss CE + T^2 KL (T = 2), AdamW.

- `ours`: the jitted `distill.train_step`, teachers run every step; "LoRA merged" is round 1's
  forward (LoRA merged into the kernels, so every targeted kernel gets a full weight gradient),
  the default keeps the adapters beside the frozen kernels (`lora.adapter`).
- `ours cached`: the same step reading the teacher-output cache (top-k 64); "frozen encoder"
  maps the decoder output instead of the encoder's and reads the cached student encoder
  output, so only the student decoder runs; "encoder LoRA" puts LoRA on the encoder as well
  (teachers cached only, the student runs whole).
- `torch`: transformers' PyTorch Whisper + PEFT LoRA + an `nn.Linear` projector, the teacher
  once per step under `no_grad`, default attention, every core, no gradient checkpointing.

On an accelerator (JAX's default backend is not the CPU) the reference runs on CUDA, the rows
that answer CPU questions (round 1's merged LoRA, encoder LoRA, the top-k KD gap) stay out, and
bf16 rows join the table: ours with bf16 compute (`role.dtype`; float32 parameters, layer
norms and losses), uncached and cached, and the reference under `torch.autocast(bfloat16)`.
The peak is then the bf16 matmul rate measured in the run, and the device's peak memory is
printed (ours for all our rows in one process, the reference's per row). `--distill_batch`
sets the batch (4 by default; an accelerator needs more to fill it).

Every implementation is warmed (compile time reported apart), then timed in alternating rounds;
the table shows medians, samples/s, label tokens/s, ratios to the reference, XLA's FLOPs per
step, utilisation against a matmul peak measured in the same run, and memory.
"""

from __future__ import annotations

import functools
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np

from mkd_jax.config_base import LORA_DECODER, LORA_ENCODER, base_config, role

BATCH, TOKENS, FRAMES, RANK, TEMPERATURE, TOP_K = 4, 32, 3000, 32, 2.0, 64


def _config(variant: str, batch: int = BATCH, dtype: str = "float32"):
    c = base_config()
    c.student = role(checkpoint="tiny.en", dtype=dtype)
    c.teachers.base = role(checkpoint="base", dtype=dtype)
    c.data.n_frames, c.data.token_buckets, c.data.batch_size = FRAMES, (TOKENS,), batch
    c.lora.targets = (LORA_DECODER, LORA_ENCODER) if variant == "encoder_lora" else (LORA_DECODER,)
    c.lora.rank, c.lora.alpha, c.lora.dropout = RANK, float(RANK), 0.0
    c.mappers.strategy, c.mappers.kind, c.mappers.loss = "last", "linear", "mse"
    c.mappers.sides = ("decoder",) if variant == "frozen_encoder" else ("encoder",)
    c.loss.w_ce, c.loss.w_kd, c.loss.temperature = 1.0, 1.0, TEMPERATURE
    c.optim.warmup_steps, c.optim.clip_norm = 0, 0.0
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    c.cache.enabled = variant != "uncached"
    c.cache.top_k = TOP_K
    return c


def _batch(roles, setup, make_clips, batch: int = BATCH):
    """One batch of synthesised speech, as the batcher builds it (features computed here)."""
    import tempfile

    import soundfile as sf

    from mkd_jax.corpus.sentences import HARVARD
    from mkd_jax.data import batching, features, loaders

    clips = make_clips(batch)
    folder = Path(tempfile.mkdtemp(prefix="mkd_bench_")) / "bench" / "19" / "198"
    folder.mkdir(parents=True)
    lines = []
    for i, clip in enumerate(clips):
        sf.write(folder / f"19-198-{i:04d}.flac", clip, features.SAMPLE_RATE)
        lines.append(f"19-198-{i:04d} {HARVARD[i % len(HARVARD)]}")
    (folder / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    source = {"kind": "librispeech", "path": str(folder.parents[2])}
    utts = loaders.load_split(source, "bench")
    toks = {batching.STUDENT: roles["student"].tokenizer}
    cross = [n for n, ix in setup.vocab_index.items() if ix is not None]
    toks.update({n: roles["teachers"][n].tokenizer for n in cross})
    it = batching.BatchIterator(
        utts, toks, buckets=batching.make_buckets((TOKENS,), (FRAMES,), batch),
        shuffle=False, prefetch=0, process_index=0, process_count=1,
    )  # fmt: skip
    out = next(it)
    assert out["mel"].shape[::2] == (batch, FRAMES)
    return {k: v for k, v in out.items() if k != "ids"}


class _Ours:
    """One jitted step of a variant, with its inputs on device."""

    def __init__(self, variant, roles, batch, *, merged: bool = False, dtype: str = "float32"):
        import dataclasses

        import jax

        from mkd_jax import sharding
        from mkd_jax.roles import frozen_params
        from mkd_jax.state import init_state, init_trainable, make_setup, make_step_fn, make_tx
        from mkd_jax.teacher_cache import _targets

        cfg = _config(variant, len(batch["mel"]), dtype)
        setup = dataclasses.replace(make_setup(cfg, roles), lora_merged=merged)
        mesh = sharding.make_mesh(cfg.mesh)
        rules = tuple(tuple(r) for r in cfg.sharding_rules)
        tx, _ = make_tx(cfg)
        state = jax.jit(lambda r: init_state(init_trainable(cfg, roles, setup, r), tx, r))(
            jax.random.PRNGKey(0)
        )
        frozen = frozen_params(roles)
        batch = dict(batch)
        if setup.cache is not None:  # the cached fields of this batch, as the cache holds them
            out = jax.jit(functools.partial(_targets, setup=setup))(frozen, batch)
            batch.update({k: np.asarray(v) for k, v in out.items()})
            batch["c:audio_frames"] = batch["audio_frames"]
            if setup.cache.student_sites:
                del batch["mel"]
            frozen["teachers"] = {}
        like = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
        step, sh = make_step_fn(setup, tx, roles, state, like, mesh, rules)
        self.frozen = sharding.put(frozen, sh["frozen"])
        self.batch = {k: jax.device_put(v, sh["batch"][k]) for k, v in batch.items()}
        self.state = jax.device_put(state, sh["state"])
        self.mesh, self.rules, self.step = mesh, rules, step
        t0 = time.perf_counter()
        with jax.set_mesh(mesh):
            lowered = step.lower(self.state, self.frozen, self.batch)
            compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        # FLOPs of the step's HLO before backend passes: on a GPU the compiled module's matmuls
        # are library calls (cuBLAS, cuDNN) that its cost analysis does not count.
        cost = lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.flops = float(cost.get("flops", 0.0))
        mem = compiled.memory_analysis()
        self.memory = (
            mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            if mem is not None
            else 0
        )
        self.tokens = float(np.sum(batch["mask"]))
        self.run()  # warm-up

    def run(self):
        import flax.linen as nn
        import jax

        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            self.state, metrics = self.step(self.state, self.frozen, self.batch)
        jax.block_until_ready(metrics["train/loss"])


class _Torch:
    """The reference step, written the paper's way."""

    def __init__(self, roles, setup, batch, *, bf16: bool = False):
        import contextlib

        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import WhisperForConditionalGeneration

        torch.set_num_threads(os.cpu_count() or 1)
        torch.manual_seed(0)
        self.torch = torch
        self.dev = "cuda" if _accelerator() and torch.cuda.is_available() else "cpu"
        self.amp = (
            torch.autocast(self.dev, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        )
        if self.dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        folder_s, folder_t = roles["student"].folder, roles["teachers"]["base"].folder
        self.teacher = WhisperForConditionalGeneration.from_pretrained(folder_t).eval()
        student = WhisperForConditionalGeneration.from_pretrained(folder_s)
        lora = LoraConfig(
            r=RANK, lora_alpha=RANK, lora_dropout=0.0,
            target_modules=r".*decoder\.layers\.\d+\.(self_attn|encoder_attn)\.(q_proj|k_proj|v_proj|out_proj)|.*decoder\.layers\.\d+\.(fc1|fc2)",
        )  # fmt: skip
        self.student = get_peft_model(student, lora)
        self.student.train()
        d_s, d_t = student.config.d_model, self.teacher.config.d_model
        self.proj = torch.nn.Linear(d_s, d_t)
        self.teacher, self.student, self.proj = (
            m.to(self.dev) for m in (self.teacher, self.student, self.proj)
        )
        params = [p for p in self.student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW([*params, *self.proj.parameters()], lr=1e-3)
        t = lambda x: torch.from_numpy(np.array(x)).to(self.dev)  # noqa: E731
        self.mel = t(batch["mel"])
        self.dec, self.labels = t(batch["decoder_input"]).long(), t(batch["labels"]).long()
        self.mask = t(batch["mask"])
        self.t_dec = t(batch["t:base/decoder_input"]).long()
        self.rows = t(batch["t:base/rows"]).long()
        index = setup.vocab_index["base"]
        self.index = t(np.maximum(index, 0)).long()
        self.support = t(index >= 0)
        frames = (t(batch["audio_frames"]) + 1) // 2
        grid = torch.arange(FRAMES // 2, device=self.dev)
        self.frame_mask = (grid[None, :] < frames[:, None]).float()
        self.tokens = float(self.mask.sum())
        self.run()
        if self.dev == "cuda":
            self.device_peak = torch.cuda.max_memory_allocated()

    def run(self):
        with self.amp:
            self._step()
        if self.dev == "cuda":
            self.torch.cuda.synchronize()

    def _step(self):
        torch, T = self.torch, TEMPERATURE
        with torch.no_grad():
            t_out = self.teacher(
                input_features=self.mel, decoder_input_ids=self.t_dec, output_hidden_states=False
            )
            t_enc = t_out.encoder_last_hidden_state
            valid = self.rows >= 0
            rows = self.rows.clamp(min=0)
            t_logits = torch.gather(
                t_out.logits, 1, rows[..., None].expand(-1, -1, t_out.logits.shape[-1])
            )
            p_t = torch.softmax(t_logits.float() / T, -1).index_select(-1, self.index)
            p_t = torch.where(self.support, p_t, 0.0) * valid[..., None]
            p_t = p_t / p_t.sum(-1, keepdim=True).clamp(min=1e-30)
        out = self.student(
            input_features=self.mel, decoder_input_ids=self.dec, output_hidden_states=False
        )
        logits = out.logits.float()
        ce = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), self.labels, reduction="none"
        )
        ce = (ce * self.mask).sum() / self.mask.sum()
        z = torch.where(self.support, logits / T, -1e30)
        log_q = torch.log_softmax(z, -1)
        kd_mask = self.mask * valid
        kl = (torch.special.xlogy(p_t, p_t) - p_t * log_q).sum(-1)
        kd = T * T * (kl * kd_mask).sum() / kd_mask.sum()
        pred = self.proj(out.encoder_last_hidden_state)
        mse = ((pred.float() - t_enc.float()) ** 2).mean(-1)
        mse = (mse * self.frame_mask).sum() / self.frame_mask.sum()
        loss = ce + kd + mse
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def _kd_gap(roles, batch, ks=(64, 256, 1024, 4096), shift: float = 0.0) -> dict:
    """KD term and its gradient from a top-k cache against the exact (uncached) one, on the
    bench batch: the zero-shot student (`shift=0`), or with every LoRA factor moved by `shift`
    so the student differs from its pretrained self."""
    import dataclasses

    import jax

    from mkd_jax import distill
    from mkd_jax.roles import frozen_params
    from mkd_jax.state import init_trainable, make_setup
    from mkd_jax.teacher_cache import _targets

    cfg = _config("uncached")
    exact = make_setup(cfg, roles)
    trainable = init_trainable(cfg, roles, exact, jax.random.PRNGKey(0))
    trainable = jax.tree.map(lambda x: x + shift, trainable)
    frozen = frozen_params(roles)

    def kd(setup, b):
        w = dataclasses.replace(setup, w_ce=0.0, w_map=0.0)  # the KD term alone
        # Weights and batch as arguments: closed over, XLA would constant-fold whole networks.
        loss = lambda t, f, b: distill.loss_fn(t, f, b, None, 0, setup=w)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(loss))(trainable, frozen, b)

    ref, g_ref = kd(exact, batch)
    g_ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g_ref)])
    out = {"exact": float(ref)}
    for k in ks:
        cfg.cache.enabled, cfg.cache.top_k = True, k
        setup = make_setup(cfg, roles)
        cached = dict(batch)
        fields = jax.jit(functools.partial(_targets, setup=setup))(frozen, batch)
        cached.update({name: np.asarray(v) for name, v in fields.items()})
        value, g = kd(setup, cached)
        g = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)])
        cos = float(g @ g_ref / (np.linalg.norm(g) * np.linalg.norm(g_ref) + 1e-30))
        out[k] = {"kd": float(value), "rel_gap": float(value) / float(ref) - 1, "grad_cos": cos}
    return out


def _print_kd_gap(roles, batch) -> dict:
    out = {}
    for shift, who in ((0.0, "zero-shot student"), (0.01, "LoRA factors shifted by 0.01")):
        gap = out[who] = _kd_gap(roles, batch, shift=shift)
        print(f"KD term (T^2 KL), {who}: exact {gap['exact']:.5f}; from a top-k cache:")
        for k, g in gap.items():
            if k != "exact":
                print(
                    f"  k={k:5d}: {g['kd']:.5f} ({g['rel_gap']:+.2%}), gradient cosine to exact "
                    f"{g['grad_cos']:.5f}"
                )
    return out


def kd_gap_only(make_clips) -> dict:
    """Just the KD gap of a top-k cache (`bench distill_kd_gap`), without the timings."""
    from mkd_jax.roles import build_roles
    from mkd_jax.state import make_setup

    roles = build_roles(_config("uncached"))
    batch = _batch(roles, make_setup(_config("uncached"), roles), make_clips)
    return _print_kd_gap(roles, batch)


def _accelerator() -> bool:
    import jax

    return jax.default_backend() != "cpu"


def _device_peak_bytes() -> int | None:
    """The accelerator's peak bytes in use so far (None on the CPU, which does not say)."""
    import jax

    if not _accelerator():
        return None
    return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def _matmul_peak(seconds: float = 2.0) -> float:
    """FLOP/s of a jitted square matmul on this machine, now: f32 2048^3 on the CPU, bf16
    8192^3 on an accelerator."""
    import jax
    import jax.numpy as jnp

    n, dtype = (8192, jnp.bfloat16) if _accelerator() else (2048, jnp.float32)
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    runs, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        f(a).block_until_ready()
        runs += 1
    return 2 * n**3 * runs / (time.perf_counter() - t0)


def bench_distill(make_clips, rounds: int = 3, batch_size: int = BATCH) -> dict:
    """Prints the table; `make_clips(n)` gives n 16 kHz clips (bench.py's)."""
    import warnings

    from absl import logging
    from transformers.utils import logging as hf_logging

    logging.set_verbosity(logging.WARNING)  # LoRA target lists and layer maps, four times over
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    from mkd_jax.roles import build_roles
    from mkd_jax.state import make_setup

    roles = build_roles(_config("uncached"))
    setup = make_setup(_config("uncached"), roles)
    batch = _batch(roles, setup, make_clips, batch_size)
    impls = {"ours": _Ours("uncached", roles, batch)}
    if not _accelerator():  # round 1's forward and encoder LoRA: the CPU's questions
        impls["ours, LoRA merged (round 1)"] = _Ours("uncached", roles, batch, merged=True)
    impls["ours cached, frozen encoder"] = _Ours("frozen_encoder", roles, batch)
    if not _accelerator():
        impls["ours cached, encoder LoRA"] = _Ours("encoder_lora", roles, batch)
    if _accelerator():
        roles_bf16 = build_roles(_config("uncached", dtype="bfloat16"))
        impls["ours, bf16"] = _Ours("uncached", roles_bf16, batch, dtype="bfloat16")
        impls["ours cached, frozen encoder, bf16"] = _Ours(
            "frozen_encoder", roles_bf16, batch, dtype="bfloat16"
        )
    jax_peak = _device_peak_bytes()
    impls["torch + PEFT (reference)"] = _Torch(roles, setup, batch)
    if _accelerator():
        impls["torch + PEFT, bf16 autocast"] = _Torch(roles, setup, batch, bf16=True)
    times = {name: [] for name in impls}
    for _ in range(rounds):  # alternating, so drift on a shared machine hits all alike
        for name, impl in impls.items():
            t0 = time.perf_counter()
            impl.run()
            times[name].append(time.perf_counter() - t0)
    peak = _matmul_peak()
    ref = statistics.median(times["torch + PEFT (reference)"])
    import jax

    kind = "bf16" if _accelerator() else "f32"
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()}); "
        f"matmul peak {peak / 1e9:.0f} GFLOP/s ({kind}, measured now)\n"
        f"work: base -> tiny.en, batch {batch_size}, {FRAMES // 100} s features, "
        f"{TOKENS} positions, "
        f"LoRA r={RANK} decoder, linear projector + MSE, CE + T^2 KL (T={TEMPERATURE:g}), AdamW; "
        f"median of {rounds} alternating rounds, compile apart"
    )
    header = (
        f"{'implementation':30} {'s/step':>7} {'samples/s':>9} {'tokens/s':>8} {'x ref':>6} "
        f"{'GFLOP':>7} {'util':>5} {'compile s':>9} {'XLA MB':>7}"
    )
    print(header + "\n" + "-" * len(header))
    result = {}
    for name, impl in impls.items():
        t = statistics.median(times[name])
        flops = getattr(impl, "flops", impls["ours"].flops)  # identical work for the reference
        row = {
            "s_per_step": t,
            "samples_per_s": batch_size / t,
            "tokens_per_s": impl.tokens / t,
            "x_ref": ref / t,
            "gflop": flops / 1e9,
            "utilisation": flops / t / peak,
            "times": times[name],
        }
        result[name] = row
        compile_s = f"{impl.compile_s:9.1f}" if hasattr(impl, "compile_s") else f"{'-':>9}"
        memory = f"{impl.memory / 1e6:7.0f}" if hasattr(impl, "memory") else f"{'-':>7}"
        print(
            f"{name:30} {t:7.3f} {row['samples_per_s']:9.2f} {row['tokens_per_s']:8.1f} "
            f"{row['x_ref']:6.2f} {row['gflop']:7.1f} {row['utilisation']:5.0%} {compile_s} "
            f"{memory}"
        )
    if not _accelerator():  # a numerical property of the top-k cache, the same on every device
        result["kd_gap"] = _print_kd_gap(roles, batch)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    print(
        f"peak resident memory of the process (all implementations): {rss:.0f} MB; the "
        "reference's GFLOP is that of our uncached step (identical work)"
    )
    if jax_peak is not None:
        torch_peaks = ", ".join(
            f"{name} {impl.device_peak / 1e9:.2f} GB"
            for name, impl in impls.items()
            if getattr(impl, "device_peak", None)
        )
        print(
            f"device memory at its peak: ours (all our implementations, one process) "
            f"{jax_peak / 1e9:.2f} GB; {torch_peaks}"
        )
        result["device_peak_bytes"] = {"ours": jax_peak}
    return result
