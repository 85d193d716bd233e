"""A transformer with a scalar head: reward models (and, later, value heads).

Parameter names follow Hugging Face's `LlamaForSequenceClassification` with one label
(`model.*` for the backbone, `score.weight` for the head), so export is a state-dict copy.
A sequence's reward is the head's output at its last real token: for a chat-formatted
answer that is the end-of-turn token, which has attended to the whole conversation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer

HEAD_KEY = "head"        # model_config.json field that marks a reward checkpoint
HEAD_REWARD = "reward"


class RewardModel(Transformer):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        del self.lm_head     # no token logits: one number per position instead
        # zero init: every answer starts with reward 0, so the first loss is exactly ln 2
        self.score = nn.Linear(cfg.d_model, 1, bias=False)
        nn.init.zeros_(self.score.weight)

    @classmethod
    def from_lm(cls, lm: Transformer) -> RewardModel:
        """A reward model whose backbone starts as a copy of a language model's."""
        rm = cls(lm.cfg)
        sd = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
        rm.load_state_dict(sd, strict=False)
        return rm

    def forward(self, idx: torch.Tensor, last: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) -> per-position scores (B, T), or (B,) at column `last` (B,) when given."""
        scores = self.score(self.hidden(idx)).squeeze(-1).float()            # (B, T)
        if last is None:
            return scores
        return scores.gather(1, last.view(-1, 1)).squeeze(1)                 # (B,)


def save_reward_model(model: RewardModel, out_dir: str | os.PathLike, tokenizer_dir=None) -> None:
    from lmforge.model.io import save_model

    save_model(model, out_dir, tokenizer_dir, extra={HEAD_KEY: HEAD_REWARD})


def is_reward_checkpoint(ckpt_dir: str | os.PathLike) -> bool:
    from lmforge.utils import read_json

    p = Path(ckpt_dir) / "model_config.json"
    try:
        config = read_json(p) if p.is_file() else None
    except (OSError, ValueError):  # unreadable: the loader that reads it next says how, in one line
        return False
    return isinstance(config, dict) and config.get(HEAD_KEY) == HEAD_REWARD


def load_reward_model(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> RewardModel:
    from safetensors.torch import load_file

    from lmforge.model.io import load_config

    if not is_reward_checkpoint(ckpt_dir):
        raise LmforgeError(f"{ckpt_dir}: not a reward model checkpoint (model_config.json has no "
                           f"\"{HEAD_KEY}\": \"{HEAD_REWARD}\"; train one with `lmforge rm`)")
    model = RewardModel(load_config(ckpt_dir))
    missing, unexpected = model.load_state_dict(load_file(str(Path(ckpt_dir) / "model.safetensors")), strict=False)
    if missing or unexpected:
        raise LmforgeError(f"{ckpt_dir}/model.safetensors: weights do not match a reward model "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)
