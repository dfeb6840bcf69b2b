"""The normaliser against two independent copies of Whisper's, and WER/CER on normalised text."""

import importlib.util
import sys

import pytest
from whisper_normalizer.english import EnglishTextNormalizer as PackagedNormalizer

from mkd_jax.data.text import cer, normalize, normalize_pairs, wer

STRINGS = [
    "Hello, World!",
    "  The birch canoe slid on the smooth planks.  ",
    "Mr. Smith met Dr. Jones and Mrs. Brown on St. Patrick's Day.",
    "I won't go, can't go, and shouldn't've gone; let's see y'all.",
    "It costs $1,234.56, or about £20 and 5 cents.",
    "Twenty-one, one hundred and five, two thousand and twenty-six.",
    "one point five million dollars",
    "The 1st, 2nd, 3rd and 21st of March, 1999.",
    "It's 3:45 p.m.; the meeting's at 10 o'clock.",
    "50% of the time it works every time.",
    "Hmm, um, uh, I mean, mhm, yeah.",
    "The colour of the neighbour's armour was grey.",
    "We analysed the catalogue and the programme's behaviour.",
    "Café, naïve, façade, jalapeño, résumé, Ångström.",
    "He said [laughs] (inaudible) <noise> okay.",
    "Emoji 😀 and symbols ♪ © ® ™ ° ± ½ ¼.",
    "e-mail someone@example.com and visit example.org",
    "ALL CAPS SHOUTING AND MiXeD CaSe",
    "hyphenated well-known state-of-the-art words",
    "Ellipsis… en–dash, em—dash and “curly quotes”.",
    "double  spaces\tand\ttabs\nand newlines",
    "gonna wanna gotta",
    "zero oh one two three double four",
    "the year nineteen ninety nine and the 90s",
    "one and a half, three quarters, two thirds",
    "3.14159 and -42 and +7",
    "Call 555-1234 or 1-800-FLOWERS.",
    "O'Brien's dog's bone isn't there.",
    "Jr. Sr. Capt. Gen. Prof. Rev. Hon. Lt. Col.",
    "",
    "Um.",
]


def _load_reference_normalizers(folder):
    """openai-whisper's `whisper/normalizers` package, imported by path from the sdist."""
    spec = importlib.util.spec_from_file_location(
        "whisper_reference_normalizers",
        folder / "__init__.py",
        submodule_search_locations=[str(folder)],
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_normalizer():
    from mkd_jax import assets  # only this test needs the downloaded reference

    module = _load_reference_normalizers(assets.ensure_reference() / "normalizers")
    return module.EnglishTextNormalizer()


def test_matches_whisper_normalizer_package():
    packaged = PackagedNormalizer()
    for text in STRINGS:
        assert normalize(text) == packaged(text), text


def test_matches_openai_whisper_reference(reference_normalizer):
    for text in STRINGS:
        assert normalize(text) == reference_normalizer(text), text


def test_spelling_map_is_applied():
    # Without english.json these would stay British; the map has ~1700 entries.
    assert normalize("The colour of the neighbour armour") == "the color of the neighbor armor"


def test_wer_ignores_case_and_punctuation():
    assert wer(["Hello, World!"], ["hello world"]) == 0
    assert cer(["Hello, World!"], ["hello world"]) == 0


def test_wer_is_corpus_level():
    refs = ["a b c d", "e f"]
    hyps = ["a x c d", "e f g"]  # 1 substitution + 1 insertion over 6 reference words
    assert wer(refs, hyps) == pytest.approx(2 / 6)  # the mean of per-pair WERs would be 0.375
    assert cer(["abcd", "ef"], ["abxd", "ef"]) == pytest.approx(1 / 6)


def test_empty_references_are_dropped_and_counted():
    refs = ["Um.", "the cat sat", "", "hmm"]
    hyps = ["something", "the cat sat", "noise", ""]
    pairs = normalize_pairs(refs, hyps)
    assert pairs.dropped == 3
    assert pairs.refs == ["the cat sat"] and pairs.hyps == ["the cat sat"]
    assert wer(refs, hyps) == 0
    assert wer(["the cat sat"], ["Um."]) == 1.0  # an empty hypothesis is all deletions


def test_bad_input():
    with pytest.raises(ValueError, match="2 vs 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="all 2 references are empty"):
        wer(["Um.", ""], ["a", "b"])
    with pytest.raises(ValueError, match="single string"):
        wer("hello", "hello")
    with pytest.raises(ValueError, match="NoneType"):
        normalize(None)
