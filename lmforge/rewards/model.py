"""A trained reward model as a reward source."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from lmforge.rewards.base import RewardRequest


class RewardModelSource:
    """Scores each request with a `RewardModel` at the reply's end-of-turn token.

    The request is rendered with the chat template exactly as the reward model saw its training
    pairs; conversations longer than the model's context keep their last `max_seq_len` tokens.
    """

    name = "rm"

    def __init__(self, model, tok, *, batch_size: int = 32, device: str | torch.device = "cpu"):
        self.model, self.tok, self.batch_size, self.device = model.eval(), tok, batch_size, torch.device(device)

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, **kw) -> RewardModelSource:
        from lmforge.model.reward import load_reward_model
        from lmforge.tokenizer import Tokenizer

        return cls(load_reward_model(ckpt_dir, kw.get("device", "cpu")), Tokenizer.load(ckpt_dir), **kw)

    def encode(self, req: RewardRequest) -> list[int]:
        from lmforge.chat import render, render_prompt
        from lmforge.tokenizer import END_OF_TURN

        if req.completion.strip():
            ids, _ = render([*req.messages, {"role": "assistant", "content": req.completion}], self.tok)
        else:  # the model stopped at once: an empty turn (which chat validation would refuse as a message)
            ids = render_prompt(req.messages, self.tok) + [self.tok.special[END_OF_TURN]]
        return ids[-self.model.cfg.max_seq_len:]

    @torch.no_grad()
    def score(self, requests: Sequence[RewardRequest]) -> list[float]:
        return score_sequences(self.model, [self.encode(r) for r in requests], self.tok.pad_id,
                               self.batch_size, self.device)


@torch.no_grad()
def score_sequences(model, seqs: list[list[int]], pad_id: int, batch_size: int = 32, device="cpu") -> list[float]:
    """Reward at the last token of each id sequence (right-padded batches, longest first)."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        T = max(len(seqs[i]) for i in chunk)
        idx = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for r, i in enumerate(chunk):
            idx[r, :len(seqs[i])] = torch.tensor(seqs[i])
        last = torch.tensor([len(seqs[i]) - 1 for i in chunk])
        got = model(idx.to(device), last.to(device)).float().cpu().tolist()
        for r, i in enumerate(chunk):
            out[i] = got[r]
    return out
