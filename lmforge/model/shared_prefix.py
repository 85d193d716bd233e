"""Rows that start alike, run in packs: the shared start once, then each row's own tokens.

Preference pairs share their prompt (chosen and rejected), and so do the G samples of a GRPO group.
A separate forward per row runs that prompt once per row; a pack runs it once:

    rows  [p p p p a a]        pass 1 (shared, plain causal)   [p p p p]          pos 0 1 2 3
          [p p p p b b b]      pass 2 (own parts)              [a a] [b b b] [c]  pos 4 5 | 4 5 6 | 4
          [p p p p c]

In the second pass each own part continues the shared part's positions and attends to its pack's
shared keys and values (kept from the first pass, with their gradient) and causally to itself, never
to another row's own part, so every token computes what the row's own causal forward computes there
(to float rounding: sums run in another order). Tokens go from sum(len(row)) to len(shared) +
sum(len(own)), and no attention is spent between two rows' own parts. Measured (bf16, d_model 256 x 4
layers, forward + backward of 128 GRPO rows of an ~80-token prompt + ~24-token replies): 2.7x faster
than separate rows. Pairs run in one pass instead, each as one masked row (`pack_rows` says why).
"""

from __future__ import annotations

import numpy as np
import torch


def supports(model) -> bool:
    """Whether `model`'s layers can run packed: a plain `Transformer` or `RewardModel` (not wrapped by
    DDP or torch.compile, whose own forward must run) whose positions can be given token by token."""
    from lmforge.model.reward import RewardModel
    from lmforge.model.transformer import Transformer

    plain = type(model) is RewardModel or (isinstance(model, Transformer)
                                           and type(model).forward is Transformer.forward)
    return plain and model.cfg.position != "alibi" and model.cfg.sliding_window == 0


