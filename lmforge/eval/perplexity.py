"""Validation loss and bits per byte over packed rows.

Bits per byte = total cross-entropy in bits / total UTF-8 bytes of the target tokens. It
does not depend on the tokenizer, so models with different vocabularies compare fairly.
"""

from __future__ import annotations

import math

import torch

from lmforge.data.packing import document_segments
from lmforge.losses import IGNORE_INDEX
from lmforge.train.distributed import DistInfo, all_reduce_sum


@torch.no_grad()
def evaluate_lm(model, dataset, token_bytes: torch.Tensor, *, max_rows: int, micro_batch: int,
                device: torch.device, bf16: bool, info: DistInfo | None = None,
                doc_mask_bos: int | None = None) -> dict:
    """Mean loss (nats/token) and bits per byte over the first `max_rows` rows (split across ranks).

    doc_mask_bos: the BOS id when documents packed in a row must not see each other (`data.doc_mask`).
    """
    info = info or DistInfo()
    was_training = model.training
    model.eval()
    rows = list(range(min(max_rows, len(dataset))))[info.rank::info.world_size]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, tokens, bytes
    token_bytes = token_bytes.to(device)
    for i in range(0, len(rows), micro_batch):
        inputs, targets = (t.to(device) for t in dataset.get_batch(rows[i:i + micro_batch]))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            if doc_mask_bos is None:
                logits = model(inputs)
            else:
                logits = model(inputs, segments=document_segments(inputs, doc_mask_bos))
        valid = targets != IGNORE_INDEX
        nll = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                                                ignore_index=IGNORE_INDEX, reduction="none")
        totals[0] += nll.sum().double()
        totals[1] += valid.sum()
        totals[2] += token_bytes[targets.clamp(min=0)][valid].sum()
    all_reduce_sum(totals, info)
    model.train(was_training)
    loss_sum, n_tok, n_bytes = totals.tolist()
    return {"val_loss": loss_sum / max(n_tok, 1), "val_bpb": loss_sum / math.log(2) / max(n_bytes, 1),
            "val_tokens": int(n_tok)}
