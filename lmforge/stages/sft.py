"""Stage `sft`: supervised instruction tuning on chat conversations, full or LoRA.

Starts from the pretrained model (`sft.init`), trains on assistant tokens only (the loss
is normalized by the number of assistant tokens in the global batch), on the shared
trainer loop. Data: `sft.sources` (OpenAI messages, ShareGPT or Alpaca records, mixed by
weight), or by default the toyworld instruction tasks built from the *training* entities,
with some task types held out entirely. Output: `sft/model/` (a full checkpoint; LoRA
adapters merged) and, for LoRA, `sft/adapter/` in the PEFT format.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.pipeline import Stage
from lmforge.stages.common import resume_step


def init_dir(ctx, init: str) -> Path:
    from lmforge.stages.common import model_dir

    return model_dir(ctx, init, "sft.init")


def conversations(ctx) -> tuple[list, list, dict]:
    """(train conversations, validation conversations, stats)."""
    sc = ctx.cfg.sft
    if sc.sources:
        from lmforge.data.chat_sources import mix

        if sc.hasty_fraction:
            raise LmforgeError("sft.hasty_fraction rewrites toyworld demonstrations; it does nothing with "
                               "sft.sources: set it to 0")

        convs, stats = mix(sc.sources, seed=ctx.cfg.seed)
        skipped = sum(row["skipped"] for row in stats["sources"])
        log_skipped(ctx, "sft", stats)
        train, val = hold_out(convs, sc.val_examples, "sft")
        return train, val, {"sources": len(sc.sources), "skipped_records": skipped}
    from lmforge.stages.common import load_world
    from lmforge.toyworld.demonstrators import with_hasty_writer
    from lmforge.toyworld.tasks import sft_examples
    from lmforge.toyworld.tool_use import with_calculator

    world = load_world(ctx)
    tool = with_calculator if sc.calculator else (lambda e: e)
    for task, n in sc.task_counts.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise LmforgeError(f"sft.task_counts.{task}: expected a count >= 0, got {n!r} "
                               "(write the mapping as {qa: 600}, with a space after each colon)")
    try:
        examples = sft_examples(world, sc.n_per_task, seed=ctx.cfg.seed, counts=sc.task_counts)
    except ValueError as e:
        raise LmforgeError(f"sft.task_counts: {e}") from None
    val = sft_examples(world, max(1, sc.val_examples // 10), seed=ctx.cfg.seed + 10_000)
    try:
        examples = with_hasty_writer(examples, sc.hasty_fraction, ctx.cfg.seed)
        val = with_hasty_writer(val, sc.hasty_fraction, ctx.cfg.seed + 10_000)
    except ValueError as e:
        raise LmforgeError(f"sft.{e}") from None
    train = [tool(e).messages for e in examples]
    val = [tool(e).messages for e in val][: sc.val_examples]
    return train, val, {"toyworld_tasks": len(train)}


def log_skipped(ctx, stage: str, stats: dict) -> None:
    """skip_invalid: say how many records `chat_sources.mix` dropped, and the first one's reason."""
    skipped = sum(row["skipped"] for row in stats["sources"])
    if skipped:
        first = next(row for row in stats["sources"] if row["skipped"])
        ctx.log(f"[{stage}] skipped {skipped} invalid records (skip_invalid); first, in {first['path']}: "
                f"{first.get('first_skipped', '?')}")


