"""A streamed source: batches of the one bucket in stream order, the same layout as a listed
split's, skips counted, disjoint process shards, and exact resume from the saved state."""

import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf

from mkd_jax import assets
from mkd_jax.data.batching import BatchIterator, make_buckets
from mkd_jax.data.loaders import load_split
from mkd_jax.data.streaming import StreamingBatches
from mkd_jax.data.tokenizers import load_tokenizer

N = 11


@pytest.fixture(scope="module")
def toks():
    return {
        "student": load_tokenizer(assets.ensure_model("tiny.en")),
        "base": load_tokenizer(assets.ensure_model("base")),
    }


@pytest.fixture
def parquet(tmp_path):
    """Two parquet shards of 16 kHz clips; clip 7 is 4 s, too long for the 3 s bucket."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N):
        buf = io.BytesIO()
        secs = 4.0 if i == 7 else 0.5 + 0.1 * i
        sf.write(buf, 0.1 * rng.standard_normal(int(16000 * secs)), 16000, format="FLAC")
        rows.append({"id": f"s{i:02d}", "text": f"Sentence number {i} is here.",
                     "audio": {"bytes": buf.getvalue(), "path": None}})  # fmt: skip
    for k, part in enumerate((rows[:6], rows[6:])):
        datasets.Dataset.from_list(part).to_parquet(str(tmp_path / f"train-{k}.parquet"))
    return {"kind": "hf", "name": "parquet", "streaming": True,
            "data_files": {"train": str(tmp_path / "train-*.parquet")}}  # fmt: skip


BUCKET = make_buckets((32,), (300,), batch_size=2)[0]


def test_stream_batches_match_the_listed_layout_and_count_skips(parquet, toks):
    it = StreamingBatches(parquet, "train", toks, BUCKET, process_index=0, process_count=1)
    batches = [next(it) for _ in range(5)]  # 10 usable clips (7 is skipped), in stream order
    ids = [u for b in batches for u in b["ids"]]
    assert ids == [f"s{i:02d}" for i in range(N) if i != 7]
    assert it.report.counts["exceeds_bucket"] == 1
    # The same clips listed (non-streamed) give the same arrays.
    listed = load_split(dict(parquet, streaming=False), "train")
    keep = [i for i, u in enumerate(listed.ids) if u != "s07"]
    plain = BatchIterator(listed.select(keep), toks, buckets=[BUCKET], shuffle=False,
                          repeat=False, prefetch=0, process_index=0, process_count=1)  # fmt: skip
    for a, b in zip(batches, plain, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # Epoch 2 starts over.
    assert list(next(it)["ids"]) == ["s00", "s01"]


def test_resume_is_exact_and_processes_read_disjoint_shards(parquet, toks):
    kw = dict(process_index=0, process_count=1)
    whole = StreamingBatches(parquet, "train", toks, BUCKET, **kw)
    expected = [next(whole) for _ in range(8)]  # crosses into the second epoch
    first = StreamingBatches(parquet, "train", toks, BUCKET, **kw)
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.state()))
    resumed = StreamingBatches(parquet, "train", toks, BUCKET, **kw)
    resumed.restore(state)
    for want in expected[3:]:
        got = next(resumed)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    two = [StreamingBatches(parquet, "train", toks, make_buckets((32,), (300,), 4)[0],
                            process_index=p, process_count=2) for p in (0, 1)]  # fmt: skip
    seen = [{u for _ in range(2) for u in next(t)["ids"]} for t in two]
    assert not seen[0] & seen[1]
    with pytest.raises(ValueError, match="kind 'hf'"):
        StreamingBatches({"kind": "disk", "path": "x"}, "train", toks, BUCKET, **kw)


@pytest.mark.slow
def test_training_streams_the_train_split_and_resumes_bit_exact(parquet, tmp_path):
    """`data.source.streaming`: train reads the stream (dev is listed from the same files)."""
    from test_train import assert_resumes_bit_exact, tiny_config

    files = parquet["data_files"]["train"].replace("train-*", "{split}-*")
    (tmp_path / "dev-0.parquet").write_bytes((tmp_path / "train-0.parquet").read_bytes())
    cfg = tiny_config(tmp_path, total_steps=4)
    with cfg.unlocked():
        cfg.data.source.kind, cfg.data.source.name = "hf", "parquet"
        cfg.data.source.data_files, cfg.data.source.streaming = files, True
        cfg.data.source.path = ""
    assert_resumes_bit_exact(cfg, tmp_path)
