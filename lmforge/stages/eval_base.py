"""Stage `eval_base`: measure what pretraining stored.

- validation loss and bits per byte on the held-out split of the corpus;
- toyworld cloze accuracy ("The capital of X is" -> Y) on the entities later stages may
  train on and on the held-out ones (whose facts only pretraining text ever states);
- arithmetic accuracy on "a + b =" probes.
"""

from __future__ import annotations

import torch

from lmforge.pipeline import Stage
from lmforge.utils import write_json


def run(ctx) -> dict:
    from lmforge.data import PackedDataset
    from lmforge.eval.perplexity import evaluate_lm
    from lmforge.eval.probes import probe_accuracy
    from lmforge.model.io import load_model
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import resolve_device

    cfg, ec = ctx.cfg, ctx.cfg.eval
    model_dir = ctx.stage_dir("pretrain") / "model"
    device = resolve_device(cfg.train.device, ctx.info)
    model = load_model(model_dir, device).eval()
    tok = Tokenizer.load(model_dir)
    metrics: dict = {}
    val = PackedDataset(ctx.stage_dir("pretrain") / "data", "val", cfg.train.seq_len)
    token_bytes = torch.tensor(tok.token_bytes(), dtype=torch.float64)
    lm = evaluate_lm(model, val, token_bytes, max_rows=len(val), micro_batch=cfg.train.micro_batch_size,
                     device=device, bf16=cfg.train.use_bf16(device),
                     doc_mask_bos=tok.bos_id if cfg.data.doc_mask else None)
    metrics["val_loss"], metrics["val_bpb"] = round(lm["val_loss"], 4), round(lm["val_bpb"], 4)
    samples: dict = {}
    if ctx.is_complete("toyworld"):
        from lmforge.stages.common import load_world
        from lmforge.toyworld import arithmetic_probes, cloze_probes

        world = load_world(ctx)
        suites = {"cloze_train": cloze_probes(world, "train"), "cloze_heldout": cloze_probes(world, "heldout"),
                  "arithmetic": arithmetic_probes(cfg.seed + 1, ec.arithmetic_probes)}
        for name, probes in suites.items():
            if ec.cloze_limit and name.startswith("cloze"):
                probes = probes[: ec.cloze_limit]
            acc, records = probe_accuracy(model, tok, probes, max_new_tokens=ec.max_new_tokens)
            metrics[f"{name}_acc"] = round(acc, 4)
            samples[name] = records
    write_json(ctx.stage_dir("eval_base") / "eval.json", {"metrics": metrics, "samples": samples})
    return metrics


STAGE = Stage("eval_base", run, measures_only=True, requires=("pretrain",),
              description="evaluate the pretrained (base) model",
              inputs=("seed", "toyworld", "data", "tokenizer", "model", "train", "eval"))
