"""The pure step: what is differentiated, identity at init, and padding that changes nothing."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mkd_jax import distill
from mkd_jax.data import batching, loaders
from mkd_jax.roles import build_roles, frozen_params
from mkd_jax.state import init_trainable, make_setup

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def parts(tiny_librispeech):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs/tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    roles = build_roles(cfg)
    setup = make_setup(cfg, roles)
    trainable = jax.jit(lambda r: init_trainable(cfg, roles, setup, r))(jax.random.PRNGKey(1))
    frozen = frozen_params(roles)
    utts = loaders.load_split({"kind": "librispeech", "path": str(tiny_librispeech)}, "dev")
    toks = {batching.STUDENT: roles["student"].tokenizer, "b": roles["teachers"]["b"].tokenizer}
    it = batching.BatchIterator(
        utts,
        toks,
        buckets=batching.make_buckets((48,), (1000,), 4),
        shuffle=False,
        prefetch=0,
        process_index=0,
        process_count=1,
    )
    batch = {k: v for k, v in next(it).items() if k != "ids"}
    return cfg, setup, trainable, frozen, batch


def test_only_trainables_get_gradients_and_teachers_are_constant(parts):
    _, setup, trainable, frozen, batch = parts
    # Frozen weights and the batch go in as arguments: closed-over numpy arrays would be
    # constant-folded through whole networks by XLA.
    loss = jax.jit(
        jax.grad(lambda t, f, b: distill.loss_fn(t, f, b, None, 0, setup=setup)[0], argnums=(0, 1))
    )
    grads, frozen_grads = loss(trainable, frozen, batch)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    lora_b = [
        g for p, g in jax.tree_util.tree_flatten_with_path(grads["lora"])[0] if p[-1].key == "b"
    ]
    assert max(float(jnp.abs(g).max()) for g in lora_b) > 0  # a != 0, so b learns at once
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["mappers"])) > 0
    for leaf in jax.tree.leaves(frozen_grads["teachers"]):
        assert not np.any(np.asarray(leaf))


def test_student_is_exactly_pretrained_at_init(parts):
    _, setup, trainable, frozen, _ = parts
    merged = jax.jit(lambda t, f: distill.merged_student(t, f, setup))(trainable, frozen)
    for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(frozen["student"]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_padding_rows_change_nothing(parts):
    _, setup, trainable, frozen, batch = parts
    loss = jax.jit(lambda t, f, b: distill.loss_fn(t, f, b, None, 0, setup=setup))
    _, base = loss(trainable, frozen, batch)
    padded = {k: np.concatenate([v, np.zeros_like(v[:1])]) for k, v in batch.items()}
    for k in [k for k in padded if k.endswith("rows")]:
        padded[k][-1] = -1
    _, more = loss(trainable, frozen, padded)
    for key in base:
        if key != "train/tokens":
            np.testing.assert_allclose(more[key], base[key], rtol=2e-5, atol=1e-6, err_msg=key)


def test_ensemble_weights_go_by_teacher_name(parts):
    """Weights given by name land on the right teachers whatever order the config holds them in."""
    cfg, *_ = parts
    from mkd_jax.roles import build_roles

    for weights in ({"a": 0.75, "b": 0.25}, {"b": 0.25, "a": 0.75}):
        c = cfg.copy_and_resolve_references()
        c.loss.ensemble = "weights"
        c.loss.ensemble_weights = weights
        roles = build_roles(c, abstract=True)
        setup = make_setup(c, roles)
        got = dict(zip(setup.teachers, setup.ensemble_weights, strict=True))
        assert got == {"a": 0.75, "b": 0.25}


def test_unmerged_lora_equals_merged(parts):
    """Adapters beside the frozen kernels give the merged forward's loss and gradients."""
    import dataclasses

    _, setup, trainable, frozen, batch = parts
    trainable = jax.tree.map(lambda x: x + 0.02, trainable)  # b off zero: LoRA changes outputs
    merged = dataclasses.replace(setup, lora_merged=True)

    def grads(s):  # weights and batch as arguments: closed over, XLA would constant-fold them
        fn = jax.value_and_grad(lambda t, f, b: distill.loss_fn(t, f, b, None, 0, setup=s)[0])
        return jax.jit(fn)(trainable, frozen, batch)

    (l_u, g_u), (l_m, g_m) = grads(setup), grads(merged)
    np.testing.assert_allclose(l_u, l_m, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_u), jax.tree.leaves(g_m), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
    # Dropout drops the adapter's input per token: it changes the loss only when an rng is given.
    drop = dataclasses.replace(setup, lora_dropout=0.5)
    loss = jax.jit(lambda t, f, b, r: distill.loss_fn(t, f, b, r, 0, setup=drop)[0])
    assert float(loss(trainable, frozen, batch, jax.random.PRNGKey(0))) != float(l_u)


