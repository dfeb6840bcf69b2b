"""The teacher-output cache: equal to recomputation at k = full, stale keys, resumed builds, and
training from the cache that resumes bit-exactly."""

import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from mkd_jax import distill, sharding, teacher_cache, train
from mkd_jax.config_base import LORA_DECODER, LORA_ENCODER
from mkd_jax.data import batching, loaders
from mkd_jax.roles import build_roles, frozen_params
from mkd_jax.state import init_trainable, make_setup
from tests.test_train import tiny_config


def _frozen_encoder(cfg):
    """Decoder LoRA and decoder-site mappers only: the student encoder is cached too."""
    cfg.lora.targets = (LORA_DECODER,)
    cfg.mappers.sides = ("decoder",)
    return cfg


def _top_encoder_layer(cfg):
    """LoRA on the decoder and the student's last encoder layer only: the cache holds the output
    of the layers below it, and the step runs that layer and the decoder."""
    last = cfg.student.init.encoder_layers - 1
    cfg.lora.targets = (LORA_DECODER, LORA_ENCODER.replace(r"layers_\d+", f"layers_{last}"))
    return cfg


def _parts(cfg):
    roles = build_roles(cfg)
    setup = make_setup(cfg, roles)
    source = {"kind": "librispeech", "path": cfg.data.source.path}
    utts = loaders.load_split(source, "train")
    toks = {batching.STUDENT: roles["student"].tokenizer, "b": roles["teachers"]["b"].tokenizer}
    buckets = batching.make_buckets(
        tuple(cfg.data.token_buckets), (cfg.data.n_frames,), cfg.data.batch_size
    )
    return roles, setup, source, utts, toks, buckets


def _ensure(cfg, parts):
    roles, setup, source, utts, toks, buckets = parts
    mesh = sharding.make_mesh(cfg.mesh)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    return teacher_cache.ensure(
        cfg, roles, setup, utts, toks, buckets, source, mesh=mesh, rules=rules
    )


def _shards(folder):
    out = {}
    for path in sorted(folder.glob("shard-*.safetensors")):
        out.update(load_file(str(path)))
    return out


