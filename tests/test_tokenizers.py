"""The checkpoint tokenizers against openai-whisper's reference tokenizer (tiktoken)."""

import importlib.util
import json
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import BPE

from mkd_jax import assets
from mkd_jax.data.tokenizers import WhisperTokenizer, load_tokenizer

SENTENCES = [
    "Hello world.",
    " Hello world.",
    "  two leading spaces",
    "The birch canoe slid on the smooth planks.",
    "It's 3:45 p.m. on Tuesday, March 3rd, 2026.",
    "I paid $1,234.56 — that's 12% more than last year!",
    "Don't, won't, can't, shouldn't've, y'all, o'clock.",
    "\"Quoted,\" she said; 'single quotes' too.",
    "e-mail: someone@example.com, URL https://example.org/a?b=c&d=e",
    "Numbers: 0 1 22 333 4444 55555 666666 7777777 3.14159 -42 +7 1e10",
    "Café, naïve, façade, jalapeño, über, Ångström, résumé.",
    "Emoji 😀🎉 and symbols ♪ © ® ™ ° ± ½ ¼.",
    "日本語のテキストと English mixed.",
    "Привет, мир! Γειά σου κόσμε.",
    "Tabs\tand\nnewlines\n\nand   multiple   spaces.",
    "trailing space ",
    "ALL CAPS SHOUTING AND MiXeD CaSe",
    "A-B-C, x/y, (parentheses) [brackets] {braces} <angles>",
    "Mr. Smith vs. Dr. Jones at 10 a.m., St. Louis, U.S.A.",
    "hmm, um, uh-huh... well...",
    "The year 1999 and the '90s and the 2000's.",
    "Ellipsis… en–dash, em—dash and “curly quotes”.",
    "O'Brien's dog's bone",
    "#hashtag @mention *bold* _under_ ~tilde~ `code` ^caret |pipe|",
    "zero-width\u200bjoiner and non\u00a0breaking space",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "1st 2nd 3rd 4th 21st 101st",
    "Is it 9:00 or 21:00? Who knows!?",
    "Ünïcödé with combining e\u0301 accents",
    "a",
    "",
]


