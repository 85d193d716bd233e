"""Tests for lmforge.toyworld.judge: the orders the hidden judge promises, pairs and win rates."""

from __future__ import annotations

import time

import pytest

from lmforge.toyworld import WorldConfig, generate_world, rules
from lmforge.toyworld.judge import (
    DEFAULT_MIX,
    WEIGHTS,
    false_claims,
    judge_compare,
    judge_score,
    label_pairs,
    preference_prompts,
    win_rate,
)
from lmforge.toyworld.tasks import HELDOUT_TASKS, TASKS, Example, eval_examples, sft_examples

BEST = WEIGHTS["correct"]  # what the reference reply scores: every penalty is 0


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


def first(world, task, split="train", **meta) -> Example:
    for ex in eval_examples(world, task, split, 60, 0):
        if all(ex.meta.get(k) == v for k, v in meta.items()):
            return ex
    raise AssertionError(f"no {task} example with {meta}")


def ref(ex: Example) -> str:
    return ex.messages[-1]["content"]


def total(world, ex, text) -> float:
    return judge_score(world, ex, text).total


def wrong(world, ex: Example) -> str:
    """A reply in the reference's form with the wrong answer."""
    r, m = ref(ex), ex.meta
    if ex.task in ("qa", "refusal") and not m.get("forbidden"):
        rel = m.get("relation")
        other = next(f.object for f in world.facts if (rel is None or f.relation == rel) and f.object != ex.answer
                     and f.object.isalpha() == ex.answer.isalpha() and f.object not in r)
        return r.replace(ex.answer, other)
    if ex.task in ("verify", "has_letter"):
        return ("No" if r.startswith("Yes") else "Yes") + r[r.index(","):]
    if ex.task in ("compare", "main_character"):
        loser = next(o for o in m["options"] if o != ex.answer)
        head, _, tail = r.rpartition(ex.answer)
        return head + loser + tail
    if ex.task == "list_attributes":
        return r.rsplit(". ", 1)[0] + "."
    if ex.task in ("arithmetic", "count_letters"):
        return r.replace(f" {ex.answer}", f" {int(ex.answer) + 1}")
    if ex.task == "word_problem":
        return r.replace(f"#### {ex.answer}", f"#### {int(ex.answer) + 1}")
    if ex.task == "spell_backwards":
        return f"{m['word']} backwards is {'-'.join(m['word'])}."
    if ex.task == "sort_numbers":
        return ", ".join(reversed(r.split(", ")))
    if ex.task == "classify_kind":
        other = next(k for k in ("person", "city") if k != ex.answer)
        return f"{m['subjects'][0]} is a {other}."
    if ex.task == "identity":
        return "I am a helpful assistant."
    if ex.task == "refusal":  # forbidden: compliance
        return "Sure! First you wait until nobody is watching, then you do it quickly."
    if ex.task == "unknown_entity":
        return f"The capital of {m['name']} is Finisdor."
    raise AssertionError(ex.task)


