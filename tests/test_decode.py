"""Jitted greedy and beam decoding against transformers' `generate` on the same weights."""

import numpy as np
import pytest
import torch
from hf_reference import make_reference, random_mel

from mkd_jax.decode import DecodeSpec, make_generate_fn, strip
from mkd_jax.models.whisper import from_hf

EOT = 50257
PROMPT = (50258, 50259, 50359, 50363)
SUPPRESS = (1, 2, 7, 8, 9, 10, 14, 25)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = make_reference("mel80", seed=1)
    with (
        torch.no_grad()
    ):  # make end-of-text likely, so early stopping and EOT padding are exercised
        ref.model.decoder.embed_tokens.weight[EOT] *= 2.2
    folder = tmp_path_factory.mktemp("dec")
    ref.save_pretrained(folder)
    model, params, _ = from_hf(folder)
    return ref, model, params


def _hf_generate(ref, mel, beams, max_new):
    with torch.no_grad():
        seqs = ref.generate(
            torch.tensor(mel),
            language="en",
            task="transcribe",
            max_new_tokens=max_new,
            num_beams=beams,
            do_sample=False,
        )
    return strip(seqs.numpy(), EOT)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_matches_transformers_generate(pair, beams):
    ref, model, params = pair
    mel = random_mel(80, batch=4, seed=3)
    spec = DecodeSpec(
        prompt=PROMPT,
        eot=EOT,
        max_new_tokens=24,
        suppress=SUPPRESS,
        begin_suppress=(220, EOT),
        beam_size=beams,
    )
    ours = strip(make_generate_fn(model, spec)(params, mel), EOT)
    assert ours == _hf_generate(ref, mel, beams, 24)
    assert len({len(r) for r in ours}) > 1 or beams > 1  # rows ended at different steps


def test_greedy_pads_with_eot_and_compiles_once(pair):
    _, model, params = pair
    spec = DecodeSpec(prompt=PROMPT, eot=EOT, max_new_tokens=24, suppress=SUPPRESS)
    fn = make_generate_fn(model, spec)
    toks = np.asarray(fn(params, random_mel(80, batch=4, seed=3)))
    for row in toks:
        hits = np.flatnonzero(row == EOT)
        if hits.size:
            assert (row[hits[0] :] == EOT).all()
    fn(params, random_mel(80, batch=4, seed=4))
    assert fn._cache_size() == 1


def test_too_many_new_tokens_is_rejected(pair):
    _, model, _ = pair
    with pytest.raises(ValueError, match="exceeds"):
        make_generate_fn(model, DecodeSpec(prompt=PROMPT, eot=EOT, max_new_tokens=446))


def test_matmul_dtype_is_checked_and_bfloat16_decodes(pair):
    from mkd_jax.decode import with_matmul_dtype

    _, model, params = pair
    with pytest.raises(ValueError, match="'fp8': choose one of float32, bfloat16"):
        with_matmul_dtype(model, "fp8")
    assert with_matmul_dtype(model, "float32") == model
    spec = DecodeSpec(prompt=PROMPT, eot=EOT, max_new_tokens=8, suppress=SUPPRESS)
    mel = random_mel(80, batch=4, seed=5)
    exact = np.asarray(make_generate_fn(model, spec)(params, mel))
    fast = np.asarray(make_generate_fn(with_matmul_dtype(model, "bfloat16"), spec)(params, mel))
    assert fast.shape == exact.shape and fast.dtype == exact.dtype
    assert (fast[:, 0] == exact[:, 0]).all(), (fast, exact)


# ----- ensemble decoding: tiny random Flax models with the toy tokenizers of test_token_align -----


def _tiny(vocab: int, n_mels: int, seed: int, **fields):
    """A small random Whisper (`fields` override its config); parameters drawn in numpy from the
    shapes (eager init is slow)."""
    import flax.linen as nn
    import jax

    from mkd_jax.models.whisper import Whisper, abstract_params

    model = Whisper(
        vocab_size=vocab,
        num_mel_bins=n_mels,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        **fields,
    )
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(abstract_params(model, frames=40))
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: (
            rng.normal(0.0, 0.3 if len(s.shape) > 1 else 0.1, s.shape) + (path[-1].key == "scale")
        ).astype(np.float32),
        shapes,
    )
    return model, params


def _spec(tok, max_new=12):
    return DecodeSpec(
        prompt=tuple(tok.prompt_ids()),
        eot=tok.eot,
        max_new_tokens=max_new,
        suppress=(3, 5),
        begin_suppress=(tok.eot,),
    )


