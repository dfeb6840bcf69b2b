"""Bucketed batches: shapes, token layout, checkpointable order, per-host slices, global arrays."""

import gc
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest
import soundfile as sf
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mkd_jax import assets
from mkd_jax.data import features
from mkd_jax.data.batching import (
    BatchIterator,
    decoder_arrays,
    make_buckets,
    make_global_batch,
)
from mkd_jax.data.loaders import load_split
from mkd_jax.data.tokenizers import load_tokenizer

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards box quietly".split()


@pytest.fixture(scope="module")
def toks():
    return {
        "student": load_tokenizer(assets.ensure_model("tiny.en")),
        "base": load_tokenizer(assets.ensure_model("base")),
    }


def _corpus(folder, n=13, seconds=lambda i: 0.5 + 0.2 * i, words=lambda i: 2 + 3 * (i % 5)):
    """A manifest of sine clips; utterance i has `seconds(i)` and `words(i)` words."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        sr = 16000
        t = np.arange(int(seconds(i) * sr)) / sr
        x = 0.2 * np.sin(2 * np.pi * (150 + 40 * i) * t).astype(np.float32)
        sf.write(folder / f"u{i:02d}.flac", x, sr)
        text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(words(i))).capitalize() + "."
        rows.append(f"u{i:02d}.flac,{text}")
    (folder / "train.csv").write_text("path,text\n" + "\n".join(rows) + "\n")
    return load_split({"kind": "manifest", "path": str(folder)}, "train")


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_decoder_arrays_layout():
    dec, labels, mask = decoder_arrays([50257, 50362], [11, 22, 33], eot=50256, n_tokens=8)
    np.testing.assert_array_equal(dec, [50257, 50362, 11, 22, 33, 50256, 50256, 50256])
    np.testing.assert_array_equal(labels, [50362, 11, 22, 33, 50256, 50256, 50256, 50256])
    # no loss on predicting <|notimestamps|>; the last prompt token predicts 11; EOT is a target
    np.testing.assert_array_equal(mask, [0, 1, 1, 1, 1, 0, 0, 0])
    with pytest.raises(ValueError, match="6 decoder positions do not fit a bucket of 5"):
        decoder_arrays([1, 2], [3, 4, 5, 6], eot=0, n_tokens=5)


def test_batches_bucket_shapes_and_token_targets(tmp_path, toks):
    utts = _corpus(tmp_path, n=13)
    buckets = make_buckets((8, 16, 32), (200, 400), batch_size={8: 4, 16: 4, 32: 2})
    it = BatchIterator(utts, toks, buckets=buckets, repeat=False, process_count=1, process_index=0)
    batches = list(it)
    shapes = {(b["mel"].shape, b["decoder_input"].shape) for b in batches}
    assert len(batches) == it.batches_per_epoch()
    expected = set()  # each utterance's smallest fitting (frames, tokens), computed here
    for i, text in enumerate(utts.texts):
        n = max(len(t.prompt_ids()) + len(t.encode(" " + text)) for t in toks.values())
        f = 200 if utts.durations[i] <= 2.0 else 400
        t = min(s for s in (8, 16, 32) if s >= n)
        expected.add(((4 if t < 32 else 2, 80, f), (4 if t < 32 else 2, t)))
    assert shapes == expected and len(shapes) == 6  # a handful of programs, not one per length
    seen = [i for b in batches for i, v in zip(b["ids"], b["valid"], strict=True) if v]
    assert sorted(seen) == sorted(utts.ids)  # every utterance exactly once an epoch
    student, base = toks["student"], toks["base"]
    for b in batches:
        B, S = b["decoder_input"].shape
        assert b["mel"].dtype == np.float32 and b["labels"].dtype == np.int32
        assert b["t:base/labels"].shape == (B, S) and b["valid"].shape == (B,)
        for r in range(B):
            if not b["valid"][r]:
                assert (
                    b["ids"][r] == "" and not b["mask"][r].any() and not b["t:base/mask"][r].any()
                )
                continue
            i = utts.ids.index(b["ids"][r])
            # the smallest bucket that fits
            frames = int(np.ceil(utts.durations[i] * 100 - 1e-6))
            assert b["mel"].shape[2] == (200 if frames <= 200 else 400)
            for tok, p in [(student, ""), (base, "t:base/")]:
                target = b[p + "labels"][r][b[p + "mask"][r] == 1]
                assert target[-1] == tok.eot
                assert tok.decode(target[:-1]) == " " + utts.texts[i]
                prompt = tok.prompt_ids()
                np.testing.assert_array_equal(b[p + "decoder_input"][r][: len(prompt)], prompt)
            n = max(len(t.prompt_ids()) + len(t.encode(" " + utts.texts[i])) for t in toks.values())
            assert S == min(s for s in (8, 16, 32) if s >= n)
            # the pipeline's features equal log-mel of the clip on its own
            ref = features.log_mel(utts.audio(i)[None], n_frames=b["mel"].shape[2])[0]
            np.testing.assert_allclose(b["mel"][r], ref, atol=1e-5)


def test_too_long_for_largest_bucket_is_dropped_and_counted(tmp_path, toks):
    utts = _corpus(
        tmp_path, n=6, seconds=lambda i: 1.0 + 2.0 * (i == 5), words=lambda i: 2 + 20 * (i == 4)
    )
    buckets = make_buckets((16,), (200,), batch_size=2)
    it = BatchIterator(utts, {"student": toks["student"]}, buckets=buckets, repeat=False,
                       process_count=1, process_index=0)  # fmt: skip
    ids = {i for b in it for i, v in zip(b["ids"], b["valid"], strict=True) if v}
    assert ids == {"u00", "u01", "u02", "u03"}
    assert it.report.counts["exceeds_bucket"] == 2 and it.report.kept == 4
    assert "longer than the largest batching bucket: 2" in it.report.summary()
    assert utts.report.counts["exceeds_bucket"] == 0  # the split's own report is untouched


def test_state_round_trip_and_epoch_shuffling(tmp_path, toks):
    utts = _corpus(tmp_path, n=9)
    kw = dict(buckets=make_buckets((16, 32), (300,), batch_size=2), seed=7, process_count=1,
              process_index=0)  # fmt: skip
    it = BatchIterator(utts, toks, **kw)
    per_epoch = it.batches_per_epoch()
    _take(it, 3)
    state = json.loads(json.dumps(it.state()))
    assert state["epoch"] == 0 and state["position"] == 3 and state["seed"] == 7
    more = _take(it, per_epoch)  # crosses into epoch 1
    assert it.state()["epoch"] == 1
    fresh = BatchIterator(utts, toks, **(kw | {"seed": 0, "prefetch": 0}))
    fresh.restore(state)
    _assert_same(_take(fresh, per_epoch), more)
    # epochs are shuffled differently; the same seed reproduces them
    order = lambda it_: [tuple(b["ids"]) for b in _take(it_, per_epoch)]  # noqa: E731
    a = BatchIterator(utts, toks, **kw)
    e0, e1 = order(a), order(a)
    assert e0 != e1 and sorted(e0) != sorted(e1)
    assert order(BatchIterator(utts, toks, **kw)) == e0
    it.close()
    for other in (_corpus(tmp_path / "fewer", n=8), _corpus(tmp_path / "renamed", n=9)):
        if len(other) == 9:
            other.ids = [f"other-{i}" for i in other.ids]  # same shapes, different utterances
        with pytest.raises(ValueError, match="plan of epoch 0 differs"):
            BatchIterator(other, toks, **kw).restore(state)
    with pytest.raises(ValueError, match="state has buckets"):
        BatchIterator(utts, toks, **(kw | {"buckets": make_buckets((32,), (300,), 2)})).restore(
            state
        )


def test_per_host_slices_are_disjoint_and_cover_the_global_batch(tmp_path, toks):
    utts = _corpus(tmp_path, n=11)
    kw = dict(buckets=make_buckets((16, 32), (300,), batch_size=4), seed=3, repeat=False)
    single = list(BatchIterator(utts, toks, process_index=0, process_count=1, **kw))
    hosts = [
        list(BatchIterator(utts, toks, process_index=p, process_count=2, **kw)) for p in (0, 1)
    ]
    assert len(hosts[0]) == len(hosts[1]) == len(single)
    for whole, h0, h1 in zip(single, *hosts, strict=True):
        assert h0["mel"].shape[0] == h1["mel"].shape[0] == whole["mel"].shape[0] // 2
        real = [set(h["ids"][h["valid"] > 0]) for h in (h0, h1)]
        assert not real[0] & real[1]
        for k in whole:
            np.testing.assert_array_equal(np.concatenate([h0[k], h1[k]]), whole[k], err_msg=k)
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        BatchIterator(utts, toks, process_index=0, process_count=3, **kw)


def test_decode_failure_becomes_an_invalid_row(tmp_path, toks):
    utts = _corpus(tmp_path, n=4)
    os.remove(tmp_path / "u02.flac")  # vanished after loading
    it = BatchIterator(utts, toks, buckets=make_buckets((32,), (300,), batch_size=4),
                       repeat=False, process_index=0, process_count=1)  # fmt: skip
    (batch,) = list(it)
    r = list(batch["ids"]).index("u02")
    assert batch["valid"][r] == 0 and not batch["mask"][r].any() and batch["valid"].sum() == 3
    assert it.report.counts["decode_failed"] == 1


def test_unshuffled_single_pass_keeps_source_order(tmp_path, toks):
    utts = _corpus(tmp_path, n=5)
    it = BatchIterator(utts, toks, buckets=make_buckets((32,), (300,), batch_size=2),
                       shuffle=False, repeat=False, process_index=0, process_count=1)  # fmt: skip
    batches = list(it)
    assert [list(b["ids"]) for b in batches] == [["u00", "u01"], ["u02", "u03"], ["u04", ""]]
    np.testing.assert_array_equal(batches[-1]["valid"], [1, 0])
    assert it.state()["position"] == 3
    with pytest.raises(StopIteration):
        next(it)


def test_prefetch_forwards_errors_and_stops_with_the_iterator(tmp_path, toks, monkeypatch):
    utts = _corpus(tmp_path, n=6)
    kw = dict(buckets=make_buckets((32,), (300,), batch_size=2), process_index=0, process_count=1)
    before = threading.active_count()
    it = BatchIterator(utts, toks, **kw)
    next(it)
    assert threading.active_count() > before  # Grain's prefetch thread
    del it
    gc.collect()
    deadline = time.time() + 10
    while threading.active_count() > before and time.time() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before  # an abandoned iterator leaves no thread behind

    def broken(i):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(utts, "audio", broken)
    it = BatchIterator(utts, toks, **kw)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="disk on fire"):
            next(it)
    it.close()


def test_worker_processes_make_the_same_batches_and_resume_bit_exact(tmp_path, toks):
    """Grain workers (separate processes that re-open the split) give the batches of the main
    process, in order; a state taken mid-epoch and restored under other settings continues
    with exactly the batches an uninterrupted run gets."""
    utts = _corpus(tmp_path, n=10)
    os.remove(tmp_path / "u03.flac")  # fails to decode in a worker: counted by the consumer
    kw = dict(buckets=make_buckets((16, 32), (300,), batch_size=2), seed=4, process_index=0,
              process_count=1)  # fmt: skip
    plain = BatchIterator(utts, toks, prefetch=0, **kw)
    n = plain.batches_per_epoch()
    expected = _take(plain, n + 3)
    assert plain.report.counts["decode_failed"] == sum("u03" in list(b["ids"]) for b in expected)
    workers = BatchIterator(utts, toks, workers=2, **kw)
    first = _take(workers, 4)
    state = workers.state()
    workers.close()
    _assert_same(first, expected[:4])
    failed_in_first = sum("u03" in list(b["ids"]) for b in expected[:4])
    assert workers.report.counts["decode_failed"] == failed_in_first
    resumed = BatchIterator(utts, toks, workers=1, prefetch=3, **kw)
    resumed.restore(json.loads(json.dumps(state)))
    _assert_same(_take(resumed, n - 1), expected[4:])
    resumed.close()


def test_make_global_batch_on_fake_devices(tmp_path, toks):
    utts = _corpus(tmp_path, n=8)
    it = BatchIterator(utts, toks, buckets=make_buckets((32,), (300,), batch_size=8),
                       repeat=False, process_index=0, process_count=1)  # fmt: skip
    local = next(it)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))
    out = make_global_batch(local, mesh)
    assert out["mel"].sharding == NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    assert len(out["mel"].addressable_shards) == 8
    assert out.keys() == local.keys() - {"ids"}  # strings stay on the host
    for k, v in out.items():
        np.testing.assert_array_equal(np.asarray(v), local[k], err_msg=k)


_WORKER = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    from mkd_jax.data.batching import BatchIterator, make_buckets, make_global_batch
    from mkd_jax.data.loaders import load_split
    from mkd_jax.data.tokenizers import load_tokenizer
    utts = load_split({"kind": "manifest", "path": sys.argv[3]}, "train")
    it = BatchIterator(utts, {"student": load_tokenizer(sys.argv[4])}, seed=5, repeat=False,
                       buckets=make_buckets((32,), (300,), batch_size=4))
    mesh = Mesh(np.array(jax.devices()), ("data",))
    everywhere = NamedSharding(mesh, PartitionSpec())
    rows = jax.jit(lambda b: (b["mel"].sum((1, 2)), b["labels"]), out_shardings=everywhere)
    out = []
    for batch in it:
        g = make_global_batch(batch, mesh)
        mel_sums, labels = rows(g)
        out.append({"mel_sums": np.asarray(mel_sums).tolist(),
                    "labels": np.asarray(labels).tolist(), "ids": batch["ids"].tolist()})
    json.dump(out, open(sys.argv[5], "w"))
    """
)