def test_teachers_with_one_encoder_run_it_once(parts):
    """A teacher tuned with decoder LoRA (the demo's base_ft) shares its source's encoder: the
    step runs that encoder once and gets the targets of running both."""
    import dataclasses

    cfg, _, _, frozen, batch = parts
    cfg = cfg.copy_and_resolve_references()
    cfg.teachers.c = cfg.teachers.a.copy_and_resolve_references()  # a's architecture
    roles = build_roles(cfg)
    c, a_params = roles["teachers"]["c"], roles["teachers"]["a"].params
    decoder = jax.tree.map(lambda x: np.asarray(x) * np.float32(1.05), a_params["decoder"])
    roles["teachers"]["c"] = c._replace(params={**a_params, "decoder": decoder})
    setup = make_setup(cfg, roles)
    assert setup.shared_encoder == {"c": "a"}
    frozen = frozen_params(roles)

    def outputs(s):
        fn = jax.jit(lambda f, b: distill.teacher_outputs(f, b, s))
        return fn(frozen, batch), fn.lower(frozen, batch).compile().cost_analysis()["flops"]

    shared, flops = outputs(setup)
    each, flops_each = outputs(dataclasses.replace(setup, shared_encoder={}))
    for name in ("a", "b", "c"):
        for key in ("probs", "nll", "hits"):
            np.testing.assert_allclose(shared[name][key], each[name][key], rtol=1e-6, atol=1e-7)
    assert not np.allclose(shared["c"]["nll"], shared["a"]["nll"])  # c's own decoder
    assert flops < 0.9 * flops_each  # one encoder fewer

    # Another encoder weight, and the teachers no longer share.
    enc = jax.tree.map(lambda x: np.array(x), a_params["encoder"])
    enc["layer_norm"]["bias"] = enc["layer_norm"]["bias"] + np.float32(1e-3)
    roles["teachers"]["c"] = c._replace(params={**a_params, "decoder": decoder, "encoder": enc})
    assert make_setup(cfg, roles).shared_encoder == {}
    assert make_setup(cfg, build_roles(cfg, abstract=True)).shared_encoder == {}


@pytest.mark.slow
def test_kd_only_where_a_teacher_is_right(parts):
    """`loss.teacher_right_only`: the KD target is kept exactly at the label positions where some
    teacher's top-1 is the label, and a batch no teacher gets right gives no KD at all."""
    import dataclasses

    _, setup, trainable, frozen, batch = parts
    gated = dataclasses.replace(setup, teacher_right_only=True)
    ts = jax.jit(lambda f, b: distill.teacher_outputs(f, b, setup))(frozen, batch)
    top1 = {n: np.asarray(t["top1"]) for n, t in ts.items()}
    has = {n: np.asarray(t["mask"]) > 0 for n, t in ts.items()}
    mask = np.asarray(batch["mask"]) > 0

    def metrics(s, labels):
        b = {**batch, "labels": labels}
        fn = jax.jit(lambda t, f, b: distill.loss_fn(t, f, b, None, 0, setup=s)[1])
        return fn(trainable, frozen, b)

    # Teacher a right at every other position, whatever the rest of the labels are.
    labels = np.asarray(batch["labels"]).copy()
    half = np.arange(labels.shape[1]) % 2 == 0
    labels[:, half] = top1["a"][:, half]
    right = np.zeros_like(mask)
    for n in ts:
        right |= (top1[n] == labels) & has[n]
    expected = right[mask].mean()
    assert 0.2 < expected < 1.0
    np.testing.assert_allclose(metrics(gated, labels)["train/kd/coverage"], expected, rtol=1e-6)

    # An id no teacher ever ranks first: nothing to distil, while the ungated KD is not zero.
    wrong = next(
        i for i in range(setup.student.vocab_size) if all(i not in t for t in top1.values())
    )
    labels = np.where(mask, wrong, np.asarray(batch["labels"])).astype(np.int32)
    m = metrics(gated, labels)
    assert float(m["train/kd/coverage"]) == 0.0 and float(m["train/kd_kl"]) == 0.0
    assert float(metrics(setup, labels)["train/kd_kl"]) > 0.0