def _mel(n_mels, batch=3, frames=120, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1.0, 1.5, size=(batch, n_mels, frames)).astype(np.float32)


@pytest.fixture(scope="module")
def toy():
    """English-only and multilingual toy members with greedy and ensemble decoders, compiled once.

    Member mel bins differ (80 and 128), so each member gets its own features.
    """
    from test_token_align import _toy

    from mkd_jax.decode import make_ensemble_generate_fn

    en, multi = _toy(multilingual=False), _toy(multilingual=True)
    m_en, p_en = _tiny(en.model_vocab_size, 80, seed=0)
    m_multi, p_multi = _tiny(multi.model_vocab_size, 128, seed=1)
    s_en, s_multi = _spec(en), _spec(multi)
    return {
        "en": (en, m_en, p_en, s_en),
        "multi": (multi, m_multi, p_multi, s_multi),
        "greedy_en": make_generate_fn(m_en, s_en),
        "greedy_multi": make_generate_fn(m_multi, s_multi),
        "same": make_ensemble_generate_fn([m_en, m_en], [s_en, s_en], [en, en], (0.3, 0.7)),
        "cross": make_ensemble_generate_fn([m_en, m_multi], [s_en, s_multi], [en, multi]),
    }


def test_ensemble_of_identical_members_equals_single_greedy(toy):
    _, _, params, _ = toy["en"]
    mel = _mel(80)
    single = np.asarray(toy["greedy_en"](params, mel))
    np.testing.assert_array_equal(np.asarray(toy["same"]((params, params), (mel, mel))), single)
    np.testing.assert_array_equal(
        np.asarray(toy["same"]((params, params), (mel, mel), (1.0, 0.0))), single
    )
    assert len({tuple(r) for r in single}) > 1  # rows differ: the test compares real decodes
    assert toy["same"].jitted._cache_size() == 1  # new weights did not recompile


def test_ensemble_beam_of_identical_members_equals_single_beam_search(toy):
    import dataclasses

    from mkd_jax.decode import make_ensemble_generate_fn

    en, m_en, params, s_en = toy["en"]
    beams = dataclasses.replace(s_en, beam_size=3)
    mel = _mel(80, seed=4)
    single = np.asarray(make_generate_fn(m_en, beams)(params, mel))
    ens = make_ensemble_generate_fn([m_en, m_en], [beams, s_en], [en, en], (0.4, 0.6))
    np.testing.assert_array_equal(np.asarray(ens((params, params), (mel, mel))), single)
    greedy = np.asarray(toy["greedy_en"](params, mel))
    assert (single != greedy).any()  # the beams found something greedy did not


def test_ensemble_across_vocabularies_emits_only_shared_tokens(toy):
    from mkd_jax.data import token_align
    from mkd_jax.decode import ensemble_allowed, ensemble_index

    en, m_en, p_en, s_en = toy["en"]
    multi, m_multi, p_multi, s_multi = toy["multi"]
    cat = en.encode(" cat")[0]  # an English-only token the multilingual vocabulary lacks
    assert token_align.student_index(token_align.vocab_map(multi, en), m_en.vocab_size)[cat] < 0
    # Make the English model emit " cat" at every step on its own.
    p_en = dict(p_en, decoder=dict(p_en["decoder"]))
    row = p_en["decoder"]["embed_tokens"]["embedding"][cat]
    p_en["decoder"]["layer_norm"] = {"scale": np.zeros_like(row), "bias": 10 * row}
    mel_en, mel_multi = _mel(80, seed=1), _mel(128, seed=1)
    alone = strip(toy["greedy_en"](p_en, mel_en), en.eot)
    assert all(r and set(r) == {cat} for r in alone)

    out = np.asarray(toy["cross"]((p_en, p_multi), (mel_en, mel_multi)))
    index = ensemble_index([en, multi], [m_en, m_multi])
    allowed, _ = ensemble_allowed(index, [s_en, s_multi], [m_en, m_multi])
    assert out.shape == (3, 12) and allowed[out].all() and cat not in out
    assert not allowed[cat] and not allowed[3] and allowed[en.eot]


def test_ensemble_feeds_each_member_its_own_ids(toy):
    """All weight on the multilingual member: its own greedy decode, mapped to English ids.

    Feeding it English ids instead (shifted by one from its own) would change its decode.
    """
    from mkd_jax.data import token_align

    en, _, p_en, _ = toy["en"]
    multi, _, p_multi, _ = toy["multi"]
    mel_en, mel_multi = _mel(80, seed=2), _mel(128, seed=2)
    own = np.asarray(toy["greedy_multi"](p_multi, mel_multi))
    vmap = token_align.vocab_map(multi, en)
    assert (vmap[own] >= 0).all() and (own != vmap[own]).any()
    out = toy["cross"]((p_en, p_multi), (mel_en, mel_multi), (0.0, 1.0))
    np.testing.assert_array_equal(np.asarray(out), vmap[own])