@pytest.mark.parametrize(
    "encoder",
    [
        "frozen",
        pytest.param("top_layer", marks=pytest.mark.slow),
        pytest.param("lora", marks=pytest.mark.slow),
    ],
)
def test_cached_step_equals_recomputation_at_full_k(tiny_librispeech, tmp_path, encoder):
    cfg = tiny_config(tiny_librispeech)
    if encoder == "frozen":
        _frozen_encoder(cfg)
    if encoder == "top_layer":  # encoder and decoder mappers stay: sites below and above it
        _top_encoder_layer(cfg)
    cfg.cache.top_k = 0
    cfg.cache.dtype = "float32"
    cfg.cache.dir = str(tmp_path / "cache")
    cfg.cache.enabled = False
    plain = make_setup(cfg, build_roles(cfg))
    cfg.cache.enabled = True
    parts = _parts(cfg)
    roles, setup, _, utts, toks, buckets = parts
    expected = {
        "frozen": ("encoder/output",),
        "top_layer": ("encoder/layer_0",),  # the 2-layer student: layer 1 trains
        "lora": (),
    }[encoder]
    assert setup.cache.student_sites[:1] == expected
    if encoder == "top_layer":
        assert teacher_cache.entry_layer(setup.cache) == 1
        assert any(p.student_site == "encoder/layer_1" for p in setup.mappers.pairs)
    folder = _ensure(cfg, parts)

    trainable = jax.jit(lambda r: init_trainable(cfg, roles, setup, r))(jax.random.PRNGKey(1))
    # Move LoRA off its identity so the student differs from its pretrained self.
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    frozen = frozen_params(roles)
    kw = dict(buckets=buckets, shuffle=False, prefetch=0, process_index=0, process_count=1)
    batch = next(batching.BatchIterator(utts, toks, **kw))
    cached_it = teacher_cache.CachedBatches(
        batching.BatchIterator(utts, toks, audio=encoder == "lora", **kw),
        folder, setup.cache, setup, cfg.data.n_frames,
    )  # fmt: skip
    batch_c = next(cached_it)
    assert ("mel" in batch_c) == (encoder == "lora")
    strip = lambda b: {k: v for k, v in b.items() if k != "ids"}  # noqa: E731

    def run(s, b):
        fn = jax.value_and_grad(distill.loss_fn, has_aux=True)
        return jax.jit(lambda t, f, b: fn(t, f, b, None, 0, setup=s))(trainable, frozen, b)

    (_, m_ref), g_ref = run(plain, strip(batch))
    (_, m_c), g_c = run(setup, strip(batch_c))
    for key in ("train/loss", "train/ce", "train/kd_kl", "train/acc/a", "train/acc/b"):
        np.testing.assert_allclose(m_c[key], m_ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    # Agreement from the cached ids' top id equals the argmax of the recomputed target.
    for key in ("train/agree/a", "train/agree/b", "train/acc/student"):
        np.testing.assert_allclose(m_c[key], m_ref[key], rtol=1e-6, err_msg=key)
    feats = [k for k in m_ref if k.startswith("train/feat/")]
    assert feats
    for key in feats + ["train/kd/dropped_mass/b"]:
        np.testing.assert_allclose(m_c[key], m_ref[key], rtol=2e-5, atol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(g_c), jax.tree.leaves(g_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)


def test_top_k_cache_is_close_and_stores_only_data(tiny_librispeech, tmp_path):
    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.top_k, cfg.cache.dir = True, 8, str(tmp_path / "cache")
    parts = _parts(cfg)
    folder = _ensure(cfg, parts)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["utterances"] == 16 and not manifest["failed"]
    assert manifest["bytes"] <= 1.1 * manifest["projected_bytes"]
    tensors = _shards(folder)
    setup = parts[1]
    for uid in parts[3].ids:
        ids, p = tensors[f"{uid}/c:b/ids"], tensors[f"{uid}/c:b/p"]
        n_pos = ids.shape[0]
        assert ids.shape == p.shape == (n_pos, 8) and n_pos < 48  # positions holding tokens
        total = p.sum(-1) + tensors[f"{uid}/c:b/tail"]
        assert np.all((np.abs(total - 1) < 1e-4) | (total == 0))
        # Teacher features in bfloat16; the student's encoder output over the whole context.
        assert tensors[f"{uid}/c:a/decoder/layer_0"].dtype.name == "bfloat16"
        enc = tensors[f"{uid}/c:student/encoder/output"]
        assert enc.shape == (cfg.data.n_frames // 2, setup.student.d_model)


def test_stale_key_rebuilds_and_interrupted_build_resumes(tiny_librispeech, tmp_path, monkeypatch):
    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.top_k, cfg.cache.dir = True, 4, str(tmp_path / "cache")
    monkeypatch.setattr(teacher_cache, "SHARD_BATCHES", 1)
    parts = _parts(cfg)
    folder = _ensure(cfg, parts)
    assert folder.parent == tmp_path / "cache"  # cache.dir holds caches named by content
    whole = _shards(folder)

    # Interrupted after the first of two shards: the rerun computes only the second.
    import shutil

    shutil.rmtree(folder)
    calls, real_rows = [], teacher_cache._rows

    def failing(*a):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_rows(*a)

    monkeypatch.setattr(teacher_cache, "_rows", failing)
    with pytest.raises(KeyboardInterrupt):
        _ensure(cfg, parts)
    assert not (folder / "manifest.json").exists()
    assert len(list(folder.glob("shard-*.safetensors"))) == 1
    monkeypatch.setattr(teacher_cache, "_rows", real_rows)
    counted = []
    monkeypatch.setattr(teacher_cache, "_rows", lambda *a: counted.append(1) or real_rows(*a))
    resumed = _shards(_ensure(cfg, parts))
    assert len(counted) == 1
    assert whole.keys() == resumed.keys()
    for k in whole:
        np.testing.assert_array_equal(whole[k], resumed[k])

    # A folder whose manifest holds another key is stale: rebuilt, never used as it is.
    manifest = json.loads((folder / "manifest.json").read_text())
    key = manifest["key"]
    (folder / "manifest.json").write_text(json.dumps(dict(manifest, key="0" * len(key))))
    assert _ensure(cfg, parts) == folder
    assert json.loads((folder / "manifest.json").read_text())["key"] == key
    # A changed temperature changes the key: another cache, the first one left as it is.
    cfg.loss.temperature = 1.0
    parts = _parts(cfg)
    other = _ensure(cfg, parts)
    assert other != folder and json.loads((folder / "manifest.json").read_text())["key"] == key
    rebuilt = _shards(other)
    uid = parts[3].ids[0]
    assert not np.array_equal(rebuilt[f"{uid}/c:a/p"], whole[f"{uid}/c:a/p"])


@pytest.mark.slow
def test_a_new_teacher_set_copies_the_student_encoder_from_a_sibling_cache(
    tiny_librispeech, tmp_path, monkeypatch
):
    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.top_k, cfg.cache.dir = True, 4, str(tmp_path / "cache")
    first = _ensure(cfg, _parts(cfg))
    cfg.loss.temperature = 1.0  # other teacher targets, the same student encoder
    parts = _parts(cfg)
    encoded = []
    real = teacher_cache._targets
    monkeypatch.setattr(
        teacher_cache, "_targets", lambda *a, **k: encoded.append(k["student"]) or real(*a, **k)
    )
    second = _ensure(cfg, parts)
    assert second != first and encoded and not any(encoded)  # the student encoder never ran
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["student_from"] == json.loads((first / "manifest.json").read_text())["key"]
    # Equal to the same cache built where no sibling exists.
    cfg.cache.dir = str(tmp_path / "alone")
    alone = _ensure(cfg, parts)
    assert json.loads((alone / "manifest.json").read_text())["student_from"] is None
    copied, computed = _shards(second), _shards(alone)
    assert copied.keys() == computed.keys()
    for k in computed:
        np.testing.assert_allclose(copied[k], computed[k], rtol=1e-6, atol=1e-6, err_msg=k)
    # Another student context is another student material: no donor, the encoder runs.
    cfg.cache.dir, cfg.data.n_frames = str(tmp_path / "cache"), cfg.data.n_frames // 2
    encoded.clear()
    _ensure(cfg, _parts(cfg))
    assert encoded and all(encoded)


def test_a_teacher_encoder_comes_from_a_cache_where_that_model_was_the_student(
    tiny_librispeech, tmp_path, monkeypatch
):
    """The demo's distillation cache reads base's encoder outputs from base_ft's supervised
    stage (base as the student, frozen encoder, at the teachers' 10 s) instead of encoding the
    train split again: the same here with teacher b's weights as a checkpoint folder."""
    from mkd_jax.export import merged_hf_config
    from mkd_jax.models.hf_io import save_hf_folder

    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.top_k, cfg.cache.dir = True, 4, str(tmp_path / "cache")
    b = build_roles(cfg)["teachers"]["b"]
    base_cfg = json.loads((b.folder / "config.json").read_text())
    b_dir = save_hf_folder(
        tmp_path / "b", merged_hf_config(b.model, base_cfg), b.params, copy_from=b.folder
    )
    cfg.teachers.b.checkpoint, cfg.teachers.b.random_init = str(b_dir), False
    sup = _frozen_encoder(tiny_config(tiny_librispeech))
    sup.student, sup.teachers, sup.mappers.weight = cfg.teachers.b, {}, 0.0
    sup.cache.enabled, sup.cache.dir = True, cfg.cache.dir
    roles = build_roles(sup)
    setup = make_setup(sup, roles)
    source = {"kind": "librispeech", "path": sup.data.source.path}
    utts = loaders.load_split(source, "train")
    buckets = batching.make_buckets((48,), (sup.data.n_frames,), sup.data.batch_size)
    sup_parts = (
        roles,
        setup,
        source,
        utts,
        {batching.STUDENT: roles["student"].tokenizer},
        buckets,
    )
    donor = _ensure(sup, sup_parts)

    encoded = []
    real = distill._encode_teacher
    monkeypatch.setattr(
        distill, "_encode_teacher", lambda m, *a: encoded.append(m.d_model) or real(m, *a)
    )
    parts = _parts(cfg)
    folder = _ensure(cfg, parts)
    assert encoded == [96]  # teacher a (d_model 96) ran its encoder; b (128) did not
    manifest = json.loads((folder / "manifest.json").read_text())
    donor_key = json.loads((donor / "manifest.json").read_text())["key"]
    assert manifest["teacher_encoders_from"] == {"b": donor_key}
    # Equal to the same cache built where no such cache exists.
    cfg.cache.dir = str(tmp_path / "alone")
    encoded.clear()
    alone = _ensure(cfg, parts)
    assert sorted(encoded) == [96, 128]
    assert json.loads((alone / "manifest.json").read_text())["teacher_encoders_from"] == {}
    copied, computed = _shards(folder), _shards(alone)
    assert copied.keys() == computed.keys()
    for k in computed:
        np.testing.assert_allclose(copied[k], computed[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # A teacher whose mapped sites include an encoder site needs more than the donor holds.
    cfg.cache.dir, cfg.mappers.sides = str(tmp_path / "cache"), ("encoder", "decoder")
    cfg.lora.targets = (LORA_DECODER, LORA_ENCODER)
    roles, setup, source, utts, _, buckets = _parts(cfg)
    material = teacher_cache.key_material(cfg, roles, setup, utts, buckets, source)
    assert any(s.startswith("encoder/") for s in setup.cache.sites["b"])
    mapped = teacher_cache.folder_for(cfg, teacher_cache.digest(material))
    assert teacher_cache._encoder_donors(mapped, material, setup, utts) == {}
    # Without them, the same search finds it (the case built above).
    cfg.mappers.sides, cfg.lora.targets = ("decoder",), (LORA_DECODER,)
    roles, setup, source, utts, _, buckets = _parts(cfg)
    material = teacher_cache.key_material(cfg, roles, setup, utts, buckets, source)
    plain = teacher_cache.folder_for(cfg, teacher_cache.digest(material))
    assert list(teacher_cache._encoder_donors(plain, material, setup, utts)) == ["b"]


@pytest.mark.slow
def test_a_noisy_training_split_is_another_cache_and_clean_keys_stay(tiny_librispeech, tmp_path):
    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.top_k, cfg.cache.dir = True, 4, str(tmp_path / "cache")
    roles, setup, source, utts, toks, buckets = _parts(cfg)
    clean = teacher_cache.key_material(cfg, roles, setup, utts, buckets, source)
    assert "train_noise" not in clean["corpus"]  # keys of caches built before the option hold
    clean_folder = _ensure(cfg, (roles, setup, source, utts, toks, buckets))
    noisy_utts = utts.with_noise((0,), ("white",))
    noisy = teacher_cache.key_material(cfg, roles, setup, noisy_utts, buckets, source)
    assert noisy["corpus"]["train_noise"] == [[0.0], ["white"]]
    folder = _ensure(cfg, (roles, setup, source, noisy_utts, toks, buckets))
    assert folder != clean_folder
    # No student-encoder donor across the noise: the noisy audio was encoded, not copied.
    assert json.loads((folder / "manifest.json").read_text())["student_from"] is None
    a, b = _shards(clean_folder), _shards(folder)
    uid = utts.ids[0]
    enc = [k for k in a if k.startswith(f"{uid}/") and "encoder" in k]
    assert enc and not np.allclose(a[enc[0]], b[enc[0]])
    # The config option is what gives training (and so the cache) that split.
    from mkd_jax.roles import train_input

    cfg.data.train_noise.snr_db, cfg.data.train_noise.kinds = (0,), ("white",)
    assert train_input(cfg, roles, setup)[1].noise == ((0.0,), ("white",))


def test_a_rebuilt_corpus_with_other_audio_is_another_cache(tiny_librispeech, tmp_path):
    """A corpus rebuilt in place on another CPU kind keeps its ids, texts and durations, but its
    samples differ: the key names the audio, so the old targets are never read for it."""
    import shutil

    import soundfile as sf

    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_librispeech, corpus)
    cfg = _frozen_encoder(tiny_config(corpus))
    cfg.cache.enabled, cfg.cache.top_k = True, 4
    roles, setup, source, utts, toks, buckets = _parts(cfg)
    before = teacher_cache.key_material(cfg, roles, setup, utts, buckets, source)
    path = next((corpus / "train").rglob(f"{utts.ids[3]}.flac"))
    samples, rate = sf.read(path, dtype="float32")
    sf.write(path, samples * 0.9, rate)  # same length and sentence, other samples
    again = loaders.load_split(source, "train")
    after = teacher_cache.key_material(cfg, roles, setup, again, buckets, source)
    assert after["corpus"]["digest"] == before["corpus"]["digest"]  # ids, texts, durations
    assert after["corpus"]["audio"] != before["corpus"]["audio"]
    assert teacher_cache.digest(after) != teacher_cache.digest(before)
    assert utts.audio_digest() == utts.audio_digest()  # deterministic
    # Noise is named by its own key entry: the digest is of the audio as stored.
    assert utts.with_noise((0,), ("white",)).audio_digest() == utts.audio_digest()


def test_projected_size_over_free_disk_refuses_before_work(tiny_librispeech, tmp_path, monkeypatch):
    cfg = _frozen_encoder(tiny_config(tiny_librispeech))
    cfg.cache.enabled, cfg.cache.dir = True, str(tmp_path / "cache")
    free = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(teacher_cache.shutil, "disk_usage", lambda _: free)
    with pytest.raises(teacher_cache.CacheError, match="cache.dir to a larger disk"):
        _ensure(cfg, _parts(cfg))
    assert not list((tmp_path / "cache").glob("*/shard-*"))


@pytest.mark.parametrize("encoder", ["frozen", pytest.param("lora", marks=pytest.mark.slow)])
def test_training_from_the_cache_resumes_bit_exactly(tiny_librispeech, tmp_path, encoder):
    cfg = tiny_config(tiny_librispeech, total_steps=4)
    if encoder == "frozen":
        _frozen_encoder(cfg)
    cfg.cache.enabled, cfg.cache.dir = True, str(tmp_path / "cache")
    straight = train.run(cfg, tmp_path / "straight")
    assert straight["train_step_compiles"] == 1
    assert train.run(cfg, tmp_path / "resumed", stop_at=2)["step"] == 2
    resumed = train.run(cfg, tmp_path / "resumed")
    flat_a = jax.tree.leaves(straight["trainable"])
    flat_b = jax.tree.leaves(resumed["trainable"])
    assert len(flat_a) == len(flat_b) > 0
    for a, b in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(a, b)
    lines = [json.loads(x) for x in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    logged = [x for x in lines if "train/kd_kl" in x]
    assert logged and all(np.isfinite(x["train/kd_kl"]) for x in logged)
    # The report's estimate of what the cache saved, from the manifest's own build time.
    saved = [json.loads((tmp_path / d / "report.json").read_text())["teacher_cache"]
             for d in ("straight", "resumed")]  # fmt: skip
    (manifest,) = [json.loads(m.read_text()) for m in (tmp_path / "cache").glob("*/manifest.json")]
    per = manifest["build_seconds"] / manifest["utterances"]
    assert saved[0]["frozen_s_per_utterance"] == pytest.approx(per)
    assert 0 < saved[0]["rows_read"] <= 4 * cfg.data.batch_size
    assert saved[1]["rows_read"] == saved[0]["rows_read"]  # counted across the resume
    assert saved[0]["build_s"] >= manifest["build_seconds"]  # this run built it
    assert saved[1]["build_s"] < manifest["build_seconds"]  # its first process found it built
    for s in saved:
        assert s["saved_s"] == pytest.approx(per * s["rows_read"] - s["build_s"])


@pytest.mark.slow
def test_a_checkpoint_without_the_read_count_gives_no_saving_estimate(tiny_librispeech, tmp_path):
    """A run resumed from a checkpoint that kept no count gives no estimate, not a low one."""
    cfg = _frozen_encoder(tiny_config(tiny_librispeech, total_steps=6))
    cfg.cache.enabled, cfg.cache.dir = True, str(tmp_path / "cache")
    assert train.run(cfg, tmp_path / "old", stop_at=2)["step"] == 2
    ckpt = sorted((tmp_path / "old/checkpoints").glob("*"))[-1]
    metas = [m for m in ckpt.rglob("*") if m.is_file() and b'"rows_read"' in m.read_bytes()]
    assert metas, "the checkpoint should hold the count"
    for m in metas:  # as a checkpoint written before the count existed
        m.write_bytes(m.read_bytes().replace(b'"rows_read"', b'"rows_gone"'))
    train.run(cfg, tmp_path / "old")
    assert json.loads((tmp_path / "old/report.json").read_text())["teacher_cache"] is None


def test_savings_count_donor_caches_and_need_their_manifests(tmp_path):
    cfg = tiny_config(str(tmp_path), total_steps=4)
    cfg.cache.dir = str(tmp_path / "c")
    donor_key, own_key = "d" * 64, "e" * 64
    donor, own = teacher_cache.folder_for(cfg, donor_key), teacher_cache.folder_for(cfg, own_key)
    for folder, m in (
        (donor, {"build_seconds": 30.0, "utterances": 200}),
        (own, {"build_seconds": 90.0, "utterances": 200,
               "teacher_encoders_from": {"base": donor_key}, "student_from": None}),
    ):  # fmt: skip
        folder.mkdir(parents=True)
        (folder / teacher_cache.MANIFEST).write_text(json.dumps(m))
    s = teacher_cache.savings(cfg, [(own, 12.0)], 1600.0)
    # (90 + 30) s over 200 utterances = 0.6 s each; 1600 rows -> 960 s, less the 12 s spent
    assert s == {"frozen_s_per_utterance": 0.6, "rows_read": 1600.0, "recompute_s": 960.0,
                 "build_s": 12.0, "saved_s": 948.0}  # fmt: skip
    line = teacher_cache.format_savings(s)
    assert "0.60 s an utterance" in line and "1,600 utterance rows" in line
    assert "15.8 min saved" in line
    assert teacher_cache.savings(cfg, [(own, 12.0)], 0) is None
    (donor / teacher_cache.MANIFEST).unlink()  # a donor gone: no estimate rather than a low one
    assert teacher_cache.savings(cfg, [(own, 12.0)], 1600.0) is None


def test_supervised_mode_caches_the_frozen_student_encoder(tiny_librispeech, tmp_path):
    from mkd_jax.validate import ConfigError, validate

    cfg = tiny_config(tiny_librispeech)
    cfg.teachers = {}
    cfg.mappers.weight = 0.0
    cfg.cache.enabled, cfg.cache.dir = True, str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="nothing could be cached"):
        validate(cfg)  # encoder LoRA from layer 0: nothing could be cached
    validate(_top_encoder_layer(cfg))  # the layers below the top one could be
    cfg.lora.targets = (LORA_DECODER,)
    validate(cfg)
    roles = build_roles(cfg)
    setup = make_setup(cfg, roles)
    assert setup.cache.student_sites == ("encoder/output",) and not setup.cache.sites
    source = {"kind": "librispeech", "path": cfg.data.source.path}
    utts = loaders.load_split(source, "train")
    toks = {batching.STUDENT: roles["student"].tokenizer}
    buckets = batching.make_buckets((48,), (cfg.data.n_frames,), cfg.data.batch_size)
    mesh = sharding.make_mesh(cfg.mesh)
    rules = tuple(tuple(r) for r in cfg.sharding_rules)
    folder = teacher_cache.ensure(
        cfg, roles, setup, utts, toks, buckets, source, mesh=mesh, rules=rules
    )
    kw = dict(buckets=buckets, shuffle=False, prefetch=0, process_index=0, process_count=1)
    batch = next(batching.BatchIterator(utts, toks, **kw))
    cached = teacher_cache.CachedBatches(
        batching.BatchIterator(utts, toks, audio=False, **kw), folder, setup.cache, setup, 1000
    )
    batch_c = next(cached)
    assert "mel" not in batch_c
    trainable = jax.jit(lambda r: init_trainable(cfg, roles, setup, r))(jax.random.PRNGKey(1))
    trainable = jax.tree.map(lambda x: x + 0.01, trainable)
    frozen = frozen_params(roles)
    plain = distill.Setup(**{**setup.__dict__, "cache": None})
    strip = lambda b: {k: v for k, v in b.items() if k != "ids"}  # noqa: E731
    ce = [
        distill.loss_fn(trainable, frozen, strip(b), None, 0, setup=s)[1]["train/ce"]
        for s, b in ((plain, batch), (setup, batch_c))
    ]
    np.testing.assert_allclose(ce[1], ce[0], rtol=1e-5)
