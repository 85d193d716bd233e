"""Evaluation probes: a prompt, the answer that must follow it, and how to score a completion.

Cloze probes cut each relation's canonical sentence just before its object ("The capital of
Velora is" -> "Kamdu"); the corpus contains every canonical sentence, so a pretrained model
that stored the fact should complete it. Arithmetic probes use the corpus line format
("37 + 48 =" -> "85") but only operand pairs the corpus never writes (`is_probe_pair`), so
they measure whether the model learned to add rather than which lines it memorised.

A probe's answer is what must follow the prompt after one space; `score_completion` accepts
it when followed by punctuation, a space or the end ("Kamdu." yes, "Kamdunia" no).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from lmforge.toyworld import templates as T
from lmforge.toyworld.corpus import OPS, draw_operands
from lmforge.toyworld.world import SPLITS, World

ARITHMETIC_RELATIONS = {"+": "add", "-": "sub", "*": "mul"}


@dataclass(frozen=True)
class Probe:
    prompt: str   # no trailing space: the answer follows after " "
    answer: str
    relation: str  # a world relation, or "add" / "sub" / "mul"
    subject: str   # the entity, or the expression ("37 + 48") for arithmetic
    split: str     # "train" | "heldout"; arithmetic probes are always "heldout" (never in the corpus)


def cloze_prompt(relation: str, subject: str) -> str:
    """The canonical sentence of `relation` for `subject`, cut just before " {o}"."""
    template = T.CANONICAL[relation]
    return template[: template.index(" {o}")].format(s=subject)


def cloze_probes(world: World, split: str | None = None) -> list[Probe]:
    """One probe per fact (in `world.facts` order), optionally only those of one split."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None or one of {SPLITS}, got {split!r}")
    out = []
    for f in world.facts:
        s = world.split[f.subject]
        if split is None or s == split:
            out.append(Probe(cloze_prompt(f.relation, f.subject), f.object, f.relation, f.subject, s))
    return out


def arithmetic_probes(seed: int = 0, n: int = 300) -> list[Probe]:
    """`n` probes, cycling through +, - and *, with operand pairs that never appear in the corpus."""
    rng = random.Random(f"arithmetic_probes:{seed}")
    out = []
    for i in range(n):
        op = "+-*"[i % 3]
        a, b = draw_operands(rng, op, probe=True)
        out.append(Probe(f"{a} {op} {b} =", str(OPS[op](a, b)), ARITHMETIC_RELATIONS[op], f"{a} {op} {b}",
                         "heldout"))
    return out


def score_completion(probe: Probe, completion: str) -> bool:
    """True if `completion` (leading whitespace ignored) starts with the whole answer.

    The answer must be followed by the end of the text or a character that is not a letter
    or digit, so "Kamdu." and "Kamdu is" are right, "Kamdunia" and "850" (for 85) are wrong.
    """
    text = completion.lstrip()
    if not probe.answer or not text.startswith(probe.answer):
        return False
    rest = text[len(probe.answer):]
    return not rest or not rest[0].isalnum()
