"""Export: merged student as an HF Whisper folder and LoRA adapter in PEFT format, checked against
transformers and PEFT (peft==0.21.2) on the same weights."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import peft
import pytest
import torch
from flax.traverse_util import flatten_dict
from safetensors import safe_open
from safetensors.numpy import load_file
from transformers import WhisperConfig, WhisperForConditionalGeneration

from mkd_jax import export, lora
from mkd_jax.assets import ensure_model
from mkd_jax.config_base import dims  # noqa: E402
from mkd_jax.models.whisper import load
from mkd_jax.state import restore_run, restore_student

ROOT = Path(__file__).parent.parent
# The tiny preset's student dimensions, so a copy of its workdir restores into either student.
TINY_DIMS = dims(d_model=64).to_dict()
# tiny.en's prompt `<|startoftranscript|><|notimestamps|>`, then a few text tokens.
TOKENS = np.array(
    [[50257, 50362, 383, 2068, 7586, 21831], [50257, 50362, 464, 3290, 1110, 13]], np.int32
)
TOL = 1e-4


def random_hf_folder(folder: Path, *, seed: int = 0, tokenizer: bool = True) -> Path:
    """A random transformers Whisper with English-only special ids, norms and biases perturbed."""
    torch.manual_seed(seed)
    cfg = WhisperConfig(
        **TINY_DIMS,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=50256,
        decoder_start_token_id=50257,
        suppress_tokens=[],
        begin_suppress_tokens=[220, 50256],
    )
    model = WhisperForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("model.encoder.embed_positions"):  # keep the sinusoids
                p.add_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05))
    model.save_pretrained(folder)
    if tokenizer:
        shutil.copy2(ensure_model("tiny.en") / "tokenizer.json", folder / "tokenizer.json")
    return folder


def mel(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.5, (batch, 80, 3000)).astype(np.float32)


def hf_logits(model, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.eval()(
            input_features=torch.from_numpy(features),
            decoder_input_ids=torch.from_numpy(TOKENS).long(),
        )
    return out.logits.numpy()


def flax_logits(model, params, features: np.ndarray) -> np.ndarray:
    logits, _ = jax.jit(model.apply)({"params": params}, features, TOKENS)
    return np.asarray(logits)


def assert_close(got, want, what):
    err = float(np.abs(got - want).max())
    assert err < TOL, f"{what}: max abs difference {err:.3g} >= {TOL}"


def check_peft(base_folder: Path, adapter: Path, merged_folder: Path, features: np.ndarray):
    """PEFT's adapter on the base equals the merged folder, before and after merge_and_unload."""
    want = hf_logits(WhisperForConditionalGeneration.from_pretrained(merged_folder), features)
    base = WhisperForConditionalGeneration.from_pretrained(base_folder)
    base_logits = hf_logits(base, features)
    # The adapter must matter, or equality below would hold for an empty one too.
    assert float(np.abs(base_logits - want).max()) > 100 * TOL
    with_adapter = peft.PeftModel.from_pretrained(base, adapter)
    assert_close(hf_logits(with_adapter, features), want, "PEFT adapter vs merged folder")
    assert_close(
        hf_logits(with_adapter.merge_and_unload(), features),
        want,
        "PEFT merge_and_unload vs merged folder",
    )


# ----- fast: the adapter format on a random model, no training -----


def test_adapter_and_merged_folder_match_transformers_and_peft(tmp_path):
    base_folder = random_hf_folder(tmp_path / "base", tokenizer=False)
    model, params, _ = load(str(base_folder))
    targets = [lora.DECODER_TARGETS, lora.ENCODER_TARGETS]
    tree = lora.init(jax.random.key(0), params, targets=targets, rank=4)
    # Trained-looking factors: nonzero b, so the adapter changes the model.
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    tree = jax.tree.map(lambda x: np.asarray(jax.random.normal(next(keys), x.shape) * 0.2), tree)
    merged = lora.merge(params, tree, alpha=8.0, rank=4)

    out = export.write_merged(
        tmp_path / "merged", model, merged, base_folder=base_folder, tokenizer_folder=base_folder
    )
    adapter = export.write_adapter(
        tmp_path / "adapter", tree, rank=4, alpha=8.0, dropout=0.1, base_model=base_folder
    )

    features = mel()
    ours = flax_logits(model, merged, features)
    assert_close(
        hf_logits(WhisperForConditionalGeneration.from_pretrained(out), features),
        ours,
        "transformers on merged/ vs our merged student",
    )
    _, reloaded, config = load(str(out))
    for path, x in flatten_dict(merged, sep="/").items():
        np.testing.assert_array_equal(flatten_dict(reloaded, sep="/")[path], x, err_msg=path)
    assert config["dtype"] == "float32" and config["d_model"] == 64
    check_peft(base_folder, adapter, out, features)

    # Key names and shapes equal what PEFT itself writes for the same targets.
    reference = peft.get_peft_model(
        WhisperForConditionalGeneration.from_pretrained(base_folder),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
        ),
    )
    want = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(reference).items()}
    got = load_file(str(adapter / export.ADAPTER_WEIGHTS))
    assert {k: v.shape for k, v in got.items()} == want
    assert "base_model.model.model.decoder.layers.0.encoder_attn.q_proj.lora_A.weight" in got
    cfg = json.loads((adapter / export.ADAPTER_CONFIG).read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8.0
    assert cfg["base_model_name_or_path"] == str(base_folder)
    assert len(cfg["target_modules"]) == 2 * 10 + 2 * 6  # 2 decoder and 2 encoder layers


def test_peft_state_transposes_factors():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)  # [in, r]
    b = np.arange(8, dtype=np.float32).reshape(4, 2)  # [r, out]
    tree = {"decoder": {"layers_1": {"fc2": {"kernel": {"a": a, "b": b}}}}}
    tensors, modules = export.peft_state(tree)
    assert modules == ["model.decoder.layers.1.fc2"]
    np.testing.assert_array_equal(
        tensors["base_model.model.model.decoder.layers.1.fc2.lora_A.weight"], a.T
    )
    np.testing.assert_array_equal(
        tensors["base_model.model.model.decoder.layers.1.fc2.lora_B.weight"], b.T
    )


