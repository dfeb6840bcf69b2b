"""The config schema every preset builds on: groups, defaults and sharding rules (no JAX)."""

from ml_collections import ConfigDict

# Logical axis -> mesh axes. Weights: `embed` is FSDP-sharded, `mlp`/`heads`/`vocab` tensor-
# sharded; activations shard the batch over data and fsdp. LoRA factors and mappers replicate.
SHARDING_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("act_time", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("lora_rank", None),
)

# Hours of synthetic speech the demo, its supervised teacher and the ablation share.
MATMUL_DTYPE_NAMES = ("float32", "bfloat16")  # `decode.MATMUL_DTYPES`' names, for the CLIs' checks

DEMO_CORPUS_HOURS = 0.3


def demo_data(c: ConfigDict) -> ConfigDict:
    """The demo corpus and input shapes shared by every demo-scale config: the 0.3 h synthetic
    corpus, utterances up to 10 s trained at a 10 s encoder context (1000 mel frames)."""
    c.data.source.hours = DEMO_CORPUS_HOURS
    c.data.source.max_seconds = 10.0
    c.data.n_frames = 1000
    c.data.token_buckets = (40, 64)
    c.data.batch_size = 8
    c.data.eval_batch_size = 16
    c.log_every_steps = 10
    c.eval.max_new_tokens = 64
    return c


MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))

LORA_DECODER = (
    r"decoder/layers_\d+/((self_attn|encoder_attn)/(q_proj|k_proj|v_proj|out_proj)/kernel"
    r"|(fc1|fc2)/kernel)"
)
LORA_ENCODER = r"encoder/layers_\d+/(self_attn/(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)/kernel"


def load_config_file(path) -> ConfigDict:
    """`get_config()` of a config file, as `--config` would load it (unlocked, for programs)."""
    import importlib.util
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"mkd_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config()")
    return module.get_config()


BASE_DIMS = dict(
    vocab_size=51865,
    num_mel_bins=80,
    d_model=512,
    encoder_layers=6,
    decoder_layers=6,
    encoder_attention_heads=8,
    decoder_attention_heads=8,
    encoder_ffn_dim=2048,
    decoder_ffn_dim=2048,
)


def dims(**kw) -> ConfigDict:
    """Whisper dimensions, used when a role has no checkpoint (random init, tests, shape checks)."""
    base = dict(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
    )
    base.update(kw)
    return ConfigDict(base)


def role(
    checkpoint: str = "",
    tokenizer: str = "",
    init: ConfigDict | None = None,
    dtype: str = "float32",
    random_init: bool = False,
    weight: float = 1.0,
) -> ConfigDict:
    """A teacher or student: a checkpoint (name, HF or CTranslate2 folder), or, only with
    `random_init=True` (test and shape-check configs), random weights of the `init` dimensions
    with the tokenizer of `tokenizer` (a model name or folder with tokenizer.json).

    `weight` (teachers only) scales this teacher's mapper losses (`w_map * weight * L_map`); the
    KD target's mixing weights are `loss.ensemble_weights`.
    """
    return ConfigDict(
        dict(
            checkpoint=checkpoint,
            tokenizer=tokenizer,
            init=init or dims(),
            dtype=dtype,
            random_init=random_init,
            weight=weight,
        )
    )


def mix_source(source: dict, split: str = "train", weight: float = 1.0) -> ConfigDict:
    """One entry of `data.mix`: a loader config like `data.source` (kind, path, ...), its split and
    its weight, e.g. `c.data.mix.libri = mix_source(dict(kind="librispeech", path=P),
    "train-clean-100", 0.3)`."""
    src = dict(
        kind="disk", path="", name="", config="", hours=0.0, audio_column="audio",
        text_column="text", id_column="id", min_seconds=0.0, max_seconds=30.0,
        max_bad_fraction=0.01, limit=0,
    )  # fmt: skip
    unknown = set(source) - set(src)
    if unknown:
        raise ValueError(f"mix_source: unknown source keys {sorted(unknown)}")
    src.update(source)
    return ConfigDict(dict(source=ConfigDict(src), split=split, weight=float(weight)))


