"""The config validator: one test per rule, each bad value named in one line before any work."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from mkd_jax.config_base import LORA_DECODER, load_config_file
from mkd_jax.validate import ConfigError, validate

ROOT = Path(__file__).resolve().parent.parent


def tiny():
    return load_config_file(ROOT / "configs/tiny.py")


def test_shipped_test_config_is_valid():
    validate(tiny())


# (dotted key, bad value, the key the error must name, a phrase of the message)
BAD = [
    ("total_steps", 0, "total_steps", ">= 1"),
    ("optim.lr", -1.0, "optim.lr", "> 0"),
    ("optim.lr", float("nan"), "optim.lr", "finite"),
    ("optim.mapper_lr", -1e-3, "optim.mapper_lr", ">= 0"),
    ("optim.warmup_steps", 10, "optim.warmup_steps", "optimizer updates"),
    ("total_steps", 1, "total_steps", "1 optimizer update"),
    ("optim.b2", 1.0, "optim.b2", "< 1"),
    ("optim.clip_norm", 0.0, "optim.clip_norm", "> 0"),
    ("optim.accum_steps", 3, "optim.accum_steps", "divide total_steps"),
    ("optim.max_nonfinite_steps", -1, "optim.max_nonfinite_steps", ">= 0"),
    ("optim.max_nonfinite_steps", 4, "optim.max_nonfinite_steps", "<= 3"),  # one step must update
    ("loss.temperature", 0.0, "loss.temperature", ">= 0.1"),
    ("loss.temperature", -2.0, "loss.temperature", ">= 0.1"),
    ("loss.temperature", 1e-30, "loss.temperature", ">= 0.1"),  # KD exactly 0
    ("loss.temperature", 1e20, "loss.temperature", "<= 100"),  # KD NaN
    ("loss.w_ce", -1.0, "loss.w_ce", ">= 0"),
    ("loss.w_kd", -0.5, "loss.w_kd", ">= 0"),
    ("loss.ensemble", "max", "loss.ensemble", "choose one of"),
    ("loss.kd_support", "teacher", "loss.kd_support", "choose one of"),
    ("loss.ensemble_weights", (0.5, 0.5), "loss.ensemble_weights", "not a positional list"),
    ("lora.dropout", 1.5, "lora.dropout", "< 1"),
    ("lora.rank", 0, "lora.rank", ">= 1"),
    ("lora.alpha", 0.0, "lora.alpha", "> 0"),
    ("lora.targets", ("decoder/(",), "lora.targets", "not a regex"),
    ("lora.targets", ("encoder/conv1/kernel",), "lora.targets", "matches no Dense kernel"),
    ("lora.targets", (r"decoder/layers_7/fc1/kernel",), "lora.targets", "matches no Dense"),
    ("mappers.loss", "l1", "mappers.loss", "choose one of"),
    ("mappers.strategy", "random", "mappers.strategy", "choose one of"),
    ("mappers.kind", "conv", "mappers.kind", "choose one of"),
    ("mappers.sides", ("middle",), "mappers.sides", "choose from"),
    ("mappers.weight", -1.0, "mappers.weight", ">= 0"),
    ("data.n_frames", 4000, "data.n_frames", "<= 3000"),
    ("data.n_frames", 999, "data.n_frames", "even"),
    ("data.token_buckets", (64, 32), "data.token_buckets", "increasing"),
    ("data.token_buckets", (32, 512), "data.token_buckets", "448"),
    ("data.batch_size", 0, "data.batch_size", ">= 1"),
    ("data.source.kind", "s3", "data.source.kind", "choose one of"),
    ("data.source.max_seconds", 0.0, "data.source.max_seconds", "exceed min_seconds"),
    ("data.source.max_bad_fraction", 2.0, "data.source.max_bad_fraction", "<= 1.0"),
    ("data.train_noise.snr_db", (5, 99), "data.train_noise.snr_db", "within [-20, 60]"),
    ("data.train_noise.snr_db", ("5dB",), "data.train_noise.snr_db", "within [-20, 60]"),
    ("ckpt.every_steps", 0, "ckpt.every_steps", ">= 1"),
    ("ckpt.max_to_keep", 0, "ckpt.max_to_keep", ">= 1"),
    ("log_every_steps", 0, "log_every_steps", ">= 1"),
    ("eval.beam_size", 0, "eval.beam_size", ">= 1"),
    ("eval.max_new_tokens", 1000, "eval.max_new_tokens", "<="),
    ("eval.max_batches", -2, "eval.max_batches", ">= -1"),
    ("seed", 2**32, "seed", "<= 4294967295"),  # PRNGKey(2**32) == PRNGKey(0)
    ("eval.agreement_reference", 3, "eval.agreement_reference", "model name"),
    ("eval.agreement_reference", "/no/such/model", "eval.agreement_reference", "not a usable"),
    ("mesh", (("data", -1), ("data", 1)), "mesh", "repeat"),
    ("mesh", (("data", -1), ("fsdp", -1)), "mesh", "at most one -1"),
    ("teachers.a.weight", -1.0, "teachers.a.weight", ">= 0"),
    ("teachers.b.dtype", "float8", "teachers.b.dtype", "choose one of"),
]


def _set(cfg, key, value):
    *path, last = key.split(".")
    node = cfg
    for p in path:
        node = node[p]
    with node.ignore_type():  # a config file may build any type; the validator must catch it
        node[last] = value


@pytest.mark.parametrize("key,value,named,phrase", BAD, ids=[f"{k}={v!r}" for k, v, *_ in BAD])
def test_each_rule_names_key_and_value(key, value, named, phrase):
    cfg = tiny()
    _set(cfg, key, value)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert e.value.key == named, msg
    assert msg.startswith(f"{named}="), msg
    assert phrase in msg, msg
    assert "\n" not in msg


def test_cross_field_rules():
    cfg = tiny()
    cfg.loss.ensemble = "weights"
    with pytest.raises(ConfigError, match="one weight per teacher"):
        validate(cfg)
    cfg.loss.ensemble_weights = {"a": 0.7, "c": 0.3}
    with pytest.raises(ConfigError, match="one weight per teacher"):
        validate(cfg)
    cfg.loss.ensemble_weights = {"a": 0.0, "b": 0.0}
    with pytest.raises(ConfigError, match="sum to > 0"):
        validate(cfg)
    cfg.loss.ensemble_weights = {"b": 0.3, "a": 0.7}
    validate(cfg)
    cfg.loss.ensemble = "mean"
    with pytest.raises(ConfigError, match="set but loss.ensemble='mean'"):
        validate(cfg)

    cfg = tiny()
    cfg.loss.w_ce = cfg.loss.w_kd = cfg.mappers.weight = 0.0
    with pytest.raises(ConfigError, match="nothing would train"):
        validate(cfg)

    cfg = tiny()  # a teacher's weight scales its mapper losses: at 0 and without KD, nothing
    cfg.loss.w_ce = cfg.loss.w_kd = 0.0
    cfg.teachers.a.weight = cfg.teachers.b.weight = 0.0
    with pytest.raises(ConfigError, match="nothing would train"):
        validate(cfg)

    cfg = tiny()
    cfg.lora.targets, cfg.mappers.weight = (), 0.0
    with pytest.raises(ConfigError, match="no LoRA target and no mapper"):
        validate(cfg)

    cfg = tiny()
    cfg.loss.ensemble, cfg.loss.ensemble_weights = "weights", {"a": float("inf"), "b": 1.0}
    with pytest.raises(ConfigError, match=">= 0"):
        validate(cfg)

    cfg = tiny()
    cfg.mappers.kind, cfg.mappers.hidden = "mlp", 0
    with pytest.raises(ConfigError, match="hidden width"):
        validate(cfg)
    cfg.mappers.kind, cfg.mappers.hidden = "linear", 16
    with pytest.raises(ConfigError, match="a linear mapper has no hidden layer"):
        validate(cfg)

    cfg = tiny()
    cfg.mappers.explicit = ("decoder/layer_0:a:decoder/layer_1",)
    with pytest.raises(ConfigError, match="mappers.explicit=.*ignored by mappers.strategy"):
        validate(cfg)

    cfg = tiny()
    cfg.optim.accum_steps, cfg.optim.warmup_steps = 2, 2  # 2 updates: warmup never ends
    with pytest.raises(ConfigError, match="optim.warmup_steps=2: must be < the 2 optimizer"):
        validate(cfg)

    cfg = tiny()
    cfg.eval.every_steps, cfg.eval.max_batches = 1, -1
    with pytest.raises(ConfigError, match="eval.every_steps=1: asks for WER passes"):
        validate(cfg)

    cfg = tiny()  # teachers hearing the first 2 s of clips up to max_seconds
    cfg.data.teacher_frames = 200
    with pytest.raises(ConfigError, match="would hear only the first 2 s"):
        validate(cfg)
    cfg.data.teacher_frames = 0
    validate(cfg)

    cfg = tiny()
    cfg.student.init.max_source_positions = 100  # a 200-frame window
    with pytest.raises(ConfigError, match="data.n_frames=.*exceeds student's 200-frame window"):
        validate(cfg)

    cfg = tiny()
    cfg.teachers.b.init.num_mel_bins = 128
    with pytest.raises(ConfigError, match="mel bin"):
        validate(cfg)


def test_mapper_needs_a_trainable_parameter_upstream():
    cfg = tiny()
    cfg.lora.targets = (LORA_DECODER,)  # decoder-only LoRA, as the paper code had it
    cfg.mappers.sides = ("encoder",)
    with pytest.raises(ConfigError, match="encoder/layer_0 has no LoRA target upstream"):
        validate(cfg)
    cfg.mappers.sides = ("decoder",)  # decoder LoRA lies upstream of decoder sites
    validate(cfg)
    cfg.mappers.sides = ("encoder",)
    cfg.lora.targets = (r"encoder/layers_0/fc1/kernel", *cfg.lora.targets)
    validate(cfg)  # layer 0 reaches every later encoder site
    cfg.mappers.strategy = "explicit"
    cfg.lora.targets = (r"encoder/layers_1/fc1/kernel",)
    cfg.mappers.explicit = ("encoder/layer_0:a:encoder/layer_1",)
    with pytest.raises(ConfigError, match="encoder/layer_0"):
        validate(cfg)


def test_random_weights_need_an_explicit_opt_in():
    cfg = tiny()
    cfg.teachers.a.random_init = False
    with pytest.raises(ConfigError, match=r"teachers\.a\.checkpoint=''.*randomly initialised"):
        validate(cfg)


def test_demo_without_base_ft_stops_fast_with_the_fix():
    """The README's command on a clean clone: one line saying how to make base_ft, in < 10 s."""
    t = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "mkd_jax.train", "--config", "configs/demo.py", "--workdir",
         "/nonexistent/never-created"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    elapsed = time.time() - t
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "teachers.base_ft.checkpoint" in lines[0], out.stderr
    assert "python -m mkd_jax.demo" in lines[0]
    assert "Traceback" not in out.stderr
    assert elapsed < 10, elapsed
    assert not Path("/nonexistent/never-created").exists()