def _load_reference(path):
    spec = importlib.util.spec_from_file_location("whisper_reference_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    """openai-whisper's tokenizer module, from the extracted sdist (needs only tiktoken)."""
    return _load_reference(assets.ensure_reference() / "tokenizer.py")


@pytest.fixture(scope="module", params=["base", "tiny.en"])
def pair(request, reference):
    """(our tokenizer, the reference tokenizer, model folder) for each checkpoint."""
    folder = assets.ensure_model(request.param)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    ours = load_tokenizer(folder, model_vocab_size=vocab)
    multilingual = request.param == "base"
    ref = reference.get_tokenizer(multilingual, num_languages=99, language="en", task="transcribe")
    return ours, ref, folder


def test_sizes():
    for name, entries, logits, multilingual in [
        ("base", 51865, 51865, True),
        ("tiny.en", 50363, 51864, False),
    ]:
        folder = assets.ensure_model(name)
        assert json.loads((folder / "config.json").read_text())["vocab_size"] == logits
        tok = load_tokenizer(folder, model_vocab_size=logits)
        assert tok.vocab_size == entries
        assert tok.model_vocab_size == logits
        assert tok.is_multilingual is multilingual


def test_special_ids_match_reference(pair):
    ours, ref, _ = pair
    assert ours.eot == ref.eot
    assert ours.sot == ref.sot
    assert ours.translate == ref.translate
    assert ours.transcribe == ref.transcribe
    assert ours.no_timestamps == ref.no_timestamps
    assert ours.no_speech == ref.no_speech
    assert ours.timestamp_begin == ref.timestamp_begin
    ref_specials = {i for i in ref.special_tokens.values() if i < ref.timestamp_begin}
    assert ours.special_ids == ref_specials
    assert ours.language_ids == dict(
        zip(ref.all_language_codes, ref.all_language_tokens, strict=True)
    )
    assert len(ours.language_ids) == 99


def test_prompts(pair, reference):
    ours, ref, _ = pair
    assert ours.prompt_ids() == list(ref.sot_sequence_including_notimestamps)
    if ours.is_multilingual:
        assert ours.prompt_ids() == [50258, 50259, 50359, 50363]
        de = reference.get_tokenizer(True, num_languages=99, language="de", task="translate")
        assert ours.prompt_ids("de", "translate") == list(de.sot_sequence_including_notimestamps)
        assert ours.prompt_ids("iw") == ours.prompt_ids("he")  # tiny.en's export spells it <|iw|>
    else:
        assert ours.prompt_ids() == [50257, 50362]


def test_encode_and_decode_match_reference(pair):
    ours, ref, _ = pair
    for text in SENTENCES:
        ids = ours.encode(text)
        assert ids == ref.encode(text), text
        assert ours.decode(ids) == text == ref.decode(ids)


def test_offsets_index_the_text(pair):
    ours, ref, _ = pair
    for text in SENTENCES:
        ids, spans = ours.encode_with_offsets(text)
        assert ids == ours.encode(text)
        # Expected spans from the reference's token bytes: the characters those bytes belong to.
        char_of_byte = [i for i, c in enumerate(text) for _ in c.encode()]
        expected, pos = [], 0
        for t in ids:
            n = len(ref.encoding.decode_single_token_bytes(t))
            expected.append((char_of_byte[pos], char_of_byte[pos + n - 1] + 1))
            pos += n
        assert pos == len(text.encode())
        assert spans == expected, text
        if text:
            assert spans[0][0] == 0 and spans[-1][1] == len(text)
        for (_, e0), (s1, _) in zip(spans[:-1], spans[1:], strict=True):
            assert s1 in (e0, e0 - 1)  # contiguous, or sharing one split character


def test_decode_drops_specials_and_timestamps(pair):
    ours, ref, _ = pair
    text_ids = ours.encode(" It's 3.14, isn't it?")
    last_ts = ours.timestamp_begin + 1500  # <|30.00|>, a model output even where not listed
    ids = ours.prompt_ids() + text_ids[:3] + [ours.timestamp_begin + 54] + text_ids[3:]
    ids += [last_ts, ours.eot]
    assert ours.decode(ids) == " It's 3.14, isn't it?"
    assert ours.decode(np.asarray(ids)) == " It's 3.14, isn't it?"
    assert ours.decode(ids, skip_special=False) == ref.decode_with_timestamps(ids)
    assert "<|1.08|>" in ours.decode(ids, skip_special=False)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tokenizer.json")):
        load_tokenizer(tmp_path)


def test_malformed_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot parse .*tokenizer.json"):
        load_tokenizer(tmp_path)


def test_one_token_tokenizer_is_caught(tmp_path):
    # What WhisperTokenizer.from_pretrained(<hub id>) silently returns offline (STACK.md).
    Tokenizer(BPE(vocab={"a": 0}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="only 1 token.*from_pretrained"):
        load_tokenizer(tmp_path)


def test_missing_special_is_caught(tmp_path):
    src = json.loads((assets.ensure_model("tiny.en") / "tokenizer.json").read_text())
    for tok in src["added_tokens"]:
        if tok["content"] == "<|notimestamps|>":
            tok["content"] = "<|renamed|>"
    (tmp_path / "tokenizer.json").write_text(json.dumps(src))
    with pytest.raises(ValueError, match=r"no special token <\|notimestamps\|>"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("name", "model_vocab", "match"),
    [
        ("base", 51864, "51865 entries"),  # multilingual tokenizer, English-only model
        ("tiny.en", 51865, "English-only layout implies 51864"),  # lax size check alone passes
        ("tiny.en", 50300, "special ids .* out of range"),
    ],
)
def test_tokenizer_must_fit_model(name, model_vocab, match):
    folder = assets.ensure_model(name)
    with pytest.raises(ValueError, match=f"tokenizer.json does not fit .*{model_vocab}.*{match}"):
        load_tokenizer(folder, model_vocab_size=model_vocab)


def test_bad_requests_are_refused():
    english = load_tokenizer(assets.ensure_model("tiny.en"))
    multi = load_tokenizer(assets.ensure_model("base"))
    with pytest.raises(ValueError, match="English-only.*'de'"):
        english.prompt_ids("de")
    with pytest.raises(ValueError, match="English-only.*'translate'"):
        english.prompt_ids("en", "translate")
    with pytest.raises(ValueError, match="'xx'"):
        multi.prompt_ids("xx")
    with pytest.raises(ValueError, match="'summarise'"):
        multi.prompt_ids("en", "summarise")
    for tok in (english, multi):
        with pytest.raises(ValueError, match=r"<\|endoftext\|>"):
            tok.encode("hello <|endoftext|>")
        with pytest.raises(ValueError, match=r"<\|en\|>"):
            tok.encode_with_offsets("<|en|> hello")
        with pytest.raises(ValueError, match=str(tok.model_vocab_size)):
            tok.decode([1, tok.model_vocab_size])
        with pytest.raises(ValueError, match=r"\[-1\]"):
            tok.decode([-1])


def test_wrapper_takes_a_loaded_tokenizer():
    raw = Tokenizer.from_file(str(assets.ensure_model("base") / "tokenizer.json"))
    assert WhisperTokenizer(raw).prompt_ids() == [50258, 50259, 50359, 50363]
