"""Supervised mode: LoRA-tune Whisper base on the corpus's train split (CE only, no teacher).

    python -m mkd_jax.train --config configs/base_supervised.py --workdir /tmp/base_ft
    python -m mkd_jax.export --workdir /tmp/base_ft --out /tmp/base_ft_export --merged_only

The demo uses the merged result as its second teacher (`base_ft`): same architecture as base,
different training data, so the ensemble members disagree usefully.
"""

from mkd_jax.config_base import LORA_DECODER, base_config, demo_data, role


def get_config():
    c = demo_data(base_config())
    c.total_steps = 40
    c.student = role(checkpoint="base")
    c.lora.targets = (LORA_DECODER,)
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.loss.w_ce = 1.0
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 4
    # Decoder LoRA only: base's encoder output is cached once (10 s context), so each step runs
    # only base's decoder.
    c.cache.enabled = True
    c.ckpt.every_steps = 20
    c.eval.max_batches = 0
    return c
