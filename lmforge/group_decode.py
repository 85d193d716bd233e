"""Decoding n samples of each prompt with the prompt's keys and values stored once.

`Engine.generate(prompts, params, n)` prefills every prompt once; copying its cache rows n times
(nanochat's way) makes every decode step read the prompt's keys and values n times, and at RL
sizes (16 prompts x 8 samples, prompts of ~90 tokens, replies of ~30) that read is most of the
step: attention over the cache took ~40% of a GRPO rollout. `GroupCache` keeps the prompts' part
once, (P, Hkv, L, D) per layer, and each row's own columns, (R, Hkv, budget, D). A decode step's
n queries of one prompt then meet that prompt's keys as one small matmul, (n, D) @ (D, L), and
each row's own keys as before; both halves of the scores share one softmax, so the result is
attention over [prompt | own columns], as with copied rows (to float rounding).

Rows leave the batch as they finish (`keep_rows`), so the rows still decoding need not fill the
(P x n) grid: `slots` says which grid cell each row is, and a prompt with no row left is dropped.
"""

from __future__ import annotations

import torch

from lmforge.model.transformer import KVCache


class GroupCache:
    """The KV cache of n samples per prompt: the prefilled prompts (left padded by `pad` columns)
    once, then each row's own columns; row r is cell slots[r] of the (prompts x n) grid."""

    def __init__(self, prefix: KVCache, pad: torch.Tensor | None, n: int, budget: int):
        self.prefix_k, self.prefix_v = prefix.k, prefix.v
        P, Hkv, L, D = prefix.k[0].shape
        self.P, self.n, self.L = P, n, L
        cols = torch.arange(L, device=prefix.k[0].device)
        hide = (cols[None, :] < pad[:, None]) if pad is not None else cols[None, :] < 0              # (P, L)
        self.prefix_bias = torch.zeros(P, 1, 1, L, dtype=prefix.k[0].dtype, device=cols.device).masked_fill(
            hide[:, None, None], float("-inf"))
        shape = (P * n, Hkv, budget, D)
        self.k = [prefix.k[0].new_zeros(shape) for _ in prefix.k]
        self.v = [prefix.k[0].new_zeros(shape) for _ in prefix.v]
        self.slots: torch.Tensor | None = None  # None: every cell, in order

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (ascending indices); prompts none of them sample from are dropped."""
        slots = keep if self.slots is None else self.slots[keep]
        self.k, self.v = [t[keep] for t in self.k], [t[keep] for t in self.v]
        groups = torch.div(slots, self.n, rounding_mode="floor")
        alive = torch.unique(groups)                                             # ascending
        if len(alive) < self.P:
            self.prefix_k = [t[alive] for t in self.prefix_k]
            self.prefix_v = [t[alive] for t in self.prefix_v]
            self.prefix_bias = self.prefix_bias[alive]
            remap = torch.full((self.P,), -1, dtype=torch.long, device=slots.device)
            remap[alive] = torch.arange(len(alive), device=slots.device)
            slots = remap[groups] * self.n + slots % self.n
            self.P = len(alive)
        self.slots = None if len(slots) == self.P * self.n else slots

    def attend(self, li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, col: int) -> torch.Tensor:
        """Layer li's attention for one new token per row at cache column `col` (>= L, the same for all):
        q (R, H, 1, D), k/v (R, Hkv, 1, D), written into the rows' own columns -> (R, H, 1, D)."""
        assert q.shape[2] == 1, "GroupCache.attend takes one new token per row"
        c = col - self.L
        self.k[li][:, :, c] = k[:, :, 0]
        self.v[li][:, :, c] = v[:, :, 0]
        ko, vo = self.k[li][:, :, :c + 1], self.v[li][:, :, :c + 1]               # (R, Hkv, c+1, D)
        kp, vp = self.prefix_k[li], self.prefix_v[li]                            # (P, Hkv, L, D)
        R, H, _, D = q.shape
        Hkv = kp.shape[1]
        r = H // Hkv  # grouped-query: kv head h serves query heads h*r .. h*r+r-1 (r = 1 without GQA)
        P, n, L, grid = self.P, self.n, self.L, self.P * self.n
        dt = q.dtype
        # scores and softmax in fp32 (as SDPA's kernels accumulate) whatever the cache's dtype
        qs = (q[:, :, 0] * D ** -0.5).float()                                    # (R, H, D)
        qf = qs if self.slots is None else qs.new_zeros(grid, H, D).index_copy_(0, self.slots, qs)
        # a prompt's n x r queries per kv head meet its keys as one matmul: (P, Hkv, n*r, D) @ (P, Hkv, D, L)
        sp = _by_prompt(qf, P, Hkv) @ kp.float().transpose(-1, -2) + self.prefix_bias  # (P, Hkv, n*r, L)
        sp = _by_row(sp, n, H)                                                   # (grid, H, L)
        if self.slots is not None:
            sp = sp.index_select(0, self.slots)                                  # (R, H, L)
        so = (qs.view(R, Hkv, r, D) @ ko.float().transpose(-1, -2)).view(R, H, c + 1)  # (R, H, c+1)
        p = torch.cat([sp, so], -1).softmax(-1)                                  # one softmax over both
        pp = p[..., :L]
        if self.slots is not None:
            pp = pp.new_zeros(grid, H, L).index_copy_(0, self.slots, pp)
        yp = _by_row(_by_prompt(pp, P, Hkv) @ vp.float(), n, H)                  # (grid, H, D)
        if self.slots is not None:
            yp = yp.index_select(0, self.slots)                                  # (R, H, D)
        yo = (p[..., L:].reshape(R, Hkv, r, c + 1) @ vo.float()).view(R, H, D)  # (R, H, D)
        return (yp + yo)[:, :, None].to(dt)                                      # (R, H, 1, D)


def _by_prompt(t: torch.Tensor, P: int, Hkv: int) -> torch.Tensor:
    """(P * n, Hkv * r, X), rows grouped by prompt and heads by kv head -> (P, Hkv, n * r, X)."""
    X = t.shape[-1]
    return t.view(P, -1, Hkv, t.shape[1] // Hkv, X).transpose(1, 2).reshape(P, Hkv, -1, X)


def _by_row(t: torch.Tensor, n: int, H: int) -> torch.Tensor:
    """The inverse of `_by_prompt`: (P, Hkv, n * r, X) -> (P * n, H, X)."""
    P, Hkv, _, X = t.shape
    return t.view(P, Hkv, n, H // Hkv, X).transpose(1, 2).reshape(P * n, H, X)
