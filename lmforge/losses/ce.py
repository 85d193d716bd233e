"""Next-token cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy and the number of target tokens.

    logits: (B, T, V); targets: (B, T) with IGNORE_INDEX (-100) where no loss applies.
    Returns (sum of -log p(target) over valid positions, count of valid positions).
    The sum, not the mean, is returned so the trainer can divide by the token count of
    the whole global batch: then gradient accumulation and the number of processes do
    not change the gradient.

    Worked example (see tests): V=2, logits [0, 0] and [ln 3, 0], targets [0, 1]:
    -log(1/2) - log(1/4) = ln 2 + ln 4 = 2.0794, count 2.
    """
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, (targets != IGNORE_INDEX).sum()
