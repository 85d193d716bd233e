"""Probe accuracy: greedy completion of short prompts, scored by the probe's own rule."""

from __future__ import annotations

import torch

from lmforge.engine import generate


@torch.no_grad()
def probe_accuracy(model, tok, probes, *, max_new_tokens: int = 8, score=None) -> tuple[float, list[dict]]:
    """Fraction of probes whose greedy completion `score(probe, text)` accepts, plus per-probe records."""
    from lmforge.toyworld import score_completion

    score = score or score_completion
    if not probes:
        return 0.0, []
    prompts = [[tok.bos_id] + tok.encode(p.prompt) for p in probes]
    outs = generate(model, prompts, max_new_tokens, temperature=0.0, stop_ids=(tok.eos_id,))
    records = []
    for p, ids in zip(probes, outs, strict=True):
        text = tok.decode(ids, skip_special=True)
        records.append({"prompt": p.prompt, "answer": p.answer, "completion": text,
                        "correct": bool(score(p, text)), "split": getattr(p, "split", "")})
    acc = sum(r["correct"] for r in records) / len(records)
    return acc, records
