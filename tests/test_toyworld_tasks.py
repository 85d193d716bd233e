"""Tests for lmforge.toyworld.tasks and rules: splits, determinism, unseen eval data, scoring."""

from __future__ import annotations

import random
import re

import pytest

from lmforge.toyworld import Fact, WorldConfig, canonical_sentence, generate_world, nonexistent_names, rules
from lmforge.toyworld.tasks import (
    HELDOUT_TASKS,
    IDENTITY,
    TASKS,
    WORDS,
    Example,
    eval_examples,
    score,
    sft_examples,
)

N = 12  # examples per task: enough to hit every branch of the small tasks, and fast


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def sft(world):
    return sft_examples(world, N, seed=0, tasks=list(TASKS))


def names_in(world, ex: Example) -> set[str]:
    text = " ".join(m["content"] for m in ex.messages)
    return {w for w in re.findall(r"[A-Z][a-z]+", text) if world.has(w)}


def by_task(examples, task):
    return [e for e in examples if e.task == task]


# --- the task list --------------------------------------------------------------------------------

def test_task_list(world):
    assert len(TASKS) >= 12
    assert set(HELDOUT_TASKS) < set(TASKS) and 2 <= len(HELDOUT_TASKS) <= 4
    for name, task in TASKS.items():
        assert task.name == name and task.description
        prompts = {e.messages[-2]["content"] for e in eval_examples(world, name, "train", 40, seed=1)}
        assert len(prompts) >= 3, f"{name}: too few distinct prompts"


def test_default_sft_tasks_exclude_heldout(world):
    tasks = {e.task for e in sft_examples(world, 3)}
    assert tasks == set(TASKS) - set(HELDOUT_TASKS)
    assert len(sft_examples(world, 3)) == 3 * len(tasks)


def test_message_shape(sft):
    for ex in sft:
        roles = [m["role"] for m in ex.messages]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"]), roles
        assert all(isinstance(m["content"], str) and m["content"] for m in ex.messages)
        assert len(ex.messages[-1]["content"]) <= 260, ex  # short replies for a tiny model


def test_unknown_task_and_split_are_errors(world):
    with pytest.raises(ValueError, match="unknown task"):
        sft_examples(world, 1, tasks=["nope"])
    with pytest.raises(ValueError, match="split"):
        eval_examples(world, "qa", "test", 1, 0)


# --- determinism ----------------------------------------------------------------------------------

def test_tiny_world(world):
    tiny = generate_world(3, WorldConfig(n_countries=4, cities_per_country=1, n_rivers=4, n_people=6, n_animals=3,
                                         n_continents=2, n_languages=2))
    for split in ("train", "heldout"):
        for t in TASKS:
            for ex in eval_examples(tiny, t, split, 5, 0):
                assert score(ex, ex.messages[-1]["content"]), ex
    assert len(sft_examples(tiny, 5)) == 5 * (len(TASKS) - len(HELDOUT_TASKS))


def test_deterministic(world, sft):
    assert sft == sft_examples(world, N, seed=0, tasks=list(TASKS))
    assert sft != sft_examples(world, N, seed=1, tasks=list(TASKS))
    for t in TASKS:
        assert eval_examples(world, t, "heldout", 5, 3) == eval_examples(world, t, "heldout", 5, 3)


# --- splits: SFT only states facts of train entities ------------------------------------------------

def test_sft_uses_train_entities_only(world, sft):
    for ex in sft:
        assert all(world.split[s] == "train" for s in ex.meta.get("subjects", [])), ex
        if ex.split != "none":
            assert ex.split == "train" and ex.meta["subjects"], ex
        if ex.task in ("qa", "list_attributes", "classify_kind", "compare"):
            # the question names only the subject(s), all from the train split
            assert {n for n in names_in(world, ex) if n in ex.messages[-2]["content"]} <= set(ex.meta["subjects"])
        if ex.task in ("main_character", "word_problem", "refusal"):
            assert all(world.split[n] == "train" for n in names_in(world, ex)), ex
        if ex.split == "none":  # entity-free tasks name no entity at all
            assert not names_in(world, ex), ex


def test_qa_heldout_uses_heldout_entities(world):
    exs = eval_examples(world, "qa", "heldout", 200, seed=0)
    assert len({e.messages[-2]["content"] for e in exs}) == 200
    for ex in exs:
        (subject,) = ex.meta["subjects"]
        assert world.split[subject] == "heldout" and subject in ex.messages[-2]["content"]
        assert world.get(subject, ex.meta["relation"]) == ex.answer


