"""Evaluation reuses a frozen encoder's outputs, and only those: same tokens, fewer encodes."""

import dataclasses

import jax
import numpy as np
import pytest
from test_decode import _mel, _spec, _tiny
from test_evaluate import _write_corpus
from test_token_align import _toy

from mkd_jax import decode, encoder_memo, evaluate
from mkd_jax.data import loaders


@pytest.fixture(scope="module")
def system():
    tok = _toy(multilingual=False)
    # a 3 s context keeps the test small
    model, params = _tiny(tok.model_vocab_size, 80, seed=0, max_source_positions=150)
    return tok, model, params, _spec(tok)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_from_the_encoder_output_equals_decoding_from_log_mel(system, beams):
    _, model, params, spec = system
    spec = dataclasses.replace(spec, beam_size=beams)
    mel = _mel(80, batch=3, frames=300, seed=4)
    enc = decode.make_encode_fn(model)(params, mel)
    from_enc = decode.make_generate_fn(model, spec, encoded=True)(params, enc)
    np.testing.assert_array_equal(from_enc, decode.make_generate_fn(model, spec)(params, mel))


def test_a_frozen_encoder_is_encoded_once_and_a_changed_one_again(system, tmp_path):
    tok, model, params, spec = system
    clips = [(0.6, "a"), (2.5, "b"), (0.9, "c"), (1.4, "d"), (0.3, "e")]
    utts = loaders.load_split(_write_corpus(tmp_path, clips), "test")

    def run(p, reuse):
        tr = evaluate.transcribe_utts(
            model, p, tok, spec, utts, batch_size=2, n_frames=100, reuse_encoder=reuse
        )
        return tr.hyps

    encoder_memo.clear()
    plain = run(params, False)
    assert encoder_memo.stats()["misses"] == 0  # off unless asked for
    assert run(params, True) == plain
    batches = encoder_memo.stats()["misses"]
    assert batches == 3 and encoder_memo.stats()["hits"] == 0  # 1 s: 4 utterances; 3 s: 1

    # Decoder LoRA leaves the encoder as it was: every batch is served from the memo, and the
    # tokens are those of decoding from scratch with the new decoder.
    new_dec = jax.tree.map(lambda x: x, params)
    new_dec["decoder"]["layers_0"]["fc1"]["kernel"] = params["decoder"]["layers_0"]["fc1"][
        "kernel"
    ] * np.float32(1.5)
    assert run(new_dec, True) == run(new_dec, False)
    assert encoder_memo.stats() | {"bytes": 0} == {"hits": batches, "misses": batches, "bytes": 0}

    # A changed encoder never reads the old outputs.
    new_enc = jax.tree.map(lambda x: x, params)
    ln = params["encoder"]["layer_norm"]
    noise = np.random.default_rng(0).normal(size=ln["bias"].shape).astype(np.float32)
    new_enc["encoder"]["layer_norm"] = {**ln, "bias": ln["bias"] + noise}
    assert run(new_enc, False) != plain  # the change shows in the output
    assert run(new_enc, True) == run(new_enc, False)
    assert encoder_memo.stats()["misses"] == 2 * batches
    encoder_memo.clear()


def test_the_memo_stays_within_its_byte_budget(system, monkeypatch):
    _, model, params, _ = system
    encoder_memo.clear()
    one = 2 * 50 * model.d_model * 4  # a batch of 2 windows of 100 frames, float32
    monkeypatch.setattr(encoder_memo, "MAX_BYTES", 2 * one)
    encode = encoder_memo.make_encoder(model, params)
    for seed in range(4):
        encode(_mel(80, batch=2, frames=100, seed=seed))
    assert encoder_memo.stats()["bytes"] == 2 * one
    encode(_mel(80, batch=2, frames=100, seed=3))  # the newest is kept
    encode(_mel(80, batch=2, frames=100, seed=0))  # the oldest was evicted
    assert encoder_memo.stats()["hits"] == 1 and encoder_memo.stats()["misses"] == 5
    encoder_memo.clear()


@pytest.mark.parametrize("beams", [1, 3])
def test_ensemble_decoding_from_encoder_outputs_equals_decoding_from_log_mel(beams):
    from test_decode import _tiny as tiny

    en, multi = _toy(multilingual=False), _toy(multilingual=True)
    m_en, p_en = tiny(en.model_vocab_size, 80, seed=0)
    m_multi, p_multi = tiny(multi.model_vocab_size, 128, seed=1)
    s_en = dataclasses.replace(_spec(en), beam_size=beams)
    members = ([m_en, m_multi], [s_en, _spec(multi)], [en, multi])
    mels = (_mel(80, seed=2), _mel(128, seed=2))
    encs = tuple(
        decode.make_encode_fn(m)(p, x)
        for m, p, x in zip(members[0], (p_en, p_multi), mels, strict=True)
    )
    from_enc = decode.make_ensemble_generate_fn(*members, encoded=True)((p_en, p_multi), encs)
    plain = decode.make_ensemble_generate_fn(*members)((p_en, p_multi), mels)
    np.testing.assert_array_equal(from_enc, plain)
    assert len({tuple(r) for r in np.asarray(plain)}) > 1  # real, differing decodes


def test_an_ensemble_reads_the_encoder_outputs_its_members_left(system, tmp_path):
    """The demo decodes each teacher, then their ensemble: the ensemble encodes nothing again,
    and its tokens are those of decoding the ensemble from log-mel."""
    tok, model, params, spec = system
    clips = [(0.6, "a"), (2.5, "b"), (0.9, "c"), (1.4, "d"), (0.3, "e")]
    utts = loaders.load_split(_write_corpus(tmp_path, clips), "test")
    other = jax.tree.map(lambda x: x, params)  # a second member: same encoder, new decoder
    other["decoder"]["layer_norm"] = {
        **params["decoder"]["layer_norm"],
        "bias": params["decoder"]["layer_norm"]["bias"] + np.float32(0.5),
    }
    members = [(model, params, tok, spec), (model, other, tok, spec)]
    kw = dict(batch_size=2, n_frames=100)

    encoder_memo.clear()
    evaluate.transcribe_utts(*members[0], utts, **kw, reuse_encoder=True)
    batches = encoder_memo.stats()["misses"]
    memo = evaluate.transcribe_ensemble(members, utts, **kw, reuse_encoder=True).hyps
    assert encoder_memo.stats()["misses"] == batches  # both members hit: one shared encoder
    assert encoder_memo.stats()["hits"] == 2 * batches
    assert memo == evaluate.transcribe_ensemble(members, utts, **kw).hyps
    encoder_memo.clear()
