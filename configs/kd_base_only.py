"""Logit KD alone from Whisper base into tiny.en: the cross-tokenizer KD experiment.

    python -m mkd_jax.train --config configs/kd_base_only.py --workdir /tmp/kd_shared
    python -m mkd_jax.train --config configs/kd_base_only.py --workdir /tmp/kd_student \
        --config.loss.kd_support=student          # the round-1 mapping, for comparison
    python -m mkd_jax.train --config configs/kd_base_only.py --workdir /tmp/kd_ce \
        --config.loss.w_ce=1.0                    # CE + KD
    python -m mkd_jax.train --config configs/kd_base_only.py --workdir /tmp/ce_only \
        --config.loss.w_ce=1.0 --config.loss.w_kd=0.0   # CE only (the teacher is not used)

One teacher (base, multilingual vocabulary, so every KD position goes through the vocabulary
map), decoder-only LoRA r=4, no mappers, no CE on the corpus text (`w_ce=0`): whatever the student
learns comes from the teacher's distribution. The demo's corpus and contexts (student 30 s with
its encoder frozen, teacher 10 s), teacher outputs cached. BUILD_NOTES.md ("Cross-tokenizer KD")
records the runs and their WER with confidence intervals.
"""

from mkd_jax.config_base import LORA_DECODER, base_config, demo_data, role


def get_config():
    c = demo_data(base_config())
    c.data.n_frames = 3000
    c.data.teacher_frames = 1000
    c.total_steps = 160
    c.student = role(checkpoint="tiny.en")
    c.teachers.base = role(checkpoint="base")
    c.mappers.weight = 0.0
    c.lora.targets = (LORA_DECODER,)
    c.lora.rank = 4
    c.lora.alpha = 8.0
    c.lora.dropout = 0.0
    c.loss.w_ce = 0.0
    c.loss.w_kd = 1.0
    c.loss.temperature = 2.0
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 8
    c.cache.enabled = True
    c.ckpt.every_steps = 80
    c.log_every_steps = 20
    return c
