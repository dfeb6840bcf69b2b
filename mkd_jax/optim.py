"""The optimizer over the trainable subtree only: AdamW, warmup + cosine, clipping, accumulation.

LoRA factors and mappers get their own peak learning rates through `optax.multi_transform`; frozen
weights never enter the optimizer, so they have no moment memory.
"""

from __future__ import annotations

import jax
import optax


def _group_labels(tree: dict) -> dict:
    """Label every leaf with its top-level group name (`lora` or `mappers`)."""
    unknown = set(tree) - {"lora", "mappers"}
    if unknown:
        raise ValueError(f"trainable tree has unexpected groups {sorted(unknown)}")
    return {group: jax.tree.map(lambda _, g=group: g, sub) for group, sub in tree.items()}


def make_schedule(peak: float, *, warmup_steps: int, total_steps: int, end_ratio: float = 0.0):
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=max(warmup_steps, 1),
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=peak * end_ratio,
    )


def make_optimizer(cfg, *, total_steps: int):
    """`(optimizer, schedules)` for a `{"lora": ..., "mappers": ...}` tree; `cfg` is `config.optim`.

    `cfg` fields: lr (LoRA peak), mapper_lr, warmup_steps, weight_decay, b1, b2, clip_norm,
    accum_steps. `total_steps` counts optimizer updates, not micro-batches.
    """
    schedules = {
        "lora": make_schedule(cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps),
        "mappers": make_schedule(
            cfg.mapper_lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps
        ),
    }
    groups = {
        name: optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
        for name, sched in schedules.items()
    }
    tx = optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.multi_transform(groups, _group_labels),
    )
    if cfg.accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=cfg.accum_steps)
    return tx, schedules
