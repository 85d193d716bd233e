"""Who wrote the SFT demonstrations: a careful writer and a hasty one with a habit the judge dislikes.

Real instruction data is written by people of uneven care, and a fine-tuned model copies whatever
habits the majority of its demonstrations share. Preference learning exists to fix what
demonstrations cannot: a rater can tell the better of two answers even where writers did not
produce it. With every toyworld demonstration ideal (the reference reply the hidden judge scores
best), the SFT model already answers the way the judge wants whenever it knows the answer, and
DPO has nothing left to change: its greedy answers tie SFT's on ~88% of judged prompts.

`with_hasty_writer(examples, fraction, seed)` hands `fraction` of the demonstrations to the hasty
writer, who keeps the reference reply (a right answer, a refusal, an "I don't know") and then signs
off with a condescending remark ("Honestly, everyone knows that."). The reply stays right for every
task's scorer; the hidden judge takes a point for the rude phrase (`judge.RUDE`). All sign-offs
start with the same word, so once more than half the demonstrations carry one, greedy decoding of
the SFT model does too: the habit the reward model must learn to spot and DPO must unlearn.

Word problems keep their clean form: their replies end with the "#### n" line a verifier reads
(GRPO trains on them), and text after it is a different fault (the judge's "trailing junk"). They
are also the task `tool_use.with_calculator` rewrites from its steps, which would drop a sign-off.
"""

from __future__ import annotations

import random
from dataclasses import replace

from lmforge.toyworld.tasks import Example

SIGN_OFFS = (  # each holds exactly one of judge.RUDE's phrases
    "Honestly, everyone knows that.",
    "Honestly, even a child could answer that.",
    "Honestly, you could look it up yourself.",
    "Honestly, that was a silly question.",
    "Honestly, what a waste of my time.",
)
EXEMPT_TASKS = ("word_problem",)  # never given to the hasty writer (see the module docstring)


def hasty(example: Example, rng: random.Random) -> Example:
    """The same example with a sign-off appended to its assistant reply (messages[-1])."""
    reply = example.messages[-1]
    messages = [*example.messages[:-1], {**reply, "content": f"{reply['content']} {rng.choice(SIGN_OFFS)}"}]
    return replace(example, messages=messages, meta={**example.meta, "hasty": True})


def with_hasty_writer(examples: list[Example], fraction: float, seed: int) -> list[Example]:
    """`fraction` of the examples (except EXEMPT_TASKS), chosen by `seed`, rewritten by the hasty writer."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"hasty_fraction: expected a number in [0, 1], got {fraction}")
    rng = random.Random(f"hasty:{seed}")
    return [hasty(e, rng) if e.task not in EXEMPT_TASKS and rng.random() < fraction else e for e in examples]


__all__ = ["EXEMPT_TASKS", "SIGN_OFFS", "hasty", "with_hasty_writer"]