@pytest.mark.parametrize("fractions", [(0.8, 0.1), (0.9, 0.1, 0.1), (0.8, 0.2, 0.0)])
def test_synth_fractions_are_three_positive_shares(fractions):
    cfg = tiny()
    cfg.data.source.kind, cfg.data.source.hours = "synth", 1.0
    cfg.data.source.fractions = fractions
    with pytest.raises(ConfigError, match=r"data\.source\.fractions=.*summing to 1"):
        validate(cfg)
    cfg.data.source.fractions = (0.6, 0.15, 0.25)
    validate(cfg)


def test_train_noise_kinds_are_the_augmenters():
    from mkd_jax.corpus import augment
    from mkd_jax.validate import NOISE_KINDS

    assert NOISE_KINDS == augment.NOISE_KINDS
    cfg = tiny()
    cfg.data.train_noise.snr_db = (0, 5)
    cfg.data.train_noise.kinds = ("pink", "violet")
    with pytest.raises(ConfigError, match="data.train_noise.kinds="):
        validate(cfg)
    cfg.data.train_noise.kinds = ("pink",)
    validate(cfg)


def test_split_names_are_checked_against_the_corpus(tmp_path):
    """A disk corpus lists its splits: a typo stops validation, not the end of training."""
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "dev", "test"]}')
    cfg = tiny()
    cfg.data.source.kind, cfg.data.source.path = "disk", str(tmp_path)
    validate(cfg)
    for key, typo in (("train_split", "tran"), ("eval_split", "dve"), ("test_split", "nope")):
        bad = tiny()
        bad.data.source.kind, bad.data.source.path = "disk", str(tmp_path)
        bad.data[key] = typo
        with pytest.raises(ConfigError, match=rf"data.{key}='{typo}': .* has splits"):
            validate(bad)


@pytest.mark.parametrize(
    "key,value,phrase",
    [
        ("data.batch_size", 4096, "more than the"),  # every batch would be padding
        ("data.token_buckets", (16,), "fit no bucket"),  # a third of the clips dropped
    ],
)
def test_training_on_a_silently_smaller_split_is_refused(tmp_path, key, value, phrase):
    from mkd_jax import train

    cfg = tiny()
    _set(cfg, key, value)
    validate(cfg)  # only the data can tell
    with pytest.raises(ValueError, match=phrase) as e:
        train.run(cfg, tmp_path / "w")
    assert key in str(e.value)
    assert not (tmp_path / "w" / "checkpoints").exists()
