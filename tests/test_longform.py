"""Long-form transcription: segments from timestamp tokens, sequential and chunked strategies (with
a scripted decoder whose words sit at known times), and SRT/VTT output checked by other parsers."""

import datetime
import io

import numpy as np
import pytest
import srt as srt_lib
import webvtt

from mkd_jax import longform, subtitles
from mkd_jax.longform import Segment

TB = 1000  # <|0.00|> in the scripted vocabulary; text ids are word numbers below it
SR = 16_000


def text_of(ids):
    return " ".join(f"w{i}" for i in ids)


def ts(seconds):
    return TB + round(seconds / 0.02)


def test_window_segments_follow_the_reference_rules():
    # Two closed segments, then a single timestamp before end-of-text: the whole window is used.
    toks = [ts(0), 1, 2, ts(1.0), ts(1.5), 3, ts(2.0)]
    segs, adv = longform.window_segments(toks, TB, text_of, offset_s=10.0, window_frames=3000)
    assert segs == [Segment(10.0, 11.0, "w1 w2"), Segment(11.5, 12.0, "w3")]
    assert adv == 3000
    # The last segment is cut by the window's end: dropped; seek to the end of the one before.
    toks = [ts(0), 1, ts(1.0), ts(1.5), 3, ts(2.0), ts(2.5), 4]
    segs, adv = longform.window_segments(toks, TB, text_of, offset_s=0.0, window_frames=3000)
    assert [s.text for s in segs] == ["w1", "w3"] and adv == 200
    # No timestamp pair: one segment up to the last timestamp, the whole window consumed.
    segs, adv = longform.window_segments(
        [ts(0.4), 5, 6, ts(3.0)], TB, text_of, offset_s=0.0, window_frames=1200
    )
    assert segs == [Segment(0.4, 3.0, "w5 w6")] and adv == 1200
    segs, adv = longform.window_segments([5, 6], TB, text_of, offset_s=0.0, window_frames=1200)
    assert segs == [Segment(0.0, 12.0, "w5 w6")] and adv == 1200


# A recording whose word k is spoken over [1.4 k + 0.2, 1.4 k + 1.0] s; each sample holds its own
# index (scaled), so the scripted decoder knows where a window starts.
N_WORDS = 60
STARTS = [1.4 * k + 0.2 for k in range(N_WORDS)]
ENDS = [s + 0.8 for s in STARTS]
SECONDS = STARTS[-1] + 2.0


def _recording():
    return np.arange(round(SECONDS * SR), dtype=np.float64) / 1e7


def _scripted(stop_after=None, calls=None, jump_at=None):
    """A decoder that emits `<|s|> word <|e|>` for each word starting inside the window (no
    closing timestamp if the word runs past the window's end), optionally ending early, or, in
    the window starting at `jump_at`, saying one word and closing its segment 20 s later."""

    def decode_windows(windows):
        out = []
        for w in windows:
            t0 = round(w[0] * 1e7) / SR
            t1 = t0 + len(w) / SR
            if calls is not None:
                calls.append((t0, t1))
            if jump_at is not None and abs(t0 - jump_at) < 0.01:
                k = next(k for k, s in enumerate(STARTS) if s >= t0)
                out.append(
                    [ts(STARTS[k] - t0), k, ts(STARTS[k] - t0 + 20), ts(STARTS[k] - t0 + 20)]
                )
                continue
            toks = []
            for k, (s, e) in enumerate(zip(STARTS, ENDS, strict=True)):
                if not t0 <= s < t1:
                    continue
                if stop_after is not None and len(toks) >= 3 * stop_after:
                    break
                toks += [ts(s - t0), k]
                if e > t1:
                    break  # cut by the window's end: no closing timestamp
                toks.append(ts(e - t0))
            out.append(toks)
        return out

    return decode_windows


def _words(segments):
    return [w for s in segments for w in s.text.split()]


def test_sequential_decodes_every_word_once_at_its_time():
    calls = []
    segs = longform.sequential([_recording()], _scripted(calls=calls), TB, text_of)[0]
    assert _words(segs) == [f"w{k}" for k in range(N_WORDS)]
    for s in segs:
        k = int(s.text[1:])
        assert abs(s.start - STARTS[k]) <= 0.011 and abs(s.end - ENDS[k]) <= 0.011
    # Word 21 (29.6-30.4 s) is cut by the first window: the second starts where word 20 ended.
    assert calls[0] == (0.0, 30.0) and calls[1][0] == pytest.approx(ENDS[20], abs=0.011)


