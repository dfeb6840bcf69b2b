"""Loss math against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mkd_jax import losses

LN2 = math.log(2.0)


def test_make_labels_hand_example():
    sot, nt, eot = 50257, 50362, 50256
    inputs, labels, mask = losses.make_labels([sot, nt], [[10, 11, 12], [20]], eot, pad_len=7)
    np.testing.assert_array_equal(
        inputs, [[sot, nt, 10, 11, 12, eot, eot], [sot, nt, 20, eot, eot, eot, eot]]
    )
    np.testing.assert_array_equal(
        labels, [[nt, 10, 11, 12, eot, eot, eot], [nt, 20, eot, eot, eot, eot, eot]]
    )
    # The last prompt token predicts the first text token; EOT is a target; padding is not.
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0]])
    assert inputs.dtype == np.int32 and labels.dtype == np.int32 and mask.dtype == np.float32
    assert np.sum(inputs[0] == sot) == 1  # start token once
    # Exactly full: no padding at all.
    inputs, labels, mask = losses.make_labels([sot], [[1, 2]], eot, pad_len=3)
    np.testing.assert_array_equal(inputs, [[sot, 1, 2]])
    np.testing.assert_array_equal(labels, [[1, 2, eot]])
    np.testing.assert_array_equal(mask, [[1, 1, 1]])


def test_make_labels_rejects_bad_input():
    with pytest.raises(ValueError, match="utterance 1.*exceed pad_len=4"):
        losses.make_labels([1, 2], [[5], [5, 6, 7]], 0, pad_len=4)
    with pytest.raises(ValueError, match="contain EOT"):
        losses.make_labels([1], [[5, 0]], 0, pad_len=8)
    with pytest.raises(ValueError, match="non-empty prompt"):
        losses.make_labels([], [[5]], 0, pad_len=8)


def _logits(*rows):
    return jnp.log(jnp.asarray(rows, jnp.float32))


def test_cross_entropy_hand_values_and_padding():
    logits = _logits([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    labels = jnp.array([[0, 1, 2]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    ce, n = losses.cross_entropy(logits, labels, mask)
    np.testing.assert_allclose(ce, (LN2 + 2 * LN2) / 2, rtol=1e-6)
    assert float(n) == 2.0
    # Padding with any content changes nothing.
    padded = jnp.concatenate([logits, 100.0 * jnp.ones((1, 3, 3))], axis=1)
    ce2, n2 = losses.cross_entropy(
        padded, jnp.array([[0, 1, 2, 1, 1, 1]]), jnp.array([[1.0, 1, 0, 0, 0, 0]])
    )
    np.testing.assert_allclose(ce2, ce, rtol=1e-6)
    assert float(n2) == 2.0
    ce0, n0 = losses.cross_entropy(logits, labels, jnp.zeros((1, 3)))
    assert float(ce0) == 0.0 and float(n0) == 0.0


def test_cross_entropy_averages_tokens_not_rows():
    logits = _logits([[0.5, 0.5], [0.5, 0.5]], [[0.25, 0.75], [0.25, 0.75]])
    labels = jnp.array([[0, 0], [0, 0]])
    mask = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    ce, _ = losses.cross_entropy(logits, labels, mask)
    np.testing.assert_allclose(ce, (LN2 + 2 * (2 * LN2)) / 3, rtol=1e-6)
    # Summed per utterance (what "best" ranks by): row 0 one token ln 2, row 1 two of 2 ln 2.
    per_utt = losses.nll_per_utt(logits, labels, mask)
    np.testing.assert_allclose(per_utt, [LN2, 4 * LN2], rtol=1e-6)


def test_is_top1_agrees_with_argmax_and_counts_ties():
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 50))
    top = jnp.argmax(logits, axis=-1)
    assert bool(jnp.all(losses.is_top1(logits, top)))
    assert not bool(jnp.any(losses.is_top1(logits, (top + 1) % 50)))
    tied = jnp.array([[[1.0, 3.0, 3.0, 0.0]]])  # argmax says 1; both tied ids are the top
    np.testing.assert_array_equal(losses.is_top1(tied, jnp.array([[2]])), [[True]])
    np.testing.assert_array_equal(losses.is_top1(tied, jnp.array([[3]])), [[False]])


def test_top1_hits():
    logits = _logits([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]])
    hits = losses.top1_hits(logits, jnp.array([[0, 0, 1]]), jnp.array([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(hits, 0.5)


def test_kd_kl_hand_values():
    p = jnp.array([0.5, 0.25, 0.25])
    q = jnp.array([0.25, 0.5, 0.25])
    # KL(p || q) = 0.5 ln 2 + 0.25 ln(1/2) + 0 = 0.25 ln 2. At T = 1:
    kl = losses.kd_kl(jnp.log(q)[None, None], p[None, None], jnp.ones((1, 1)), temperature=1.0)
    np.testing.assert_allclose(kl, 0.25 * LN2, rtol=1e-6)
    # At T = 2 with student logits 2 log q (so softmax(z / T) = q): T^2 * 0.25 ln 2 = ln 2.
    kl2 = losses.kd_kl(2 * jnp.log(q)[None, None], p[None, None], jnp.ones((1, 1)), temperature=2.0)
    np.testing.assert_allclose(kl2, LN2, rtol=1e-6)
    # Mean over unmasked tokens: second token KL 0, third masked with a wild target.
    student = jnp.stack([jnp.log(q), jnp.log(p), jnp.zeros(3)])[None]
    target = jnp.stack([p, p, jnp.array([1.0, 0.0, 0.0])])[None]
    kl3 = losses.kd_kl(student, target, jnp.array([[1.0, 1.0, 0.0]]), temperature=1.0)
    np.testing.assert_allclose(kl3, 0.25 * LN2 / 2, rtol=1e-6)


def test_kd_kl_zero_entries_and_gradient():
    p = jnp.array([[[1.0, 0.0, 0.0]]])
    z = jnp.array([[[0.0, 0.0, 0.0]]])
    np.testing.assert_allclose(losses.kd_kl(z, p, jnp.ones((1, 1)), temperature=1.0), math.log(3))
    # A zero row (no target) adds 0 but still counts as a token in the mean.
    np.testing.assert_allclose(losses.kd_kl(z, 0 * p, jnp.ones((1, 1)), temperature=1.0), 0.0)
    # d/dz T^2 KL(p || softmax(z / T)) = T (softmax(z / T) - p).
    t = 2.0
    z = jnp.array([[[1.0, -1.0, 0.5]]])
    target = jnp.array([[[0.2, 0.3, 0.5]]])
    g = jax.grad(lambda z: losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=t))(z)
    np.testing.assert_allclose(g, t * (jax.nn.softmax(z / t) - target), rtol=1e-5, atol=1e-7)
    g_target = jax.grad(lambda p: losses.kd_kl(z, p, jnp.ones((1, 1)), temperature=t))(target)
    np.testing.assert_array_equal(g_target, 0.0)


def test_kd_kl_shared_support_hand_values_and_zero_gradient_outside():
    # Student vocabulary of 4; the teacher can represent ids {0, 1, 2} only (3 is a merged
    # student token it lacks). Target on the support: [0.5, 0.25, 0.25, 0].
    target = jnp.array([[[0.5, 0.25, 0.25, 0.0]]])
    support = jnp.array([True, True, True, False])
    z = jnp.log(jnp.array([[[0.2, 0.2, 0.2, 0.4]]]))
    kl = losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=1.0, support=support)
    # Student renormalised over the support is uniform 1/3: KL = sum p ln(p / (1/3)).
    want = 0.5 * math.log(1.5) + 2 * 0.25 * math.log(0.75)
    np.testing.assert_allclose(kl, want, rtol=1e-6)
    g = jax.grad(
        lambda z: losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=2.0, support=support)
    )(z)
    assert float(g[0, 0, 3]) == 0.0  # the merged token is neither pushed down nor up
    # d/dz_i T^2 KL = T (q_S(i) - p(i)) on the support, with q_S the renormalised student.
    q_s = jax.nn.softmax(z[0, 0, :3] / 2.0)
    np.testing.assert_allclose(g[0, 0, :3], 2.0 * (q_s - target[0, 0, :3]), rtol=1e-5)
    # The full-vocabulary KL (the "student" option) pushes the merged token down.
    g_full = jax.grad(lambda z: losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=2.0))(z)
    assert float(g_full[0, 0, 3]) > 0.1  # gradient descent lowers its logit
    # A full support is the plain KL.
    full = losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=2.0, support=jnp.ones(4, bool))
    np.testing.assert_allclose(full, losses.kd_kl(z, target, jnp.ones((1, 1)), temperature=2.0))


def test_shared_support_and_restrict():
    assert losses.shared_support([None, None], 4) is None
    s = losses.shared_support([np.array([1, 1, 0, 1], bool), None, np.array([1, 0, 1, 1], bool)], 4)
    np.testing.assert_array_equal(s, [True, False, False, True])
    p = jnp.array([[0.4, 0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(losses.restrict(p, s), [[4 / 7, 0, 0, 3 / 7], [0, 0, 0, 0]])
    assert losses.restrict(p, None) is p
    with pytest.raises(ValueError, match="support must be"):
        losses.shared_support([np.ones(3, bool)], 4)


def test_tempered_probs():
    probs = losses.tempered_probs(jnp.log(jnp.array([1.0, 4.0, 1.0])), 2.0)
    np.testing.assert_allclose(probs, [0.25, 0.5, 0.25], rtol=1e-6)


def test_ensemble_target_modes():
    p0 = jnp.array([[[1.0, 0.0]], [[0.5, 0.5]]])  # [B=2, S=1, V=2]
    p1 = jnp.array([[[0.0, 1.0]], [[0.1, 0.9]]])
    mean = losses.ensemble_target([p0, p1])
    np.testing.assert_allclose(mean, [[[0.5, 0.5]], [[0.3, 0.7]]], rtol=1e-6)
    weighted = losses.ensemble_target([p0, p1], mode="weights", weights=[3.0, 1.0])
    np.testing.assert_allclose(weighted, [[[0.75, 0.25]], [[0.4, 0.6]]], rtol=1e-6)
    ce = jnp.array([[1.0, 0.2], [0.5, 0.9]])  # [K, B]: utt 0 -> teacher 1, utt 1 -> teacher 0
    best = losses.ensemble_target([p0, p1], mode="best", teacher_nll_per_utt=ce)
    np.testing.assert_allclose(best, [[[0.0, 1.0]], [[0.5, 0.5]]])
    with pytest.raises(ValueError, match="needs 2 weights"):
        losses.ensemble_target([p0, p1], mode="weights", weights=[1.0])
    with pytest.raises(ValueError, match="teacher_nll_per_utt"):
        losses.ensemble_target([p0, p1], mode="best")
    with pytest.raises(ValueError, match="mode"):
        losses.ensemble_target([p0, p1], mode="max")


def test_best_ranks_by_summed_nll_not_mean_token_ce():
    """Two tokenizations of the same reference: teacher A spells it in 2 tokens at p = e^-1 each
    (summed NLL 2, mean 1); teacher B in 4 tokens at p = e^-0.6 (summed 2.4, mean 0.6). A gives
    the whole reference the higher probability (e^-2 > e^-2.4), so "best" must pick A, although
    B's mean per-token CE is lower."""
    v = 8

    def logits_for(n_tok, nll):
        # Label 0 gets probability e^-nll; the rest spread evenly over the other ids.
        p0 = math.exp(-nll)
        row = np.full(v, (1 - p0) / (v - 1))
        row[0] = p0
        return jnp.log(jnp.asarray(np.tile(row, (1, n_tok, 1)), jnp.float32))

    a, b = logits_for(2, 1.0), logits_for(4, 0.6)
    nll_a = losses.nll_per_utt(a, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)))
    nll_b = losses.nll_per_utt(b, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4)))
    np.testing.assert_allclose([nll_a[0], nll_b[0]], [2.0, 2.4], rtol=1e-5)
    ce_a, _ = losses.cross_entropy(a, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2)))
    ce_b, _ = losses.cross_entropy(b, jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4)))
    assert float(ce_b) < float(ce_a)  # the old ranking would have picked B
    p_a, p_b = jnp.array([[[1.0, 0.0]]]), jnp.array([[[0.0, 1.0]]])  # on student positions
    best = losses.ensemble_target(
        [p_a, p_b], mode="best", teacher_nll_per_utt=jnp.stack([nll_a, nll_b])
    )
    np.testing.assert_allclose(best, p_a)


