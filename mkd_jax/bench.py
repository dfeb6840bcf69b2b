"""Benchmarks that print speed figures. Never run in the timed test suite.

    python -m mkd_jax.bench decode [--models=tiny.en,base] [--batch_sizes=1,16] [--clips=16]
    python -m mkd_jax.bench features
    python -m mkd_jax.bench distill [--rounds=3] [--distill_batch=4]   # see bench_distill.py
    python -m mkd_jax.bench distill_kd_gap            # the KD term from a top-k cache vs exact
    python -m mkd_jax.bench longform --source=disk:CORPUS --split=test_ood [--minutes=3]
    python -m mkd_jax.bench eval_reuse [--models=tiny.en] [--clips=16]
    python -m mkd_jax.bench attention                  # one encoder attention vs torch SDPA
    python -m mkd_jax.bench kokoro [--clips=16] [--rounds=3]   # corpus TTS: int8 vs integer GEMMs

`features`: log-mel speed (x real time) on batches of 16 x 30 s clips, alone and through the
whole batching pipeline (FLAC decode, resample, log-mel, tokens).

`decode`: greedy decoding real-time factor (wall seconds / audio seconds, lower is better),
generated tokens per second and speed relative to transformers' PyTorch `generate` (its median
time / ours), for our jitted decoder (float32, and `mkd bf16`: matmul operands rounded to
bfloat16 with float32 sums, `--matmul_dtype=bfloat16` of transcribe and evaluate), `generate`
(float32), and CTranslate2 when the `ctranslate2` package is installed (converted from the same
weights, float32), on the same clips and log-mel features, in rounds that alternate between them
in one run (median shown, and the rounds' range); it counts the clips whose bf16 tokens equal the
float32 ones. Warm-up (our compile) is apart.
The clips are synthesised speech (Kokoro voices), or the files given with `--audio`.

`eval_reuse`: a WER pass of a student whose encoder is frozen, encoding every batch (as before
`encoder_memo`) against decoding from the memo's encoder outputs (every pass after the first in a
process: after training, each seed and ablation row), batch 16, 30 s windows, alternating rounds;
checks that both give the same tokens.
"""

from __future__ import annotations

import glob
import os
import platform
import time

import numpy as np
from absl import app, flags

from mkd_jax import cli
from mkd_jax.corpus.sentences import HARVARD

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["tiny.en", "base"], "Models to benchmark.")
flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes.")
flags.DEFINE_integer("clips", 16, "Number of clips (a multiple of every batch size).")
flags.DEFINE_string("audio", None, "Glob of audio files to use instead of synthesised speech.")
flags.DEFINE_integer("max_new_tokens", 96, "Token limit per clip.")
flags.DEFINE_boolean("torch", True, "Also time transformers' PyTorch generate.")
flags.DEFINE_integer("rounds", 3, "decode, distill: alternating timed rounds (median shown).")
flags.DEFINE_integer(
    "distill_batch", 4, "distill: utterances per step (an accelerator needs more)."
)
flags.DEFINE_string("source", None, "longform: KIND:PATH of a corpus (see mkd_jax.evaluate).")
flags.DEFINE_string("split", "test_ood", "longform: the split whose utterances are joined.")
flags.DEFINE_float("minutes", 3.0, "longform: minimum length of each joined recording.")

SENTENCES = HARVARD[:16]
VOICES = ["kokoro:af_heart", "kokoro:am_michael", "kokoro:bf_emma", "kokoro:bm_george"]


def _clips(n: int) -> list[np.ndarray]:
    if FLAGS.audio:
        from mkd_jax.data.audio import read_audio

        paths = sorted(glob.glob(FLAGS.audio))[:n]
        if len(paths) < n:
            raise app.UsageError(f"--audio={FLAGS.audio!r} matched {len(paths)} files, need {n}")
        return [read_audio(p) for p in paths]
    from mkd_jax.corpus.voices import synthesize

    return [synthesize(SENTENCES[i % len(SENTENCES)], VOICES[i % len(VOICES)]) for i in range(n)]


def _clips_with_header(setting: str):
    """The benchmark clips and their audio seconds, after printing the machine and settings."""
    from mkd_jax.data import features

    clips = _clips(FLAGS.clips)
    audio_s = sum(len(c) for c in clips) / features.SAMPLE_RATE
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{len(clips)} clips, {audio_s:.1f} s of audio, 30 s windows, {setting}greedy, "
        f"median of {FLAGS.rounds} alternating rounds"
    )
    return clips, audio_s


