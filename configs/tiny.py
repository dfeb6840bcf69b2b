"""Tiny preset for tests and smoke runs: random-init small Whispers with the real tokenizers.

    python -m mkd_jax.train --config configs/tiny.py --workdir /tmp/mkd_tiny

Student and teacher "a" share the English-only tiny.en vocabulary; teacher "b" uses the
multilingual base vocabulary, so cross-tokenizer KD runs. The corpus is a few minutes of the
project's synthetic speech, built into the cache on first use. About 2 min on 2 CPU cores. WER is
meaningless here (random weights); the run checks the machinery end to end.
"""

from mkd_jax.config_base import LORA_DECODER, LORA_ENCODER, base_config, dims, role


def get_config():
    c = base_config()
    c.total_steps = 4
    c.log_every_steps = 1
    c.data.source.hours = 0.02
    c.data.n_frames = 1000
    c.data.token_buckets = (48,)
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.student = role(tokenizer="tiny.en", init=dims(d_model=64), random_init=True)
    c.teachers.a = role(
        tokenizer="tiny.en",
        init=dims(
            d_model=96,
            encoder_layers=3,
            encoder_attention_heads=6,
            decoder_attention_heads=6,
            encoder_ffn_dim=192,
            decoder_ffn_dim=192,
        ),
        random_init=True,
    )
    c.teachers.b = role(
        tokenizer="base",
        init=dims(vocab_size=51865, d_model=128, encoder_ffn_dim=256, decoder_ffn_dim=256),
        random_init=True,
    )
    c.mappers.strategy = "uniform"
    c.mappers.sides = ("encoder", "decoder")
    # LoRA on both stacks: every mapper's student site has a trainable parameter upstream.
    c.lora.targets = (LORA_DECODER, LORA_ENCODER)
    c.lora.rank = 2
    c.lora.alpha = 4.0
    c.optim.warmup_steps = 1
    c.ckpt.every_steps = 2
    c.eval.every_steps = 0
    c.eval.max_batches = 1
    c.eval.max_new_tokens = 16
    return c
