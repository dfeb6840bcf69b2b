"""Bad input at the command line: one `error:` line naming the file, flag, key or value, a
nonzero exit, no traceback, and no expensive work before the check (each case here found by
trying a user's mistakes on every entry point)."""

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mkd_jax import cli, results, state, transcribe

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs/tiny.py")


def _run(*args, timeout=120):
    p = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    return p, errors


@pytest.fixture(scope="module")
def bad_configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("configs")
    (d / "syntax.py").write_text("def get_config(:\n    pass\n")
    (d / "no_getter.py").write_text("X = 1\n")
    return d


def cases(d):
    # (argv after `python -m`, exit code, phrases of the one error line)
    out_file = d / "a_file"
    out_file.write_text("")
    manifest = d / "clips.csv"
    manifest.write_text("path,text\na.wav,hello\n")
    return [
        (["mkd_jax.train", "--config", str(d / "syntax.py"), "--workdir", str(d / "w")], 2,
         ["syntax.py", "line 1"]),
        (["mkd_jax.train", f"--config={d / 'no_getter.py'}", "--workdir", str(d / "w")], 2,
         ["no_getter.py", "get_config()"]),
        (["mkd_jax.train", "--config", TINY, "--config.optim.lrr=0.1", "--workdir", str(d / "w")],
         2, ["--config.optim.lrr", "no key 'lrr'", 'Did you mean "lr"']),
        (["mkd_jax.train", "--config", str(d / "missing.py"), "--workdir", str(d / "w")], 2,
         ["missing.py: no such file"]),
        # a usage error is one line, not absl's whole flag list
        (["mkd_jax.evaluate", "--source=dsk:x"], 2, ["--source='dsk:x'", "see --help"]),
        # checked before a corpus or a model is read
        (["mkd_jax.evaluate", "--source=disk:/no/such", "--model=tiny.en,bse"], 2, ["'bse'"]),
        (["mkd_jax.evaluate", "--source=disk:/no/such", f"--output={d}/no_dir/o.json"], 2,
         ["--output", "does not exist"]),
        (["mkd_jax.evaluate", "--source=disk:/no/such", "--ensemble=tiny.en,base",
          "--ensemble_weights=2,x"], 2, ["--ensemble_weights", "'x'"]),
        (["mkd_jax.ablate", "--config", TINY], 2, ["not an ablation config"]),
        (["mkd_jax.ablate", "--config", str(ROOT / "configs/ablation_power.py"),
          "--config.ablation.lr_grid=(0.0,)", "--workdir", str(d / "ab"),
          "--results", str(d / "abr")], 2, ["ablation run row2 at LR 0.0", "optim.lr"]),
        (["mkd_jax.aot", "--platform=cpu", "--config", TINY, "--config.optim.lr=0"], 2,
         ["optim.lr=0.0"]),
        (["mkd_jax.cache", "--config", TINY, "--config.cache.dtype=float8"], 2,
         ["cache.dtype='float8'"]),
        (["mkd_jax.pseudolabel", "--config", TINY, "--out", str(d / "pl")], 2,
         ["teachers.a", "no checkpoint"]),
        (["mkd_jax.power", "--a=x", "--b=y", "--split=test", "--sizes=10,abc"], 2,
         ["--sizes", "'abc'"]),
        (["mkd_jax.demo", f"--workdir={out_file}"], 2, ["is a file, not a folder"]),
        (["mkd_jax.export", f"--workdir={d}/no_run", f"--out={out_file}"], 2,
         ["--out", "is a file, not a folder"]),
        (["mkd_jax.evaluate", "--source=disk:/no/such", "--max_bad_fraction=-1"], 2,
         ["--max_bad_fraction=-1.0"]),
        (["mkd_jax.transcribe", "--max_seconds=0", str(out_file)], 2, ["--max_seconds=0.0"]),
        (["mkd_jax.transcribe", "--no_speech_threshold=2", str(out_file)], 2,
         ["--no_speech_threshold=2.0", "[0, 1]"]),
        # bench counts and names, before a model loads or a clip is synthesised
        (["mkd_jax.bench", "decode", "--clips=10", "--batch_sizes=1,16"], 2,
         ["--clips=10: not a multiple of --batch_sizes 16"]),
        (["mkd_jax.bench", "distill", "--rounds=0"], 2, ["--rounds=0"]),
        (["mkd_jax.bench", "eval_reuse", "--models=tiny.en,bse"], 2, ["'bse'"]),
        (["mkd_jax.bench", "kokoro", "--clips=0"], 2, ["--clips"]),
        (["mkd_jax.bench", "kokoro", "--clips=17"], 2, ["--clips=17", "at most 16"]),
        # a one-file manifest has no splits: --split would have been ignored
        (["mkd_jax.evaluate", f"--source=manifest:{manifest}", "--split=dev"], 2,
         ["--split=dev", "clips.csv is one file"]),
        # the corpus builder checks its values before it plans or writes anything
        (["mkd_jax.corpus.synth", f"--out={d}/c1", "--hours=0"], 2, ["--hours 0.0"]),
        (["mkd_jax.corpus.synth", f"--out={d}/c2", "--hours=1", "--fractions=nan,0,0"], 2,
         ["--fractions 'nan,0,0'"]),
        (["mkd_jax.corpus.synth", f"--out={d}/c3", "--hours=1", "--shard-size=0"], 2,
         ["--shard-size 0"]),
        (["mkd_jax.corpus.synth", f"--out={out_file}", "--hours=1"], 2, ["is a file"]),
        (["mkd_jax.corpus.synth", f"--out={d}", "--hours=1"], 2, ["no plan.json"]),
    ]  # fmt: skip


