"""Randomly initialised transformers Whisper checkpoints, the independent reference for parity."""

from __future__ import annotations

import numpy as np
import torch
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

SHAPES = {
    # 80 mel bins, multilingual vocabulary.
    "mel80": dict(
        num_mel_bins=80,
        vocab_size=51865,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
    ),
    # large-v3 style: 128 mel bins, vocabulary 51866, uneven depth.
    "mel128": dict(
        num_mel_bins=128,
        vocab_size=51866,
        d_model=96,
        encoder_layers=3,
        decoder_layers=2,
        encoder_attention_heads=6,
        decoder_attention_heads=6,
        encoder_ffn_dim=192,
        decoder_ffn_dim=256,
    ),
}


def make_reference(shape: str, seed: int = 0) -> WhisperForConditionalGeneration:
    """A random HF Whisper with multilingual special ids and perturbed norms and biases."""
    torch.manual_seed(seed)
    cfg = WhisperConfig(
        **SHAPES[shape],
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=50257,
        eos_token_id=50257,
        pad_token_id=50257,
        decoder_start_token_id=50258,
        suppress_tokens=[],
        begin_suppress_tokens=[220, 50257],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name and "encoder" in name:
                continue  # keep the sinusoid table
            p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.15))
    gen = GenerationConfig(
        decoder_start_token_id=50258,
        eos_token_id=50257,
        pad_token_id=50257,
        bos_token_id=50257,
        no_timestamps_token_id=50363,
        is_multilingual=True,
        lang_to_id={"<|en|>": 50259},
        task_to_id={"transcribe": 50359, "translate": 50358},
        suppress_tokens=[1, 2, 7, 8, 9, 10, 14, 25],
        begin_suppress_tokens=[220, 50257],
        max_length=448,
    )
    model.generation_config = gen
    return model


def random_mel(num_mel_bins: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """Log-mel-like inputs in Whisper's normalised range."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.5, size=(batch, num_mel_bins, 3000)).astype(np.float32)
