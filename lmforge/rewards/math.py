"""Verifiable math reward: 1 when the completion's final number equals the known answer, else 0.

    source = VerifiableMath(extract="flexible", format_bonus=0.1)
    source.score([RewardRequest(messages, "3 + 4 = 7.\\n#### 7", {"answer": "7"})])  # [1.1]

The gold answer is `meta["answer"]`: a number or a string such as "72", "1,600", "$18" or "-3.5"
(toyworld's word_problem and arithmetic examples carry it as `Example.answer`). The prediction
is found with lmforge.eval.tasks.math's extractors, so RL rewards and evaluation read numbers alike:

- extract="strict": only the number after the first "####" counts (lm-eval's strict-match); a
  completion without "####" gets 0.
- extract="flexible" (default): the number after "####" when there is one, else the last number
  anywhere (toyworld's own scorer does the same). This differs from lm-eval's flexible-extract,
  which always takes the last number: a completion that states "#### 7" and then rambles on
  about "Question 2" is read as 7 here.

Numbers match when |prediction - answer| <= tolerance * max(1, |answer|) (1e-6: "51" = "51.0").

format_bonus (default 0, try 0.1) is added when a line starts with "#### <number>", right or
wrong: a small push towards the answer format the strict extractor and toyworld's judge expect.
It is kept small so that a well-formed wrong answer (bonus only) stays far below a right one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.math import extract_flexible, extract_strict, parse_number
from lmforge.rewards.base import RewardRequest

FORMAT_LINE = re.compile(r"(?m)^[ \t]*####[ \t]*-?\$?(?:\d|\.\d)")


class VerifiableMath:
    """Reward 1 for the right final number (plus `format_bonus` for a "#### n" line), else 0."""

    name = "math"

    def __init__(self, *, extract: str = "flexible", tolerance: float = 1e-6, format_bonus: float = 0.0,
                 correct_reward: float = 1.0):
        if extract not in ("strict", "flexible"):
            raise LmforgeError(f"VerifiableMath: extract must be 'strict' or 'flexible', got {extract!r}")
        if tolerance < 0:
            raise LmforgeError(f"VerifiableMath: tolerance must be >= 0, got {tolerance}")
        self.extract, self.tolerance = extract, tolerance
        self.format_bonus, self.correct_reward = format_bonus, correct_reward
        self.last_correct: list[bool] = []   # per request of the last `score` call, for logging

    def prediction(self, completion: str) -> str | None:
        """The completion's final number as written ("1,600"), or None."""
        strict = extract_strict(completion)
        if self.extract == "strict" or strict is not None:
            return strict
        return extract_flexible(completion)

    def is_correct(self, completion: str, answer: float) -> bool:
        value = parse_number(self.prediction(completion))
        return value is not None and abs(value - answer) <= self.tolerance * max(1.0, abs(answer))

    def score(self, requests: Sequence[RewardRequest]) -> list[float]:
        out, self.last_correct = [], []
        for i, req in enumerate(requests):
            ok = self.is_correct(req.completion, gold_answer(req, i))
            self.last_correct.append(ok)
            bonus = self.format_bonus if self.format_bonus and FORMAT_LINE.search(req.completion) else 0.0
            out.append((self.correct_reward if ok else 0.0) + bonus)
        return out


def gold_answer(req: RewardRequest, index: int = 0) -> float:
    """meta["answer"] as a float, or a one-line LmforgeError naming the request."""
    if "answer" not in req.meta:
        raise LmforgeError(f"VerifiableMath: request {index} has no meta['answer'] (the gold number); "
                           f"meta keys: {sorted(req.meta) or 'none'}")
    raw = req.meta["answer"]
    value = None if isinstance(raw, bool) else float(raw) if isinstance(raw, (int, float)) else \
        parse_number(raw) if isinstance(raw, str) else None
    if value is None:
        raise LmforgeError(f"VerifiableMath: request {index}: meta['answer'] must be a number, got {raw!r}")
    return value