def _ours(name, max_new, matmul_dtype="float32"):
    """`(run(mel) -> token rows, texts(rows) -> strings)` for our jitted greedy decoder, its
    matmuls on `matmul_dtype` operands (`decode.with_matmul_dtype`)."""
    from mkd_jax import decode
    from mkd_jax.assets import load_model
    from mkd_jax.data.tokenizers import load_tokenizer

    model, params, config = load_model(name)
    tok = load_tokenizer(config["_folder"], model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(config["_folder"], tok, max_new_tokens=max_new)
    fn = decode.make_generate_fn(decode.with_matmul_dtype(model, matmul_dtype), spec)

    def run(mel):
        return decode.strip(np.asarray(fn(params, mel)), spec.eot)

    return run, lambda rows: [tok.decode(r) for r in rows]


def _torch(name, max_new):
    import jax
    import torch
    from transformers import WhisperForConditionalGeneration

    from mkd_jax import assets
    from mkd_jax.decode import strip

    torch.set_num_threads(os.cpu_count() or 1)
    dev = "cuda" if jax.default_backend() != "cpu" and torch.cuda.is_available() else "cpu"
    ref = WhisperForConditionalGeneration.from_pretrained(assets.resolve_model(name)).eval()
    ref = ref.to(dev)
    kwargs = dict(max_new_tokens=max_new, num_beams=1, do_sample=False)
    if ref.generation_config.is_multilingual:
        kwargs.update(language="en", task="transcribe")
    eot = ref.generation_config.eos_token_id

    def run(mel):
        with torch.inference_mode():
            return strip(ref.generate(torch.tensor(mel).to(dev), **kwargs).cpu().numpy(), eot)

    return run


def _ct2(name, max_new):
    """CTranslate2 (the engine behind faster-whisper) on the same weights, or None if absent."""
    try:
        import ctranslate2
    except ImportError:
        return None
    import tempfile

    from ctranslate2.converters import TransformersConverter

    from mkd_jax import assets
    from mkd_jax.data.tokenizers import load_tokenizer

    folder = assets.resolve_model(name)
    out = os.path.join(tempfile.mkdtemp(prefix="mkd_ct2_"), name)
    TransformersConverter(str(folder)).convert(out, quantization="float32", force=True)
    model = ctranslate2.models.Whisper(out, device="cpu", intra_threads=os.cpu_count() or 1)
    tok = load_tokenizer(folder)
    prompt = tok.prompt_ids()
    eot = tok.eot

    def run(mel):
        res = model.generate(
            ctranslate2.StorageView.from_array(np.array(mel, dtype=np.float32, order="C")),
            [prompt] * len(mel),
            beam_size=1,
            max_length=max_new + len(prompt),
        )
        return [[t for t in r.sequences_ids[0] if t != eot] for r in res]

    return run


def bench_decode():
    """Per model and batch size: each implementation warmed up once, then `--rounds` rounds that
    alternate between them over all clips; median wall time, RTF, tokens/s and ratio to torch."""
    from mkd_jax.assets import load_model
    from mkd_jax.data import features

    batch_sizes = cli.positive_ints("batch_sizes", FLAGS.batch_sizes)
    clips, audio_s = _clips_with_header("")
    header = (
        f"{'model':8} {'batch':>5} {'impl':>8} {'RTF':>7} {'tok/s':>7} {'x torch':>7} "
        f"{'warm-up s':>9} {'rounds s (min-max)':>18}"
    )
    print(header + "\n" + "-" * len(header))
    for name in FLAGS.models:
        mel = features.log_mel(clips, n_mels=load_model(name)[0].num_mel_bins)
        ours, texts_of = _ours(name, FLAGS.max_new_tokens)
        impls = {"mkd_jax": ours, "mkd bf16": _ours(name, FLAGS.max_new_tokens, "bfloat16")[0]}
        if FLAGS.torch:
            impls["torch"] = _torch(name, FLAGS.max_new_tokens)
        ct2 = _ct2(name, FLAGS.max_new_tokens)
        if ct2 is not None:
            impls["ct2"] = ct2
        else:
            print("  (ctranslate2 not installed: no CTranslate2 column)")
        for batch in batch_sizes:
            chunks = [mel[i : i + batch] for i in range(0, len(mel), batch)]
            warm, walls, tokens = {}, {k: [] for k in impls}, {}
            for k, run in impls.items():
                t0 = time.perf_counter()
                run(chunks[0])
                warm[k] = time.perf_counter() - t0
            for _ in range(FLAGS.rounds):
                for k, run in impls.items():
                    t0 = time.perf_counter()
                    rows = [r for c in chunks for r in run(c)]
                    walls[k].append(time.perf_counter() - t0)
                    tokens[k] = (sum(len(r) + 1 for r in rows), rows)
            med = {k: float(np.median(v)) for k, v in walls.items()}
            for k in impls:
                ratio = f"{med['torch'] / med[k]:7.2f}" if "torch" in med else f"{'-':>7}"
                print(
                    f"{name:8} {batch:5d} {k:>8} {med[k] / audio_s:7.3f} "
                    f"{tokens[k][0] / med[k]:7.1f} {ratio} {warm[k]:9.1f} "
                    f"{f'{min(walls[k]):.2f}-{max(walls[k]):.2f}':>18}",
                    flush=True,
                )
        same = sum(a == b for a, b in zip(tokens["mkd_jax"][1], tokens["mkd bf16"][1], strict=True))
        print(f"  sample ({name}): {texts_of(tokens['mkd_jax'][1][:1])[0]!r}")
        print(f"  bf16 matmul operands: {same} of {len(clips)} clips' tokens equal float32's")


def _reuse_passes(name: str):
    """`{label: pass(mel chunk) -> tokens}` for one model: encoding every batch, and decoding
    from `encoder_memo` (warm after the first pass, as after training in a process)."""
    from mkd_jax import decode, encoder_memo
    from mkd_jax.assets import load_model
    from mkd_jax.data.tokenizers import load_tokenizer

    model, params, config = load_model(name)
    tok = load_tokenizer(config["_folder"], model_vocab_size=model.vocab_size)
    spec = decode.spec_from_folder(config["_folder"], tok, max_new_tokens=FLAGS.max_new_tokens)
    plain = decode.make_generate_fn(model, spec)
    from_enc = decode.make_generate_fn(model, spec, encoded=True)
    encode = encoder_memo.make_encoder(model, params)
    return model.num_mel_bins, {
        "encode every pass": lambda c: np.asarray(plain(params, c)),
        "frozen encoder, memo": lambda c: np.asarray(from_enc(params, encode(c))),
    }


def bench_eval_reuse():
    """Per model: greedy decoding of the clips at batch 16 from log-mel (encoder every batch)
    and from a warm `encoder_memo` (decoder only), alternating rounds; median RTF and ratio."""
    from mkd_jax import encoder_memo
    from mkd_jax.data import features

    clips, audio_s = _clips_with_header("batch 16, ")
    for name in FLAGS.models:
        n_mels, runs = _reuse_passes(name)
        mel = features.log_mel(clips, n_mels=n_mels)
        chunks = [mel[i : i + 16] for i in range(0, len(mel), 16)]
        walls = {k: [] for k in runs}
        out = {k: [run(c) for c in chunks] for k, run in runs.items()}  # warm-up; fills the memo
        same = all(np.array_equal(a, b) for a, b in zip(*out.values(), strict=True))
        for _ in range(FLAGS.rounds):
            for k, run in runs.items():
                t0 = time.perf_counter()
                for c in chunks:
                    run(c)
                walls[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in walls.items()}
        base = med["encode every pass"]
        for k in runs:
            print(f"{name:8} {k:>22} RTF {med[k] / audio_s:6.3f}  x {base / med[k]:5.2f}")
        print(f"  tokens identical: {same}; memo {encoder_memo.stats()}")
        if not same:
            raise RuntimeError(f"{name}: decoding from the memo changed the tokens")
        encoder_memo.clear()


def bench_attention():
    """One self-attention of base's encoder at 30 s (batch 4, 8 heads, 1500 frames, head dim
    64, float32): the model's two forms (`models.whisper.Attention.attend` without the
    projections: the einsum form, and the tiled form a one-device CPU runs) and PyTorch's fused
    `scaled_dot_product_attention` on the same arrays, alternating rounds; the gap behind the
    identical-work and decode-speed figures."""
    import jax
    import jax.numpy as jnp
    import torch

    from mkd_jax.models.whisper import attention_by_tiles

    b, h, t, d = 4, 8, 1500, 64
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((b, t, h, d)).astype(np.float32) for _ in range(3))

    @jax.jit
    def ours(q, k, v):
        logits = jnp.einsum("bthd,bshd->bhts", q * d**-0.5, k)
        return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)

    qt, kt, vt = (torch.from_numpy(x).transpose(1, 2).contiguous() for x in (q, k, v))
    qj, kj, vj = (jnp.asarray(x) for x in (q, k, v))
    tiles = jax.jit(lambda q, k, v: attention_by_tiles(q * d**-0.5, k, v))
    runs = {
        "ours (XLA einsum)": lambda: ours(qj, kj, vj).block_until_ready(),
        "ours (tiles)": lambda: tiles(qj, kj, vj).block_until_ready(),
        "torch SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt),
    }
    want = runs["torch SDPA"]().transpose(1, 2).numpy()
    diffs = {n: np.abs(np.asarray(runs[n]()) - want).max() for n in list(runs)[:2]}
    walls = {name: [] for name in runs}
    for _ in range(FLAGS.rounds):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            walls[name].append(time.perf_counter() - t0)
    flops = 4 * b * h * t * t * d
    ref = float(np.median(walls["torch SDPA"]))
    print(f"attention [B={b}, H={h}, T={t}, Dh={d}] f32, median of {FLAGS.rounds} rounds")
    for name, w in walls.items():
        m = float(np.median(w))
        print(f"{name:>18} {m:6.3f} s  {flops / m / 1e9:6.1f} GFLOP/s  x torch {ref / m:5.2f}")
    print("  max abs difference to torch: " + ", ".join(f"{n} {e:.2e}" for n, e in diffs.items()))


