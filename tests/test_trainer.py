"""The shared training loop: the loss falls, runs are deterministic, resumption is exact,
and 2 processes with DDP give the single-process losses."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from lmforge.data import PackedDataset
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.batches import PackedBatches
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.metrics import read_metrics
from lmforge.train.trainer import CausalLMModule, Trainer


def make_trainer(data_dir, vocab, out_dir, info=None, seed=0, **train_kw):
    info = info or DistInfo()
    kw = dict(steps=12, micro_batch_size=4, grad_accum=1, seq_len=32, lr=3e-3, warmup_steps=2, log_every=1,
              eval_every=1000, ckpt_every=1000, progress=False, tensorboard=False)
    kw.update(train_kw)
    tc = TrainConfig(**kw)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=vocab, n_layer=2, d_model=32, n_head=2, max_seq_len=64))
    ds = PackedDataset(data_dir, "train", tc.seq_len)
    batches = PackedBatches(ds, tc.micro_batch_size, tc.grad_accum, seed, info.rank, info.world_size)
    return Trainer(cfg=tc, model=model, module=CausalLMModule(), batches=batches, out_dir=out_dir,
                   device=torch.device("cpu"), lr=tc.lr, info=info)


def test_loss_falls_and_is_deterministic(toy_data, tmp_path):
    data_dir, tok = toy_data
    a = make_trainer(data_dir, tok.vocab_size, tmp_path / "a", steps=30)
    a.run()
    first, last = sum(a.history[:3]) / 3, sum(a.history[-3:]) / 3
    assert last < first - 0.5, (first, last)
    b = make_trainer(data_dir, tok.vocab_size, tmp_path / "b", steps=30)
    b.run()
    assert a.history == b.history  # same seed, same config: bit-identical losses on CPU


def test_killed_and_resumed_run_matches_uninterrupted(toy_data, tmp_path):
    data_dir, tok = toy_data
    full = make_trainer(data_dir, tok.vocab_size, tmp_path / "full", ckpt_every=5)
    full.run()
    # the "killed" run stops right after its step-5 checkpoint; a fresh process-like Trainer resumes
    part = make_trainer(data_dir, tok.vocab_size, tmp_path / "part", ckpt_every=5)
    part.run(stop_at=7)  # steps 6 and 7 are lost with the kill: they come after the last checkpoint
    resumed = make_trainer(data_dir, tok.vocab_size, tmp_path / "part", ckpt_every=5)
    start = resumed.resume()
    assert start == 5
    resumed.run(start_step=start)
    assert part.history[:5] + resumed.history == full.history
    # the metrics file reads as one clean run: steps 1..12 once each, same losses
    logged = [r for r in read_metrics(tmp_path / "part", "train")]
    assert [r["step"] for r in logged] == list(range(1, 13))
    assert [r["loss"] for r in logged] == full.history


def test_resume_checkpoint_is_atomic(toy_data, tmp_path):
    """A crash while writing leaves a temp directory, never a 'latest' pointing at a partial checkpoint."""
    data_dir, tok = toy_data
    t = make_trainer(data_dir, tok.vocab_size, tmp_path, steps=4, ckpt_every=2)
    t.run()
    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000004"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000002", "step_00000004"]
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        assert (ckpts / "step_00000004" / name).exists()
    (ckpts / ".step_00000006.tmp123").mkdir()  # debris of a killed write
    again = make_trainer(data_dir, tok.vocab_size, tmp_path, steps=4, ckpt_every=2)
    assert again.resume() == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, data_dir, vocab, out, parallel):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lmforge.train.distributed import cleanup, init_distributed

    info = init_distributed("cpu")
    t = make_trainer(data_dir, vocab, out / f"rank{rank}", info=info, steps=6, dtype="fp32", parallel=parallel)
    t.run()
    if rank == 0:
        (out / "losses.json").write_text(json.dumps(t.history))
    cleanup(info)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_processes_match_single_process_with_accumulation(toy_data, tmp_path, parallel):
    data_dir, tok = toy_data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = make_trainer(data_dir, tok.vocab_size, tmp_path / "single", steps=6, dtype="fp32", grad_accum=2)
    single.run()
    mp.spawn(_ddp_worker, args=(2, _free_port(), data_dir, tok.vocab_size, tmp_path, parallel), nprocs=2)
    torch.set_num_threads(threads)
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == 6
    for a, b in zip(losses, single.history, strict=True):
        assert abs(a - b) < 1e-5, (losses, single.history)