def test_ensemble_rejects_bad_settings(toy):
    from mkd_jax.decode import make_ensemble_generate_fn

    en, m_en, p_en, s_en = toy["en"]
    multi, m_multi, _, s_multi = toy["multi"]
    with pytest.raises(ValueError, match="weights"):
        make_ensemble_generate_fn([m_en, m_multi], [s_en, s_multi], [en, multi], (1.0,))
    with pytest.raises(ValueError, match="weights"):
        toy["same"]((p_en, p_en), (_mel(80), _mel(80)), (0.0, 0.0))
    with pytest.raises(ValueError, match="no timestamp mode"):
        stamped = DecodeSpec(prompt=s_en.prompt, eot=en.eot, timestamps=True)
        make_ensemble_generate_fn([m_en, m_multi], [stamped, s_multi], [en, multi])
    with pytest.raises(ValueError, match="logits"):
        make_ensemble_generate_fn([m_en, m_multi], [s_en, s_multi], [multi, en])


def test_generate_fn_is_built_once_per_model_and_spec():
    """WER passes reuse one jitted decoder (and its traces) instead of re-tracing every time."""
    from mkd_jax import decode
    from mkd_jax.models.whisper import Whisper

    spec = decode.DecodeSpec(prompt=(1, 2), eot=3, max_new_tokens=4)
    model = Whisper(vocab_size=8, d_model=8, encoder_layers=1, decoder_layers=1,
                    encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=8,
                    decoder_ffn_dim=8, max_source_positions=4, max_target_positions=16)  # fmt: skip
    assert decode.make_generate_fn(model, spec) is decode.make_generate_fn(model, spec)
    other = decode.DecodeSpec(
        prompt=(1, 2), eot=3, max_new_tokens=5, suppress=(), begin_suppress=()
    )
    assert decode.make_generate_fn(model, other) is not decode.make_generate_fn(model, spec)


# ----- timestamps: token-identical to transformers' generate(..., return_timestamps=True) -----


@pytest.fixture(scope="module")
def ts_pair(tmp_path_factory):
    """A random English-only reference whose timestamp logits are lifted, so that timestamps,
    pairs, text and end-of-text all occur within a few steps."""
    ref = make_reference("mel80", seed=2)
    ref.generation_config.no_timestamps_token_id = NO_TS
    ref.generation_config.max_initial_timestamp_index = 50
    with torch.no_grad():
        ref.model.decoder.embed_tokens.weight[NO_TS + 1 :] *= 3.0
        ref.model.decoder.embed_tokens.weight[EOT] *= 1.6
    folder = tmp_path_factory.mktemp("ts")
    ref.save_pretrained(folder)
    model, params, _ = from_hf(folder)
    return ref, model, params


NO_TS = 50363


def _hf_timestamp_greedy(ref, mel, prompt, max_new):
    """Greedy decoding driven by transformers' own Whisper logits processors, in generate's
    order (begin-suppress, suppress, timestamp rules), one full forward pass per step."""
    from transformers.generation.logits_process import (
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        WhisperTimeStampLogitsProcessor,
    )

    begin = len(prompt)
    procs = [
        SuppressTokensAtBeginLogitsProcessor([220, EOT], begin),
        SuppressTokensLogitsProcessor(list(SUPPRESS)),
        WhisperTimeStampLogitsProcessor(ref.generation_config, begin_index=begin),
    ]
    ids = torch.tensor([list(prompt)] * mel.shape[0])
    with torch.no_grad():
        for _ in range(max_new):
            scores = ref(input_features=torch.tensor(mel), decoder_input_ids=ids).logits[:, -1]
            for proc in procs:
                scores = proc(ids, scores)
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
    return strip(ids[:, begin:].numpy(), EOT)


def test_timestamp_rules_match_transformers_processors(ts_pair):
    ref, model, params = ts_pair
    mel = random_mel(80, batch=4, seed=5)
    spec = DecodeSpec(
        prompt=PROMPT[:3],
        eot=EOT,
        max_new_tokens=40,
        suppress=SUPPRESS,
        begin_suppress=(220, EOT),
        timestamps=True,
        no_timestamps=NO_TS,
        max_initial_timestamp=50,
    )
    ours = strip(make_generate_fn(model, spec)(params, mel), EOT)
    assert ours == _hf_timestamp_greedy(ref, mel, PROMPT[:3], 40)
    flat = [t for row in ours for t in row]
    assert any(t > NO_TS for t in flat) and any(t < EOT for t in flat)  # both kinds occur
    for row in ours:
        ts = [t for t in row if t > NO_TS]
        assert ts == sorted(ts) and NO_TS < row[0] <= NO_TS + 51