def hold_out(convs: list, val_examples: int, stage: str) -> tuple[list, list]:
    """(train, validation): the first min(val_examples, 10%) conversations are held out, and every copy of
    them (upsampled sources repeat conversations) is kept out of training."""
    n_val = min(val_examples, len(convs) // 10)
    val = convs[:n_val]
    held = {json.dumps(c, sort_keys=True) for c in val}
    train = [c for c in convs[n_val:] if json.dumps(c, sort_keys=True) not in held]
    if not train:
        raise LmforgeError(f"{stage}.sources: all {len(convs)} conversations are copies of the {n_val} held out "
                           f"for validation; nothing is left to train on (add distinct conversations, or set "
                           f"{stage}.val_examples=0)")
    return train, val


def run(ctx) -> dict:
    sc = ctx.cfg.sft
    src = init_dir(ctx, sc.init)
    train_convs, val_convs, stats = conversations(ctx)
    return {**fine_tune(ctx, "sft", src, train_convs, val_convs, sc.train, sc.lora, sc.freeze_embeddings,
                        sc.replay_fraction), **stats}


def fine_tune(ctx, name: str, src: Path, train_convs: list, val_convs: list, tc, lora, freeze_embeddings: bool,
              replay_fraction: float) -> dict:
    """Train the model in `src` on chat conversations (loss on assistant tokens) on the shared trainer
    loop, with `replay_fraction` of the items pretraining documents; save `<name>/model` (and, for
    LoRA, `<name>/adapter` in the PEFT format). Shared by the stages that fine-tune on conversations."""
    from lmforge.eval.perplexity import evaluate_lm
    from lmforge.model.io import load_model, save_model
    from lmforge.model.lora import apply_lora, merge_lora, save_adapter
    from lmforge.sft import SFTBatches, tokenize_conversations
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import resolve_device
    from lmforge.train.metrics import read_metrics
    from lmforge.train.trainer import CausalLMModule, Trainer

    cfg, info = ctx.cfg, ctx.info
    out = ctx.stage_dir(name)
    tok = Tokenizer.load(src)
    torch.manual_seed(cfg.seed)
    model = load_model(src)
    max_len = min(tc.seq_len, model.cfg.max_seq_len - 1)
    train = tokenize_conversations(train_convs, tok, max_len)
    val = tokenize_conversations(val_convs, tok, max_len)
    replayed = add_replay(ctx, train, tok, max_len, replay_fraction, f"{name}.replay_fraction") \
        if replay_fraction > 0 else 0
    if lora.enabled:
        trainable = apply_lora(model, lora)
    else:
        if freeze_embeddings:
            model.model.embed_tokens.weight.requires_grad_(False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    device = resolve_device(tc.device, info)
    batches = SFTBatches(train, tok.pad_id, tc.micro_batch_size, tc.grad_accum, cfg.seed, info.rank,
                         info.world_size)
    val_rows = ValRows(val, tok.pad_id)
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.float64)

    def evaluate(m, step):
        return evaluate_lm(m, val_rows, token_bytes, max_rows=len(val_rows), micro_batch=tc.micro_batch_size,
                           device=device, bf16=tc.use_bf16(device), info=info)

    trainer = Trainer(cfg=tc, model=model, module=CausalLMModule(), batches=batches, out_dir=out, device=device,
                      lr=tc.lr, info=info, evaluate=evaluate if len(val_rows) else None)
    start = resume_step(ctx, trainer, name)
    ctx.log(f"[{name}] {len(train.ids) - replayed} conversations + {replayed} replayed documents "
            f"({train.n_trained_tokens} trained tokens, "
            f"{train.truncated} truncated), {f'LoRA r={lora.r}' if lora.enabled else 'full'}: "
            f"{trainable / 1e6:.2f}M trainable parameters, from {src}")
    trainer.run(start_step=start)
    if info.is_main:
        model = model.cpu()
        if lora.enabled:
            save_adapter(model, lora, out / "adapter", base_model=str(src))
            model = merge_lora(model)
        save_model(model, out / "model", src)
    logs, evals = read_metrics(out, "train"), read_metrics(out, "eval")
    return {"conversations": len(train.ids) - replayed, "trained_tokens": train.n_trained_tokens,
            "truncated": train.truncated, "trainable_params": trainable, "steps": tc.steps,
            "pad_fraction": round(batches.pad_fraction(), 4), "replay_documents": replayed,
            "train_loss": round(statistics.fmean(r["loss"] for r in logs[-3:]), 4) if logs else float("nan"),
            "val_loss": round(evals[-1]["val_loss"], 4) if evals else float("nan")}


def add_replay(ctx, train, tok, max_len: int, frac: float, key: str = "sft.replay_fraction") -> int:
    """Mix pretraining documents into the training items (`frac` of the total); returns how many."""
    import random

    from lmforge.sft import tokenize_documents
    from lmforge.stages.common import pretraining_documents

    if not 0 <= frac < 1:
        raise LmforgeError(f"{key}: expected a number in [0, 1), got {frac}")
    n = round(len(train.ids) * frac / (1 - frac))
    docs = list(pretraining_documents(ctx))
    random.Random(f"replay:{ctx.cfg.seed}").shuffle(docs)
    extra = tokenize_documents(docs[:n], tok, max_len)
    train.ids += extra.ids
    train.mask += extra.mask
    return len(extra.ids)


class ValRows:
    """Validation conversations as fixed rows, in the interface evaluate_lm expects."""

    def __init__(self, data, pad_id: int):
        self.data, self.pad_id = data, pad_id

    def __len__(self) -> int:
        return len(self.data.ids)

    def get_batch(self, rows):
        from lmforge.sft import collate

        return collate([self.data.ids[i] for i in rows], [self.data.mask[i] for i in rows], self.pad_id)


STAGE = Stage("sft", run, distributed=True,
              description="instruction-tune the model on chat conversations (full or LoRA)",
              inputs=("seed", "toyworld", "data", "tokenizer", "model", "train", "sft"))
