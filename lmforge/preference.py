"""Preference data as training batches: pairs (or KTO's labeled completions) -> token rows,
reference log-probabilities computed once, and the train modules of the reward-model and
DPO-family stages.

Every item is two rows rendered with the chat template (prompt + one reply, loss mask on the
reply): for pairs, [chosen, rejected]; for KTO, [the completion, a *mismatched* completion
(another item's, a fixed seeded derangement) under the same prompt], whose log-ratio
estimates the KL reference point. A micro-batch of B items is (2B, T) rows: the B first rows
then the B second rows, so a loss sees (B,) tensors for each.

A plain `Transformer` (or `RewardModel`) reads an item's two rows as one packed row (`pack_pairs`):
their shared start (the prompt) once, then the first row's own tokens, then the second's, which
attend to the prompt and to themselves but not to the first's and continue its positions. For the
DPO family (`pair_logps`) the head and the log-softmax run only on reply tokens; for the reward
model (`pair_rewards`) the score head only at each row's last token. Same numbers as two separate
rows (to float rounding), for about 3/4 of the tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lmforge.losses import IGNORE_INDEX
from lmforge.model.shared_prefix import pack_rows, supports


@dataclass
class PreferenceRows:
    rows: list[tuple[np.ndarray, np.ndarray]]   # 2N (ids, mask): item i's rows are 2i and 2i + 1
    labels: np.ndarray                          # (N,) 1 desirable / 0 undesirable (KTO); 1 for pairs
    ref: np.ndarray | None = None               # (N, 2) reference log-probs (sums over reply tokens)
    dropped: int = 0                            # items longer than the context

    def __len__(self) -> int:
        return len(self.labels)


def _render(prompt: list[dict], reply: str, tok) -> tuple[np.ndarray, np.ndarray]:
    from lmforge.chat import render

    ids, mask = render([*prompt, {"role": "assistant", "content": reply}], tok)
    return np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.int64)


def tokenize_pairs(pairs, tok, max_len: int) -> PreferenceRows:
    """Pairs with .prompt (messages), .chosen and .rejected (str). Too-long pairs are dropped
    (cutting would lose the end-of-turn token a reward model scores at)."""
    rows, dropped = [], 0
    for p in pairs:
        c, r = _render(p.prompt, p.chosen, tok), _render(p.prompt, p.rejected, tok)
        if max(len(c[0]), len(r[0])) > max_len + 1:
            dropped += 1
            continue
        rows += [c, r]
    return PreferenceRows(rows, np.ones(len(rows) // 2, dtype=np.int64), dropped=dropped)


def tokenize_unpaired(examples, tok, max_len: int, seed: int) -> PreferenceRows:
    """KTO items with .prompt, .completion, .label; each gets a mismatched completion."""
    kept = []
    dropped = 0
    for e in examples:
        row = _render(e.prompt, e.completion, tok)
        if len(row[0]) > max_len + 1:
            dropped += 1
            continue
        kept.append((e, row))
    n = len(kept)
    if n < 2:
        raise ValueError("KTO needs at least 2 examples (the KL estimate pairs prompts with other completions)")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)  # a derangement: nobody is paired with their own completion
    rows = []
    for i, (e, row) in enumerate(kept):
        other = kept[partner[i]][0].completion
        mis = _render(e.prompt, other, tok)
        if len(mis[0]) > max_len + 1:  # keep the prompt, cut the borrowed completion (its KL term only)
            mis = (mis[0][: max_len + 1], mis[1][: max_len + 1])
        rows += [row, mis]
    labels = np.array([int(bool(e.label)) for e, _ in kept], dtype=np.int64)
    return PreferenceRows(rows, labels, dropped=dropped)


def collate_rows(rows: list[tuple[np.ndarray, np.ndarray]], pad_id: int):
    """(ids (R, T+1) whole right-padded sequences, targets (R, T) = next tokens with IGNORE_INDEX off
    the reply, last (R,) column of each sequence's final token, its end-of-turn).

    A language model reads ids[:, :-1] against targets; a reward model reads all of ids and is
    scored at `last`."""
    from lmforge.sft import collate

    inputs, targets = collate([r[0] for r in rows], [r[1] for r in rows], pad_id)
    last = torch.tensor([len(r[0]) - 1 for r in rows], dtype=torch.long)
    ids = torch.cat([inputs, torch.full((len(rows), 1), pad_id, dtype=inputs.dtype)], dim=1)
    ids[torch.arange(len(rows)), last] = torch.tensor([int(r[0][-1]) for r in rows], dtype=inputs.dtype)
    return ids, targets, last


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (R, T, V), targets (R, T) -> (sum of log p(target) over reply tokens (R,), token counts (R,))."""
    valid = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits.float(), dim=-1)
    tok_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)      # (R, T)
    return (tok_logp * valid).sum(-1), valid.sum(-1)