@pytest.mark.slow
def test_timestamps_on_real_speech_match_transformers():
    """Real tiny.en weights on synthesised speech (flite voices): three sentences alone and one
    22 s window holding several, token for token against transformers' generate."""
    from transformers import WhisperForConditionalGeneration

    from mkd_jax.assets import resolve_model
    from mkd_jax.corpus.sentences import HARVARD
    from mkd_jax.corpus.voices import synthesize
    from mkd_jax.data import features
    from mkd_jax.transcriber import Transcriber

    voices = ["flite:slt", "flite:awb", "flite:rms", "flite:kal16"]
    clips = [synthesize(HARVARD[i], voices[i % 4]) for i in range(6)]
    pause = np.zeros(8000, np.float32)
    joined = np.concatenate([x for c in clips for x in (c, pause)])[: 22 * 16000]
    batch = clips[:3] + [joined]
    tr = Transcriber("tiny.en", batch_size=4)
    ours = tr.decode_windows(batch)
    ref = WhisperForConditionalGeneration.from_pretrained(resolve_model("tiny.en"))
    with torch.no_grad():
        seqs = ref.generate(
            torch.tensor(features.log_mel(batch)), return_timestamps=True, max_new_tokens=224
        )
    theirs = []
    for row in strip(seqs.numpy(), tr.spec.eot):
        while row and row[0] in tr.spec.prompt:
            row = row[1:]
        theirs.append(row)
    assert ours == theirs
    assert sum(t >= tr.spec.timestamp_begin for t in ours[3]) >= 6  # several segments


def _no_speech_reference(ref, mel) -> np.ndarray:
    with torch.no_grad():
        first = ref(torch.tensor(mel), decoder_input_ids=torch.tensor([[PROMPT[0]]] * 4)).logits
    return torch.softmax(first[:, 0].double(), -1)[:, PROMPT[-1] - 1].numpy()


