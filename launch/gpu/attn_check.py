"""On the GPU machine (launch/gpu/run.sh): the encoder's output at bf16 with cuDNN's fused
attention against the einsum form (bf16) and against float32, and one encoder forward's time
each (batch 32 x 30 s of random log-mel, mean of 5 after warm-up)."""

import time

import jax
import numpy as np

from mkd_jax.assets import load_model
from mkd_jax.models import whisper

MEL = np.random.default_rng(0).standard_normal((32, 80, 3000)).astype(np.float32)
REAL_GATE = whisper.fused_attention


def encoder_output(name: str, dtype, fused: bool) -> tuple[np.ndarray, float]:
    """`(output, seconds per forward)`; `fused=False` keeps the einsum form on the GPU too."""
    model, params, _ = load_model(name, dtype=dtype) if dtype else load_model(name)
    whisper.fused_attention = lambda q, k, mask: fused and REAL_GATE(q, k, mask)
    try:
        fn = jax.jit(lambda p, m: model.apply({"params": p}, m, method=type(model).encode)[0])
        fn(params, MEL).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(5):
            y = fn(params, MEL)
        y.block_until_ready()
        return np.asarray(y, np.float32), (time.perf_counter() - t0) / 5
    finally:
        whisper.fused_attention = REAL_GATE


for name in ("tiny.en", "base"):
    out = {
        "f32": encoder_output(name, None, True),
        "bf16 einsum": encoder_output(name, "bfloat16", False),
        "bf16 cudnn": encoder_output(name, "bfloat16", True),
    }
    ref = out["f32"][0]
    for label, (y, t) in out.items():
        err = np.abs(y - ref).max() / np.abs(ref).max()
        print(
            f"{name} encoder, batch 32 x 30 s, {label:12}: {t * 1e3:7.1f} ms; "
            f"max abs diff to f32 / max |f32| {err:.2e}"
        )
