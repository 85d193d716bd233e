"""Stage `rm`: a reward model trained on preference pairs (Bradley-Terry).

The backbone starts from the SFT model (it already reads the chat format); a zero-initialized
scalar head scores each answer at its end-of-turn token, and the loss is
-log sigma(r(chosen) - r(rejected) [- margin]) averaged over pairs, on the shared trainer loop.
Data: `rm.sources` (pairs, HH-RLHF, ... see docs/preferences.md), or by default the `pairs`
stage's judge-labeled samples. Reports pairwise accuracy on held-out pairs. Output: `rm/model/`
(a reward checkpoint: `model_config.json` has "head": "reward"; exports as
LlamaForSequenceClassification).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from lmforge.data.preference_sources import PreferenceSourceConfig
from lmforge.errors import LmforgeError, fraction, non_negative
from lmforge.pipeline import Stage
from lmforge.stages.common import resume_step
from lmforge.train.config import TrainConfig


def _rm_train_defaults() -> TrainConfig:
    return TrainConfig(steps=200, micro_batch_size=16, seq_len=256, lr=3e-4, warmup_steps=10, schedule="cosine",
                       eval_every=50, ckpt_every=100, log_every=10)


@dataclass
class RMConfig:
    init: str = "sft"                 # backbone: a stage of this run or a checkpoint dir
    sources: list[PreferenceSourceConfig] = field(default_factory=list)  # empty: the `pairs` stage
    val_fraction: float = 0.1         # of `sources` pairs, held out for accuracy (pairs stage: its val.jsonl)
    margin: float = 0.0               # Bradley-Terry margin (Llama 2 uses larger margins for clearer preferences)
    train: TrainConfig = field(default_factory=_rm_train_defaults)

    def __post_init__(self):
        fraction(self, "val_fraction", closed_top=False)
        non_negative(self, "margin")


def preference_data(ctx, sources: list, val_fraction: float, key: str, stage: str = "pairs") -> tuple[list, list]:
    """(train pairs, validation pairs) from recipe sources or from a stage that writes pairs (`pairs`,
    `rlaif`): its train.jsonl and val.jsonl."""
    from lmforge.data.preference_sources import PreferenceSourceConfig, load_pairs_file, mix

    if sources:
        pairs, _ = mix([s if isinstance(s, PreferenceSourceConfig) else PreferenceSourceConfig(**s)
                        for s in sources], seed=ctx.cfg.seed)
        n_val = int(round(len(pairs) * val_fraction))
        return pairs[n_val:], pairs[:n_val]
    d = ctx.stage_dir(stage)
    if stage not in ctx.cfg.stages and not (d / "train.jsonl").exists():
        raise LmforgeError(f"{key}: no preference data; set {key} or add the {stage!r} stage before it")
    return load_pairs_file(d / "train.jsonl"), load_pairs_file(d / "val.jsonl")


@torch.no_grad()
def pairwise_accuracy(model, data, pad_id: int, device, batch_size: int = 32) -> tuple[float, float]:
    """(share of pairs whose chosen answer scores higher, mean reward margin)."""
    from lmforge.preference import PreferenceBatches, pair_rewards

    if len(data) == 0:
        return float("nan"), float("nan")
    model.eval()
    b = PreferenceBatches(data, pad_id, batch_size, 1, seed=0)
    wins, margins = 0, []
    for s in range(0, len(data), batch_size):
        items = list(range(s, min(s + batch_size, len(data))))
        ids, _, last, _, _ = b.get(items)
        r = pair_rewards(model, ids.to(device), last.to(device)).float().cpu()  # as training reads them
        m = r[:len(items)] - r[len(items):]
        wins += int((m > 0).sum())
        margins += m.tolist()
    model.train()
    return wins / len(data), statistics.fmean(margins)


def run(ctx) -> dict:
    from lmforge.model.io import load_model
    from lmforge.model.reward import RewardModel, save_reward_model
    from lmforge.preference import PreferenceBatches, RewardModule, tokenize_pairs
    from lmforge.stages.common import model_dir
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import resolve_device
    from lmforge.train.metrics import read_metrics
    from lmforge.train.trainer import Trainer

    cfg, info, rc = ctx.cfg, ctx.info, ctx.cfg.rm
    tc, out = rc.train, ctx.stage_dir("rm")
    src = model_dir(ctx, rc.init, "rm.init")
    tok = Tokenizer.load(src)
    torch.manual_seed(cfg.seed)
    model = RewardModel.from_lm(load_model(src))
    max_len = min(tc.seq_len, model.cfg.max_seq_len - 1)
    train_pairs, val_pairs = preference_data(ctx, rc.sources, rc.val_fraction, "rm.sources")
    train, val = tokenize_pairs(train_pairs, tok, max_len), tokenize_pairs(val_pairs, tok, max_len)
    if len(train) == 0:
        raise LmforgeError(f"rm: no training pairs fit in {max_len} tokens ({train.dropped} too long)")
    device = resolve_device(tc.device, info)
    batches = PreferenceBatches(train, tok.pad_id, tc.micro_batch_size, tc.grad_accum, cfg.seed, info.rank,
                                info.world_size)

    def evaluate(m, step):
        acc, margin = pairwise_accuracy(m, val, tok.pad_id, device)
        return {"val_accuracy": acc, "val_margin": margin}

    trainer = Trainer(cfg=tc, model=model, module=RewardModule(rc.margin), batches=batches, out_dir=out,
                      device=device, lr=tc.lr, info=info, evaluate=evaluate if len(val) else None)
    start = resume_step(ctx, trainer, "rm")
    ctx.log(f"[rm] {len(train)} training pairs, {len(val)} held out ({train.dropped + val.dropped} too long), "
            f"from {src}")
    trainer.run(start_step=start)
    train_acc, _ = pairwise_accuracy(model, train, tok.pad_id, device)
    val_acc, val_margin = pairwise_accuracy(model, val, tok.pad_id, device)
    if info.is_main:
        save_reward_model(model.cpu(), out / "model", src)
    logs = read_metrics(out, "train")
    return {"train_pairs": len(train), "val_pairs": len(val), "steps": tc.steps,
            "train_loss": round(statistics.fmean(r["loss"] for r in logs[-3:]), 4) if logs else float("nan"),
            "train_accuracy": round(train_acc, 4), "val_accuracy": round(val_acc, 4),
            "val_margin": round(val_margin, 4)}


STAGE = Stage("rm", run, distributed=True,
              description="train a reward model on preference pairs (Bradley-Terry)",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "rm"))
