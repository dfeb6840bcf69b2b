"""Per-utterance word errors and the paired bootstrap interval of a WER difference."""

import numpy as np
import pytest

from mkd_jax import report, stats
from mkd_jax.data import text

REFS = ["The cat sat on the mat.", "Hello, world!", "Um.", "It's 5 o'clock now"]
HYPS = ["the cat sat on a mat", "hello there world", "", "its five oclock"]


def test_utterance_errors_sum_to_corpus_wer():
    edits, words = stats.utterance_errors(REFS, HYPS)
    assert edits.dtype == np.int64 and words.shape == (4,)
    assert words[2] == 0 and edits[2] == 0  # "Um." normalises to nothing, as text.wer drops it
    assert (edits[0], words[0]) == (1, 6)  # one substitution
    assert (edits[1], words[1]) == (1, 2)  # one insertion
    np.testing.assert_allclose(edits.sum() / words.sum(), text.wer(REFS, HYPS))
    assert stats.corpus_wer(edits, words) == pytest.approx(100 * text.wer(REFS, HYPS))


def test_empty_hypothesis_is_all_deletions():
    edits, words = stats.utterance_errors(["red green blue"], [""])
    assert (edits[0], words[0]) == (3, 3)


def _simulate(rng, n_utts, p_a, p_b):
    """Two systems with per-word error rates p_a and p_b on utterances of 3-30 words."""
    words = rng.integers(3, 31, n_utts)
    # Per-utterance difficulty makes errors cluster within utterances, as in real speech.
    hard = rng.gamma(2.0, 0.5, n_utts)
    errs_a = rng.binomial(words, np.clip(p_a * hard, 0, 1))
    errs_b = rng.binomial(words, np.clip(p_b * hard, 0, 1))
    return errs_a, errs_b, words


def test_interval_covers_a_known_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    truth = 100 * (0.15 - 0.10)  # E[edits] / E[words] differ by this (E[hard] = 1)
    covered, widths = 0, []
    for trial in range(100):
        a, b, w = _simulate(rng, 150, 0.10, 0.15)
        ci = stats.paired_bootstrap(a, b, w, n_resamples=1000, seed=trial)
        assert ci["low"] <= ci["diff"] <= ci["high"]
        covered += ci["low"] <= truth <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert 85 <= covered <= 100, covered
    assert 1.0 < np.mean(widths) < 8.0  # not trivially wide


def test_interval_excludes_zero_for_a_clear_difference():
    a, b, w = _simulate(np.random.default_rng(1), 400, 0.05, 0.15)
    ci = stats.paired_bootstrap(a, b, w, n_resamples=2000)
    assert 0 < ci["low"] < ci["diff"] < ci["high"]
    assert ci["diff"] == pytest.approx(ci["wer_b"] - ci["wer_a"])


def test_identical_systems_give_zero_interval():
    a, _, w = _simulate(np.random.default_rng(2), 50, 0.1, 0.1)
    ci = stats.paired_bootstrap(a, a.copy(), w)
    assert (ci["diff"], ci["low"], ci["high"]) == (0.0, 0.0, 0.0)


def test_seeded_determinism():
    a, b, w = _simulate(np.random.default_rng(3), 80, 0.1, 0.12)
    one = stats.paired_bootstrap(a, b, w, n_resamples=500, seed=7)
    assert one == stats.paired_bootstrap(a, b, w, n_resamples=500, seed=7)
    assert one != stats.paired_bootstrap(a, b, w, n_resamples=500, seed=8)


def test_pairing_narrows_the_interval():
    """Paired resampling cancels shared utterance difficulty; an unpaired interval would not."""
    rng = np.random.default_rng(4)
    a, _, w = _simulate(rng, 200, 0.2, 0.2)
    b = a + rng.binomial(1, 0.3, len(a))  # b = a plus a few extra errors
    ci = stats.paired_bootstrap(a, b, w, n_resamples=2000)
    assert ci["high"] - ci["low"] < 2.0


@pytest.mark.parametrize(
    "args, match",
    [
        (([1, 2], [1], [3, 3]), "one length"),
        (([1, -1], [1, 1], [3, 3]), "non-negative"),
        (([0, 0], [0, 0], [0, 0]), "at least one reference word"),
    ],
)
def test_bad_inputs_are_refused(args, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_bootstrap(*args)


def test_per_utterance_spread_names_a_runaway():
    """Hand-made: one utterance gains 29 edits (a repetition loop), two lose one each."""
    a = np.array([3, 2, 1, 0, 4])
    b = np.array([32, 1, 0, 0, 4])
    w = np.array([1, 5, 5, 5, 6])
    ci = stats.paired_bootstrap(a, b, w, n_resamples=200)
    assert (ci["n_better"], ci["n_worse"], ci["max_utt_diff"]) == (2, 1, 29)
    assert ci["diff"] == pytest.approx(100 * 27 / 22)
    assert report.format_spread(ci) == "2 better, 1 worse; largest single change +29 words of 22"


# ----- power of a split size (stats.paired_power) -----


def test_power_of_a_constant_difference_is_one_at_any_size():
    a = np.full(40, 3)
    b = a - 1  # one word fewer on every 10-word utterance: -10 points, no spread
    out = stats.paired_power(a, b, np.full(40, 10), [2, 5, 40], sims=20, n_resamples=200)
    assert out["observed"]["diff"] == pytest.approx(-10.0)
    assert [s["power"] for s in out["sizes"]] == [1.0, 1.0, 1.0]
    assert all(s["wrong_sign"] == 0.0 and s["half_width"] == 0.0 for s in out["sizes"])


def test_identical_systems_have_no_power():
    a = np.arange(30) % 4
    out = stats.paired_power(a, a, np.full(30, 8), [10, 30], sims=20, n_resamples=200)
    assert [s["power"] for s in out["sizes"]] == [0.0, 0.0]


def test_power_matches_the_normal_approximation():
    """Per-utterance differences -1 (40%), 0 (50%), +1 (10%) on 10-word utterances: mean -0.3,
    sd sqrt(0.41). A two-sided 95% test then has power about Phi(0.3 sqrt(n) / sd - 1.96)
    (hand-derived; scipy's normal CDF), against which the simulated bootstrap power is checked."""
    from scipy.stats import norm

    d = np.array([-1] * 400 + [0] * 500 + [1] * 100)
    a = np.full(1000, 2)
    out = stats.paired_power(a, a + d, np.full(1000, 10), [10, 20, 50], sims=400, seed=1)
    for s in out["sizes"]:
        expected = norm.cdf(0.3 * np.sqrt(s["n"]) / np.sqrt(0.41) - 1.96)
        assert s["power"] == pytest.approx(expected, abs=0.1), (s, expected)
        assert s["wrong_sign"] < 0.02
    powers = [s["power"] for s in out["sizes"]]
    assert powers == sorted(powers) and powers[0] < 0.5 < powers[-1]


@pytest.mark.parametrize(
    "kw, match",
    [(dict(sizes=[]), "sizes"), (dict(sizes=[0]), "sizes"), (dict(sizes=[5], sims=0), "sims")],
)
def test_power_refuses_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_power([1, 2], [1, 1], [5, 5], **kw)
