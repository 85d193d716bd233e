"""Resuming from a damaged or mismatched checkpoint: a one-line LmforgeError naming the file, never a
traceback, never a silent restart from step 0, never a "finished" run past its step count."""

import json
import shutil

import pytest
import torch

from lmforge.data import PackedDataset
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.batches import PackedBatches
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import CausalLMModule, Trainer


def tiny_trainer(toy_data, out_dir, steps=2, n_layer=2, d_model=32):
    data_dir, tok = toy_data
    tc = TrainConfig(steps=steps, micro_batch_size=2, grad_accum=1, seq_len=16, lr=1e-3, warmup_steps=0,
                     log_every=1, eval_every=1000, ckpt_every=1000, progress=False, tensorboard=False)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=n_layer, d_model=d_model, n_head=2,
                                    max_seq_len=32))
    batches = PackedBatches(PackedDataset(data_dir, "train", tc.seq_len), tc.micro_batch_size, tc.grad_accum, 0, 0, 1)
    return Trainer(cfg=tc, model=model, module=CausalLMModule(), batches=batches, out_dir=out_dir,
                   device=torch.device("cpu"), lr=tc.lr)


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory):
    """A stage directory holding a 2-step checkpoint (step_00000002), built once and copied per test."""
    out = tmp_path_factory.mktemp("resume") / "pretrain"
    tiny_trainer(toy_data, out).run()
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    out = tmp_path / "pretrain"
    shutil.copytree(trained, out)
    return out


def resume_error(toy_data, out, **kw) -> str:
    with pytest.raises(LmforgeError) as e:
        tiny_trainer(toy_data, out, **kw).resume()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_intact_checkpoint_resumes(toy_data, run_dir):
    assert tiny_trainer(toy_data, run_dir).resume() == 2


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_truncated_tensor_file(toy_data, run_dir, name):
    f = run_dir / "checkpoints" / "step_00000002" / name
    f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])
    msg = resume_error(toy_data, run_dir)
    assert msg.startswith(f"{f}: cannot read (truncated or not safetensors: Error while deserializing header: ")


def test_missing_tensor_file(toy_data, run_dir):
    f = run_dir / "checkpoints" / "step_00000002" / "optimizer.safetensors"
    f.unlink()
    assert resume_error(toy_data, run_dir) == f"{f}: missing; the checkpoint is incomplete"


@pytest.mark.parametrize("content, expected", [
    ('{"step": 850}', 'no "param_groups" (expected a list of optimizer parameter groups); '
                      'not a trainer state lmforge wrote'),
    ("garbage", "invalid JSON (Expecting value at line 1, column 1)"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"step": "850"}', '"step" must be a step number >= 0, got "850"'),
    (b"\xff\xfe{", "not UTF-8 text"),
])
def test_bad_trainer_state(toy_data, run_dir, content, expected):
    f = run_dir / "checkpoints" / "step_00000002" / "trainer_state.json"
    if isinstance(content, bytes):
        f.write_bytes(content)
    else:
        f.write_text(content)
    assert resume_error(toy_data, run_dir) == f"{f}: {expected}"


def test_bad_python_rng(toy_data, run_dir):
    f = run_dir / "checkpoints" / "step_00000002" / "trainer_state.json"
    state = json.loads(f.read_text())
    state["python_rng"] = [3, [1, 2], None]
    f.write_text(json.dumps(state))
    assert resume_error(toy_data, run_dir) == f'{f}: "python_rng" is not a Python RNG state lmforge wrote'


def test_latest_not_utf8(toy_data, run_dir):
    latest = run_dir / "checkpoints" / "latest"
    latest.write_bytes(b"step_\xff\xfe")
    assert resume_error(toy_data, run_dir) == (f"{latest}: not UTF-8 text; expected the name of a checkpoint "
                                                f"directory (step_NNNNNNNN)")


def test_latest_names_missing_checkpoint(toy_data, run_dir):
    """It used to return "no checkpoint", so --resume started over from step 0."""
    latest = run_dir / "checkpoints" / "latest"
    latest.write_text("step_99999999")
    assert resume_error(toy_data, run_dir) == f"{latest} names step_99999999, which does not exist"


@pytest.mark.parametrize("content", ["", "../../etc", "model"])
def test_latest_not_a_checkpoint_name(toy_data, run_dir, content):
    latest = run_dir / "checkpoints" / "latest"
    latest.write_text(content)
    assert resume_error(toy_data, run_dir) == (f"{latest}: expected the name of a checkpoint directory "
                                                f"(step_NNNNNNNN), got {content!r}")


HINT = "; restore the model settings it was saved with, or pass --fresh to start over"


def test_fewer_layers_than_the_checkpoint(toy_data, run_dir):
    f = run_dir / "checkpoints" / "step_00000002" / "model.safetensors"
    assert resume_error(toy_data, run_dir, n_layer=1) == (
        f"{f}: the checkpoint does not match the model config (model.layers.1.input_layernorm.weight: checkpoint "
        f"(32,), not in the model; 9 such tensors){HINT}")


def test_more_layers_than_the_checkpoint(toy_data, run_dir):
    f = run_dir / "checkpoints" / "step_00000002" / "model.safetensors"
    assert resume_error(toy_data, run_dir, n_layer=3) == (
        f"{f}: the checkpoint does not match the model config (model.layers.2.input_layernorm.weight: model (32,), "
        f"not in the checkpoint; 9 such tensors){HINT}")


def test_wider_model_than_the_checkpoint(toy_data, run_dir):
    f = run_dir / "checkpoints" / "step_00000002" / "model.safetensors"
    vocab = toy_data[1].vocab_size
    assert resume_error(toy_data, run_dir, d_model=64) == (
        f"{f}: the checkpoint does not match the model config (lm_head.weight: checkpoint ({vocab}, 32), "
        f"model ({vocab}, 64)){HINT}")


def test_checkpoint_past_the_step_count(toy_data, run_dir):
    """It used to "complete" at once and report the smaller step count for the longer-trained model."""
    ckpt = run_dir / "checkpoints" / "step_00000002"
    assert resume_error(toy_data, run_dir, steps=1) == (
        f"{ckpt}: the checkpoint is at step 2, past train.steps=1; set train.steps to at least 2 to continue it, "
        f"or pass --fresh to start over")
    assert tiny_trainer(toy_data, run_dir, steps=2).resume() == 2  # equal: a finished run, nothing left to do
