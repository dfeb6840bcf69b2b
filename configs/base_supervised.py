"""Supervised mode: LoRA-tune Whisper base on the corpus's train split (CE only, no teacher).

    python -m mkd_jax.train --config configs/base_supervised.py --workdir /tmp/base_ft
    python -m mkd_jax.export --workdir /tmp/base_ft --out /tmp/base_ft_export --merged_only

The demo uses the merged result as its second teacher (`base_ft`): same architecture as base,
different training data, so the ensemble members disagree usefully.
"""

from mkd_jax.config_base import DEMO_CORPUS_HOURS, LORA_DECODER, base_config, role


def get_config():
    c = base_config()
    c.total_steps = 40
    c.log_every_steps = 10
    c.data.source.hours = DEMO_CORPUS_HOURS
    c.data.source.max_seconds = 10.0
    c.data.n_frames = 1000
    c.data.token_buckets = (40, 64)
    c.data.batch_size = 8
    c.data.eval_batch_size = 16
    c.student = role(checkpoint="base")
    c.lora.targets = (LORA_DECODER,)
    c.lora.rank = 8
    c.lora.alpha = 16.0
    c.lora.dropout = 0.0
    c.loss.w_ce = 1.0
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 4
    c.ckpt.every_steps = 20
    c.eval.max_batches = 0
    c.eval.max_new_tokens = 64
    return c