@pytest.mark.slow
def test_two_real_processes_assemble_the_global_batch(tmp_path, toks):
    utts = _corpus(tmp_path / "corpus", n=7)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    tok_dir = str(assets.ensure_model("tiny.en"))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                f"127.0.0.1:{port}",
                str(p),
                str(tmp_path / "corpus"),
                tok_dir,
                str(tmp_path / f"out{p}.json"),
            ],
            env=env,
        )  # fmt: skip
        for p in (0, 1)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    outs = [json.loads((tmp_path / f"out{p}.json").read_text()) for p in (0, 1)]
    single = list(BatchIterator(utts, {"student": toks["student"]}, seed=5, repeat=False,
                                buckets=make_buckets((32,), (300,), batch_size=4),
                                process_index=0, process_count=1))  # fmt: skip
    assert len(outs[0]) == len(outs[1]) == len(single)
    for whole, o0, o1 in zip(single, *outs, strict=True):
        assert o0["mel_sums"] == o1["mel_sums"]  # both processes see the global result
        np.testing.assert_allclose(o0["mel_sums"], whole["mel"].sum((1, 2)), rtol=1e-5)
        np.testing.assert_array_equal(o0["labels"], whole["labels"])
        assert o0["ids"] + o1["ids"] == whole["ids"].tolist()
