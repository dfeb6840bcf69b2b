"""Jitted greedy and beam decoding against transformers' `generate` on the same weights."""

import numpy as np
import pytest
import torch
from hf_reference import make_reference, random_mel

from mkd_jax.decode import DecodeSpec, make_generate_fn, strip
from mkd_jax.models.whisper import from_hf

EOT = 50257
PROMPT = (50258, 50259, 50359, 50363)
SUPPRESS = (1, 2, 7, 8, 9, 10, 14, 25)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    ref = make_reference("mel80", seed=1)
    with (
        torch.no_grad()
    ):  # make end-of-text likely, so early stopping and EOT padding are exercised
        ref.model.decoder.embed_tokens.weight[EOT] *= 2.2
    folder = tmp_path_factory.mktemp("dec")
    ref.save_pretrained(folder)
    model, params, _ = from_hf(folder)
    return ref, model, params


def _hf_generate(ref, mel, beams, max_new):
    with torch.no_grad():
        seqs = ref.generate(
            torch.tensor(mel),
            language="en",
            task="transcribe",
            max_new_tokens=max_new,
            num_beams=beams,
            do_sample=False,
        )
    return strip(seqs.numpy(), EOT)


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_matches_transformers_generate(pair, beams):
    ref, model, params = pair
    mel = random_mel(80, batch=4, seed=3)
    spec = DecodeSpec(
        prompt=PROMPT,
        eot=EOT,
        max_new_tokens=24,
        suppress=SUPPRESS,
        begin_suppress=(220, EOT),
        beam_size=beams,
    )
    ours = strip(make_generate_fn(model, spec)(params, mel), EOT)
    assert ours == _hf_generate(ref, mel, beams, 24)
    assert len({len(r) for r in ours}) > 1 or beams > 1  # rows ended at different steps


def test_greedy_pads_with_eot_and_compiles_once(pair):
    _, model, params = pair
    spec = DecodeSpec(prompt=PROMPT, eot=EOT, max_new_tokens=24, suppress=SUPPRESS)
    fn = make_generate_fn(model, spec)
    toks = np.asarray(fn(params, random_mel(80, batch=4, seed=3)))
    for row in toks:
        hits = np.flatnonzero(row == EOT)
        if hits.size:
            assert (row[hits[0] :] == EOT).all()
    fn(params, random_mel(80, batch=4, seed=4))
    assert fn._cache_size() == 1


def test_too_many_new_tokens_is_rejected(pair):
    _, model, _ = pair
    with pytest.raises(ValueError, match="exceeds"):
        make_generate_fn(model, DecodeSpec(prompt=PROMPT, eot=EOT, max_new_tokens=446))
