"""Scoring of toyworld task replies: each check(example, completion) -> bool says whether a reply
is right for its task (`tasks.TASKS` pairs every task with one). Checks read the reply's text
leniently (the answer anywhere as a whole word, the last number, the last option named), so that
they score what a reply knows rather than its wording.
"""

from __future__ import annotations

import re

from lmforge.toyworld import rules

NUMBER = re.compile(r"(?<![\w.])-?\d+")


def word(text: str) -> re.Pattern:
    """`text` as a whole word (not inside a longer word or number), any case."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(text)}(?![A-Za-z0-9])", re.IGNORECASE)


def contains(ex, text):
    return bool(word(ex.answer).search(text))


def yes_no(ex, text):
    m = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    return bool(m) and m.group(1).lower() == ex.answer


def last_option(ex, text):
    """The option mentioned last is the answer ("A was founded in 1203 and B in 1450, so A is older")."""
    last = {o: max((m.start() for m in word(o).finditer(text)), default=-1) for o in ex.meta["options"]}
    best = max(last, key=last.get)
    return last[best] >= 0 and best == ex.answer


def all_objects(ex, text):
    return all(word(o).search(text) for o in ex.meta["objects"])


def number(ex, text):
    """The number after '####' if there is one, else the last number (GSM8K's strict/flexible pair)."""
    m = re.search(r"####\s*(-?\d+)", text)
    nums = [m.group(1)] if m else NUMBER.findall(text)
    return bool(nums) and int(nums[-1]) == int(ex.answer)


def reversed_word(ex, text):
    """The last letter-by-letter spelling ("l-i-a-z") or, failing that, the last word."""
    spelled = re.findall(r"[A-Za-z](?:-[A-Za-z])+", text)
    words = spelled or re.findall(r"[A-Za-z]+", text)
    return bool(words) and words[-1].replace("-", "").lower() == ex.answer.lower()


def sorted_numbers(ex, text):
    want = ex.answer.split(", ")
    return NUMBER.findall(text)[-len(want):] == want


def refusal(ex, text):
    if ex.meta["forbidden"]:
        return rules.is_refusal(text)
    return not rules.is_refusal(text) and contains(ex, text)


def dont_know(ex, text):
    return bool(re.search(r"\b(?:don['’]?t|do not|doesn['’]t|not) know\b", text, re.IGNORECASE))