class _SharedKV:
    """The KV "cache" `Attention` reads in the second pass: each layer's keys and values of the shared
    parts (first pass), one copy per own row, then the own rows' keys and values."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.rows: torch.Tensor | None = None   # second pass: (Rb,) the pack of each own row of the bucket

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        if self.rows is None:                   # first pass: keep them, attend as usual
            self.k[layer], self.v[layer] = k, v
            return k, v
        # index_select: its backward is an index_add, cheaper than advanced indexing's index_put
        return (torch.cat([self.k[layer].index_select(0, self.rows), k], 2),  # (Rb, Hkv, S + Wb, D)
                torch.cat([self.v[layer].index_select(0, self.rows), v], 2))


def _run(model, ids: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor | None, kv: _SharedKV) -> torch.Tensor:
    """The blocks over ids (B, T) at positions pos (T,) | (B, T) -> final hidden states (B, T, C)."""
    from lmforge.model.layers import rope_cos_sin

    cfg, m = model.cfg, model.model
    B, T = ids.shape
    x = m.embed_tokens(ids)
    if cfg.position == "learned":
        x = x + m.embed_positions(pos)
    rope = None
    if cfg.position == "rope":
        cos, sin = rope_cos_sin(pos.reshape(-1), cfg.head_dim, cfg.rope_theta)
        rope = (cos, sin) if pos.dim() == 1 else (cos.view(B, 1, T, -1), sin.view(B, 1, T, -1))
    for block in m.layers:
        x = block(x, rope, bias, kv, 0)
    return m.norm(x)


def pack_layout(ids: np.ndarray, used: np.ndarray, packs: list[list[int]]):
    """Where every token goes. ids (R, T), used (R,) leading tokens of each row that matter, packs:
    lists of row indices (each row in exactly one).

    Returns (shared (P,) lengths, shared_src (P, S) flat indices into ids, own_src (Ro, W), own_pack
    (Ro,), own_len (Ro,), where (R, T)): own row j holds row r's tokens shared..used[r] of pack
    own_pack[j]; where[r, i] indexes the concatenation [first pass (P * S), second pass (Ro * W)]
    for i < used[r] (0 beyond).
    """
    R, T = ids.shape
    shared = []
    for rows in packs:
        n = int(used[rows].min())
        same = (ids[rows, :n] == ids[rows[0], :n]).all(0)                     # (n,) columns all rows agree on
        shared.append(n if same.all() else int(np.argmin(same)))
    own = [(p, r) for p, rows in enumerate(packs) for r in rows if used[r] > shared[p]]
    S = max(shared)
    W = max((int(used[r]) - shared[p] for p, r in own), default=0)
    shared_src = np.zeros((len(packs), S), dtype=np.int64)
    own_src = np.zeros((len(own), W), dtype=np.int64)
    where = np.zeros((R, T), dtype=np.int64)
    for p, (rows, s) in enumerate(zip(packs, shared, strict=True)):
        shared_src[p, :s] = rows[0] * T + np.arange(s)
        for r in rows:
            where[r, :s] = p * S + np.arange(s)
    own_len = np.zeros(len(own), dtype=np.int64)
    for j, (p, r) in enumerate(own):
        s, n = shared[p], int(used[r]) - shared[p]
        own_src[j, :n] = r * T + np.arange(s, used[r])
        own_len[j] = n
        where[r, s:used[r]] = len(packs) * S + j * W + np.arange(n)
    return (np.array(shared), shared_src, own_src, np.array([p for p, _ in own], dtype=np.int64), own_len, where)


def _one_row_per_pack(model, flat: torch.Tensor, layout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pack as one row [shared | own part 1 | own part 2 | ...] with a mask that keeps own parts
    apart: one pass, attention over the whole row. Returns (h (P * N, C), where (R, T))."""
    shared, shared_src, own_src, own_pack, own_len, where = layout
    dev = flat.device
    P, S = shared_src.shape
    W = own_src.shape[1]
    N = int((shared + np.bincount(own_pack, weights=own_len, minlength=P)).max())
    src, pos = np.zeros((P, N), dtype=np.int64), np.zeros((P, N), dtype=np.int64)
    branch = np.full((P, N), -1, dtype=np.int64)                  # 0 shared, j + 1 own row j, -1 padding
    to_row = np.zeros(P * S + len(own_src) * W, dtype=np.int64)   # two-pass index (`where`) -> this layout's
    for p, n in enumerate(shared):
        src[p, :n], pos[p, :n], branch[p, :n] = shared_src[p, :n], np.arange(n), 0
        to_row[p * S:p * S + n] = p * N + np.arange(n)
    end = shared.copy()
    for j, (p, n) in enumerate(zip(own_pack, own_len, strict=True)):
        o = end[p]
        src[p, o:o + n], pos[p, o:o + n], branch[p, o:o + n] = own_src[j, :n], shared[p] + np.arange(n), j + 1
        to_row[P * S + j * W:P * S + j * W + n] = p * N + o + np.arange(n)
        end[p] += n
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    br = t(branch)
    causal = torch.ones(N, N, dtype=torch.bool, device=dev).tril()
    allowed = causal[None] & ((br[:, None, :] == 0) | (br[:, None, :] == br[:, :, None]))          # (P, N, N)
    bias = torch.zeros(allowed.shape, device=dev).masked_fill(~allowed, float("-inf"))[:, None]
    h = _run(model, flat[t(src)], t(np.minimum(pos, model.cfg.max_seq_len - 1)), bias, None)        # (P, N, C)
    return h.reshape(P * N, -1), t(to_row[where])