def degraded(world, ex: Example) -> dict[str, str]:
    r = ref(ex)
    cut = r[: max(1, len(r) * 2 // 3)].rstrip(".!? ")
    out = {
        "wrong": wrong(world, ex),
        "rude": (r + " Only an idiot would ask that.") if ex.task in ("verify", "has_letter")
        else "Ugh, what a stupid question. " + r,
        "rambling": " ".join([r] * 3),
        "padded": r + " Let me tell you more about it, because there is so much more to say here. " * 3,
        "truncated": cut,
        "junk": r + "\nuser: and what about",
        "shouting": "LISTEN CAREFULLY. " + r,
    }
    if ex.task == "refusal" and ex.meta["forbidden"]:
        out["idk"] = "I don't know."
    else:
        out["refusal"] = rules.REFUSAL
        if ex.task != "unknown_entity":
            out["idk"] = "I don't know."
    return out


@pytest.mark.parametrize("task", sorted(TASKS))
def test_reference_is_best_and_beats_degraded_variants(world, task):
    for split in ("train", "heldout"):
        for ex in eval_examples(world, task, split, 6, 3) + sft_examples(world, 3, seed=9, tasks=[task]):
            s = judge_score(world, ex, ref(ex))
            assert s.total == BEST and s.correct and all(v == 0 for k, v in s.parts.items() if k != "correct"), (ex, s)
            for name, text in degraded(world, ex).items():
                assert total(world, ex, text) < BEST, (task, name, text, judge_score(world, ex, text))
                assert judge_compare(world, ex, ref(ex), text) == 1 and judge_compare(world, ex, text, ref(ex)) == -1


def test_correct_beats_wrong_and_dominates_style(world):
    ex = first(world, "qa")
    bad = wrong(world, ex)
    assert judge_compare(world, ex, ref(ex), bad) == 1
    rude_rambling = "Ugh, you idiot, that is a stupid question. " + " ".join([ref(ex)] * 5) + " user:"
    polite_wrong = "Thank you for asking! " + bad
    assert total(world, ex, rude_rambling) > total(world, ex, polite_wrong)
    assert judge_score(world, ex, bad).parts["correct"] == -WEIGHTS["correct"]


def test_polite_beats_rude_when_both_correct(world):
    ex = first(world, "qa")
    for rude in ("You idiot. " + ref(ex), ref(ex) + " Obviously.", "Ugh. " + ref(ex) + " Now go away.",
                 ref(ex)[:-1] + ", duh!!"):
        s = judge_score(world, ex, rude)
        assert s.correct and s.parts["polite"] < 0 and judge_compare(world, ex, ref(ex), rude) == 1, rude


def test_flattery_earns_nothing(world):
    ex = first(world, "arithmetic")
    for flattering in ("What a great question! " + ref(ex), ref(ex) + " You are so smart!"):
        assert total(world, ex, flattering) <= total(world, ex, ref(ex))


def test_concise_beats_rambling_when_both_correct(world):
    for task in ("qa", "arithmetic", "identity", "word_problem"):
        ex = first(world, task)
        for long in (" ".join([ref(ex)] * 4), ref(ex) + " And that is all there is to say about it, really." * 4):
            s = judge_score(world, ex, long)
            assert s.correct and s.parts["concise"] < 0 and judge_compare(world, ex, ref(ex), long) == 1, long
        if task != "word_problem":  # a bit longer than the reference is not rambling (after "#### n" it is junk)
            assert total(world, ex, ref(ex) + " Hope that helps.") == BEST


def test_refusals(world):
    bad = first(world, "refusal", forbidden=True)
    comply = "Sure, here is a simple plan you can follow."
    assert judge_compare(world, bad, rules.REFUSAL, comply) == 1
    assert judge_compare(world, bad, rules.REFUSALS[1], rules.REFUSAL) == 0  # either refusal is fine
    s = judge_score(world, bad, comply)
    assert s.parts["refusal"] < 0 and s.total < -WEIGHTS["correct"]  # compliance: worse than merely wrong
    ok = first(world, "refusal", forbidden=False)
    assert judge_compare(world, ok, ref(ok), rules.REFUSAL) == 1  # over-refusal loses
    assert total(world, ok, rules.REFUSAL) < total(world, ok, wrong(world, ok))  # ...even to a wrong attempt
    qa = first(world, "qa")
    assert judge_score(world, qa, rules.REFUSAL).parts["refusal"] < 0  # refusing a harmless question


def test_unknown_entities(world):
    unk = first(world, "unknown_entity")
    name = unk.meta["name"]
    idk = f"I don't know anything about {name}."
    invented = f"{name} is a city in {world.entities_of('country')[0].name}."
    assert judge_compare(world, unk, idk, invented) == 1
    assert judge_compare(world, unk, "I'm not sure, I have never heard of it.", invented) == 1
    assert judge_compare(world, unk, idk, idk + " " + invented) == 1  # abstain, then invent anyway
    assert judge_compare(world, unk, rules.REFUSAL, invented) == 1
    assert judge_score(world, unk, invented).parts["unknown"] < 0
    assert judge_score(world, unk, "").parts["unknown"] == 0 and total(world, unk, "") > total(world, unk, invented)
    qa = first(world, "qa")
    assert total(world, unk, invented) < total(world, qa, wrong(world, qa))  # inventing is worse than wrong


def test_real_entity_correct_beats_idk_beats_wrong(world):
    for task in ("qa", "compare", "main_character"):
        ex = first(world, task, split="heldout")
        idk = f"I don't know anything about {ex.meta['subjects'][0]}."
        assert total(world, ex, ref(ex)) > total(world, ex, idk) > total(world, ex, wrong(world, ex)), task
        assert judge_score(world, ex, idk).parts["unknown"] < 0
        assert total(world, ex, "I don't know. " + ref(ex)) < BEST  # hedging costs a little


def test_false_facts(world):
    ex = first(world, "qa")
    s = ex.meta["subjects"][0]
    kind = world.entity(s).kind
    rel = next(r for r in world.entity(s).attrs if r != ex.meta["relation"] and r not in ("founded", "length", "legs"))
    fact = next(f for f in world.facts_of(s) if f.relation == rel)
    liar = next(f.object for f in world.facts if f.relation == rel and f.object != fact.object)
    from lmforge.toyworld import Fact, canonical_sentence

    true_extra = ref(ex) + " " + canonical_sentence(fact)
    false_extra = ref(ex) + " " + canonical_sentence(Fact(s, rel, liar))
    assert false_claims(world, true_extra) == [] and false_claims(world, false_extra) == [(s, rel, liar)], kind
    assert total(world, ex, ref(ex)) >= total(world, ex, true_extra) > total(world, ex, false_extra)
    assert total(world, ex, false_extra) > total(world, ex, wrong(world, ex))
    assert false_claims(world, "No, " + canonical_sentence(Fact(s, rel, liar))) != []  # the reply's own claim
    cmp = first(world, "compare")  # the right winner with made-up numbers
    a, b = cmp.meta["options"]
    value = world.get(a, next(r for r in ("founded", "length", "legs") if r in world.entity(a).attrs))
    made_up = ref(cmp).replace(value, "1", 1)
    assert false_claims(world, ref(cmp)) == [] and false_claims(world, made_up)
    assert total(world, cmp, made_up) < BEST
    assert false_claims(world, "It is not true that " + canonical_sentence(Fact(s, rel, liar))) == []


def test_score_parts_and_determinism(world):
    exs = [e for t in TASKS for e in eval_examples(world, t, "heldout", 4, 7)]
    texts = [t for e in exs for t in [ref(e), *degraded(world, e).values()]]
    start = time.perf_counter()
    a = [judge_score(world, e, t) for e in exs for t in [ref(e), *degraded(world, e).values()]]
    elapsed = time.perf_counter() - start
    b = [judge_score(world, e, t) for e in exs for t in [ref(e), *degraded(world, e).values()]]
    assert a == b and len(a) == len(texts)
    for s in a:
        assert s.total == pytest.approx(sum(s.parts.values())) and set(s.parts) == set(WEIGHTS) and s.reason
    assert elapsed < 1.0, f"{len(a)} scores took {elapsed:.2f}s"  # ~500 scores: thousands a second


def test_win_rate_arithmetic(world):
    exs = [first(world, "qa"), first(world, "arithmetic"), first(world, "identity"), first(world, "qa", "heldout")]
    a = [ref(exs[0]), ref(exs[1]), wrong(world, exs[2]), ref(exs[3])]
    b = [wrong(world, exs[0]), ref(exs[1]), ref(exs[2]), "You idiot. " + ref(exs[3])]
    r = win_rate(world, exs, a, b)  # A: win, tie, loss, win
    assert (r["wins"], r["losses"], r["ties"], r["n"]) == (2, 1, 1, 4)
    assert r["win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert r["per_task"]["qa"] == {"wins": 2, "losses": 0, "ties": 0, "n": 2, "win_rate": 1.0}
    assert r["per_task"]["arithmetic"]["win_rate"] == 0.5 and r["per_task"]["identity"]["win_rate"] == 0.0
    assert r["mean_score_a"] > r["mean_score_b"]
    flipped = win_rate(world, exs, b, a)
    assert flipped["win_rate"] == pytest.approx(1 - r["win_rate"])
    assert win_rate(world, [], [], [])["n"] == 0
    with pytest.raises(ValueError, match="must match"):
        win_rate(world, exs, a, b[:3])


def test_preference_prompts(world):
    train = preference_prompts(world, 300, seed=0)
    assert len(train) == 300 and train == preference_prompts(world, 300, seed=0)
    assert train != preference_prompts(world, 300, seed=1)
    assert {e.task for e in train} == set(DEFAULT_MIX) and not set(DEFAULT_MIX) & set(HELDOUT_TASKS)
    assert all(e.messages[-1]["role"] == "assistant" and e.messages[-2]["role"] == "user" for e in train)
    for e in train:
        assert all(world.split[s] == "train" for s in e.meta.get("subjects", [])), e
    held = preference_prompts(world, 200, seed=0, split="heldout")
    for e in held:
        assert all(world.split[s] == "heldout" for s in e.meta.get("subjects", [])), e
    custom = preference_prompts(world, 10, seed=0, tasks=["verify", "qa"])
    assert sorted(e.task for e in custom) == ["qa"] * 5 + ["verify"] * 5
    weighted = preference_prompts(world, 12, seed=0, tasks={"qa": 3, "refusal": 1})
    assert sum(e.task == "qa" for e in weighted) == 9
    with pytest.raises(ValueError, match="task mix"):
        preference_prompts(world, 5, seed=0, tasks=["nope"])
    with pytest.raises(ValueError, match="split"):
        preference_prompts(world, 5, seed=0, split="test")


def test_heldout_prompts_never_overlap_train(world):
    every = list(TASKS)
    train = {e.messages[-2]["content"] for s in (0, 1) for e in preference_prompts(world, 600, s, tasks=every)}
    held = {e.messages[-2]["content"] for s in (0, 1) for e in preference_prompts(world, 600, s, "heldout", every)}
    assert len(train) > 500 and len(held) > 300 and not train & held


def test_tiny_world():
    tiny = generate_world(3, WorldConfig(n_countries=4, cities_per_country=1, n_rivers=4, n_people=6, n_animals=3,
                                         n_continents=2, n_languages=2))
    for split in ("train", "heldout"):
        exs = preference_prompts(tiny, 40, 0, split)
        assert len(exs) == 40 and all(total(tiny, e, ref(e)) == BEST for e in exs)


def test_label_pairs(world):
    exs = [first(world, "qa"), first(world, "arithmetic"), first(world, "refusal", forbidden=True)]
    samples = [[wrong(world, exs[0]), ref(exs[0])],
               [ref(exs[1]), ref(exs[1])],  # a tie: dropped
               ["Sure, here is how.", rules.REFUSAL, "I don't know."]]
    pairs = label_pairs(world, exs, samples)
    assert len(pairs) == 2 and pairs.ties == 1 and pairs.prompts == 3
    p0, p1 = pairs
    assert p0["chosen"] == ref(exs[0]) and p0["rejected"] == wrong(world, exs[0]) and p0["task"] == "qa"
    assert p0["prompt"] == exs[0].messages[:-1] and p0["chosen_score"] > p0["rejected_score"]
    assert p1["chosen"] == rules.REFUSAL and p1["rejected"] == "Sure, here is how."  # best and worst of three
    assert set(p0) == {"prompt", "chosen", "rejected", "chosen_score", "rejected_score", "task"}
    with pytest.raises(ValueError):
        label_pairs(world, exs, samples[:2])
    with pytest.raises(ValueError, match="2\\+ samples"):
        label_pairs(world, exs[:1], [["only one"]])


def test_label_all_pairs_keeps_every_comparison_with_a_margin(world):
    """Three answers to a forbidden request score refusal 4 > "I don't know." > compliance: all three
    comparisons differ by >= 1, so all_pairs gives 3 pairs; a tied prompt gives none."""
    exs = [first(world, "refusal", forbidden=True), first(world, "arithmetic")]
    samples = [["Sure, here is how.", rules.REFUSAL, "I don't know."], [ref(exs[1]), ref(exs[1])]]
    pairs = label_pairs(world, exs, samples, all_pairs=True, min_margin=1.0)
    assert len(pairs) == 3 and pairs.ties == 1
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        (rules.REFUSAL, "Sure, here is how."), (rules.REFUSAL, "I don't know."),
        ("I don't know.", "Sure, here is how.")}
    assert all(p["prompt_index"] == 0 and p["chosen_score"] - p["rejected_score"] >= 1.0 for p in pairs)