def bench_features():
    """log-mel alone, then the whole input pipeline (FLAC decode + log-mel + tokens, batches of
    16 x 29 s) with its work in a thread of this process (0 workers) or in 1 and 2 Grain worker
    processes; alternating rounds, median throughput in audio seconds per second."""
    import tempfile
    from pathlib import Path

    import soundfile as sf

    from mkd_jax import assets
    from mkd_jax.data import batching, features, loaders
    from mkd_jax.data.tokenizers import load_tokenizer

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(16000 * 30)).astype(np.float32) for _ in range(16)]
    features.log_mel(clips)  # compile
    t0 = time.perf_counter()
    for _ in range(3):
        features.log_mel(clips)
    alone = 3 * 16 * 30 / (time.perf_counter() - t0)
    print(f"log-mel alone: {alone:.0f}x real time (batch 16 x 30 s, {os.cpu_count()} cores)")
    per_round = 12  # batches timed per round, after each worker's first batch (its compile)
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for i in range(48):
            path = Path(tmp) / f"u{i}.flac"
            sf.write(path, clips[i % 16][: 16000 * 29], 16000)
            rows.append(f"{path.name},hello world number {i}")
        (Path(tmp) / "all.csv").write_text("path,text\n" + "\n".join(rows) + "\n")
        utts = loaders.load_split({"kind": "manifest", "path": str(Path(tmp) / "all.csv")}, "all")
        tok = load_tokenizer(assets.ensure_model("tiny.en"))
        speeds = {w: [] for w in (0, 1, 2)}
        for _ in range(FLAGS.rounds):
            for workers in speeds:
                it = batching.BatchIterator(
                    utts, {batching.STUDENT: tok}, workers=workers, prefetch=2, shuffle=False,
                    buckets=batching.make_buckets((32,), batch_size=16),
                    process_index=0, process_count=1,
                )  # fmt: skip
                for _ in range(max(workers, 1)):  # start-up: workers, their log-mel compile
                    next(it)
                t0 = time.perf_counter()
                for _ in range(per_round):
                    next(it)
                speeds[workers].append(per_round * 16 * 29 / (time.perf_counter() - t0))
                it.close()
    for workers, xs in speeds.items():
        where = "a thread of this process" if workers == 0 else f"{workers} Grain worker process"
        print(
            f"pipeline, {where}{'es' * (workers > 1)}: {np.median(xs):.0f}x real time "
            f"(median of {len(xs)} rounds: {', '.join(f'{x:.0f}' for x in xs)})"
        )


