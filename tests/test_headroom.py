"""`mkd_jax.headroom`: teacher-forced likelihood against transformers, and the comparison."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from hf_reference import make_reference

from mkd_jax import assets, headroom
from mkd_jax.data import features
from mkd_jax.data.tokenizers import load_tokenizer
from mkd_jax.models.whisper import from_hf

TEXTS = ["The cat sat.", "Password for the folder, please", "Hi"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ref = make_reference("mel80")
    folder = tmp_path_factory.mktemp("mel80")
    ref.save_pretrained(folder)
    model, params, _ = from_hf(folder)
    tok = load_tokenizer(assets.ensure_model("base"), model_vocab_size=model.vocab_size)
    rng = np.random.default_rng(0)
    clips = [rng.uniform(-0.3, 0.3, n).astype(np.float32) for n in (16000, 24000, 8000)]
    return ref, model, params, tok, clips


def test_scores_equal_transformers_sums(setup):
    ref, model, params, tok, clips = setup
    # batch 2 over 3 utterances: a padded last batch and two label lengths
    got = headroom.forced_scores(model, params, tok, clips, TEXTS, n_frames=3000, batch_size=2)
    for i, text in enumerate(TEXTS):
        ids = tok.prompt_ids() + tok.encode(" " + text) + [tok.eot]
        mel = features.log_mel([clips[i]], n_frames=3000)
        with torch.no_grad():
            logits = (
                ref(input_features=torch.tensor(mel), decoder_input_ids=torch.tensor([ids[:-1]]))
                .logits[0]
                .double()
            )
        first = len(tok.prompt_ids()) - 1  # the row predicting the first text token
        logp = torch.log_softmax(logits, -1)[first:]
        labels = torch.tensor(ids[first + 1 :])
        nll = -logp.gather(1, labels[:, None]).sum().item()
        correct = (logits[first:].argmax(-1) == labels).sum().item()
        assert got.tokens[i] == len(labels)
        assert got.nll[i] == pytest.approx(nll, rel=1e-4)
        assert got.correct[i] == correct
    assert got.nll.min() > 1.0  # random weights: far from a trivially zero loss


def test_compare_hand_values():
    words = np.array([2.0, 3.0, 5.0])
    student = headroom.Scores(np.array([4.0, 6.0, 10.0]), np.zeros(3), np.ones(3))
    same = headroom.compare(student, student, words)
    assert same["diff"] == same["low"] == same["high"] == 0.0
    teacher = headroom.Scores(np.array([2.0, 3.0, 5.0]), np.zeros(3), np.ones(3))
    c = headroom.compare(student, teacher, words)
    # (20 - 10) nats over 10 words; the teacher is better on every utterance, by 1 nat/word
    assert c["diff"] == pytest.approx(1.0)
    assert c["low"] == pytest.approx(1.0) and c["high"] == pytest.approx(1.0)
    assert (c["teacher_better"], c["teacher_worse"]) == (3, 0)


def test_select_spreads_and_keeps_all():
    assert headroom.select(10, 0).tolist() == list(range(10))
    assert headroom.select(10, 3).tolist() == [0, 4, 9]
    assert headroom.select(4, 10).tolist() == [0, 1, 2, 3]


def test_a_config_without_a_scorable_teacher_is_one_line():
    cmd = [sys.executable, "-m", "mkd_jax.headroom", "--config", "configs/tiny.py"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert lines and "no teacher with a checkpoint" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
