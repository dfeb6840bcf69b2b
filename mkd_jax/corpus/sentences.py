"""Everyday English sentences for the synthetic corpus, and their hash split.

Natural sentences come from two Debian packages, never installed, only unpacked: the quoted
usage examples of `wordnet-base` and the `fortunes`/`fortunes-min` cookie files (the jargon,
ASCII-art and stereotype files dropped). Templates add what those lack: numbers, dates, times,
money, spelled letters and digit strings. Each sentence belongs to exactly one split, chosen by a
hash of its normalised text, so no sentence can appear in two splits whatever the seed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from pathlib import Path

from mkd_jax.corpus import debs

# Harvard sentences (IEEE 1969, lists 1-2): short checks of intelligibility and tokenizers.
HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
]

SPLITS = ("train", "dev", "test")
MIN_WORDS, MAX_WORDS = 4, 25
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Jargon (computers, linux, perl, debian, IRC logs), pictures (art), a non-English file, files
# of ethnic or sex stereotypes, and Zippy's all-caps non sequiturs. Debian ships the truly
# offensive files in `fortunes-off`, which is never fetched.
FORTUNE_EXCLUDE = frozenset(
    {
        "art", "ascii-art", "computers", "debian", "ethnic", "knghtbrd", "linux",
        "linuxcookie", "men-women", "perl", "translate-me", "zippy",
    }
)  # fmt: skip
POOL_VERSION = 2

_QUOTED = re.compile(r'"([^"]+)"')
# Letters, digits and the punctuation a TTS front end reads sensibly; anything else (markup,
# code, tabs, overstrikes) disqualifies a sentence.
_ALLOWED = re.compile(r"^[A-Za-z0-9 .,;:!?'\"()$%&-]+$")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"])")


def normalize(text: str) -> str:
    """Lower-case alphanumeric words joined by single spaces: the key for dedup and splits."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def split_of(text: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> str:
    """The split a sentence belongs to, from a hash of its normalised text.

    Args:
        text: The sentence.
        fractions: Shares of train, dev and test; must sum to 1.

    Returns:
        One of "train", "dev", "test".
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be 3 non-negative shares summing to 1: {fractions}")
    digest = hashlib.sha256(normalize(text).encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "dev" if u < fractions[0] + fractions[1] else "test"


def clean(text: str) -> str | None:
    """Collapse whitespace and keep `text` only if it is 4-25 words of plain ASCII."""
    text = " ".join(text.split())
    if not text or not text.isascii() or not _ALLOWED.match(text):
        return None
    words = text.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return None
    # Shouting (several all-caps words) reads oddly and is mostly Usenet noise.
    if sum(len(w) > 1 and w.isalpha() and w.isupper() for w in words) >= 2:
        return None
    if text[0].isalpha():
        text = text[0].upper() + text[1:]
    if text[-1] not in ".!?\"'":
        text += "."
    return text


def parse_wordnet(data: str) -> list[str]:
    """Quoted usage examples from the gloss part of a WordNet `data.*` file."""
    out = []
    for line in data.splitlines():
        if line.startswith("  ") or " | " not in line:
            continue  # licence header, or a synset without a gloss
        gloss = line.split(" | ", 1)[1]
        out += [s for s in map(clean, _QUOTED.findall(gloss)) if s]
    return out


def parse_fortunes(data: str) -> list[str]:
    """Cookies of one fortune file (`%`-separated), attribution lines dropped.

    A cookie too long for one utterance is split into its sentences, each kept if it passes
    `clean` on its own.
    """
    out = []
    for cookie in re.split(r"^%\s*$", data, flags=re.M):
        lines = [ln for ln in cookie.splitlines() if not ln.lstrip().startswith("--")]
        joined = " ".join(" ".join(lines).split())
        text = clean(joined)
        if text:
            out.append(text)
        elif len(joined.split()) > MAX_WORDS:
            out += [s for s in map(clean, _SENTENCE_END.split(joined)) if s]
    return out


def _dedup(sentences: list[str]) -> list[str]:
    seen, out = set(), []
    for s in sentences:
        key = normalize(s)
        if key and key not in seen:
            seen.add(key)
            out.append(s)
    return out


def natural_pool(cache: Path) -> dict[str, list[str]]:
    """WordNet and fortune sentences, fetched once and cached as gzipped JSON.

    Args:
        cache: Folder for the `.deb` files, their unpacked trees and the pool file.

    Returns:
        `{"wordnet": [...], "fortunes": [...]}`, deduplicated within and across sources.
    """
    path = cache / f"sentences-v{POOL_VERSION}.json.gz"
    if path.exists():
        return json.loads(gzip.decompress(path.read_bytes()))
    wn_root = debs.extract(["wordnet-base"], cache / "wordnet")
    wordnet = []
    for name in WORDNET_FILES:
        wordnet += parse_wordnet((wn_root / "usr/share/wordnet" / name).read_text("latin-1"))
    fortunes = []
    for package in ("fortunes-min", "fortunes"):
        folder = debs.extract([package], cache / package) / "usr/share/games/fortunes"
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.suffix and file.name not in FORTUNE_EXCLUDE:
                fortunes += parse_fortunes(file.read_text("utf-8", errors="replace"))
    wordnet = _dedup(wordnet)
    taken = {normalize(s) for s in wordnet}
    fortunes = [s for s in _dedup(fortunes) if normalize(s) not in taken]
    pool = {"wordnet": wordnet, "fortunes": fortunes}
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(json.dumps(pool).encode()))
    tmp.replace(path)
    return pool


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

_NAMES = (
    "Alice", "Brian", "Carmen", "David", "Elena", "Frank", "Grace", "Hassan", "Irene", "James",
    "Keiko", "Liam", "Maria", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samuel", "Tara",
)  # fmt: skip
_SURNAMES = (
    "Smith", "Nguyen", "Garcia", "Brown", "Okafor", "Miller", "Novak", "Fischer", "Kowalski",
    "Patel", "Jensen", "Moreau", "Rossi", "Tanaka", "Walsh", "Young",
)  # fmt: skip
_ITEMS = (
    "boxes", "tickets", "chairs", "books", "apples", "letters", "bottles", "cars", "houses",
    "students", "trees", "bags", "photos", "pages", "coins",
)  # fmt: skip
_PLACES = (
    "warehouse", "library", "garage", "office", "kitchen", "stadium", "school", "museum",
    "station", "garden",
)  # fmt: skip
_MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
_NATO = (
    "Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett",
    "Kilo", "Lima", "Mike", "November", "Oscar", "Papa", "Quebec", "Romeo", "Sierra", "Tango",
    "Uniform", "Victor", "Whiskey", "X-ray", "Yankee", "Zulu",
)  # fmt: skip
_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O/Q, which read as digits or are ambiguous


def _number(r: random.Random) -> str:
    n = r.choice((r.randint(2, 99), r.randint(100, 999), r.randint(1000, 99999)))
    return f"{n:,}" if n >= 1000 and r.random() < 0.7 else str(n)


def _template(r: random.Random) -> str:
    name, surname = r.choice(_NAMES), r.choice(_SURNAMES)
    kind = r.randrange(9)
    if kind == 0:
        return f"There are {_number(r)} {r.choice(_ITEMS)} in the {r.choice(_PLACES)}."
    if kind == 1:
        day, year = r.randint(1, 28), r.randint(1920, 2024)
        return f"{name} was born on {r.choice(_MONTHS)} {day}, {year}."
    if kind == 2:
        hh, mm = r.randint(1, 12), r.choice((0, 5, 10, 15, 20, 30, 40, 45, 50, 55))
        what, half = r.choice(("train", "bus", "meeting", "show")), r.choice(("a.m.", "p.m."))
        return f"The {what} starts at {hh}:{mm:02d} {half}"
    if kind == 3:
        dollars, cents = r.randint(1, 500), r.randint(0, 99)
        what = r.choice(("ticket", "book", "lunch", "repair"))
        return f"The {what} cost ${dollars}.{cents:02d} in total."
    if kind == 4:
        digits = "".join(str(r.randrange(10)) for _ in range(10))
        return f"Please call {name} at {digits[:3]}-{digits[3:6]}-{digits[6:]} tomorrow."
    if kind == 5:
        code = " ".join(str(r.randrange(10)) for _ in range(r.randint(4, 7)))
        return f"Your verification code is {code}."
    if kind == 6:
        return f"My last name is {surname}, spelled {'-'.join(surname.upper())}."
    if kind == 7:
        letters = [r.choice(_LETTERS) for _ in range(r.randint(3, 5))]
        spoken = ", ".join(f"{c} as in {_NATO[ord(c) - 65]}" for c in letters)
        return f"The reference is {spoken}."
    pct = r.choice((str(r.randint(2, 95)), f"{r.randint(1, 20)}.{r.randint(1, 9)}"))
    return f"{name} said sales rose by {pct} percent in {r.choice(_MONTHS)}."


def templates(n: int, seed: int) -> list[str]:
    """`n` distinct templated sentences (numbers, dates, times, money, spelling), seeded.

    Args:
        n: How many sentences.
        seed: Random seed; the same seed gives the same list.

    Returns:
        Distinct sentences (by normalised text), each 4-25 words.
    """
    r = random.Random(f"templates/{seed}")
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise RuntimeError(f"could only make {len(out)} distinct templated sentences of {n}")
        text = _template(r)
        key = normalize(text)
        if key not in seen and MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            seen.add(key)
            out.append(text)
    return out


def by_split(sentences: list[str], fractions: tuple[float, float, float]) -> dict[str, list[str]]:
    """Partition sentences into train/dev/test by hash (order kept within a split)."""
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for text in sentences:
        out[split_of(text, fractions)].append(text)
    return out
