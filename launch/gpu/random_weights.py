"""Random Whisper weights (transformers' init, seed 0) for each model folder that lacks them:
the device machine cannot hold the real checkpoints (the working tree that travels is 64 MiB).
Speed and memory do not depend on the values."""

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

for folder in sorted(Path(sys.argv[1]).iterdir()):
    if not (folder / "config.json").is_file() or (folder / "model.safetensors").is_file():
        continue
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(WhisperConfig.from_pretrained(folder))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        shutil.copy(Path(tmp) / "model.safetensors", folder / "model.safetensors")
    print(f"{folder.name}: random weights, {sum(p.numel() for p in model.parameters()):,} params")
