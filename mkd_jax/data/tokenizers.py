"""The Whisper tokenizer that sits beside a checkpoint, read from its `tokenizer.json`.

Whisper has two vocabularies (ASSETS.md): English-only models use GPT-2's 50257 text tokens with
`<|endoftext|>` = 50256; multilingual models use 50257 text tokens and `<|endoftext|>` = 50257. In
both, the specials follow in a fixed order (`<|startoftranscript|>`, one token per language,
`<|translate|>`, `<|transcribe|>`, `<|startoflm|>`, `<|startofprev|>`, `<|nospeech|>`,
`<|notimestamps|>`), then 1501 timestamp tokens `<|0.00|>`..`<|30.00|>`. A `tokenizer.json` may omit
the timestamps (tiny.en's has 50363 entries for a model with 51864 logits); they are still valid
model outputs, so decoding handles them by id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 0.02 s steps
TIMESTAMP_STEP_S = 0.02
_MIN_TEXT_TOKENS = 50257  # both Whisper vocabularies have this many text tokens (EOT included)
_EOT = "<|endoftext|>"
_SOT = "<|startoftranscript|>"
_TRANSLATE = "<|translate|>"
_TRANSCRIBE = "<|transcribe|>"
_NO_TIMESTAMPS = "<|notimestamps|>"
_NO_SPEECH = ("<|nospeech|>", "<|nocaptions|>")  # older exports use the second name
_TAGGED = re.compile(r"<\|[^|]*\|>")
# tiny.en's export still names Hebrew by its withdrawn ISO 639-1 code; key it as Whisper does.
_LEGACY_CODES = {"iw": "he"}


class WhisperTokenizer:
    """Whisper special ids, prompts, encoding and decoding over a `tokenizers.Tokenizer`.

    Args:
      tokenizer: a loaded Whisper `tokenizer.json`.
      source: where it came from, used in error messages.

    Raises:
      ValueError: if the tokenizer is too small to be Whisper's or lacks Whisper's special layout.
    """

    def __init__(self, tokenizer: Tokenizer, *, source: str = "<tokenizer>"):
        self._tok = tokenizer
        self._source = source
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if size < _MIN_TEXT_TOKENS:
            raise ValueError(
                f"{source} has only {size} token(s); a Whisper vocabulary has {_MIN_TEXT_TOKENS} "
                "text tokens plus specials. A 1-token tokenizer is what transformers' "
                "WhisperTokenizer.from_pretrained(<hub id>) silently returns offline: save the "
                "checkpoint's real tokenizer.json instead"
            )
        added = tokenizer.get_added_tokens_decoder()  # {id: AddedToken}
        self._added = {tok.content: i for i, tok in added.items()}
        self._special = frozenset(i for i, tok in added.items() if tok.special)
        required = (_EOT, _SOT, _TRANSLATE, _TRANSCRIBE, _NO_TIMESTAMPS)
        self._ids = {name: self._required(name) for name in required}
        self._check_layout()
        codes = (tokenizer.id_to_token(i)[2:-2] for i in range(self.sot + 1, self.translate))
        self._languages = {
            _LEGACY_CODES.get(code, code): i for i, code in enumerate(codes, start=self.sot + 1)
        }

    def _required(self, name: str) -> int:
        i = self._tok.token_to_id(name)
        if i is None or i not in self._special:
            raise ValueError(f"{self._source} has no special token {name}; not a Whisper tokenizer")
        return i

    def _check_layout(self) -> None:
        eot, sot, translate = self.eot, self.sot, self.translate
        expected = {
            "<|endoftext|> (50256 English-only, 50257 multilingual)": eot in (50256, 50257),
            "<|startoftranscript|> right after <|endoftext|>": sot == eot + 1,
            "<|transcribe|> right after <|translate|>": self.transcribe == translate + 1,
            "<|notimestamps|> 5 after <|translate|>": self.no_timestamps == translate + 5,
            "<|nospeech|> right before <|notimestamps|>": (
                self._tok.id_to_token(self.no_timestamps - 1) in _NO_SPEECH
            ),
            "language tokens between <|startoftranscript|> and <|translate|>": all(
                self._tok.id_to_token(i) is not None and i in self._special
                for i in range(sot + 1, translate)
            ),
        }
        first_ts = self._tok.token_to_id("<|0.00|>")
        if first_ts is not None:
            expected["<|0.00|> right after <|notimestamps|>"] = first_ts == self.timestamp_begin
        broken = [what for what, ok in expected.items() if not ok]
        if broken:
            raise ValueError(
                f"{self._source} does not have Whisper's special-token layout: {broken}"
            )

    # ----- sizes and special ids -----

    @property
    def vocab_size(self) -> int:
        """Entries in the tokenizer (text, specials and any explicit timestamp tokens)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def fingerprint(self) -> str:
        """sha256 of the whole tokenizer (vocabulary, merges, added tokens), for cache keys."""
        import hashlib

        return hashlib.sha256(self._tok.to_str().encode()).hexdigest()

    @property
    def model_vocab_size(self) -> int:
        """Logits of a Whisper model using this vocabulary: everything up to the last timestamp."""
        return self.timestamp_begin + N_TIMESTAMPS

    @property
    def eot(self) -> int:
        return self._ids[_EOT]

    @property
    def sot(self) -> int:
        return self._ids[_SOT]

    @property
    def translate(self) -> int:
        return self._ids[_TRANSLATE]

    @property
    def transcribe(self) -> int:
        return self._ids[_TRANSCRIBE]

    @property
    def no_timestamps(self) -> int:
        return self._ids[_NO_TIMESTAMPS]

    @property
    def no_speech(self) -> int:
        """The no-speech token, named `<|nospeech|>` or, in older exports, `<|nocaptions|>`."""
        return self.no_timestamps - 1

    @property
    def timestamp_begin(self) -> int:
        """Id of `<|0.00|>`, whether or not the tokenizer lists timestamp tokens."""
        return self.no_timestamps + 1

    @property
    def is_multilingual(self) -> bool:
        return self.eot == 50257

    @property
    def language_ids(self) -> dict[str, int]:
        """Language code (`"en"`, `"de"`, ...) to its token id."""
        return dict(self._languages)

    @property
    def special_ids(self) -> frozenset[int]:
        """Every special token id (EOT, SOT, languages, tasks, ...), excluding timestamps."""
        return self._special

    def prompt_ids(
        self, language: str = "en", task: str = "transcribe", timestamps: bool = False
    ) -> list[int]:
        """Decoder prompt.

        Multilingual: `[sot, language, task, notimestamps]`; English-only: `[sot, notimestamps]`.
        With `timestamps=True` the trailing `notimestamps` is left out, so the model predicts
        timestamp tokens.

        Raises:
          ValueError: for an unknown language or task, or a non-English or translate prompt for an
            English-only vocabulary.
        """
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if not self.is_multilingual:
            if language != "en" or task != "transcribe":
                raise ValueError(
                    f"{self._source} is English-only: it cannot prompt language={language!r}, "
                    f"task={task!r}"
                )
            return [self.sot] + [self.no_timestamps] * (not timestamps)
        language = _LEGACY_CODES.get(language, language)
        if language not in self._languages:
            raise ValueError(f"unknown language code {language!r} for {self._source}")
        task_id = self.transcribe if task == "transcribe" else self.translate
        prompt = [self.sot, self._languages[language], task_id]
        return prompt + [self.no_timestamps] * (not timestamps)

    # ----- text <-> ids -----

    def _check_plain(self, text: str) -> None:
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        # Like openai-whisper's reference, refuse text that would silently become a special id.
        for tag in _TAGGED.findall(text):
            if tag in self._added:
                raise ValueError(f"text contains the special token {tag!r}: {text!r}")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without any special tokens."""
        self._check_plain(text)
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and, for each, the `[start, end)` character span of `text` it came from.

        Spans are in order and together cover `text`. A character whose UTF-8 bytes are split over
        several tokens (e.g. some emoji) belongs to all of them, so neighbouring spans may overlap
        by that one character.
        """
        self._check_plain(text)
        enc = self._tok.encode(text, add_special_tokens=False)
        return enc.ids, [tuple(span) for span in enc.offsets]

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special: bool = True) -> str:
        """Text of `ids`.

        Args:
          ids: token ids; model outputs may include timestamp ids the tokenizer does not list.
          skip_special: drop specials and timestamps; otherwise render them as `<|...|>`, with
            timestamps as `<|1.08|>` as openai-whisper does.

        Raises:
          ValueError: for an id outside the model vocabulary.
        """
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < self.model_vocab_size]
        if bad:
            raise ValueError(f"ids out of range [0, {self.model_vocab_size}): {bad[:10]}")
        if skip_special:
            keep = [i for i in ids if i < self.timestamp_begin and i not in self._special]
            return self._tok.decode(keep, skip_special_tokens=False)
        # Timestamps may be missing from the tokenizer, so render them here, decoding runs between.
        parts, run = [], []
        for i in ids:
            if i < self.timestamp_begin:
                run.append(i)
                continue
            parts.append(self._tok.decode(run, skip_special_tokens=False))
            parts.append(f"<|{(i - self.timestamp_begin) * TIMESTAMP_STEP_S:.2f}|>")
            run = []
        parts.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(parts)


