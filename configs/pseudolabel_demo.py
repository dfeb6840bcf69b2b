"""Teachers that label the demo corpus's train split as if it had no transcripts.

    python -m mkd_jax.pseudolabel --config configs/pseudolabel_demo.py --split train \
        --out /tmp/labels --max_words_per_second=6
    python -m mkd_jax.train --config configs/kd_base_only.py --workdir /tmp/on_labels \
        --config.loss.w_ce=1.0 --config.data.train_labels=/tmp/labels

base writes the labels (listed first, it wins the two-teacher tie of the medoid rule); tiny.en is
the weak reference whose agreement with base is the label-quality signal (`--min_agreement`).
base_ft is left out on purpose: it was tuned on this split's transcripts, so its labels would
not be labels of audio without transcripts. BUILD_NOTES.md ("Pseudo-labels") has the results.
"""

from mkd_jax.config_base import LORA_DECODER, base_config, demo_data, role


def get_config():
    c = demo_data(base_config())
    c.student = role(checkpoint="tiny.en")
    c.teachers.base = role(checkpoint="base")
    c.teachers.tiny_en = role(checkpoint="tiny.en")
    # Only the teachers matter to pseudolabel; the rest keeps the config a valid (small) training
    # config, as every file in configs/ is: kd_base_only's student side.
    c.mappers.weight = 0.0
    c.lora.targets = (LORA_DECODER,)
    c.lora.rank = 4
    c.lora.alpha = 8.0
    return c