def test_each_mistake_gets_one_line_and_an_exit_code(bad_configs):
    todo = cases(bad_configs)
    # Each case is a fresh interpreter that mostly imports: two at a time halve the wait.
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda case: _run(*case[0]), todo))
    for (argv, code, phrases), (p, errors) in zip(todo, runs, strict=True):
        assert p.returncode == code, (argv, p.stderr[-2000:])
        assert "Traceback" not in p.stderr, (argv, p.stderr[-2000:])
        assert len(errors) == 1, (argv, p.stderr[-2000:])
        for phrase in phrases:
            assert phrase in errors[0], (argv, errors[0])
        assert len(p.stderr.splitlines()) <= 4, (argv, p.stderr)  # no usage dump
    assert not (bad_configs / "w").exists()  # nothing written for a refused config
    assert not any((bad_configs / c).exists() for c in ("c1", "c2", "c3"))


def test_verbose_keeps_the_traceback(bad_configs):
    p, _ = _run("mkd_jax.train", "--config", str(bad_configs / "syntax.py"), "--verbose",
                "--workdir", str(bad_configs / "w"))  # fmt: skip
    assert p.returncode != 0 and "SyntaxError" in p.stderr and "Traceback" in p.stderr


def test_entry_points_check_their_input_before_importing_jax_or_transformers():
    """Every `python -m` entry point imports jax, transformers, scipy or torch only after its
    flags and config are checked, so that a usage error costs a fraction of a second. One
    interpreter per module: some define flags of the same name at import."""
    entry_points = ("train", "cache", "compare", "power", "bench", "demo", "ablate", "pseudolabel",
                    "evaluate", "transcribe", "headroom", "export", "aot", "assets",
                    "corpus.synth")  # fmt: skip
    heavy = {}
    for m in entry_points:
        code = (
            f"import sys, mkd_jax.{m}\n"
            "print(sorted({'jax', 'transformers', 'scipy', 'torch'} & set(sys.modules)))"
        )
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr
        if p.stdout.strip() != "[]":
            heavy[m] = p.stdout.strip()
    assert heavy == {}


def test_positive_ints_name_the_flag():
    assert cli.positive_ints("sizes", ["3", "10"]) == [3, 10]
    with pytest.raises(ValueError, match=r"--sizes: 'x' is not a whole number"):
        cli.positive_ints("sizes", ["3", "x"])
    with pytest.raises(ValueError, match=r"--batch_sizes=1,0: each must be >= 1"):
        cli.positive_ints("batch_sizes", ["1", "0"])


