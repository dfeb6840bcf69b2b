"""Build the teacher-output cache of a config ahead of training (train builds it too).

    python -m mkd_jax.cache --config configs/demo.py [--config.cache.top_k=32]

Prints the projected size before it starts (and refuses when the disk cannot hold it), shows a
progress bar, resumes an interrupted build, and ends with the folder, its size per hour of
audio and the build time. See teacher_cache.py for what is stored.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from mkd_jax import cli
from mkd_jax.validate import validate

FLAGS = flags.FLAGS


def build(cfg) -> dict:
    """Builds (or finds) the cache of `cfg`; returns its manifest."""
    if not cfg.cache.enabled:
        cfg.cache.enabled = True  # this program's whole point; train reads the same key
    validate(cfg)  # with the cache on, so its settings are checked too
    import jax

    from mkd_jax import assets, sharding, teacher_cache
    from mkd_jax.roles import build_roles, train_input
    from mkd_jax.state import make_setup

    jax.config.update("jax_compilation_cache_dir", str(assets.cache_dir() / "xla"))
    mesh = sharding.make_mesh(cfg.mesh)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    roles = build_roles(cfg)
    setup = make_setup(cfg, roles)
    source, utts, tokenizers, buckets = train_input(cfg, roles, setup)
    folder = teacher_cache.ensure(
        cfg, roles, setup, utts, tokenizers, buckets, source, mesh=mesh, rules=rules
    )
    manifest = json.loads((folder / teacher_cache.MANIFEST).read_text())
    return dict(manifest, folder=str(folder))


def main(argv):
    del argv
    cfg = FLAGS.config
    with cfg.unlocked():
        m = build(cfg)
    print(
        f"teacher cache: {m['folder']}\n"
        f"  {m['utterances']} utterances ({m['audio_hours']:.3f} h of audio), "
        f"{len(m['failed'])} failed to decode\n"
        f"  {m['bytes'] / 1e6:.1f} MB ({m['bytes_per_hour'] / 1e9:.2f} GB per hour of audio; "
        f"projected {m['projected_bytes'] / 1e6:.1f} MB), built in {m['build_seconds']:.0f} s"
    )


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
    flags.mark_flags_as_required(["config"])
    cli.run(main)
