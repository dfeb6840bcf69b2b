"""Layer maps, point-wise mappers and frame alignment."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mkd_jax import losses, mappers
from mkd_jax.mappers import Pair

STUDENT = {"encoder": 4, "decoder": 2}
LARGE = {"encoder": 32, "decoder": 32}


def test_uniform_index_hand_values():
    assert [mappers.uniform_index(i, 4, 32) for i in range(4)] == [7, 15, 23, 31]
    # (i + 1) * 32 / 12 = 2.67, 5.33, 8, 10.67, 13.33, 16, 18.67, 21.33, 24, 26.67, 29.33, 32
    assert [mappers.uniform_index(i, 12, 32) for i in range(12)] == [
        2, 4, 7, 10, 12, 15, 18, 20, 23, 26, 28, 31,
    ]  # fmt: skip
    # Halves round to even: 1.5 -> 2, 4.5 -> 4.
    assert [mappers.uniform_index(i, 4, 6) for i in range(4)] == [1, 2, 3, 5]
    assert [mappers.uniform_index(i, 4, 4) for i in range(4)] == [0, 1, 2, 3]
    # A deeper student: round(1/3) - 1 = -1 is clamped to 0.
    assert [mappers.uniform_index(i, 6, 2) for i in range(6)] == [0, 0, 0, 0, 1, 1]


def test_resolve_last_and_uniform():
    teachers = {"large": LARGE, "base": {"encoder": 6, "decoder": 6}}
    last = mappers.resolve_layer_map("last", student_layers=STUDENT, teachers=teachers)
    assert last == [
        Pair("encoder/output", "large", "encoder/output"),
        Pair("encoder/output", "base", "encoder/output"),
    ]
    uni = mappers.resolve_layer_map(
        "uniform", student_layers=STUDENT, teachers=teachers, sides=("encoder", "decoder")
    )
    enc_large = [p.teacher_site for p in uni if p.teacher == "large" and "enc" in p.student_site]
    assert enc_large == [f"encoder/layer_{j}" for j in (7, 15, 23, 31)]
    dec_base = [p for p in uni if p.teacher == "base" and p.student_site.startswith("decoder")]
    assert dec_base == [
        Pair("decoder/layer_0", "base", "decoder/layer_2"),
        Pair("decoder/layer_1", "base", "decoder/layer_5"),
    ]
    assert len(uni) == 2 * (4 + 2)
    text = mappers.format_layer_map(last)
    assert "encoder/output -> large:encoder/output  [enc_output__large]" in text


def test_resolve_explicit_and_errors():
    teachers = {"large": LARGE}
    pairs = mappers.resolve_layer_map(
        "explicit",
        student_layers=STUDENT,
        teachers=teachers,
        explicit=[
            "encoder/layer_3:large:encoder/layer_31",
            ("decoder/output", "large", "decoder/output"),
        ],
    )
    assert pairs == [
        Pair("encoder/layer_3", "large", "encoder/layer_31"),
        Pair("decoder/output", "large", "decoder/output"),
    ]
    assert [mappers.mapper_name(p) for p in pairs] == [
        "enc_layer_3__large_enc_layer_31",
        "dec_output__large",
    ]

    def explicit(entries):
        return mappers.resolve_layer_map(
            "explicit", student_layers=STUDENT, teachers=teachers, explicit=entries
        )

    with pytest.raises(ValueError, match=r"the student has no site 'encoder/layer_4'.*layer_3"):
        explicit(["encoder/layer_4:large:encoder/layer_31"])
    with pytest.raises(ValueError, match="teacher 'large' has no site 'encoder/layer_32'"):
        explicit(["encoder/layer_0:large:encoder/layer_32"])
    with pytest.raises(ValueError, match="no site 'encoder/block_1'"):
        explicit(["encoder/block_1:large:encoder/output"])
    with pytest.raises(ValueError, match="unknown teacher 'small'"):
        explicit(["encoder/output:small:encoder/output"])
    with pytest.raises(ValueError, match="expected"):
        explicit(["encoder/output:large"])
    with pytest.raises(ValueError, match="more than once"):
        explicit(["encoder/output:large:encoder/output"] * 2)
    with pytest.raises(ValueError, match="non-empty"):
        explicit([])
    with pytest.raises(ValueError, match="strategy"):
        mappers.resolve_layer_map("all", student_layers=STUDENT, teachers=teachers)
    with pytest.raises(ValueError, match="sides"):
        mappers.resolve_layer_map("last", student_layers=STUDENT, teachers=teachers, sides=("enc",))


def test_layer_counts():
    assert mappers.layer_counts({"encoder_layers": 12, "decoder_layers": 4}) == {
        "encoder": 12,
        "decoder": 4,
    }


def test_align_frames_avgpool_and_interp_match_torch():
    x = np.random.default_rng(0).normal(size=(2, 12, 3)).astype(np.float32)
    pooled = mappers.align_frames(jnp.asarray(x), 4)  # auto: 12 = 3 * 4 -> average pooling
    np.testing.assert_allclose(pooled, x.reshape(2, 4, 3, 3).mean(axis=2), rtol=1e-6)
    np.testing.assert_allclose(pooled[0, 1], x[0, 3:6].mean(axis=0), rtol=1e-6)
    for t_s in (5, 12, 20):  # down, same, up
        ref = torch.nn.functional.interpolate(
            torch.from_numpy(x).transpose(1, 2), size=t_s, mode="linear", align_corners=False
        ).transpose(1, 2)
        got = mappers.align_frames(jnp.asarray(x), t_s, "interp")
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6)
    auto = mappers.align_frames(jnp.asarray(x), 5)  # 12 is not a multiple of 5 -> interp
    np.testing.assert_allclose(auto, mappers.align_frames(jnp.asarray(x), 5, "interp"))
    with pytest.raises(ValueError, match="multiple"):
        mappers.align_frames(jnp.asarray(x), 5, "avgpool")
    with pytest.raises(ValueError, match="alignment"):
        mappers.align_frames(jnp.asarray(x), 6, "nearest")


def test_mapper_linear_and_mlp():
    x = jnp.ones((2, 5, 3))
    for kind, n_params in (("linear", 3 * 7 + 7), ("mlp", 3 * 4 + 4 + 4 * 7 + 7)):
        m = mappers.Mapper(7, kind=kind, hidden=4)
        params = m.init(jax.random.key(0), x)["params"]
        assert sum(p.size for p in jax.tree.leaves(params)) == n_params
        y = m.apply({"params": params}, x)
        assert y.shape == (2, 5, 7)
        np.testing.assert_allclose(y[0, 0], y[1, 4], rtol=1e-6)  # point-wise: same map everywhere
    lin = mappers.Mapper(7)
    params = lin.init(jax.random.key(0), x)["params"]["proj"]
    z = jax.random.normal(jax.random.key(1), (2, 5, 3))
    np.testing.assert_allclose(
        lin.apply({"params": {"proj": params}}, z),
        z @ params["kernel"] + params["bias"],
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="kind"):
        mappers.Mapper(7, kind="conv").init(jax.random.key(0), x)


def test_mappers_names_shapes_and_teacher_has_no_gradient():
    pairs = (
        Pair("encoder/output", "base", "encoder/output"),
        Pair("encoder/layer_1", "large", "encoder/layer_15"),
        Pair("decoder/layer_0", "large", "decoder/layer_7"),
    )
    module = mappers.Mappers(pairs=pairs, teacher_dims=(("base", 6), ("large", 10)))
    rng = np.random.default_rng(0)
    student = {
        "encoder/output": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32),
        "encoder/layer_1": jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32),
        "decoder/layer_0": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
    }
    teachers = {
        "base": {"encoder/output": jnp.asarray(rng.normal(size=(2, 4, 6)), jnp.float32)},
        "large": {  # 8 encoder frames for the student's 4: average-pooled in pairs
            "encoder/layer_15": jnp.asarray(rng.normal(size=(2, 8, 10)), jnp.float32),
            "decoder/layer_7": jnp.asarray(rng.normal(size=(2, 5, 10)), jnp.float32),
        },
    }
    params = module.init(jax.random.key(0), student, teachers)["params"]
    assert sorted(params) == sorted(
        ["enc_output__base", "enc_layer_1__large_enc_layer_15", "dec_layer_0__large_dec_layer_7"]
    )
    out = module.apply({"params": params}, student, teachers)
    pred, target = out["enc_layer_1__large_enc_layer_15"]
    assert pred.shape == target.shape == (2, 4, 10)
    np.testing.assert_allclose(
        target, teachers["large"]["encoder/layer_15"].reshape(2, 4, 2, 10).mean(2), rtol=1e-6
    )

    def loss(params, teachers):
        out = module.apply({"params": params}, student, teachers)
        return sum(
            mappers.feature_loss("geodesic", p, t, jnp.ones(p.shape[:2])) for p, t in out.values()
        )

    g_params, g_teachers = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, teachers)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(g_params))
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(g_teachers))

    with pytest.raises(KeyError, match="outputs have no 'encoder/layer_1'"):
        module.apply({"params": params}, {"encoder/output": student["encoder/output"]}, teachers)
    bad = dict(
        teachers, large=dict(teachers["large"], **{"decoder/layer_7": jnp.zeros((2, 6, 10))})
    )
    with pytest.raises(ValueError, match="only encoder frames"):
        module.apply({"params": params}, student, bad)


def test_feature_loss_dispatch():
    p = jnp.array([[[1.0, 0.0]]])
    t = jnp.array([[[0.0, 2.0]]])
    m = jnp.ones((1, 1))
    np.testing.assert_allclose(mappers.feature_loss("geodesic", p, t, m), math.pi / 2, rtol=1e-6)
    assert float(mappers.feature_loss("mse", p, t, m)) == float(losses.mse(p, t, m)) == 2.5
    with pytest.raises(ValueError, match="feature loss must be one of"):
        mappers.feature_loss("l1", p, t, m)
