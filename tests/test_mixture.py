"""Several sources as one stream: the interleaving follows the weights, each source keeps its own
order, and a restored mixture continues bit for bit."""

import json

import numpy as np
import pytest
from test_batching import _assert_same, _corpus

from mkd_jax import assets
from mkd_jax.data.batching import BatchIterator, make_buckets
from mkd_jax.data.mixture import SOURCE, Mixture
from mkd_jax.data.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def toks():
    return {"student": load_tokenizer(assets.ensure_model("tiny.en"))}


def _sources(tmp_path, toks, audio=False):
    kw = dict(buckets=make_buckets((32,), (300,), batch_size=2), process_index=0, process_count=1,
              audio=audio, prefetch=0)  # fmt: skip
    return {
        "a": BatchIterator(_corpus(tmp_path / "a", n=7), toks, seed=1, **kw),
        "b": BatchIterator(_corpus(tmp_path / "b", n=5), toks, seed=2, **kw),
    }


def test_interleaving_follows_the_weights_and_each_source_its_own_order(tmp_path, toks):
    src = _sources(tmp_path, toks)
    mix = Mixture(src, {"a": 7.0, "b": 3.0}, prefetch=0)
    batches = [next(mix) for _ in range(300)]
    names = [str(b[SOURCE]) for b in batches]
    # Expected 210 +- 7.9 (one binomial sd) if sampled; Grain's mix is deterministic: every
    # prefix is within one batch of its share.
    for n in (10, 50, 123, 300):
        assert abs(names[:n].count("a") - 0.7 * n) <= 1, (n, names[:n].count("a"))
    for name, it in _sources(tmp_path / "again", toks).items():
        own = [b for b, s in zip(batches, names, strict=True) if s == name]
        alone = [next(it) for _ in range(len(own))]
        _assert_same([{k: v for k, v in b.items() if k != SOURCE} for b in own], alone)


def test_a_restored_mixture_continues_bit_exact(tmp_path, toks):
    weights = {"a": 0.5, "b": 0.5}
    whole = Mixture(_sources(tmp_path, toks, audio=True), weights, prefetch=0)
    expected = [next(whole) for _ in range(12)]
    first = Mixture(_sources(tmp_path, toks, audio=True), weights, prefetch=2)
    head = [next(first) for _ in range(7)]
    state = json.loads(json.dumps(first.state()))
    first.close()
    resumed = Mixture(_sources(tmp_path, toks, audio=True), weights, workers=1)
    resumed.restore(state)
    tail = [next(resumed) for _ in range(5)]
    resumed.close()
    for got, want in zip(head + tail, expected, strict=True):
        assert got.keys() == want.keys()
        for k in got:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(ValueError, match="weights changed"):
        Mixture(_sources(tmp_path, toks), {"a": 0.9, "b": 0.1}).restore(state)
    with pytest.raises(ValueError, match="sources differ"):
        Mixture({"a": _sources(tmp_path, toks)["a"]}, {"a": 1.0}).restore(state)
    with pytest.raises(ValueError, match="must be positive"):
        Mixture(_sources(tmp_path, toks), {"a": 1.0, "b": 0.0})
