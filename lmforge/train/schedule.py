"""Learning-rate schedules: linear warmup, then cosine decay or warmup-stable-decay (WSD)."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, total: int, warmup: int, schedule: str = "cosine",
          min_ratio: float = 0.1, decay_fraction: float = 0.2) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`.

    cosine: warmup linearly to `peak`, then a half cosine down to `min_ratio * peak` at the end.
    wsd:    warmup, hold `peak`, then decay linearly to `min_ratio * peak` over the last
            `decay_fraction` of training (lets a run be extended from any stable checkpoint).
    constant: warmup, then `peak`.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    floor = peak * min_ratio
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        span = max(total - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "wsd":
        decay_steps = max(int(total * decay_fraction), 1)
        decay_start = total - decay_steps
        if step < decay_start:
            return peak
        progress = min((step - decay_start + 1) / decay_steps, 1.0)
        return peak + (floor - peak) * progress
    raise ValueError(f"unknown schedule {schedule!r}")
