"""Tests for lmforge.toyworld.demonstrators: the hasty writer's habit keeps answers right but costs a judge point."""

from __future__ import annotations

import pytest

from lmforge.toyworld import generate_world
from lmforge.toyworld.demonstrators import EXEMPT_TASKS, SIGN_OFFS, with_hasty_writer
from lmforge.toyworld.judge import RUDE, judge_score
from lmforge.toyworld.tasks import score, sft_examples


@pytest.fixture(scope="module")
def examples():
    world = generate_world(0)
    return world, sft_examples(world, 12, seed=0)


def test_every_sign_off_has_exactly_one_rude_phrase_and_a_shared_first_word():
    assert all(len(RUDE.findall(s)) == 1 for s in SIGN_OFFS)
    assert len({s.split()[0] for s in SIGN_OFFS}) == 1  # why: greedy decoding copies a majority habit


def test_hasty_replies_stay_correct_and_the_judge_takes_at_least_a_point(examples):
    world, exs = examples
    hasty = with_hasty_writer(exs, 1.0, seed=0)
    changed = [(a, b) for a, b in zip(exs, hasty, strict=True) if b.meta.get("hasty")]
    assert len(changed) == sum(e.task not in EXEMPT_TASKS for e in exs) > 100
    for clean, rude in changed:
        text = rude.messages[-1]["content"]
        assert text.startswith(clean.messages[-1]["content"] + " Honestly, ")
        assert score(clean, text), (clean.task, text)
        best = judge_score(world, clean, clean.messages[-1]["content"]).total
        got = judge_score(world, clean, text)
        assert -1.1 < got.total - best <= -1.0 and "rude" in got.reason, (clean.task, text, got)
    assert all(not e.meta.get("hasty") for e in hasty if e.task in EXEMPT_TASKS)


def test_fraction_and_seed(examples):
    _, exs = examples
    assert with_hasty_writer(exs, 0.0, seed=0) == exs
    n = [sum(e.meta.get("hasty", False) for e in with_hasty_writer(exs, 0.6, seed=s)) for s in (0, 0, 1)]
    eligible = sum(e.task not in EXEMPT_TASKS for e in exs)
    assert n[0] == n[1] and 0.5 * eligible < n[0] < 0.7 * eligible
    assert with_hasty_writer(exs, 0.6, seed=0) != with_hasty_writer(exs, 0.6, seed=1)
    assert not any("hasty" in e.meta for e in exs)  # the input is not modified
    with pytest.raises(ValueError, match=r"hasty_fraction: expected a number in \[0, 1\], got 1.5"):
        with_hasty_writer(exs, 1.5, seed=0)
