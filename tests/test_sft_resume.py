"""SFT resumes exactly: the `sft` stage's training (`fine_tune`), killed after its last checkpoint and run
again, continues from that checkpoint and logs, evaluates and saves what the uninterrupted run did.
Full fine-tuning (frozen embeddings, AdamW moments restored) and LoRA (adapters only, with dropout, so
the restored RNG state matters)."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.lora import LoRAConfig
from lmforge.model.transformer import Transformer
from lmforge.pipeline import RunContext
from lmforge.stages.sft import fine_tune
from lmforge.train.config import TrainConfig
from lmforge.train.metrics import read_metrics
from lmforge.train.trainer import Trainer

STEPS, CKPT_EVERY, KILL_AT = 8, 3, 5  # killed after step 5: steps 4-5 are lost, the run resumes from step 3
REAL_RUN = Trainer.run


class Killed(Exception):
    """Stands for the process dying: nothing after the loop (final checkpoint, model save) runs."""


def conversations(n: int, offset: int = 0) -> list:
    return [[{"role": "user", "content": f"What is {i} plus {i % 7}?"},
             {"role": "assistant", "content": f"{i} plus {i % 7} is {i + i % 7}." + " Done." * (i % 3)}]
            for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def base(toy_data, tmp_path_factory):
    """A tiny pretrained-model directory (weights, config and tokenizer), as `sft.init` points to."""
    data_dir, tok = toy_data
    torch.manual_seed(0)
    src = tmp_path_factory.mktemp("sft_base") / "model"
    save_model(Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2, max_seq_len=64)),
               src, data_dir.parent / "tok")
    return src


def run_stage(base, out, lora: LoRAConfig, monkeypatch, kill_at: int | None = None) -> dict:
    """fine_tune as the `sft` stage calls it, in a fresh context (as a new process would have); with
    kill_at, the loop stops after that step and the stage dies there. Returns what the trainer did."""
    seen = {}

    def run(self, start_step=0, stop_at=None):
        seen["start"] = start_step
        result = REAL_RUN(self, start_step, stop_at=kill_at)
        seen["history"] = list(self.history)
        if kill_at is not None:
            raise Killed
        return result

    monkeypatch.setattr(Trainer, "run", run)
    ctx = RunContext(cfg=SimpleNamespace(out_dir=str(out), name="r", seed=0), resume=True)
    tc = TrainConfig(steps=STEPS, micro_batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2, schedule="cosine",
                     log_every=1, eval_every=4, ckpt_every=CKPT_EVERY, dtype="fp32", progress=False,
                     tensorboard=False)
    try:
        fine_tune(ctx, "sft", base, conversations(24), conversations(4, offset=100), tc, lora,
                  freeze_embeddings=True, replay_fraction=0.0)
    except Killed:
        pass
    return seen


LORA = {"full": LoRAConfig(), "lora": LoRAConfig(enabled=True, r=2, alpha=4.0, dropout=0.2)}


@pytest.mark.parametrize("mode", list(LORA))
def test_killed_and_resumed_sft_matches_uninterrupted(base, tmp_path, monkeypatch, mode):
    lora = LORA[mode]
    full = run_stage(base, tmp_path / "full", lora, monkeypatch)
    killed = run_stage(base, tmp_path / "part", lora, monkeypatch, kill_at=KILL_AT)
    assert len(killed["history"]) == KILL_AT and not (tmp_path / "part/r/sft/model").exists()
    resumed = run_stage(base, tmp_path / "part", lora, monkeypatch)

    # the resumed run starts at the last checkpoint and repeats the lost steps, bit for bit
    assert (full["start"], killed["start"], resumed["start"]) == (0, 0, CKPT_EVERY)
    assert len(full["history"]) == STEPS and len(set(full["history"])) == STEPS
    assert resumed["history"] == full["history"][CKPT_EVERY:]
    assert killed["history"] == full["history"][:KILL_AT]
    # the metrics file reads as one clean run: steps 1..N once each, the same losses and evaluations
    logs = {d: read_metrics(tmp_path / d / "r/sft") for d in ("full", "part")}
    train = {d: [(r["step"], r["loss"], r["lr"], r["grad_norm"]) for r in rows if r["kind"] == "train"]
             for d, rows in logs.items()}
    assert [s for s, *_ in train["part"]] == list(range(1, STEPS + 1))
    assert train["part"] == train["full"]
    evals = {d: [(r["step"], r["val_loss"]) for r in rows if r["kind"] == "eval"] for d, rows in logs.items()}
    assert evals["part"] == evals["full"] and [s for s, _ in evals["full"]] == [4, 8]
    # the saved model (LoRA: merged) and adapter are the uninterrupted run's
    files = ["model/model.safetensors"] + (["adapter/adapter_model.safetensors"] if lora.enabled else [])
    for f in files:
        a, b = (load_file(str(tmp_path / d / "r/sft" / f)) for d in ("full", "part"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    before = load_file(str(base / "model.safetensors"))
    after = load_file(str(tmp_path / "full/r/sft/model/model.safetensors"))
    key = "model.layers.0.self_attn.q_proj.weight"  # trained in both modes (LoRA: merged in)
    assert not torch.equal(before[key], after[key])