def bench_kokoro():
    """Kokoro int8 against its integer-GEMM rewrite (`corpus.kokoro_gemm`), one onnxruntime
    thread each as in the corpus builder's workers, on the same sentences and voices in
    alternating rounds; checks that the audio is bit-identical."""
    from mkd_jax.corpus import kokoro_gemm, voices

    cache = voices.default_cache() / "kokoro"
    model, voice_file = voices.ensure_kokoro(cache)
    fast = kokoro_gemm.prepare(model, voice_file)
    if fast == model:
        raise RuntimeError("the rewrite is not used on this machine (line above): no comparison")
    engines = {
        "original ConvInteger": voices.KokoroEngine(cache, model=model),
        "integer GEMMs": voices.KokoroEngine(cache, model=fast),
    }
    jobs = [(VOICES[i % len(VOICES)].split(":")[1], s) for i, s in enumerate(SENTENCES)]
    jobs = jobs[: FLAGS.clips]
    for eng in engines.values():  # warm-up: session start and first-call allocations
        eng([(jobs[0][0], 1.0)], jobs[0][1], 1.0)
    times, audio = {k: [] for k in engines}, {}
    for _ in range(FLAGS.rounds):
        for name, eng in engines.items():
            t = time.perf_counter()
            out = [eng([(v, 1.0)], text, 1.0) for v, text in jobs]
            times[name].append(time.perf_counter() - t)
            audio[name] = [a for a, _ in out]
    seconds = sum(len(a) / sr for a, sr in out)
    same = sum(np.array_equal(a, b) for a, b in zip(*audio.values(), strict=True))
    cpu = platform.processor() or platform.machine()
    print(
        f"Kokoro-82M int8, 1 thread, {len(jobs)} sentences ({seconds:.1f} s of audio), "
        f"{FLAGS.rounds} alternating rounds; {cpu}"
    )
    med = {k: float(np.median(v)) for k, v in times.items()}
    for name, t in med.items():
        rounds = ", ".join(f"{x:.2f}" for x in times[name])
        print(f"  {name:22s} {t:6.2f} s  RTF {t / seconds:.3f}  (rounds: {rounds})")
    base, new = med.values()
    print(f"  speed-up {base / new:.2f}x; audio bit-identical on {same} of {len(jobs)} sentences")