def base_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.total_steps = 100
    c.log_every_steps = 10
    c.data = ConfigDict(
        dict(
            # kind: synth (the project's offline corpus, built into the cache if missing), disk,
            # librispeech, hf or manifest; see mkd_jax/data/loaders.py.
            source=ConfigDict(
                dict(
                    kind="synth",
                    path="",
                    name="",
                    config="",
                    hours=0.05,
                    # kind synth: train, dev, test shares of `hours` (the builder's default)
                    fractions=(0.8, 0.1, 0.1),
                    audio_column="audio",
                    text_column="text",
                    id_column="id",
                    min_seconds=0.0,
                    max_seconds=30.0,
                    max_bad_fraction=0.01,
                    limit=0,
                    # kind hf: files of a packaged builder (name="parquet", "json", ...); a
                    # "{split}" in them is the split's name: "/data/{split}-*.parquet".
                    data_files="",
                    # kind hf: stream the train split instead of listing it (data/streaming.py)
                    streaming=False,
                )
            ),
            train_split="train",
            eval_split="dev",
            test_split="test",
            n_frames=3000,
            # Mel frames the teachers see (the head of the student's n_frames; 0: the same).
            # Teachers on short utterances lose nothing at a shorter context and cost less.
            teacher_frames=0,
            token_buckets=(32, 64, 128),
            batch_size=8,
            eval_batch_size=8,
            prefetch=2,
            # Grain worker processes that decode audio and compute log-mel (0: a thread of the
            # training process). The batches do not depend on it.
            workers=0,
            # Further training sources, interleaved with data.source's train split by weight
            # (data/mixture.py): name -> mix_source(...); data.source weighs source_weight.
            mix=ConfigDict(),
            source_weight=1.0,
            # A folder written by `python -m mkd_jax.pseudolabel`: train on its teacher labels
            # (column `label`) instead of the train split's transcripts; "" for the transcripts.
            train_labels="",
            # Additive noise on data.source's training audio (evaluation stays clean): per
            # utterance one draw of a kind and an SNR in dB from these lists, fixed by its id, so
            # the teacher cache holds. KD transfers where the teachers know more than the student
            # (`python -m mkd_jax.headroom`), which on clean synthetic speech they may not.
            # snr_db=() turns it off.
            train_noise=ConfigDict(dict(snr_db=(), kinds=("white", "pink", "brown"))),
        )
    )
    c.student = role()
    c.teachers = ConfigDict()
    c.mappers = ConfigDict(
        dict(
            strategy="last",
            sides=("encoder",),
            explicit=(),
            kind="linear",
            hidden=0,
            loss="geodesic",
            weight=1.0,
            align="auto",
        )
    )
    c.lora = ConfigDict(dict(targets=(LORA_DECODER,), rank=32, alpha=32.0, dropout=0.1))
    c.loss = ConfigDict(
        dict(
            w_ce=0.8,
            w_kd=1.0,
            temperature=2.0,
            # mean: the teachers' mean tempered distribution; weights: `ensemble_weights`, a
            # mapping teacher name -> weight ({"base": 0.7, "base_ft": 0.3}; on the command line
            # --config.loss.ensemble_weights="{'base': 0.7, 'base_ft': 0.3}"); best: per
            # utterance, the teacher with the lowest summed NLL of the reference.
            ensemble="mean",
            ensemble_weights={},
            # Across tokenizers, "shared": the KL runs over the student ids every teacher can
            # represent, the student renormalised over them (no pressure on ids a teacher lacks);
            # "student": the mapped target against the student's full vocabulary (the round-1
            # behaviour: ids a teacher lacks are pushed toward zero). See token_align.py.
            kd_support="shared",
            interpolate=False,
            lambdas=(0.1, 0.5, 0.9),
            # True: logit KD only at the label positions where a teacher's top-1 is the label
            # (each teacher's target is masked where it is wrong; where no teacher is right, CE
            # alone). For a student that passes its teachers on the training audio, as tiny.en
            # passes base after a few dozen CE steps (BUILD_NOTES "Noised training audio").
            teacher_right_only=False,
        )
    )
    c.optim = ConfigDict(
        dict(
            lr=1e-3,
            mapper_lr=1e-3,
            warmup_steps=10,
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            clip_norm=1.0,
            accum_steps=1,
            # Steps whose loss or gradient is not finite are skipped (the update is not
            # applied); the run stops, naming the step and the terms, after more than this many.
            max_nonfinite_steps=0,
        )
    )
    # The teacher-output cache (teacher_cache.py): teachers' top-k targets and mapped features,
    # and with a frozen student encoder its outputs, computed once per utterance; training then
    # runs only what changes. top_k=0 keeps the whole vocabulary (exact, large); dtype stores
    # teacher features; caches are folders named by content under dir ("": the asset cache).
    c.cache = ConfigDict(dict(enabled=False, top_k=64, dtype="bfloat16", dir=""))
    c.mesh = MESH
    c.sharding_rules = SHARDING_RULES
    c.ckpt = ConfigDict(dict(every_steps=50, max_to_keep=2))
    # agreement_reference: a model name or folder whose transcripts of the real recordings the
    # student is compared with before and after training; "" = the first teacher.
    c.eval = ConfigDict(
        dict(every_steps=0, max_batches=0, max_new_tokens=96, beam_size=1, agreement_reference="")
    )
    return c
