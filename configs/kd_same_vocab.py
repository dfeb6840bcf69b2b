"""Logit KD alone between two models with the same vocabulary: the same-vocabulary check.

    python -m mkd_jax.train --config configs/kd_same_vocab.py --workdir /tmp/kd_same \
        --config.student.checkpoint=<DEMO_WORKDIR>/base_ft/merged

The student is the demo's base_ft (Whisper base after the supervised demo stage, merged), the
teacher the untouched base, which is better on every held-out split (README, demo table). Both
share base's tokenizer, so the cross-tokenizer map is the identity and the KD is the plain
tempered KL: whatever goes wrong here is not the vocabulary mapping. Everything else is
`configs/kd_base_only.py` (KD only, T=2, decoder LoRA r=4, no mappers, student 30 s with its
encoder frozen and cached, teacher 10 s, 160 steps).
"""

import importlib.util
from pathlib import Path

from mkd_jax.config_base import role

_BASE = Path(__file__).with_name("kd_base_only.py")
_spec = importlib.util.spec_from_file_location("kd_base_only", _BASE)
_kd_base_only = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_kd_base_only)


def get_config():
    c = _kd_base_only.get_config()
    c.student = role(checkpoint="")  # base_ft's merged folder, from the command line
    return c
