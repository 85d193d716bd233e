"""Generation: token ids in, token ids out, with a KV cache.

Prompts of equal length are batched together: one prefill over the whole prompt, then
one token per step through the cache. Sampling is seeded through a private
`torch.Generator`, so it never disturbs the global RNG of a training run.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from lmforge.model.transformer import KVCache, Transformer


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits: (B, V) -> next ids (B,). temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop tokens once the mass before them already exceeds top_p (always keep the first)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_ids: tuple[int, ...] = (), seed: int = 0, batch_size: int = 64) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens (the stop token, if hit, is included)."""
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_len[len(p)].append(i)
    stop = torch.tensor(list(stop_ids) or [-1], device=device)
    for length, idxs in sorted(by_len.items()):
        for b0 in range(0, len(idxs), batch_size):
            group = idxs[b0:b0 + batch_size]
            budget = min(max_new_tokens, model.cfg.max_seq_len - length)
            x = torch.tensor([prompts[i] for i in group], device=device)                    # (B, T)
            cache = KVCache(model.cfg, len(group), length + max(budget, 0), device, dtype)
            logits = model(x, cache=cache, start=0)[:, -1]                                  # (B, V)
            new = torch.empty(len(group), 0, dtype=torch.long, device=device)
            done = torch.zeros(len(group), dtype=torch.bool, device=device)
            for t in range(budget):
                nxt = sample_next(logits, temperature, top_k, top_p, gen)
                new = torch.cat([new, nxt[:, None]], 1)
                done |= torch.isin(nxt, stop)
                if bool(done.all()) or t == budget - 1:
                    break
                logits = model(nxt[:, None], cache=cache, start=length + t)[:, -1]
            for row, i in enumerate(group):
                ids = new[row].tolist()
                for j, tok in enumerate(ids):
                    if tok in stop_ids:
                        ids = ids[: j + 1]
                        break
                out[i] = ids
    return out  # type: ignore[return-value]
