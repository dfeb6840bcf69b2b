"""Roles and sources from a config: where the synthetic corpus of a config lives."""

from ml_collections import ConfigDict

from mkd_jax import assets, roles
from mkd_jax.config_base import base_config


def test_synth_corpus_folder_names_its_hours_and_any_non_default_split(monkeypatch, tmp_path):
    from mkd_jax.corpus import synth

    monkeypatch.setattr(assets, "cache_dir", lambda: tmp_path)
    built = []
    monkeypatch.setattr(synth, "build", lambda path, cfg: built.append((path, cfg)) or {})
    src = ConfigDict(base_config().data.source.to_dict())
    src.hours = 0.3
    out = roles.resolve_source(src)
    assert out["kind"] == "disk" and "hours" not in out and "fractions" not in out
    assert built[-1][0] == tmp_path / "corpora" / "synth_0.3h"
    assert built[-1][1].fractions == (0.8, 0.1, 0.1)
    src.hours, src.fractions = 1.3, (0.6, 0.15, 0.25)
    out = roles.resolve_source(src)
    assert out["path"] == str(tmp_path / "corpora" / "synth_1.3h_0.6-0.15-0.25")
    assert built[-1][1].hours == 1.3 and built[-1][1].fractions == (0.6, 0.15, 0.25)
    # Other kinds pass through without the synth-only keys.
    src.kind, src.path = "disk", "/data/c"
    out = roles.resolve_source(src)
    assert out["path"] == "/data/c" and "fractions" not in out and "hours" not in out