def test_ensemble_target_with_masks():
    p0 = jnp.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])  # [B=1, S=3, V=2]
    p1 = jnp.array([[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
    m0 = jnp.array([[1.0, 0.0, 0.0]])
    m1 = jnp.array([[1.0, 1.0, 0.0]])
    target = losses.ensemble_target([p0, p1], masks=[m0, m1])
    # Position 0: both teachers; 1: only teacher 1; 2: none (zero row).
    np.testing.assert_allclose(target, [[[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(losses.ensemble_mask([m0, m1]), [[1.0, 1.0, 0.0]])
    ce = jnp.array([[0.1], [0.9]])  # teacher 0 is best, but lacks position 1
    best = losses.ensemble_target([p0, p1], mode="best", teacher_nll_per_utt=ce, masks=[m0, m1])
    np.testing.assert_allclose(best, [[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    np.testing.assert_array_equal(
        losses.ensemble_mask([m0, m1], mode="best", teacher_nll_per_utt=ce), [[1.0, 0.0, 0.0]]
    )


def test_interpolated_target_and_schedule():
    ps = jnp.array([0.2, 0.8])
    pt = jnp.array([1.0, 0.0])
    np.testing.assert_allclose(losses.interpolated_target(ps, pt, 0.25), [0.4, 0.6], rtol=1e-6)
    g_s, g_t = jax.grad(lambda a, b: losses.interpolated_target(a, b, 0.25)[0], (0, 1))(ps, pt)
    np.testing.assert_array_equal(g_s, [0.0, 0.0])
    np.testing.assert_array_equal(g_t, [0.25, 0.0])
    got = [float(losses.lambda_schedule(s, 9)) for s in range(12)]
    np.testing.assert_allclose(got, [0.1] * 3 + [0.5] * 3 + [0.9] * 6, rtol=1e-6)
    got = [float(losses.lambda_schedule(s, 10)) for s in range(10)]  # thirds at 3.33 and 6.67
    np.testing.assert_allclose(got, [0.1] * 4 + [0.5] * 3 + [0.9] * 3, rtol=1e-6)
    jitted = jax.jit(lambda s: losses.lambda_schedule(s, 9, values=(0.0, 1.0)))
    assert float(jitted(4)) == 0.0 and float(jitted(5)) == 1.0
    with pytest.raises(ValueError, match="total_steps"):
        losses.lambda_schedule(0, 0)


def _vec(*rows):
    return jnp.asarray(rows, jnp.float32)[None]  # [1, T, D]


def test_feature_losses_hand_values():
    pred = _vec([1.0, 0.0], [1.0, 0.0], [2.0, 2.0], [5.0, -7.0])
    target = _vec([0.0, 3.0], [1.0, 1.0], [-1.0, -1.0], [0.0, 0.0])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding
    angles = [math.pi / 2, math.pi / 4, math.pi]
    geo = losses.geodesic(pred, target, mask)
    np.testing.assert_allclose(geo, sum(angles) / 3, atol=2e-3)  # the clamp costs ~sqrt(2e-6)
    np.testing.assert_allclose(
        losses.geodesic(pred[:, :2], target[:, :2], mask[:, :2]), 3 * math.pi / 8, rtol=1e-5
    )
    cos = [0.0, 1 / math.sqrt(2), -1.0]
    np.testing.assert_allclose(
        losses.cosine(pred, target, mask), sum(1 - c for c in cos) / 3, rtol=1e-6
    )
    sq = [(1 + 9) / 2, (0 + 1) / 2, (9 + 9) / 2]
    np.testing.assert_allclose(losses.mse(pred, target, mask), sum(sq) / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="feature loss"):
        losses.mse(pred, target[:, :2], mask)


@pytest.mark.parametrize("name", ["mse", "cosine", "geodesic"])
def test_feature_loss_gradients_finite_at_identical_and_opposite(name):
    fn = losses.FEATURE_LOSSES[name]
    x = _vec([0.3, -1.2, 2.0], [0.0, 0.0, 0.0])
    mask = jnp.ones((1, 2))
    for target in (x, -x):
        g = jax.grad(fn)(x, target, mask)
        assert np.all(np.isfinite(np.asarray(g))), (name, g)
    if name == "geodesic":
        np.testing.assert_allclose(fn(x[:, :1], x[:, :1], mask[:, :1]), math.sqrt(2e-6), rtol=1e-2)
        np.testing.assert_array_equal(jax.grad(fn)(x[:, :1], x[:, :1], mask[:, :1]), 0.0)