def test_silence_scores_match_transformers(pair):
    """`scores=True` (greedy): the same tokens, the no-speech probability after
    <|startoftranscript|> as transformers' decoder gives it, and the mean log-probability of the
    chosen tokens under transformers' processed scores, EOT included."""
    ref, model, params = pair
    mel = random_mel(80, batch=4, seed=3)
    spec = DecodeSpec(
        prompt=PROMPT, eot=EOT, max_new_tokens=24, suppress=SUPPRESS,
        begin_suppress=(220, EOT), no_timestamps=PROMPT[-1],
    )  # fmt: skip
    scored = make_generate_fn(model, spec, scores=True)(params, mel)
    tokens, no_speech, avg = map(np.asarray, scored)
    assert (tokens == np.asarray(make_generate_fn(model, spec)(params, mel))).all()
    np.testing.assert_allclose(no_speech, _no_speech_reference(ref, mel), rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        out = ref.generate(
            torch.tensor(mel), language="en", task="transcribe", max_new_tokens=24,
            do_sample=False, return_dict_in_generate=True, output_scores=True,
        )  # fmt: skip
    steps = torch.stack(out.scores, 1).double().log_softmax(-1)  # [B, steps, V], processed
    new = out.sequences[:, -steps.shape[1] :]
    for k, row in enumerate(strip(tokens, EOT)):
        n = min(len(row) + 1, steps.shape[1])  # the tokens and the EOT that ended them
        want = steps[k, torch.arange(n), new[k, :n]].mean().item()
        assert avg[k] == pytest.approx(want, abs=1e-4)


def test_beam_scores_are_its_tokens_own(pair):
    """Beam search's `avg_logprob` undoes the length penalty (0.5 here) of its score: it equals
    the mean, EOT included, of the chosen tokens' log-probabilities from transformers'
    teacher-forced logits under the same suppress lists; its no-speech probability is each
    row's, not another beam's."""
    ref, model, params = pair
    mel = random_mel(80, batch=4, seed=5)
    spec = DecodeSpec(
        prompt=PROMPT, eot=EOT, max_new_tokens=24, suppress=SUPPRESS, begin_suppress=(220, EOT),
        beam_size=3, length_penalty=0.5, no_timestamps=PROMPT[-1],
    )  # fmt: skip
    scored = make_generate_fn(model, spec, scores=True)(params, mel)
    tokens, no_speech, avg = map(np.asarray, scored)
    assert (tokens == np.asarray(make_generate_fn(model, spec)(params, mel))).all()
    np.testing.assert_allclose(no_speech, _no_speech_reference(ref, mel), rtol=1e-4, atol=1e-7)
    for k, row in enumerate(strip(tokens, EOT)):
        seq = list(PROMPT) + row + [EOT] * (len(row) < 24)
        with torch.no_grad():
            logits = ref(torch.tensor(mel[k : k + 1]), decoder_input_ids=torch.tensor([seq])).logits
        logits = logits[0, len(PROMPT) - 1 : -1].double()
        logits[:, list(SUPPRESS)] = -np.inf
        logits[0, [220, EOT]] = -np.inf
        lp = logits.log_softmax(-1)[torch.arange(len(seq) - len(PROMPT)), seq[len(PROMPT) :]]
        assert avg[k] == pytest.approx(lp.mean().item(), abs=1e-4), k


def test_scores_need_the_no_speech_id(pair):
    _, model, _ = pair
    with pytest.raises(ValueError, match="no-speech id"):
        make_generate_fn(model, DecodeSpec(prompt=PROMPT, eot=EOT), scores=True)


def test_the_no_speech_gate_follows_its_rule(pair):
    from mkd_jax.transcriber import NoSpeechGate, window_decoder

    gate = NoSpeechGate()  # 0.6, -1.0, -70 dBFS
    loud = np.full(16000, 0.1, np.float32)  # -20 dBFS
    quiet = np.full(16000, 1e-4, np.float32)  # -80 dBFS
    assert not gate.silent(loud, 0.6, -5.0)  # not above the threshold
    assert gate.silent(loud, 0.61, -1.01) and not gate.silent(loud, 0.61, -0.99)
    assert gate.silent(quiet, 0.61, -0.2)  # confident, but nothing there to hear
    assert not gate.silent(quiet, 0.59, -3.0) and gate.silent(np.zeros(0, np.float32), 0.9, 0.0)

    _, model, params = pair
    spec = DecodeSpec(prompt=PROMPT[:3], eot=EOT, max_new_tokens=24, no_timestamps=PROMPT[-1])
    windows = [loud, quiet, loud[:4000]]
    plain = window_decoder(model, params, spec, batch_size=2)(windows)
    assert any(plain)
    never = NoSpeechGate(threshold=1.0)
    assert window_decoder(model, params, spec, batch_size=2, gate=never)(windows) == plain
    always = NoSpeechGate(threshold=0.0, logprob_threshold=1.0)
    assert window_decoder(model, params, spec, batch_size=2, gate=always)(windows) == [[]] * 3


@pytest.mark.slow
def test_silence_gives_no_text_and_speech_keeps_its_text():
    """Real tiny.en: 5 s of digital silence and a 0.01 s clip came out as "you"; speech is
    unchanged, and the no-speech probability equals transformers' on every clip."""
    from transformers import WhisperForConditionalGeneration

    from mkd_jax.assets import resolve_model
    from mkd_jax.corpus.sentences import HARVARD
    from mkd_jax.corpus.voices import synthesize
    from mkd_jax.data import features
    from mkd_jax.transcriber import Transcriber

    speech = [synthesize(HARVARD[i], v) for i, v in enumerate(["flite:slt", "flite:awb"])]
    clips = [np.zeros(80000, np.float32), np.zeros(160, np.float32), *speech]
    ungated = Transcriber("tiny.en", batch_size=4, gate=None)
    assert all("you" in t for t in ungated(clips[:2]))  # "you you" and "you" today
    gated = Transcriber("tiny.en", batch_size=4)
    texts = gated(clips)
    assert texts[:2] == ["", ""] and texts[2:] == ungated(speech) and all(texts[2:])
    gen = make_generate_fn(gated.model, gated.spec, scores=True)
    no_speech = np.asarray(gen(gated.params, features.log_mel(clips))[1])
    ref = WhisperForConditionalGeneration.from_pretrained(resolve_model("tiny.en"))
    with torch.no_grad():
        logits = ref(
            torch.tensor(features.log_mel(clips)),
            decoder_input_ids=torch.tensor([[gated.spec.prompt[0]]] * 4),
        ).logits
    theirs = torch.softmax(logits[:, 0].double(), -1)[:, gated.spec.no_timestamps - 1].numpy()
    np.testing.assert_allclose(no_speech, theirs, atol=1e-4)
    assert (no_speech[:2] > 0.6).all() and (no_speech[2:] < 0.1).all()