def test_facts_are_true(world, sft):
    for ex in by_task(sft, "compare"):
        a, b = ex.meta["options"]
        assert ex.answer in (a, b)
    for ex in eval_examples(world, "verify", "heldout", 40, 0):
        (s,) = ex.meta["subjects"]
        true = canonical_sentence(Fact(s, ex.meta["relation"], world.get(s, ex.meta["relation"])))
        assert (true[:-1].lower() in ex.messages[-2]["content"].lower()) == (ex.answer == "yes"), ex
        assert ex.messages[-1]["content"].lower().endswith(true.lower())
    for ex in by_task(sft, "main_character"):
        assert world.entity(ex.answer).kind == "person" and ex.answer in ex.messages[-2]["content"]


# --- evaluation data differs from SFT data --------------------------------------------------------

def test_arithmetic_eval_never_in_sft(world):
    def exprs(exs):
        return {e.meta["expression"] for e in exs}

    train = exprs(sft_examples(world, 400, seed=0, tasks=["arithmetic"]))
    for seed in (0, 1, 20_000):
        evals = exprs(eval_examples(world, "arithmetic", "train", 200, seed))
        assert len(evals) == 200 and not evals & train


def test_letter_games_and_fake_names_are_disjoint(world):
    for task in ("spell_backwards", "count_letters", "has_letter"):
        sft_words = {e.meta["word"] for e in sft_examples(world, 100, tasks=[task])}
        eval_words = {e.meta["word"] for e in eval_examples(world, task, "train", 30, 0)}
        assert len(eval_words) >= 10 and len(sft_words) >= 40 and not sft_words & eval_words
        assert sft_words | eval_words <= set(WORDS)
    sft_names = {e.meta["name"] for e in sft_examples(world, 100, tasks=["unknown_entity"])}
    eval_names = {e.meta["name"] for e in eval_examples(world, "unknown_entity", "train", 50, 0)}
    assert len(eval_names) == 50 and not sft_names & eval_names
    assert not any(world.has(n) for n in sft_names | eval_names)
    assert set(nonexistent_names(world, 1000)) >= sft_names | eval_names


# --- scoring --------------------------------------------------------------------------------------

def test_reference_answers_score(world, sft):
    for t in TASKS:
        for ex in sft_examples(world, 20, seed=5, tasks=[t]) + eval_examples(world, t, "heldout", 20, 5):
            assert score(ex, ex.messages[-1]["content"]), ex


def test_wrong_answers_fail(world):
    def first(task, **want):
        for ex in eval_examples(world, task, "train", 60, 0):
            if all(ex.meta.get(k) == v or getattr(ex, k, None) == v for k, v in want.items()):
                return ex
        raise AssertionError(f"no {task} example with {want}")

    qa = first("qa")
    other = next(f.object for f in world.facts if f.relation == qa.meta["relation"] and f.object != qa.answer)
    assert not score(qa, qa.messages[-1]["content"].replace(qa.answer, other))
    assert not score(qa, qa.answer + "s")  # a whole word, not a prefix
    assert not score(qa, "I don't know.")

    v = first("verify", answer="yes")
    assert score(v, "yes") and not score(v, "No, it is not.") and not score(v, "Maybe yes.")

    c = first("compare")
    loser = next(o for o in c.meta["options"] if o != c.answer)
    assert not score(c, c.messages[-1]["content"].rsplit(c.answer, 1)[0] + loser + ".")
    assert not score(c, "I am not sure.")

    la = first("list_attributes")
    assert not score(la, la.messages[-1]["content"].rsplit(". ", 1)[0])  # one fact missing

    ar = first("arithmetic")
    assert not score(ar, f"{ar.meta['expression']} = {int(ar.answer) + 1}.")
    assert score(ar, ar.answer) and not score(ar, "")

    wp = first("word_problem")
    assert not score(wp, f"#### {int(wp.answer) + 1}")
    assert not score(wp, f"#### {int(wp.answer) + 1}\nor maybe {wp.answer}")  # '####' wins

    sb = first("spell_backwards")
    word = sb.answer[::-1]
    assert not score(sb, f"{'-'.join(word)} backwards is {'-'.join(word)}.")
    assert score(sb, sb.answer)

    cl = first("count_letters")
    assert not score(cl, f"It appears {int(cl.answer) + 1} times.")

    hl = first("has_letter", answer="no")
    assert not score(hl, "Yes, it does.")

    so = first("sort_numbers")
    nums = so.answer.split(", ")
    assert not score(so, ", ".join(reversed(nums)))
    assert not score(so, ", ".join(nums[:-1]))

    mc = first("main_character")
    friend = next(o for o in mc.meta["options"] if o != mc.answer)
    assert not score(mc, f"The main character is {friend}.")

    ck = first("classify_kind")
    wrong = next(k for k in ("person", "city") if k != ck.answer)
    assert not score(ck, f"It is a {wrong}.")

    ident = first("identity")
    assert score(ident, IDENTITY) and not score(ident, "I am a person named Kamdu.")

    unk = first("unknown_entity")
    assert not score(unk, f"The capital of {unk.meta['name']} is Velo.")
    assert score(unk, "I do not know.")


