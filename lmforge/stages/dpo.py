"""Stage `dpo`: preference optimization, one of the DPO family, on the shared trainer loop.

    lmforge dpo RECIPE dpo.loss=dpo|ipo|cdpo|hinge|kto|orpo|simpo

The policy starts from `dpo.init` (the SFT model). Losses that compare with a reference
(dpo, ipo, cdpo, hinge, kto) get the reference's log-probabilities of every answer computed
once before training, by the starting model itself; with LoRA that is exactly the base with
the adapter switched off, since a fresh adapter adds zero. ORPO and SimPO need none. Logs the
implicit rewards, margins and preference accuracy of every step. Data: `dpo.sources`, or by
default the `pairs` stage. KTO trains on the chosen answers as desirable and the rejected as
undesirable, each unpaired. Output: `dpo/model/` (LoRA merged) and, for LoRA, `dpo/adapter/`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from lmforge.data.preference_sources import PreferenceSourceConfig
from lmforge.errors import LmforgeError, check_fields, fraction, non_negative, one_of
from lmforge.model.lora import LoRAConfig
from lmforge.pipeline import Stage
from lmforge.stages.common import resume_step
from lmforge.train.config import TrainConfig


def _dpo_train_defaults() -> TrainConfig:
    return TrainConfig(steps=150, micro_batch_size=16, seq_len=256, lr=5e-5, warmup_steps=10, schedule="cosine",
                       eval_every=50, ckpt_every=50, log_every=10)


@dataclass
class DPOConfig:
    init: str = "sft"
    loss: str = "dpo"                  # dpo | ipo | cdpo | hinge | kto | orpo | simpo
    beta: float = 0.0                  # 0: the loss's own default (dpo/ipo/cdpo/hinge/kto 0.1, simpo 2.0)
    label_smoothing: float = 0.1       # cdpo only: assumed share of flipped labels
    gamma: float = 0.5                 # simpo only: target reward margin
    orpo_lambda: float = 0.1           # orpo only: weight of the odds-ratio term
    sources: list[PreferenceSourceConfig] = field(default_factory=list)  # empty: the `pairs` stage's pairs
    pairs: str = "pairs"               # without sources: the stage whose pairs to train on (pairs | rlaif)
    val_fraction: float = 0.1
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=_dpo_train_defaults)

    def __post_init__(self):
        from lmforge.losses.preference import PREFERENCE_LOSSES

        one_of(self, "loss", list(PREFERENCE_LOSSES))
        non_negative(self, "beta", "gamma", "orpo_lambda")  # beta 0: the loss's own default
        check_fields(self, ["label_smoothing"], lambda v: 0 <= v < 0.5, "a number >= 0 and < 0.5")
        fraction(self, "val_fraction", closed_top=False)
        one_of(self, "pairs", ("pairs", "rlaif"))


def loss_params(dc: DPOConfig) -> dict:
    p: dict = {}
    if dc.beta:
        p["beta"] = dc.beta
    if dc.loss == "cdpo":
        p["label_smoothing"] = dc.label_smoothing
    if dc.loss == "simpo":
        p["gamma"] = dc.gamma
    if dc.loss == "orpo":
        p = {"lam": dc.orpo_lambda}
    return p


def tokenize(dc: DPOConfig, pairs, tok, max_len: int, seed: int):
    from lmforge.data.preference_sources import pairs_to_unpaired
    from lmforge.preference import tokenize_pairs, tokenize_unpaired

    if dc.loss == "kto":
        return tokenize_unpaired(pairs_to_unpaired(pairs), tok, max_len, seed)
    return tokenize_pairs(pairs, tok, max_len)


@torch.no_grad()
def preference_accuracy(model, data, pad_id: int, device, batch_size: int = 32) -> float:
    """Share of pairs where the policy's log-ratio to the reference favors the chosen answer
    (ref-free when the data carry no reference log-probs)."""
    from lmforge.preference import PreferenceBatches, pair_logps

    model.eval()
    b = PreferenceBatches(data, pad_id, batch_size, 1, seed=0)
    wins = 0
    for s in range(0, len(data), batch_size):
        items = list(range(s, min(s + batch_size, len(data))))
        ids, targets, last, ref, _ = b.get(items)
        sums, _ = pair_logps(model, ids.to(device), targets.to(device), last.to(device))  # as training reads them
        ratio = sums.cpu().double() - ref.double()
        n = len(items)
        wins += int((ratio[:n] > ratio[n:]).sum())
    model.train()
    return wins / max(len(data), 1)


def run(ctx) -> dict:
    from lmforge.losses.preference import PREFERENCE_LOSSES
    from lmforge.model.io import load_model, save_model
    from lmforge.model.lora import apply_lora, merge_lora, save_adapter
    from lmforge.preference import PreferenceBatches, PreferenceModule, reference_logps
    from lmforge.stages.common import model_dir
    from lmforge.stages.rm import preference_data
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import resolve_device
    from lmforge.train.metrics import read_metrics
    from lmforge.train.trainer import Trainer

    cfg, info, dc = ctx.cfg, ctx.info, ctx.cfg.dpo
    if dc.loss not in PREFERENCE_LOSSES:
        raise LmforgeError(f"dpo.loss: expected one of {', '.join(PREFERENCE_LOSSES)}, got {dc.loss!r}")
    tc, out = dc.train, ctx.stage_dir("dpo")
    src = model_dir(ctx, dc.init, "dpo.init")
    tok = Tokenizer.load(src)
    torch.manual_seed(cfg.seed)
    model = load_model(src)
    max_len = min(tc.seq_len, model.cfg.max_seq_len - 1)
    train_pairs, val_pairs = preference_data(ctx, dc.sources, dc.val_fraction, "dpo.sources", dc.pairs)
    train = tokenize(dc, train_pairs, tok, max_len, cfg.seed)
    val = tokenize(dc.__class__(loss="dpo"), val_pairs, tok, max_len, cfg.seed)  # val: always pairs
    if len(train) == 0:
        raise LmforgeError(f"dpo: no training items fit in {max_len} tokens ({train.dropped} too long)")
    device = resolve_device(tc.device, info)
    model.to(device)
    bf16 = tc.use_bf16(device)
    # reference log-probs once, from the starting model (for LoRA: the base with a zero adapter)
    if PREFERENCE_LOSSES[dc.loss].needs_reference:
        train.ref = reference_logps(model, train, tok.pad_id, tc.micro_batch_size * 2, device, bf16)
    val.ref = reference_logps(model, val, tok.pad_id, tc.micro_batch_size * 2, device, bf16) if len(val) else None
    val_acc0 = preference_accuracy(model, val, tok.pad_id, device) if len(val) else float("nan")
    trainable = apply_lora(model, dc.lora) if dc.lora.enabled else sum(p.numel() for p in model.parameters())
    batches = PreferenceBatches(train, tok.pad_id, tc.micro_batch_size, tc.grad_accum, cfg.seed, info.rank,
                                info.world_size)

    def evaluate(m, step):
        return {"val_pref_accuracy": preference_accuracy(m, val, tok.pad_id, device)}

    module = PreferenceModule(dc.loss, **loss_params(dc))
    trainer = Trainer(cfg=tc, model=model, module=module, batches=batches, out_dir=out, device=device, lr=tc.lr,
                      info=info, evaluate=evaluate if len(val) else None)
    start = resume_step(ctx, trainer, "dpo")
    ctx.log(f"[dpo] loss={dc.loss} {loss_params(dc)}: {len(train)} training items, {len(val)} held-out pairs, "
            f"{'LoRA r=' + str(dc.lora.r) if dc.lora.enabled else 'full'} ({trainable / 1e6:.2f}M trainable)")
    trainer.run(start_step=start)
    val_acc = preference_accuracy(model, val, tok.pad_id, device) if len(val) else float("nan")
    if info.is_main:
        model = model.cpu()
        if dc.lora.enabled:
            save_adapter(model, dc.lora, out / "adapter", base_model=str(src))
            model = merge_lora(model)
        save_model(model, out / "model", src)
    logs = read_metrics(out, "train")
    last = logs[-1] if logs else {}
    keep = ("accuracies", "margins", "chosen_rewards", "rejected_rewards")
    return {"loss": dc.loss, "train_items": len(train), "val_pairs": len(val), "steps": tc.steps,
            "train_loss": round(statistics.fmean(r["loss"] for r in logs[-3:]), 4) if logs else float("nan"),
            **{f"train_{k}": round(last[k], 4) for k in keep if k in last},
            "val_pref_accuracy_before": round(val_acc0, 4), "val_pref_accuracy": round(val_acc, 4)}


STAGE = Stage("dpo", run, distributed=True, requires=lambda cfg: () if cfg.dpo.sources else (cfg.dpo.pairs,),
              description="preference optimization (DPO, IPO, cDPO, hinge, KTO, ORPO, SimPO)",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "dpo"))
