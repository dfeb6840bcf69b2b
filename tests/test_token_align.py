"""Cross-tokenizer KD: vocabulary map, position alignment, label rows, probability mapping.

Fast tests use two small byte-level BPE tokenizers built here with Whisper's special layout (one
English-only, one multilingual whose text ids are shifted by one), so every expected id is known by
construction. The last tests use the real tiny.en and base tokenizers (from the asset cache).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from mkd_jax import kd_targets, losses
from mkd_jax.data import token_align
from mkd_jax.data.tokenizers import WhisperTokenizer

_SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|translate|>",
    "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]  # fmt: skip
_MERGES = [("Ġ", "t"), ("Ġt", "h"), ("Ġth", "e"), ("a", "t"), ("Ġ", "c"), ("Ġc", "at")]


def _toy(multilingual: bool) -> WhisperTokenizer:
    """English-only: 256 bytes, 6 merged tokens (the last " cat"), fillers to 50256, specials.

    Multilingual: one extra token at id 0 (so shared text ids are +1), no " cat" merge, specials
    from 50257.
    """
    pieces = sorted(pre_tokenizers.ByteLevel.alphabet()) + ["".join(m) for m in _MERGES]
    merges = list(_MERGES)
    if multilingual:
        pieces = ["~extra~"] + pieces[:-1] + ["~nocat~"]
        merges = merges[:-1]
    n_text = 50257 if multilingual else 50256
    offset = 1 if multilingual else 0
    pieces += [f"~{i - offset}~" for i in range(len(pieces), n_text)]
    tok = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in _SPECIALS])
    return WhisperTokenizer(tok, source="toy-multilingual" if multilingual else "toy-en")


@pytest.fixture(scope="module")
def toys():
    return _toy(multilingual=False), _toy(multilingual=True)


def test_toy_tokenizers_are_what_the_tests_assume(toys):
    en, multi = toys
    assert (en.eot, multi.eot) == (50256, 50257)
    assert en.encode(" the cat") == [258, 261] and multi.encode(" the cat") == [259, 261, 260]
    assert en.prompt_ids() == [50257, 50265] and len(multi.prompt_ids()) == 4


def test_vocab_map_by_bytes_names_and_timestamps(toys):
    en, multi = toys
    vmap = token_align.vocab_map(multi, en)  # teacher multilingual -> student English
    assert vmap.shape == (multi.model_vocab_size,) and vmap.dtype == np.int32
    assert vmap[0] == -1  # "~extra~" exists only in the teacher
    assert vmap[259] == 258  # " the"
    assert vmap[262] == -1  # "~nocat~"
    assert vmap[1 + 65] == 65 and vmap[1000] == 999  # a byte token; a filler
    assert vmap[multi.eot] == en.eot and vmap[multi.sot] == en.sot
    assert vmap[multi.no_timestamps] == en.no_timestamps
    assert vmap[multi.timestamp_begin + 7] == en.timestamp_begin + 7
    back = token_align.vocab_map(en, multi)
    assert back[261] == -1 and back[258] == 259 and back[en.eot] == multi.eot
    assert np.sum(vmap >= 0) == np.sum(back >= 0)  # one-to-one both ways


def test_same_vocabulary_is_detected(toys):
    en, multi = toys
    assert token_align.same_vocabulary(token_align.vocab_map(en, en), en.model_vocab_size)
    assert token_align.same_vocabulary(token_align.vocab_map(multi, multi), multi.model_vocab_size)
    assert not token_align.same_vocabulary(token_align.vocab_map(multi, en), en.model_vocab_size)


def test_align_positions_and_label_rows(toys):
    en, multi = toys
    text = "the cat sat the"
    # Student (English): t h e [ cat] [ ] s at [ the]; teacher: t h e [ c] at [ ] s at [ the].
    s2t = token_align.align_positions(text, multi, en)
    np.testing.assert_array_equal(s2t, [0, 1, 2, -1, 5, 6, 7, 8])
    np.testing.assert_array_equal(
        token_align.align_positions(text, en, multi), [0, 1, 2, -1, -1, 4, 5, 6, 7]
    )
    assert token_align.coverage([s2t]) == 7 / 8
    assert token_align.coverage([s2t, np.array([0, -1])]) == 8 / 10
    s_ids, t_ids = en.encode(text), multi.encode(text)
    rows = token_align.label_rows(
        s2t,
        n_teacher_tokens=len(t_ids),
        student_prompt_len=2,
        teacher_prompt_len=4,
        pad_len=12,
    )
    np.testing.assert_array_equal(rows, [-1, 3, 4, 5, -1, 8, 9, 10, 11, 12, -1, -1])
    # Each aligned teacher row predicts the same token the student row predicts.
    _, s_labels, s_mask = losses.make_labels(en.prompt_ids(), [s_ids], en.eot, 12)
    _, t_labels, _ = losses.make_labels(multi.prompt_ids(), [t_ids], multi.eot, 16)
    vmap = token_align.vocab_map(multi, en)
    for r in np.nonzero(rows >= 0)[0]:
        assert s_mask[0, r] == 1
        assert vmap[t_labels[0, rows[r]]] == s_labels[0, r]
    with pytest.raises(ValueError, match="pad_len"):
        token_align.label_rows(
            s2t, n_teacher_tokens=9, student_prompt_len=2, teacher_prompt_len=4, pad_len=9
        )


def test_map_teacher_probs_hand_values():
    vmap = np.array([2, -1, 0, 1, -1], np.int32)  # teacher ids 1 and 4 have no student token
    p = jnp.array([[0.1, 0.2, 0.3, 0.25, 0.15], [0.0, 0.0, 0.0, 0.0, 0.0]])
    got = jax.jit(lambda p: kd_targets.map_teacher_probs(p, vmap, 3))(p)
    np.testing.assert_allclose(got[0], np.array([0.3, 0.25, 0.1]) / 0.65, rtol=1e-6)
    np.testing.assert_array_equal(got[1], 0.0)  # no target stays no target
    # Same as the scatter-add of the mapped mass, renormalised.
    ref = np.zeros(3)
    ok = vmap >= 0
    np.add.at(ref, vmap[ok], np.asarray(p[0])[ok])
    np.testing.assert_allclose(got[0], ref / ref.sum(), rtol=1e-6)
    index = token_align.student_index(vmap, 3)
    np.testing.assert_array_equal(index, [2, 3, 0])
    np.testing.assert_allclose(kd_targets.map_teacher_probs(p, vmap, 3, index=index), got)
    with pytest.raises(ValueError, match="5"):
        kd_targets.map_teacher_probs(p[:, :4], vmap, 3)


def test_shared_support_kd_leaves_the_students_merged_token_alone(toys):
    """The student has " cat" (261) as one token; the teacher spells it " c" + "at". At an aligned
    position the old mapping (KL over the student's full vocabulary) pushes the student's " cat"
    logit down; the shared-support KL gives it exactly zero gradient."""
    en, multi = toys
    vmap = token_align.vocab_map(multi, en)
    index = token_align.student_index(vmap, en.model_vocab_size)
    support = token_align.student_support(vmap, en.model_vocab_size, index=index)
    cat = en.encode(" cat")[0]
    assert not support[cat] and support[en.encode(" the")[0]]
    rng = np.random.default_rng(0)
    teacher_logits = jnp.asarray(rng.normal(size=(1, 1, multi.model_vocab_size)), jnp.float32)
    p_t, kept = kd_targets.map_teacher_probs(
        losses.tempered_probs(teacher_logits, 2.0), vmap, en.model_vocab_size, index=index,
        return_kept=True,
    )  # fmt: skip
    dropped = 1.0 - float(kept[0, 0])  # "~extra~" and "~nocat~" have no student token
    assert 0.0 < dropped < 0.01
    z = jnp.asarray(rng.normal(size=(1, 1, en.model_vocab_size)), jnp.float32)
    mask = jnp.ones((1, 1))

    def grad(sup):
        return jax.grad(lambda z: losses.kd_kl(z, p_t, mask, temperature=2.0, support=sup))(z)

    assert float(grad(support)[0, 0, cat]) == 0.0
    assert float(grad(None)[0, 0, cat]) > 0.0  # descent lowers the student's " cat"
    # Identical vocabularies: the support is everything and the KL is the plain one.
    same = token_align.vocab_map(en, en)
    full = token_align.student_support(same, en.model_vocab_size)
    assert full.all()
    p_same = losses.tempered_probs(z[..., ::-1], 2.0)
    np.testing.assert_allclose(
        losses.kd_kl(z, p_same, mask, temperature=2.0, support=full),
        losses.kd_kl(z, p_same, mask, temperature=2.0),
        rtol=1e-6,
    )


def test_gather_rows():
    x = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    rows = jnp.array([[2, -1, 0, 0], [-1, 1, 1, 2]])
    got = kd_targets.gather_rows(x, rows)
    expected = np.zeros((2, 4, 2), np.float32)
    for b in range(2):
        for s in range(4):
            if rows[b, s] >= 0:
                expected[b, s] = x[b, rows[b, s]]
    np.testing.assert_array_equal(got, expected)


# ----- the real tokenizers -----

from mkd_jax.corpus.sentences import HARVARD  # noqa: E402


@pytest.fixture(scope="module")
def real():
    from mkd_jax import assets
    from mkd_jax.data.tokenizers import load_tokenizer

    base = load_tokenizer(assets.ensure_model("base"), model_vocab_size=51865)
    tiny = load_tokenizer(assets.ensure_model("tiny.en"), model_vocab_size=51864)
    return base, tiny, token_align.vocab_map(base, tiny)


def test_real_vocab_map(real):
    base, tiny, vmap = real
    assert base.encode(" the") == [264] and tiny.encode(" the") == [262]
    assert vmap[264] == 262
    assert vmap[base.eot] == tiny.eot == 50256
    assert vmap[base.no_timestamps] == tiny.no_timestamps
    assert vmap[base.timestamp_begin] == tiny.timestamp_begin
    assert token_align.same_vocabulary(token_align.vocab_map(tiny, tiny), tiny.model_vocab_size)
    assert not token_align.same_vocabulary(vmap, tiny.model_vocab_size)
    for t_id in np.nonzero(vmap[: base.eot] >= 0)[0][::997]:  # sampled: decoded strings agree
        assert base.decode([t_id]) == tiny.decode([vmap[t_id]])


def test_real_coverage_and_mapped_targets(real):
    base, tiny, vmap = real
    alignments = [token_align.align_positions(s, base, tiny, vmap=vmap) for s in HARVARD]
    cov = token_align.coverage(alignments)
    assert cov >= 0.9, cov
    # Aligned tokens really are the same text.
    for text, s2t in zip(HARVARD, alignments, strict=True):
        s_ids, s_spans = tiny.encode_with_offsets(text)
        t_ids, t_spans = base.encode_with_offsets(text)
        for j, k in enumerate(s2t):
            if k >= 0:
                assert s_spans[j] == t_spans[k] and tiny.decode([s_ids[j]]) == base.decode(
                    [t_ids[k]]
                )
    # Teacher probabilities on student ids: one distribution per aligned position, none elsewhere.
    text, s2t = HARVARD[0], alignments[0]
    n_t = len(base.encode(text))
    rows = token_align.label_rows(
        s2t, n_teacher_tokens=n_t, student_prompt_len=2, teacher_prompt_len=4, pad_len=24
    )
    logits = jax.random.normal(jax.random.key(0), (1, 4 + n_t + 4, base.model_vocab_size))
    p_t = losses.tempered_probs(4.0 * logits, 2.0)
    p_s = kd_targets.map_teacher_probs(
        kd_targets.gather_rows(p_t, jnp.asarray(rows)[None]), vmap, tiny.model_vocab_size
    )
    sums = np.asarray(jnp.sum(p_s, axis=-1))[0]
    np.testing.assert_allclose(sums[rows >= 0], 1.0, rtol=1e-5)
    np.testing.assert_array_equal(sums[rows < 0], 0.0)