def pack_rows(model, ids: torch.Tensor, used: torch.Tensor, packs: list[list[int]]) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """Final hidden states of rows run in packs (see the module docstring), in two passes: the shared
    parts (P, S) with plain causal attention, then every row's own part, whose queries attend to its
    pack's shared keys and values (kept from the first pass: gradients flow back through them) and
    causally to its own. No attention is spent between two rows' own parts. The own parts run in
    buckets of similar length (`length_buckets`), each padded to its own longest part: GRPO replies
    vary from a few tokens to the limit, and one bucket padded to the longest spent two thirds of the
    second pass on padding (demo model, 128 rows of 8 x 16: forward + backward 0.61-0.68 s -> 0.30 s).

    Packs of at most two rows (preference pairs) run in one pass instead, each pack one masked row
    (`_one_row_per_pack`): with two short replies the wasted attention costs less than a second
    pass's ops. Measured on the demo's DPO stage (bf16, 2 cores): 25.8-28.8 s one row per pack, 40.5 s
    two passes; on GRPO groups of 8 the other way round (bench/grpo_step.py shapes: 414 ms two passes,
    761 ms one row, 570 ms separate rows, forward + backward).

    ids (R, T) tokens, used (R,) how many leading tokens of each row matter, packs: row indices run
    together (their common start, however long, is run once). Returns (h (N, C), where
    (R, T)): row r's token i sits at h[where[r, i]] for i < used[r], as a separate causal forward of
    row r gives it (h: the first pass's P * S rows, then each bucket's rows x its width).
    """
    dev = ids.device
    layout = pack_layout(ids.cpu().numpy(), used.cpu().numpy(), packs)
    flat = ids.reshape(-1)
    if max(len(p) for p in packs) <= 2:
        return _one_row_per_pack(model, flat, layout)
    shared, shared_src, own_src, own_pack, own_len, where = layout
    t = lambda a: torch.from_numpy(a).to(dev)  # noqa: E731
    P, S = shared_src.shape
    if S == 0:  # prompt_packs never makes such packs: a pack's rows share at least their first target's prefix
        raise ValueError("pack_rows: no pack's rows share a leading token; run them as separate rows")
    kv = _SharedKV()
    h = _run(model, flat[t(shared_src)], torch.arange(S, device=dev), None, kv)          # (P, S, C)
    outs = [h.reshape(P * S, -1)]
    if own_src.size:
        W = own_src.shape[1]
        # own parts of similar length run together, each bucket padded to its own longest part only
        remap, base = np.zeros(own_src.size, dtype=np.int64), P * S      # two-pass index -> bucketed index
        for rows in length_buckets(own_len, PASS_COST):
            Rb, Wb = len(rows), int(own_len[rows].max())
            s = t(shared[own_pack[rows]])                                                 # (Rb,) shared lengths
            cols = torch.arange(max(S, Wb), device=dev)
            pos = (s[:, None] + cols[None, :Wb]).clamp(max=model.cfg.max_seq_len - 1)    # (Rb, Wb)
            see_shared = (cols[None, None, :S] < s[:, None, None]).expand(Rb, Wb, S)     # (Rb, Wb, S)
            see_own = torch.ones(Wb, Wb, dtype=torch.bool, device=dev).tril()[None].expand(Rb, Wb, Wb)
            allowed = torch.cat([see_shared, see_own], 2)                                 # (Rb, Wb, S + Wb)
            bias = torch.zeros(allowed.shape, device=dev).masked_fill(~allowed, float("-inf"))[:, None]
            kv.rows = t(own_pack[rows])
            outs.append(_run(model, flat[t(own_src[rows, :Wb])], pos, bias, kv).reshape(Rb * Wb, -1))
            old = (rows[:, None] * W + np.arange(Wb)).reshape(-1)
            remap[old] = base + np.arange(Rb * Wb)
            base += Rb * Wb
        own = where >= P * S
        where = where.copy()
        where[own] = remap[where[own] - P * S]
    return torch.cat(outs), t(where)


# What one more pass through the layers costs, in padded tokens (see length_buckets)
PASS_COST = 256


def length_buckets(lengths: np.ndarray, pass_cost: int = PASS_COST) -> list[np.ndarray]:
    """Rows (indices) grouped by length so that padding each group to its longest row wastes little:
    minimizes sum(rows x longest) over groups + pass_cost per group (the fixed cost of one more pass
    through the layers, in tokens: ~10 ms of op overhead on a CPU, where a token of a small model costs
    ~40 us forward and backward). Optimal (dynamic programming over the sorted lengths: some optimal
    grouping is always contiguous in them); O(n^2), ~1 ms for 128 rows, ~25 ms for 512.

    >>> [b.tolist() for b in length_buckets(np.array([60, 5, 6, 58, 7, 5, 59, 6]), pass_cost=20)]
    [[1, 5, 2, 7, 4], [3, 6, 0]]
    >>> [b.tolist() for b in length_buckets(np.array([60, 5, 6, 58]), pass_cost=500)]
    [[1, 2, 3, 0]]
    """
    order = np.argsort(lengths, kind="stable")
    sl = lengths[order].tolist()
    n = len(sl)
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)   # best[j]: cost of the first j sorted rows
    for j in range(1, n + 1):
        for i in range(j):                                    # last group: sorted rows i .. j - 1
            c = best[i] + (j - i) * sl[j - 1] + pass_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]
