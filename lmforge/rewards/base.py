"""The reward-source interface.

A request is a conversation so far (`messages`, ending with the user turn), one candidate
assistant reply (`completion`, plain text) and optional `meta` a source may use (e.g. the
true answer of a math problem, or a toyworld task's facts). A source returns one float per
request; higher is better. Sources may also return per-request details for logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class RewardRequest:
    messages: list[dict]              # the prompt: system/user/assistant turns before the reply
    completion: str                   # the reply being scored
    meta: dict = field(default_factory=dict)


@runtime_checkable
class RewardSource(Protocol):
    name: str

    def score(self, requests: Sequence[RewardRequest]) -> list[float]: ...


class WeightedSum:
    """sum_i w_i * source_i(request): several reward sources as one."""

    def __init__(self, parts: Sequence[tuple[RewardSource, float]]):
        if not parts:
            raise ValueError("WeightedSum needs at least one (source, weight)")
        self.parts = list(parts)
        self.name = "+".join(f"{w:g}*{s.name}" for s, w in self.parts)
        self.last_parts: dict[str, list[float]] = {}

    def score(self, requests: Sequence[RewardRequest]) -> list[float]:
        total = [0.0] * len(requests)
        self.last_parts = {}
        for source, w in self.parts:
            got = source.score(requests)
            self.last_parts[source.name] = got
            total = [t + w * g for t, g in zip(total, got, strict=True)]
        return total
