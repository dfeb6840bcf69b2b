"""The paper's setting: whisper-large-v2 -> distil-small.en on LibriSpeech train-clean-100.

    python -m mkd_jax.train --config configs/paper_large_v2.py --workdir gs://bucket/run \
        --config.teachers.large_v2.checkpoint=/ckpt/whisper-large-v2 \
        --config.student.checkpoint=/ckpt/distil-small.en \
        --config.data.source.path=/data/LibriSpeech

Checkpoints are Hugging Face Whisper folders (or CTranslate2 folders) on local disk; nothing is
downloaded. Teacher 1.54 B params (multilingual vocabulary), student 166 M (English-only), so KD
runs through the cross-tokenizer alignment. Trainable: LoRA r=32 on every decoder and encoder
projection plus a 768->1280 geodesic mapper on the final encoder output, 8.9 M params = 0.57% of
the teacher (asserted in tests/test_configs.py). Needs a TPU pod slice or GPUs (see launch/);
not run here.
Data as in the paper: train-clean-100 capped at 4000 utterances, 30 s windows.

LibriSpeech's transcripts are upper-case and unpunctuated, which Whisper never writes, so
teacher-forcing the teacher on them is off its distribution. For targets in Whisper's own style,
label the split with the teacher first and train on the labels (`data.train_labels`; dev and
test keep LibriSpeech's transcripts, scored after Whisper's normaliser):

    python -m mkd_jax.pseudolabel --config configs/paper_large_v2.py \
        --config.teachers.large_v2.checkpoint=/ckpt/whisper-large-v2 \
        --source librispeech:/data/LibriSpeech --split train-clean-100 --out /data/labels \
        --max_ref_wer=10 --max_words_per_second=6
    python -m mkd_jax.train --config configs/paper_large_v2.py ... \
        --config.data.train_labels=/data/labels
"""

from mkd_jax.config_base import LORA_DECODER, LORA_ENCODER, base_config, dims, role

LARGE_V2 = dict(
    vocab_size=51865,
    num_mel_bins=80,
    d_model=1280,
    encoder_layers=32,
    decoder_layers=32,
    encoder_attention_heads=20,
    decoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_ffn_dim=5120,
)
DISTIL_SMALL_EN = dict(
    vocab_size=51864,
    num_mel_bins=80,
    d_model=768,
    encoder_layers=12,
    decoder_layers=4,
    encoder_attention_heads=12,
    decoder_attention_heads=12,
    encoder_ffn_dim=3072,
    decoder_ffn_dim=3072,
)


def get_config():
    c = base_config()
    c.total_steps = 5000
    c.log_every_steps = 50
    c.data.source.kind = "librispeech"
    c.data.source.path = "LibriSpeech"
    c.data.source.limit = 4000
    c.data.train_split = "train-clean-100"
    c.data.eval_split = "dev-clean"
    c.data.test_split = "test-clean"
    c.data.n_frames = 3000
    c.data.token_buckets = (64, 128, 224)
    c.data.batch_size = 64
    c.data.eval_batch_size = 64
    # `init` holds each model's shape, used only by abstract shape checks without weights.
    c.student = role(checkpoint="distil-small.en", init=dims(**DISTIL_SMALL_EN), dtype="bfloat16")
    c.teachers.large_v2 = role(
        checkpoint="whisper-large-v2", init=dims(**LARGE_V2), dtype="bfloat16", weight=1.0
    )
    # The mapper reads the student's encoder output, so the encoder needs LoRA too: with the
    # paper code's decoder-only LoRA the mapper had no trainable parameter upstream and trained
    # only itself (the validator refuses that now).
    c.lora.targets = (LORA_DECODER, LORA_ENCODER)
    c.mappers.strategy = "last"
    c.mappers.loss = "geodesic"
    c.lora.rank = 32
    c.lora.alpha = 32.0
    c.lora.dropout = 0.1
    c.loss.w_ce = 0.8
    c.loss.temperature = 2.0
    c.optim.lr = 1e-4
    c.optim.mapper_lr = 1e-3
    c.optim.warmup_steps = 250
    c.mesh = (("data", -1), ("fsdp", 4), ("tensor", 1))
    c.ckpt.every_steps = 500
    c.eval.every_steps = 1000
    c.eval.max_batches = 20
    return c
