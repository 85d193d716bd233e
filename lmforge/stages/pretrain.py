"""Stage `pretrain`: next-token prediction on the corpus, on the shared trainer loop.

Data: the corpus is tokenized once into memory-mapped shards (`pretrain/data/`), packed
into rows of seq_len+1 tokens that start on document boundaries. Output: checkpoints
under `pretrain/checkpoints/`, the final model in `pretrain/model/`, metrics in
`pretrain/metrics.jsonl` and TensorBoard.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics

import torch

from lmforge.pipeline import Stage
from lmforge.stages.common import documents_source, pretraining_documents, resume_step, tokenizer_dir
from lmforge.train.distributed import barrier, resolve_device
from lmforge.train.metrics import read_metrics


def build_model_config(cfg, vocab_size: int):
    """The recipe's model with the tokenizer's vocabulary and room for the training length."""
    return dataclasses.replace(cfg.model, vocab_size=vocab_size,
                               max_seq_len=max(cfg.model.max_seq_len, cfg.train.seq_len))


def resolve_batch(tc, depth: int, world_size: int):
    """Derive grad_accum from a token budget per step (train.batch_tokens, or the depth preset's)."""
    from lmforge.model.config import suggested_batch_tokens

    target = tc.batch_tokens or (suggested_batch_tokens(depth) if depth > 0 else 0)
    if not target:
        return tc
    per_micro = tc.micro_batch_size * tc.seq_len * world_size
    return dataclasses.replace(tc, grad_accum=max(1, round(target / per_micro)))


def sample_prompts(ctx) -> list[str]:
    """A few prompts whose completions show progress: toyworld cloze facts when there is a world."""
    if ctx.is_complete("toyworld"):
        from lmforge.stages.common import load_world
        from lmforge.toyworld import arithmetic_probes, cloze_probes

        probes = cloze_probes(load_world(ctx), "heldout")[:3] + arithmetic_probes(ctx.cfg.seed, 1)
        return [p.prompt for p in probes]
    return ["Once upon a time", "The"]


def run(ctx) -> dict:
    from lmforge.data import PackedDataset, prepare_shards
    from lmforge.data.shards import shards_are_current
    from lmforge.engine import generate
    from lmforge.eval.perplexity import evaluate_lm
    from lmforge.model.config import suggested_lr
    from lmforge.model.io import write_model_meta
    from lmforge.model.transformer import Transformer
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.batches import PackedBatches
    from lmforge.train.checkpoint import latest_checkpoint
    from lmforge.train.trainer import CausalLMModule, Trainer

    cfg, info, tc = ctx.cfg, ctx.info, ctx.cfg.train
    out = ctx.stage_dir("pretrain")
    tok = Tokenizer.load(tokenizer_dir(ctx))
    data_dir = out / "data"
    made_with = {"seed": cfg.seed, "val_fraction": cfg.data.val_fraction, "source": documents_source(ctx)}
    if info.is_main and not shards_are_current(data_dir, tok, **made_with):
        prepare_shards(pretraining_documents(ctx), tok, data_dir, progress=tc.progress, **made_with)
    barrier(info)
    train_ds = PackedDataset(data_dir, "train", tc.seq_len)
    val_ds = PackedDataset(data_dir, "val", tc.seq_len)

    torch.manual_seed(cfg.seed)  # same init on every rank and every run
    model = Transformer(build_model_config(cfg, tok.vocab_size))
    device = resolve_device(tc.device, info)
    lr = tc.lr or suggested_lr(model.cfg.d_model)
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.float64)
    bf16 = tc.use_bf16(device)
    prompts = sample_prompts(ctx)
    doc_mask_bos = tok.bos_id if cfg.data.doc_mask else None

    def evaluate(m, step):
        return evaluate_lm(m, val_ds, token_bytes, max_rows=tc.eval_batches * tc.micro_batch_size,
                           micro_batch=tc.micro_batch_size, device=device, bf16=bf16, info=info,
                           doc_mask_bos=doc_mask_bos)

    def sample(m, step):
        if info.enabled and tc.parallel == "fsdp2":
            return {}  # sharded weights: generation would need every rank; skipped
        ids = generate(m, [[tok.bos_id] + tok.encode(p) for p in prompts], 12, stop_ids=(tok.eos_id,))
        texts = [p + tok.decode(o, skip_special=True) for p, o in zip(prompts, ids, strict=True)]
        return {f"sample_{i}": t for i, t in enumerate(texts)}

    tc = resolve_batch(tc, cfg.model.depth, info.world_size)
    batches = PackedBatches(train_ds, tc.micro_batch_size, tc.grad_accum, cfg.seed, info.rank, info.world_size)
    trainer = Trainer(cfg=tc, model=model, module=CausalLMModule(doc_mask_bos), batches=batches, out_dir=out,
                      device=device, lr=lr, info=info, evaluate=evaluate, sample=sample, tokens_per_row=tc.seq_len,
                      flops_per_token=model.flops_per_token(tc.seq_len))
    start = resume_step(ctx, trainer, "pretrain")
    n_params = model.num_params()
    ctx.log(f"[pretrain] {n_params / 1e6:.2f}M parameters, {len(train_ds)} train rows of {tc.seq_len} tokens, "
            f"{batches.rows_per_step} rows/step, lr {lr:.2e}, device {device} "
            f"({'bf16 autocast' if bf16 else 'fp32'}), world {info.world_size}")
    trainer.run(start_step=start)
    if info.is_main:
        # the final checkpoint holds the full (unsharded) weights: publish them as the stage's model
        final = out / "model"
        final.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(latest_checkpoint(out / "checkpoints") / "model.safetensors", final / "model.safetensors")
        write_model_meta(model.cfg, final, tokenizer_dir(ctx))
    # final numbers from the metrics file, so a run resumed after its last step reports them too
    logs, evals = read_metrics(out, "train"), read_metrics(out, "eval")
    tps = [r["tokens_per_s"] for r in logs if "tokens_per_s" in r]
    mfu = [r["mfu"] for r in logs if "mfu" in r]
    nan = float("nan")
    # tokens and tokens/s count row slots, padding included (that is the compute spent)
    return {"params": n_params, "steps": tc.steps, "tokens": tc.steps * batches.rows_per_step * tc.seq_len,
            "train_loss": round(logs[-1]["loss"], 4) if logs else nan,
            "val_loss": round(evals[-1]["val_loss"], 4) if evals else nan,
            "val_bpb": round(evals[-1]["val_bpb"], 4) if evals else nan,
            "tokens_per_s": round(statistics.median(tps), 1) if tps else 0.0,
            "mfu": round(statistics.median(mfu), 4) if mfu else 0.0,
            "pad_fraction": round(batches.epochs.pad_fraction(0), 4)}

STAGE = Stage("pretrain", run, requires=("tokenizer",), distributed=True,
              description="pretrain the transformer on next-token prediction",
              inputs=("seed", "toyworld", "curate", "data", "tokenizer", "model", "train"))
