"""`lmforge eval` flags are checked before any data or model loads: a bad one is a one-line error
naming the flag, not a traceback from SamplingParams, a score of 0, or a failed write after the run."""

import argparse
from pathlib import Path

import pytest
import torch

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.eval.cli import add_parser, run_eval
from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

FIX = Path(__file__).parent / "fixtures" / "eval"
TEXTS = ["The capital of Velora is Kamdu. 123 + 456 = 579.", "Kamdu lives in Velora; so 4 * 5 = 20."] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A randomly initialised 1-layer checkpoint with its own small tokenizer."""
    root = tmp_path_factory.mktemp("evalflags")
    tok = train_tokenizer(TEXTS, root / "tok", vocab_size=300)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=64))
    save_model(model, root / "ckpt", root / "tok")
    return root / "ckpt"


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the model or any task data is loaded: the checks must come first."""
    import lmforge.model.io
    from lmforge.eval.tasks import get_task

    def boom(*a, **k):
        raise AssertionError("loaded before the flags were checked")

    monkeypatch.setattr(lmforge.model.io, "load_model", boom)
    monkeypatch.setattr(type(get_task("gsm8k")), "load", boom)


def run_cli(argv) -> int:
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    add_parser(sub)
    return run_eval(sub._name_parser_map["eval"].parse_args(argv))


@pytest.mark.parametrize("flags, expected", [
    # the same words as `lmforge chat` for the flags both take (lmforge.errors.check_flags)
    (["--temperature", "-1"], "--temperature: expected a number >= 0 (0: greedy), got -1.0"),
    (["--temperature", "nan"], "--temperature: expected a number >= 0 (0: greedy), got nan"),
    (["--temperature", "inf"], "--temperature: expected a number >= 0 (0: greedy), got inf"),
    (["--max-new-tokens", "-5"], "--max-new-tokens: expected a positive integer, got -5"),
    (["--max-new-tokens", "0"], "--max-new-tokens: expected a positive integer, got 0"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer, got 0"),
])
def test_bad_flag(ckpt, nothing_loads, flags, expected):
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "gsm8k", "--data", str(FIX), "--no-progress", *flags])
    assert str(e.value) == expected


def test_bad_task_option(ckpt, nothing_loads):
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "gsm8k:max_new_tokens=0", "--data", str(FIX), "--no-progress"])
    assert str(e.value) == "--tasks gsm8k: option 'max_new_tokens' must be positive, got 0"


def test_out_is_a_file(ckpt, nothing_loads, tmp_path):
    out = tmp_path / "results.json"
    out.write_text("{}")
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "gsm8k", "--data", str(FIX), "--out", str(out), "--no-progress"])
    assert str(e.value) == f"--out {out}: exists and is not a directory"
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "gsm8k", "--data", str(FIX), "--out", str(out / "sub"), "--no-progress"])
    assert str(e.value) == f"--out {out / 'sub'}: {out} is a file, not a directory"
    assert out.read_text() == "{}"


def test_cli_prints_one_line_and_exits_2(ckpt, capsys):
    assert main(["eval", str(ckpt), "--tasks", "gsm8k", "--data", str(FIX), "--max-new-tokens", "-5",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --max-new-tokens: expected a positive integer, got -5\n"


def test_good_flags_still_run(ckpt, tmp_path):
    out = tmp_path / "out"
    assert run_cli([str(ckpt), "--tasks", "gsm8k:max_new_tokens=2", "--data", str(FIX), "--num-fewshot", "0",
                    "--limit", "1", "--temperature", "0.5", "--out", str(out), "--no-progress"]) == 0
    assert (out / "results.json").is_file()


def test_a_missing_checkpoint_fails_before_any_data_loads(nothing_loads, tmp_path):
    """Without --data, gsm8k would go to the Hub first (tens of seconds offline) and never name the path."""
    with pytest.raises(LmforgeError) as e:
        run_cli([str(tmp_path / "nope"), "--tasks", "gsm8k", "--no-progress"])
    assert str(e.value) == f"{tmp_path / 'nope'}: not an lmforge checkpoint (no model_config.json)"


def test_a_data_dir_without_a_file_for_a_task_names_the_task(ckpt, tmp_path):
    """--data DIR serves the tasks its layout has files for; for another (arc_easy reads the Hub) the error
    names the task and what to do, where it named only the directory."""
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "arc_easy", "--data", str(tmp_path), "--no-progress"])
    assert str(e.value) == (f"arc_easy: --data {tmp_path} has no file for this task (is a directory, expected a "
                            f"data file); give it one with arc_easy:path=FILE, or run it without --data")


def test_hub_data_that_cannot_load_points_to_data(ckpt, monkeypatch):
    import lmforge.data.sources

    def offline(dataset_id, config, split):
        raise LmforgeError(f"{dataset_id}: cannot load dataset (Couldn't reach '{dataset_id}' on the Hub)")

    monkeypatch.setattr(lmforge.data.sources, "load_hf_split", offline)
    with pytest.raises(LmforgeError) as e:
        run_cli([str(ckpt), "--tasks", "gsm8k", "--no-progress"])
    assert str(e.value) == ("openai/gsm8k: cannot load dataset (Couldn't reach 'openai/gsm8k' on the Hub); offline, "
                            "give --data DIR (a directory of the released files: docs/evaluation.md)")