def test_sequential_resumes_a_window_that_stopped_early_only_before_speech():
    clip = _recording()
    segs = longform.sequential([clip], _scripted(stop_after=5), TB, text_of)[0]
    assert _words(segs) == [f"w{k}" for k in range(N_WORDS)]  # the rest is speech: resumed
    # Silence after the early stop (a clip that is quiet past 8 s): the reference skips it.
    quiet = clip.copy()
    quiet[8 * SR :] *= 1e-4
    assert not longform.has_speech(quiet[9 * SR : 12 * SR], longform._loud_level(quiet))
    assert longform.has_speech(clip[9 * SR : 12 * SR], longform._loud_level(clip))


def test_sequential_decodes_again_what_an_implausible_segment_skipped():
    calls = []
    segs = longform.sequential([_recording()], _scripted(calls=calls, jump_at=0.0), TB, text_of)[0]
    assert _words(segs) == [f"w{k}" for k in range(N_WORDS)]
    assert segs[0].end - segs[0].start < 2.0  # the 20 s claim was cut to what one word takes
    assert calls[1][0] < 2.0  # and the next window started right after it
    # A long segment with enough words is left alone.
    ok = [Segment(0.0, 8.0, " ".join(["w"] * 8))]
    assert longform._cut_implausible(ok, 3000, _recording(), 0.0, 0.0) == (ok, 3000)


@pytest.mark.parametrize("chunk_s,stride_s", [(30.0, 5.0), (10.0, 2.0), (7.0, 1.5)])
def test_chunked_stitches_without_dropping_or_doubling(chunk_s, stride_s):
    calls = []
    segs = longform.chunked(
        [_recording()], _scripted(calls=calls), TB, text_of, chunk_s=chunk_s, stride_s=stride_s
    )[0]
    assert _words(segs) == [f"w{k}" for k in range(N_WORDS)]
    assert all(b.start >= a.start for a, b in zip(segs, segs[1:], strict=False))
    first = sorted({round(t0, 3) for t0, _ in calls})
    assert first[:2] == [0.0, chunk_s - 2 * stride_s]


def test_chunked_batches_several_clips_and_refuses_bad_strides():
    two = [_recording(), _recording()[: 12 * SR]]
    segs = longform.chunked(two, _scripted(), TB, text_of, chunk_s=10.0, stride_s=2.0)
    assert _words(segs[0]) == [f"w{k}" for k in range(N_WORDS)]
    # Word 8 (11.4-12.2 s) is cut by the clip's end; what was said of it is kept.
    assert _words(segs[1]) == [f"w{k}" for k in range(9)]
    for chunk_s, stride_s in ((31.0, 5.0), (10.0, 5.0), (10.0, -1.0)):
        with pytest.raises(ValueError, match="chunk_s|stride_s"):
            longform.chunked(two, _scripted(), TB, text_of, chunk_s=chunk_s, stride_s=stride_s)


SEGMENTS = [
    Segment(0.0, 2.5, "Hello there."),
    Segment(2.5, 2.5, "A zero-length cue --> kept."),
    Segment(3661.25, 3663.0, "An hour later,\nwith a line break."),
]


def test_srt_parses_with_the_srt_library():
    subs = list(srt_lib.parse(subtitles.srt(SEGMENTS)))
    assert [s.index for s in subs] == [1, 2, 3]
    assert subs[0].start == datetime.timedelta(0) and subs[0].end == datetime.timedelta(seconds=2.5)
    assert subs[1].end > subs[1].start  # players reject zero-length cues
    assert subs[2].start == datetime.timedelta(hours=1, minutes=1, seconds=1.25)
    assert subs[2].content == "An hour later, with a line break."
    assert "-->" not in subs[1].content


def test_vtt_parses_with_webvtt():
    cues = webvtt.from_buffer(io.StringIO(subtitles.vtt(SEGMENTS))).captions
    assert [c.start for c in cues] == ["00:00:00.000", "00:00:02.500", "01:01:01.250"]
    assert cues[0].end == "00:00:02.500" and cues[0].text == "Hello there."
    assert len(cues) == 3


def test_json_and_text_outputs():
    import json

    doc = json.loads(subtitles.render("json", "a.wav", SEGMENTS[:1]))
    assert doc == {
        "file": "a.wav",
        "text": "Hello there.",
        "segments": [{"start": 0.0, "end": 2.5, "text": "Hello there."}],
    }
    assert subtitles.render("txt", "a.wav", SEGMENTS[:1]) == "Hello there.\n"
    with pytest.raises(ValueError, match="unknown output format 'doc'"):
        subtitles.render("doc", "a.wav", SEGMENTS)