def test_non_linear_or_stacked_targets_are_refused():
    with pytest.raises(ValueError, match="conv1.*Linear layers only"):
        export.peft_module_name("encoder/conv1/kernel")
    stacked = {
        "decoder": {
            "layers_0": {"fc1": {"kernel": {"a": np.zeros((2, 3, 4)), "b": np.zeros((2, 4, 5))}}}
        }
    }
    with pytest.raises(ValueError, match="stacked"):
        export.peft_state(stacked)
    with pytest.raises(ValueError, match="lack their a or b"):
        export.peft_state({"decoder": {"layers_0": {"fc1": {"kernel": {"a": np.zeros((3, 4))}}}}})


def test_random_init_student_needs_merged_only(tmp_path):
    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs/tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "config.json").write_text(module.get_config().to_json())
    with pytest.raises(ValueError, match="student.checkpoint is empty.*--merged_only"):
        export.export(tmp_path, tmp_path / "out")


# ----- slow: a trained workdir, end to end -----


def _train(tiny_librispeech, workdir: Path, base_folder: Path):
    from mkd_jax import train

    spec = importlib.util.spec_from_file_location("tiny", ROOT / "configs/tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.data.source.kind = "librispeech"
    cfg.data.source.path = str(tiny_librispeech)
    cfg.student.checkpoint = str(base_folder)
    cfg.total_steps = 2
    cfg.optim.lr = 0.05  # one large step, so b is far from zero and the adapter matters
    cfg.eval.max_batches = -1
    cfg.data.prefetch = 0
    return train.run(cfg, workdir)


@pytest.mark.slow
def test_trained_workdir_exports_to_transformers_and_peft(tiny_librispeech, tmp_path):
    base_folder = random_hf_folder(tmp_path / "base")
    workdir, out = tmp_path / "run", tmp_path / "export"
    _train(tiny_librispeech, workdir, base_folder)
    proc = subprocess.run(
        [sys.executable, "-m", "mkd_jax.export", "--workdir", str(workdir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg, _, _, trainable, step = restore_run(workdir)
    assert step == 2
    b_max = max(
        float(np.abs(v).max())
        for k, v in flatten_dict(trainable["lora"], sep="/").items()
        if k.endswith("/b")
    )
    assert b_max > 1e-3

    # (a) transformers on merged/ equals our merged student.
    model, merged, _, _, _ = restore_student(workdir)
    features = mel(seed=1)
    assert_close(
        hf_logits(WhisperForConditionalGeneration.from_pretrained(out / "merged"), features),
        flax_logits(model, merged, features),
        "transformers on merged/ vs restored student",
    )
    assert (out / "merged" / "tokenizer.json").read_bytes() == (
        base_folder / "tokenizer.json"
    ).read_bytes()
    _, reloaded, _ = load(str(out / "merged"))
    assert_close(
        flax_logits(model, reloaded, features),
        flax_logits(model, merged, features),
        "mkd_jax load(merged/) vs restored student",
    )

    # (b) PEFT on the student checkpoint equals merged/.
    adapter_cfg = json.loads((out / "adapter" / export.ADAPTER_CONFIG).read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(base_folder.absolute())
    assert adapter_cfg["r"] == cfg.lora.rank and adapter_cfg["lora_alpha"] == cfg.lora.alpha
    check_peft(base_folder, out / "adapter", out / "merged", features)

    # Mappers travel alongside, bit-exact, with their layer map.
    mappers = load_file(str(out / "mappers.safetensors"))
    want = flatten_dict(trainable["mappers"], sep="/")
    assert set(mappers) == set(want) and mappers
    for k, v in want.items():
        np.testing.assert_array_equal(mappers[k], np.asarray(v), err_msg=k)
    with safe_open(str(out / "mappers.safetensors"), "np") as f:
        pairs = json.loads(f.metadata()["pairs"])
    assert {k.split("/")[0] for k in mappers} == set(pairs)

    with pytest.raises(ValueError, match=r"no step 7; it has steps \[2\]"):
        export.export(workdir, tmp_path / "bad", step=7)

    # The same checkpoint on a random-init student (same dims): refused, then --merged_only.
    random_run = tmp_path / "random_run"
    shutil.copytree(workdir / "checkpoints", random_run / "checkpoints")
    config = json.loads((workdir / "config.json").read_text())
    config["student"]["checkpoint"] = ""
    (random_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--merged_only"):
        export.export(random_run, tmp_path / "random_out")
    written = export.export(random_run, tmp_path / "random_out", merged_only=True)
    assert set(written) == {"merged"} and not (tmp_path / "random_out" / "adapter").exists()
    model_r, merged_r, _, _, _ = restore_student(random_run)
    assert_close(
        hf_logits(WhisperForConditionalGeneration.from_pretrained(written["merged"]), features),
        flax_logits(model_r, merged_r, features),
        "transformers on a random-init student's merged/",
    )
    gen = json.loads((written["merged"] / "generation_config.json").read_text())
    assert "alignment_heads" not in gen  # tiny.en's heads name layers this student lacks