def pack_pairs(model, ids: torch.Tensor, used: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of B items' two rows (rows b and B + b), each item run as one packed row
    (`lmforge.model.shared_prefix`): their shared start once, then row b's own tokens, then row b + B's.

    ids (2B, T) tokens, used (2B,) how many leading tokens of each row matter. Returns (h, where (2B, T)):
    row r's token i sits at h[where[r, i]] (i < used[r]), as a separate causal forward of row r gives it.
    """
    B = ids.shape[0] // 2
    return pack_rows(model, ids, used, [[b, B + b] for b in range(B)])


def pair_logps(model, ids: torch.Tensor, targets: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Like `sequence_logps(model(ids[:, :-1]), targets)` for a batch of B items (rows b and B + b):
    (summed reply log-probs (2B,), reply token counts (2B,)), with each item as one packed row
    (`pack_pairs` over the inputs, ids[:, :-1]) and the head run on reply tokens only.

    ids (2B, T+1), targets (2B, T), last (2B,) as `collate_rows` makes them.
    """
    if not supports(model):
        return sequence_logps(model(ids[:, :-1]), targets)
    h, where = pack_pairs(model, ids[:, :-1], last)          # inputs: a row of last + 1 tokens has `last`
    keep = targets != IGNORE_INDEX
    logits = model.lm_head(h[where[keep]]).float()                                # (K, V): reply tokens only
    lp = torch.log_softmax(logits, -1).gather(-1, targets[keep][:, None]).squeeze(-1)
    sums = lp.new_zeros(targets.shape[0]).index_add_(0, keep.nonzero()[:, 0], lp)
    return sums, keep.sum(-1)


def pair_rewards(model, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """`model(ids, last)` of a RewardModel for B items (rows b and B + b) -> (2B,) scores at column
    `last`, each item run as one packed row (`pack_pairs`): the prompt once, not twice."""
    if not supports(model):
        return model(ids, last)
    h, where = pack_pairs(model, ids, last + 1)
    return model.score(h[where.gather(1, last[:, None]).squeeze(1)]).squeeze(-1).float()


@torch.no_grad()
def reference_logps(model, data: PreferenceRows, pad_id: int, batch_size: int, device, bf16: bool) -> np.ndarray:
    """Log-probs of every row under the (frozen) reference, once before training: (N, 2).

    batch_size rows (batch_size / 2 items) per forward, through `pair_logps` like training, so that a
    policy equal to the reference gets exactly its log-probs (bf16 included)."""
    from tqdm.auto import tqdm

    model.eval()
    out = np.zeros((len(data), 2), dtype=np.float64)
    rows = data.rows
    order = sorted(range(len(data)), key=lambda i: -(len(rows[2 * i][0]) + len(rows[2 * i + 1][0])))
    per = max(1, batch_size // 2)
    for s in tqdm(range(0, len(order), per), desc="reference log-probs", leave=False, mininterval=1.0):
        chunk = order[s:s + per]
        ids, targets, last = collate_rows([rows[2 * i] for i in chunk] + [rows[2 * i + 1] for i in chunk], pad_id)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            sums, _ = pair_logps(model, ids.to(device), targets.to(device), last.to(device))
        out[chunk] = sums.double().cpu().numpy().reshape(2, -1).T
    return out


class PreferenceBatches:
    """Seeded, resumable micro-batches of items:
    (ids (2B, T+1), targets (2B, T), last (2B,), ref (2B,), labels (B,))."""

    def __init__(self, data: PreferenceRows, pad_id: int, micro_batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(data) == 0:
            raise ValueError("no preference items to train on")
        self.data, self.pad_id, self.micro, self.accum = data, pad_id, micro_batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world_size
        self._epoch, self._perm = -1, None

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def _item(self, position: int) -> int:
        n = len(self.data)
        epoch = position // n
        if epoch != self._epoch:
            self._perm, self._epoch = np.random.default_rng([self.seed, epoch]).permutation(n), epoch
        return int(self._perm[position % n])

    def get(self, items: list[int]):
        rows = [self.data.rows[2 * i] for i in items] + [self.data.rows[2 * i + 1] for i in items]
        ids, targets, last = collate_rows(rows, self.pad_id)
        ref = self.data.ref if self.data.ref is not None else np.zeros((len(self.data), 2))
        ref_t = torch.from_numpy(np.concatenate([ref[items, 0], ref[items, 1]])).float()
        return ids, targets, last, ref_t, torch.from_numpy(self.data.labels[items])

    def batches(self, step: int) -> list:
        base = step * self.rows_per_step
        out = []
        for k in range(self.accum):
            first = base + (k * self.world + self.rank) * self.micro
            out.append(self.get([self._item(first + j) for j in range(self.micro)]))
        return out


def _sum_stats(stats: dict) -> dict:
    """Per-example diagnostics (B,) -> their sums over the micro-batch (the trainer divides by the count)."""
    return {k: v.detach().float().sum() for k, v in stats.items() if torch.is_tensor(v) and v.dim() == 1}


class RewardModule:
    """Bradley-Terry training of a RewardModel on pairs: loss -log sigma(r_chosen - r_rejected - margin)."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin

    def count(self, batch) -> int:
        return int(batch[4].numel())

    def loss(self, model, batch):
        from lmforge.losses import bradley_terry_loss

        ids, _, last, _, _ = batch
        B = ids.shape[0] // 2
        rewards = pair_rewards(model, ids, last)                                     # (2B,)
        margin = torch.full((B,), self.margin, device=rewards.device) if self.margin else None
        losses, stats = bradley_terry_loss(rewards[:B], rewards[B:], margin=margin)
        return losses.sum(), _sum_stats(stats)


class PreferenceModule:
    """One DPO-family loss (see lmforge.losses.preference) on policy log-probs of the batch's rows."""

    def __init__(self, loss: str, **params):
        from lmforge.losses.preference import PREFERENCE_LOSSES

        if loss not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown preference loss {loss!r} (known: {', '.join(PREFERENCE_LOSSES)})")
        self.name, self.spec, self.params = loss, PREFERENCE_LOSSES[loss], params

    def count(self, batch) -> int:
        return int(batch[4].numel())

    def loss(self, model, batch):
        ids, targets, last, ref, labels = batch
        B = labels.numel()
        sums, counts = pair_logps(model, ids, targets, last)                          # (2B,) each
        losses, stats = self.spec.compute(sums[:B], sums[B:], ref[:B], ref[B:], counts[:B], counts[B:],
                                          labels, **self.params)
        return losses.sum(), _sum_stats(stats)
