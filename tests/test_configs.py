"""Every config builds, and its train step traces on abstract shapes (no weights, no memory)."""

import functools
import importlib.util
from pathlib import Path

import jax
import pytest

from mkd_jax import assets, lora
from mkd_jax.distill import train_step
from mkd_jax.report import param_budget
from mkd_jax.roles import build_roles, frozen_params
from mkd_jax.state import abstract_batch, init_state, init_trainable, make_setup, make_tx

CONFIGS = sorted(Path(__file__).parent.parent.glob("configs/*.py"))


def load_config(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def abstract_setup(cfg):
    """Roles from `init` shapes with real tokenizers: multilingual for 51865, English for 51864."""
    for role in [cfg.student, *cfg.teachers.values()]:
        if role.checkpoint in assets.MODELS:
            continue  # real shapes from the converted checkpoint's config.json
        role.checkpoint = ""
        role.tokenizer = "base" if role.init.vocab_size == 51865 else "tiny.en"
    roles = build_roles(cfg, abstract=True)
    setup = make_setup(cfg, roles)
    rng = jax.random.PRNGKey(0)
    tx, _ = make_tx(cfg)
    state = jax.eval_shape(lambda: init_state(init_trainable(cfg, roles, setup, rng), tx, rng))
    return roles, setup, tx, state


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_traces_one_step_on_abstract_shapes(path):
    cfg = load_config(path)
    with cfg.unlocked():
        roles, setup, tx, state = abstract_setup(cfg)
    frozen = frozen_params(roles)
    batch = abstract_batch(cfg, setup, roles["student"].model)
    new_state, metrics = jax.eval_shape(
        functools.partial(train_step, setup=setup, tx=tx), state, frozen, batch
    )
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert metrics["train/loss"].shape == ()
    assert "train/ce" in metrics
    if roles["teachers"]:
        budget = param_budget(roles, lora.count(state["trainable"]))
        assert budget["pct_of_largest_teacher"] < 1.0, budget


def test_paper_preset_budget_is_computed_not_guessed():
    cfg = load_config(Path(__file__).parent.parent / "configs/paper_large_v2.py")
    with cfg.unlocked():
        roles, setup, _, state = abstract_setup(cfg)
    budget = param_budget(roles, lora.count(state["trainable"]))
    # 4 decoder layers x (8 attention 768x768 + fc1/fc2 768x3072) at r=32, 12 encoder layers x
    # (4 attention + fc1/fc2) at r=32, plus 768->1280 + bias.
    lora_params = 4 * (8 * 32 * (768 + 768) + 2 * 32 * (768 + 3072))
    lora_params += 12 * (4 * 32 * (768 + 768) + 2 * 32 * (768 + 3072))
    assert budget["trainable"] == lora_params + 768 * 1280 + 1280
    assert 1.5e9 < budget["teachers"]["large_v2"] < 1.6e9
    assert budget["pct_of_largest_teacher"] < 0.6
    assert [p.student_site for p in setup.mappers.pairs] == ["encoder/output"]
    assert setup.vocab_index["large_v2"] is not None  # multilingual teacher: cross-tokenizer KD