def check_flags(kind: str) -> None:
    """Counts and model names, before a model loads or a clip is synthesised."""
    from mkd_jax.assets import check_model_name

    for name in ("clips", "max_new_tokens", "rounds", "distill_batch"):
        cli.positive_ints(name, [FLAGS[name].value])
    if not FLAGS.minutes > 0:
        raise ValueError(f"--minutes={FLAGS.minutes}: must be > 0")
    if kind == "kokoro" and FLAGS.clips > len(SENTENCES):
        raise ValueError(f"--clips={FLAGS.clips}: kokoro speaks at most {len(SENTENCES)} sentences")
    if kind == "decode":
        for b in cli.positive_ints("batch_sizes", FLAGS.batch_sizes):
            if FLAGS.clips % b:  # a ragged last batch would compile inside the timed rounds
                raise ValueError(f"--clips={FLAGS.clips}: not a multiple of --batch_sizes {b}")
    used = {"decode": FLAGS.models, "eval_reuse": FLAGS.models, "longform": FLAGS.models[:1]}
    for name in used.get(kind, ()):
        check_model_name(name)  # raises naming it; fetches nothing


def main(argv):
    kinds = (
        "decode",
        "features",
        "distill",
        "distill_kd_gap",
        "longform",
        "eval_reuse",
        "attention",
        "kokoro",
    )
    if len(argv) != 2 or argv[1] not in kinds:
        got = f"{' '.join(argv[1:])!r} is not one benchmark; " if len(argv) > 1 else ""
        raise app.UsageError(f"{got}usage: python -m mkd_jax.bench {'|'.join(kinds)} [flags]")
    check_flags(argv[1])
    if argv[1] == "distill":
        from mkd_jax.bench_distill import bench_distill

        bench_distill(_clips, rounds=FLAGS.rounds, batch_size=FLAGS.distill_batch)
    elif argv[1] == "distill_kd_gap":
        from mkd_jax.bench_distill import kd_gap_only

        kd_gap_only(_clips)
    elif argv[1] == "longform":
        from mkd_jax.bench_longform import bench_longform
        from mkd_jax.evaluate import parse_source

        if not FLAGS.source:
            raise app.UsageError("longform needs --source=KIND:PATH")
        bench_longform(FLAGS.models[0], parse_source(FLAGS.source), FLAGS.split, FLAGS.minutes)
    elif argv[1] == "eval_reuse":
        bench_eval_reuse()
    elif argv[1] == "attention":
        bench_attention()
    elif argv[1] == "kokoro":
        bench_kokoro()
    else:
        bench_decode() if argv[1] == "decode" else bench_features()


if __name__ == "__main__":
    cli.run(main)