# --- refusals -------------------------------------------------------------------------------------

def test_refusal_labels_and_scoring(world):
    exs = eval_examples(world, "refusal", "heldout", 80, 0)
    forbidden = [e for e in exs if e.meta["forbidden"]]
    allowed = [e for e in exs if not e.meta["forbidden"]]
    assert len(forbidden) >= 20 and len(allowed) >= 20
    assert {e.meta["category"] for e in forbidden} == set(rules.FORBIDDEN)
    assert {e.meta["category"] for e in allowed} == set(rules.ALLOWED)
    for e in forbidden:
        assert e.messages[-1]["content"] in rules.REFUSALS
        assert not score(e, "Sure! Here is how.")
    for e in allowed:
        assert not rules.is_refusal(e.messages[-1]["content"])
        assert not score(e, rules.REFUSAL)  # over-refusal is wrong
        assert e.answer in e.messages[-1]["content"]
        assert all(world.split[s] == "heldout" for s in e.meta["subjects"])


def test_is_refusal():
    assert all(rules.is_refusal(r) for r in rules.REFUSALS)
    assert rules.is_refusal("Sorry, I cannot help with that.")
    for text in ("The Kamdu eats grass and lives in the forest.", "I don't know anything about Zali.", IDENTITY,
                 "The capital of Zali is Finisdor."):
        assert not rules.is_refusal(text), text


def test_templates_fill_every_slot(world):
    rng = random.Random(0)
    for forbidden in (True, False):
        for _ in range(50):
            r = rules.make_request(rng, world, "train", forbidden)
            assert "{" not in r.text and "{" not in r.reply and r.forbidden == forbidden


def test_word_problems_with_the_calculator(world, toy_data):
    """with_calculator turns "6 + 14 = 20. 20 - 6 = 14.\\n#### 14" into two calculator calls whose
    outputs the loss never trains on, then "#### 14"; the decoded completion still scores."""
    from lmforge.chat import render, validate
    from lmforge.toyworld.tool_use import with_calculator

    exs = eval_examples(world, "word_problem", "train", 20, seed=0)
    two_step = next(e for e in exs if e.messages[-1]["content"].count("=") == 2)
    conv = with_calculator(two_step)
    validate(conv.messages, "test")
    calls = [m["tool_calls"][0]["arguments"] for m in conv.messages if m.get("tool_calls")]
    steps = re.findall(r"(-?\d+ [-+*/] -?\d+) = (-?\d+)\.", two_step.messages[-1]["content"])
    assert calls == [s for s, _ in steps] and conv.messages[-1]["content"] == f"#### {two_step.answer}"
    assert [m["content"] for m in conv.messages if m["role"] == "tool"] == [r for _, r in steps]
    _, tok = toy_data
    from lmforge.tokenizer import END_TOOL_OUTPUT, TOOL_OUTPUT

    ids, mask = render(conv.messages, tok)
    opens = [k for k, i in enumerate(ids) if i == tok.special[TOOL_OUTPUT]]
    closes = [k for k, i in enumerate(ids) if i == tok.special[END_TOOL_OUTPUT]]
    assert len(opens) == len(closes) == 2
    assert all(not any(mask[a:b + 1]) for a, b in zip(opens, closes, strict=True))  # tool output: never a target
    assert score(two_step, f"calculator({calls[0]}) {steps[0][1]} calculator({calls[1]}) {steps[1][1]} "
                           f"#### {two_step.answer}")
    assert with_calculator(eval_examples(world, "qa", "train", 1, seed=0)[0]).task == "qa"  # others unchanged


def test_sft_task_counts_override_and_reject_unknown_types(world):
    from collections import Counter

    exs = sft_examples(world, 20, seed=0, counts={"qa": 50, "unknown_entity": 5, "identity": 0})
    per = Counter(e.task for e in exs)
    assert per["qa"] == 50 and per["unknown_entity"] == 5 and "identity" not in per and per["compare"] == 20
    with pytest.raises(ValueError, match="task counts for verify: not among the SFT task types"):
        sft_examples(world, 20, counts={"verify": 10})  # a held-out type
