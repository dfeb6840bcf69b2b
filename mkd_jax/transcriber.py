"""`Transcriber`: a Whisper checkpoint and its jitted timestamp decoder, from 16 kHz clips of any
length to timed segments (`longform`). The command line is `mkd_jax.transcribe`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from mkd_jax import decode, longform
from mkd_jax.assets import load_model
from mkd_jax.data import features
from mkd_jax.data.tokenizers import load_tokenizer

GROUP_SECONDS = 16 * 30.0  # audio read ahead per group of files decoded together
MIN_TIMESTAMP_TOKENS = 224  # a 30 s window with timestamps needs more tokens than plain text


def timestamp_spec(spec: decode.DecodeSpec) -> decode.DecodeSpec:
    """`spec` predicting timestamps: no trailing `<|notimestamps|>` in the prompt, at least
    `MIN_TIMESTAMP_TOKENS` new tokens (within the decoder's positions)."""
    if spec.no_timestamps < 0:
        raise ValueError(
            "the decode spec does not name <|notimestamps|>: build it with spec_from_folder"
        )
    prompt = spec.prompt[:-1] if spec.prompt[-1:] == (spec.no_timestamps,) else spec.prompt
    return dataclasses.replace(
        spec,
        prompt=prompt,
        timestamps=True,
        max_new_tokens=max(spec.max_new_tokens, MIN_TIMESTAMP_TOKENS),
    )


@dataclasses.dataclass(frozen=True)
class NoSpeechGate:
    """Whisper's test for a window without speech: its no-speech probability
    (`decode.no_speech_prob`) above `threshold`, and either the decoded tokens' mean
    log-probability below `logprob_threshold` (openai-whisper's and transformers' defaults) or
    audio that never rises above `quiet_db` dBFS (20 ms RMS). The second arm is there because
    Whisper writes "you" on digital silence with confidence (mean log-probability -0.7 with
    timestamps, no-speech probability 0.95 for tiny.en), which the standard rule lets through.
    It can drop speech quieter than `quiet_db` that the model also finds speechless."""

    threshold: float = 0.6
    logprob_threshold: float = -1.0
    quiet_db: float = -70.0

    def silent(self, window: np.ndarray, no_speech: float, avg_logprob: float) -> bool:
        if no_speech <= self.threshold:
            return False
        loudest = float(longform.frame_db(window).max(initial=-120.0))
        return avg_logprob < self.logprob_threshold or loudest < self.quiet_db


def window_decoder(
    model, params, spec: decode.DecodeSpec, batch_size: int, gate: NoSpeechGate | None = None
):
    """`decode_windows(windows) -> token rows` (see `longform`): windows of at most 30 s decoded
    in batches of `batch_size` (the last one padded, so one program serves all). With `gate`, a
    window it finds silent gives no tokens."""
    # Without a gate, the very function (and cached compile) every other decoding uses.
    if gate is None:
        generate = decode.make_generate_fn(model, spec)
    else:
        generate = decode.make_generate_fn(model, spec, scores=True)

    def decode_windows(windows: list[np.ndarray]) -> list[list[int]]:
        out = []
        for b in range(0, len(windows), batch_size):
            batch = [w if len(w) else np.zeros(1, np.float32) for w in windows[b : b + batch_size]]
            pad = [np.zeros(1, np.float32)] * (batch_size - len(batch))
            mel = features.log_mel(batch + pad, n_mels=model.num_mel_bins)
            if gate is None:
                out += decode.strip(np.asarray(generate(params, mel)), spec.eot)[: len(batch)]
                continue
            tokens, no_speech, avg = map(np.asarray, generate(params, mel))
            rows = decode.strip(tokens, spec.eot)
            for k, window in enumerate(windows[b : b + batch_size]):
                out.append([] if gate.silent(window, no_speech[k], avg[k]) else rows[k])
        return out

    return decode_windows


def long_form_texts(model, params, tokenizer, spec, clips, *, batch_size: int) -> list[str]:
    """Texts of clips of any length by sequential long-form decoding with timestamps."""
    ts = timestamp_spec(spec)
    segments = longform.sequential(
        clips,
        window_decoder(model, params, ts, batch_size),
        ts.timestamp_begin,
        tokenizer.decode,
        batch_size=batch_size,
    )
    return [longform.join_text(s) for s in segments]


class Transcriber:
    """A loaded model plus its jitted timestamp decoder; maps 16 kHz clips to timed segments."""

    def __init__(
        self,
        model_name: str,
        *,
        beam_size=1,
        max_new_tokens=224,
        language="en",
        batch_size=16,
        long_form="sequential",
        chunk_s=30.0,
        stride_s=5.0,
        matmul_dtype="float32",
        gate: NoSpeechGate | None = NoSpeechGate(),
    ):
        if long_form not in longform.STRATEGIES:
            choices = ", ".join(longform.STRATEGIES)
            raise ValueError(f"long_form={long_form!r}: choose one of {choices}")
        for name, value in (
            ("batch_size", batch_size),
            ("beam_size", beam_size),
            ("max_new_tokens", max_new_tokens),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a whole number >= 1")
        if long_form == "chunked" and not (0 < chunk_s <= 30 and 0 <= 2 * stride_s < chunk_s):
            raise ValueError(
                f"chunk_s={chunk_s}, stride_s={stride_s}: need 0 < chunk_s <= 30 and "
                "0 <= 2 * stride_s < chunk_s"
            )
        model, self.params, config = load_model(model_name)
        self.model = decode.with_matmul_dtype(model, matmul_dtype)
        folder = config["_folder"]
        self.tokenizer = load_tokenizer(folder, model_vocab_size=self.model.vocab_size)
        self.spec = decode.spec_from_folder(
            folder,
            self.tokenizer,
            max_new_tokens=max_new_tokens,
            beam_size=beam_size,
            language=language,
            timestamps=True,
        )
        self.decode_windows = window_decoder(self.model, self.params, self.spec, batch_size, gate)
        self.batch_size = batch_size
        self.long_form, self.chunk_s, self.stride_s = long_form, chunk_s, stride_s

    def segments(
        self, clips: Sequence[np.ndarray], on_progress=None
    ) -> list[list[longform.Segment]]:
        """Timed segments of each clip (`longform`; checked clips only, see `stream`)."""
        text_of = lambda ids: self.tokenizer.decode(ids)  # noqa: E731
        common = dict(batch_size=self.batch_size, on_progress=on_progress)
        tb = self.spec.timestamp_begin
        if self.long_form == "chunked":
            return longform.chunked(
                clips, self.decode_windows, tb, text_of,
                chunk_s=self.chunk_s, stride_s=self.stride_s, **common,
            )  # fmt: skip
        return longform.sequential(clips, self.decode_windows, tb, text_of, **common)

    def __call__(self, clips: Sequence[np.ndarray], progress: bool = False) -> list[str]:
        """Texts of `clips`; raises ValueError naming the first clip that cannot be used."""
        texts = []
        for i, segs, error in self.stream(enumerate(clips), progress=progress):
            if error is not None:
                raise ValueError(f"clip {i}: {error}")
            texts.append(longform.join_text(segs))
        return texts

    def stream(
        self, clips: Iterable[tuple[object, np.ndarray]], progress: bool = False
    ) -> Iterator[tuple[object, list | None, str | None]]:
        """`(key, segments, None)` or `(key, None, error)` per `(key, clip)`, in input order.

        Clips are read from `clips` only as groups need them (about `GROUP_SECONDS` of audio per
        group, decoded together), so a long list of files is never all in memory; a clip whose
        samples cannot be used fails alone. The progress bar counts audio minutes.
        """
        bar = tqdm(disable=not progress, desc="transcribing", unit="audio min", unit_scale=False)
        tick = lambda seconds: bar.update(seconds / 60)  # noqa: E731
        group: list[tuple[object, np.ndarray | None, str | None]] = []
        seconds = 0.0
        for key, clip in clips:
            try:
                features.check_clip(np.asarray(clip), "audio")
                group.append((key, clip, None))
                seconds += len(clip) / features.SAMPLE_RATE
            except ValueError as e:
                group.append((key, None, f"features: {e}"))
            if seconds >= GROUP_SECONDS:
                yield from self._run(group, tick)
                group, seconds = [], 0.0
        yield from self._run(group, tick)
        bar.close()

    def _run(self, group, tick):
        ok = [clip for _, clip, error in group if error is None]
        done = iter(self.segments(ok, on_progress=tick) if ok else [])
        for key, _, error in group:
            yield (key, None, error) if error is not None else (key, next(done), None)