def test_a_damaged_workdir_config_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"student": {"checkpoint": "tiny.en"')
    with pytest.raises(ValueError, match=r"config\.json: not JSON"):
        state.load_config(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"config\.json: not a training config \(no student"):
        state.load_config(tmp_path)


def test_a_checkpoint_that_does_not_restore_is_named(tmp_path):
    from mkd_jax.checkpoint import CheckpointDamaged
    from mkd_jax.config_base import load_config_file

    cfg = load_config_file(TINY)
    (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
    (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # a step folder with nothing in it
    with pytest.raises(CheckpointDamaged, match=r"checkpoints/4 does not restore .*train the run"):
        state.restore_run(tmp_path)


def test_results_that_are_not_results_are_refused(tmp_path):
    (tmp_path / "number.json").write_text("42")
    with pytest.raises(ValueError, match="holds a int, not a report"):
        results.load_result(str(tmp_path / "number.json"), "test")
    (tmp_path / "empty.json").write_text(json.dumps({"per_utt": {}}))
    with pytest.raises(ValueError, match="per-utterance results lack one of"):
        results.load_result(str(tmp_path / "empty.json"), "test")
    ragged = {"per_utt": {"ids": ["a", "b"], "word_errors": [1], "ref_words": [3, 4]}}
    (tmp_path / "ragged.json").write_text(json.dumps(ragged))
    with pytest.raises(ValueError, match="differ in length"):
        results.load_result(str(tmp_path / "ragged.json"), "test")
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="a folder without report.json"):
        results.load_result(str(tmp_path / "run"), "test")


def test_transcribe_refuses_inputs_before_a_model_loads(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match="empty: folder has no audio files"):
        transcribe.check_inputs([str(tmp_path / "empty")], None)
    with pytest.raises(ValueError, match="--output_dir .*notes.txt: is a file"):
        transcribe.check_inputs([], str(tmp_path / "notes.txt"))
    from mkd_jax.transcriber import Transcriber

    for bad in ({"batch_size": 0}, {"beam_size": 0}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))}=0: must be"):
            Transcriber("no-such-model", **bad)  # refused before the name is even resolved


def test_an_english_only_model_refuses_another_language():
    from mkd_jax import decode
    from mkd_jax.assets import resolve_model
    from mkd_jax.data.tokenizers import load_tokenizer

    folder = resolve_model("tiny.en")
    tok = load_tokenizer(folder, model_vocab_size=51864)
    assert decode.spec_from_folder(folder, tok, language="en").prompt == (50257, 50362)
    with pytest.raises(ValueError, match="English-only: it cannot prompt language='fr'"):
        decode.spec_from_folder(folder, tok, language="fr")


def test_a_missing_corpus_folder_is_a_config_error():
    from mkd_jax.config_base import load_config_file
    from mkd_jax.validate import ConfigError, validate

    cfg = load_config_file(TINY)
    cfg.data.source.kind, cfg.data.source.path = "disk", "/no/such/corpus"
    with pytest.raises(ConfigError, match=r"data.source.path='/no/such/corpus': no such folder"):
        validate(cfg)


def test_group_by_a_missing_column_stops_before_decoding(tmp_path, tiny_librispeech):
    p, errors = _run("mkd_jax.evaluate", f"--source=librispeech:{tiny_librispeech}",
                     "--split=test", "--group_by=speakr", "--model=tiny.en")  # fmt: skip
    assert p.returncode == 2 and len(errors) == 1, p.stderr[-2000:]
    assert "--group_by speakr: the split has no such column" in errors[0]
    assert "Traceback" not in p.stderr


def test_a_manifest_that_is_not_utf8_or_not_objects_is_named(tmp_path):
    from mkd_jax.data import loaders

    src = {"kind": "manifest", "path": str(tmp_path)}
    (tmp_path / "test.jsonl").write_bytes(b'{"path": "a.wav", "text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: not UTF-8"):
        loaders.load_split(src, "test")
    (tmp_path / "test.jsonl").write_text('{"path": "a.wav", "text": "ok"}\n["a.wav", "ok"]\n')
    with pytest.raises(ValueError, match=r"test.jsonl:2: a list, not a JSON object"):
        loaders.load_split(src, "test")


def test_a_one_file_manifest_is_its_own_split(tmp_path):
    from mkd_jax.evaluate import split_of

    one = {"kind": "manifest", "path": str(tmp_path / "clips.csv")}
    assert split_of(one, "dev", given=True) == "dev"  # missing: the loader names the path
    (tmp_path / "clips.csv").write_text("path,text\n")
    assert split_of(one, "test", given=False) == "clips"  # named in tables by its file
    assert split_of(one, "clips", given=True) == "clips"
    many = {"kind": "manifest", "path": str(tmp_path / "{split}.csv")}
    assert split_of(many, "dev", given=True) == "dev"
    assert split_of({"kind": "manifest", "path": str(tmp_path)}, "dev", given=True) == "dev"
    assert split_of({"kind": "disk", "path": str(tmp_path)}, "dev", given=True) == "dev"