def load_tokenizer(folder: str | Path, *, model_vocab_size: int | None = None) -> WhisperTokenizer:
    """Loads `folder/tokenizer.json` and checks it fits a model with `model_vocab_size` logits.

    The tokenizer may list fewer entries than the model has logits (timestamps can be implicit), so
    the check is: tokenizer size and every special id within the model's vocabulary, and the model's
    vocabulary ending at this vocabulary's last timestamp (which tells English-only from
    multilingual: tiny.en's tokenizer passes the size checks against base's 51865 logits).

    Raises:
      FileNotFoundError: if the file is missing.
      ValueError: if it is not a Whisper tokenizer or does not fit the model.
    """
    path = Path(folder) / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        raw = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"cannot parse {path}: {e}") from e
    tok = WhisperTokenizer(raw, source=str(path))
    if model_vocab_size is not None:
        problems = []
        if tok.vocab_size > model_vocab_size:
            problems.append(f"it has {tok.vocab_size} entries")
        out_of_range = sorted(i for i in tok.special_ids if i >= model_vocab_size)
        if out_of_range:
            problems.append(f"special ids {out_of_range[:5]} are out of range")
        if tok.model_vocab_size != model_vocab_size:
            kind = "multilingual" if tok.is_multilingual else "English-only"
            problems.append(f"its {kind} layout implies {tok.model_vocab_size} logits")
        if problems:
            raise ValueError(
                f"{path} does not fit a model with {model_vocab_size} logits: "
                + "; ".join(problems)
            )
    return tok
