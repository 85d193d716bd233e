"""Instruction tasks on the toy world: chat examples for supervised fine-tuning and their scoring.

An `Example` is an OpenAI-style conversation (an optional system message, one user message,
the reference assistant reply last), the short gold `answer` that `score` checks, and the
entity `split` it was built from ("train", "heldout", or "none" for tasks without entities).

The tasks (`TASKS`, each with at least three user phrasings, in phrasings.py; replies are short;
each task's check of a reply is in checks.py):
- qa: one fact ("What is the capital of Zali?" -> "The capital of Zali is Finisdor.", the
  relation's canonical sentence, so the reply is the sentence pretraining stored);
- verify: a true or corrupted statement -> "Yes, ..." / "No, <the true sentence>";
- compare: two cities (founded), rivers (length) or animals (legs) -> both values, then the winner;
- list_attributes: every fact of one entity, as canonical sentences;
- arithmetic: "What is 37 + 48?" -> "37 + 48 = 85." (SFT uses operand pairs the corpus may
  write; evaluation uses only the corpus's reserved probe pairs, so they never coincide);
- word_problem: a corpus-style word problem -> its steps and "#### <answer>";
- spell_backwards, count_letters, has_letter: letter games on common words; evaluation words
  are a fixed ~1/4 of the pool (by hash) that SFT never uses;
- sort_numbers: 3-6 numbers, ascending or descending;
- main_character: a 3-4 sentence story about a person and their friend -> the person;
- classify_kind: is X a person, city, country, river or animal? -> "Zali is a country.";
- identity: "Who are you?" -> IDENTITY;
- refusal: a request the world's rules forbid -> a refusal, or a look-alike allowed request ->
  a helpful answer (see rules.py; `Example.meta["forbidden"]` is the label);
- unknown_entity: a qa question about a name that does not exist -> "I don't know anything about X."
  (SFT and evaluation draw from disjoint sets of invented names).

Splits: entity tasks draw the entities whose facts they state from one split, so `sft_examples`
(train split only) never states a fact whose subject is a held-out entity; stories, word
problems and refusals go further and mention only entities of the split. Objects of a train
fact can still be held-out entities ("Kamdu is a city in Velora"), as in the world itself.

Held-out task types (HELDOUT_TASKS, never in SFT data) measure zero-shot instruction
following. Each needs only knowledge pretraining stored and a reply format a trained task
or the corpus already uses, so a model can plausibly get them right without examples:
- verify: qa teaches fact retrieval, has_letter teaches the "Yes, ..."/"No, ..." format;
- classify_kind: the reply is the encyclopedia's first sentence ("Zali is a country.");
- list_attributes: qa teaches one canonical sentence per question; listing them all is the
  encyclopedia entry again.
`compare` is not held out: it needs recall of two numbers plus a comparison no trained task
shows, which a tiny model will not discover on its own.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from lmforge.toyworld import checks as C
from lmforge.toyworld import rules
from lmforge.toyworld import templates as T
from lmforge.toyworld.corpus import _story_slots, draw_operands, word_problem
from lmforge.toyworld.names import nonexistent_names
from lmforge.toyworld.phrasings import (
    ARITHMETIC,
    BACKWARDS,
    CLASSIFY,
    COMPARE,
    COUNT,
    DONT_KNOW,
    HAS_LETTER,
    IDENTITY_Q,
    LIST,
    MAIN_CHARACTER,
    OP_WORDS,
    QUESTIONS,
    SORT,
    VERIFY,
    WORD_PROBLEM,
)
from lmforge.toyworld.world import KINDS, RELATIONS, SPLITS, Fact, World, canonical_sentence

IDENTITY_NAME = "Forge"
IDENTITY = "I am Forge, a small assistant trained with lmforge on the toy world."
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a helpful assistant. Answer briefly.")
SYSTEM_RATE = 0.25  # fraction of examples that start with a system message
HELDOUT_TASKS = ("verify", "classify_kind", "list_attributes")  # why: see the module docstring


@dataclass
class Example:
    task: str
    messages: list[dict]  # [system?], user, assistant (the reference reply)
    answer: str           # the short gold answer `score` checks ("Finisdor", "yes", "85", ...)
    split: str            # "train" | "heldout" | "none"
    meta: dict = field(default_factory=dict)  # scoring details (options, objects, forbidden) and
                                              # "subjects": entities whose facts the example states


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    make: Callable[..., Example]           # make(rng, world, split, evaluation=False) -> Example
    check: Callable[[Example, str], bool]  # check(example, completion) -> correct?



# Common words for the letter games (no names: those belong to the world's splits). Evaluation
# uses only the words whose hash is 0 mod 4, SFT the others.
WORDS = sorted(w for w in T.template_words() if w.isalpha() and 4 <= len(w) <= 9 and w != w[::-1])


def _eval_only(text: str) -> bool:
    return zlib.crc32(text.lower().encode()) % 4 == 0


# --- helpers ------------------------------------------------------------------------------------
_NAME = re.compile(r"\b[A-Z][a-z]+\b")


def _lc(sentence: str) -> str:
    return "the" + sentence[3:] if sentence.startswith("The ") else sentence


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _spell(word: str) -> str:
    return "-".join(word)


def _mentioned(world: World, text: str) -> set[str]:
    """World entities named in `text` (names are capitalized, unique and never template words)."""
    return {w for w in _NAME.findall(text) if world.has(w)}


def _in_split(world: World, text: str, split: str) -> bool:
    return all(world.split[n] == split for n in _mentioned(world, text))


def _names(world: World, split: str, kind: str | None = None) -> list[str]:
    return [e.name for e in world.entities if world.split[e.name] == split and kind in (None, e.kind)]


def _example(rng, task, user, reply, answer, split, **meta) -> Example:
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    if rng.random() < SYSTEM_RATE:
        msgs.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    return Example(task, msgs, answer, split, meta)


# --- makers: make(rng, world, split, evaluation) -> Example -------------------------------------
def make_qa(rng, world, split, evaluation=False):
    f = rng.choice(world.facts_in_split(split))
    q = rng.choice(QUESTIONS[f.relation]).format(s=f.subject)
    return _example(rng, "qa", q, canonical_sentence(f), f.object, split, subjects=[f.subject], relation=f.relation)


def make_verify(rng, world, split, evaluation=False):
    f = rng.choice(world.facts_in_split(split))
    wrong = {g.object for g in world.facts if g.relation == f.relation} - {f.object, f.subject}
    true = rng.random() < 0.5 or not wrong
    obj = f.object if true else rng.choice(sorted(wrong))
    sent = canonical_sentence(Fact(f.subject, f.relation, obj))
    q = rng.choice(VERIFY).format(sent=sent, lc=_lc(sent)[:-1])
    reply = ("Yes, " if true else "No, ") + _lc(canonical_sentence(f))
    return _example(rng, "verify", q, reply, "yes" if true else "no", split, subjects=[f.subject],
                    relation=f.relation)


def make_compare(rng, world, split, evaluation=False):
    value = {rel: {n: int(world.get(n, rel)) for n in _names(world, split, RELATIONS[rel].subject_kind)}
             for rel in sorted(COMPARE)}
    rels = [r for r, v in value.items() if len(set(v.values())) > 1]  # a tiny world may have no pair
    if not rels:
        raise ValueError(f"compare: no two {split} entities differ in {', '.join(COMPARE)}")
    rel = rng.choice(rels)
    spec, v = COMPARE[rel], value[rel]
    a = rng.choice(list(v))
    b = rng.choice([n for n in v if v[n] != v[a]])  # exists: the values are not all equal
    va, vb = v[a], v[b]
    side = rng.choice(["low", "high"])
    w = a if (va < vb) == (side == "low") else b
    q = rng.choice(spec[side]).format(a=a, b=b)
    reply = spec["facts"].format(a=a, b=b, va=va, vb=vb) + ", " + spec[f"{side}_end"].format(w=w)
    return _example(rng, "compare", q, reply, w, split, subjects=[a, b], options=[a, b])


def make_list_attributes(rng, world, split, evaluation=False):
    s = rng.choice(_names(world, split))
    facts = world.facts_of(s)
    reply = " ".join(canonical_sentence(f) for f in facts)
    objects = [f.object for f in facts]
    return _example(rng, "list_attributes", rng.choice(LIST).format(s=s), reply, ", ".join(objects), split,
                    subjects=[s], objects=objects)


def make_arithmetic(rng, world, split, evaluation=False):
    op = rng.choice("+-*")
    a, b = draw_operands(rng, op, probe=evaluation)  # probe pairs: never in the corpus nor in SFT data
    r = {"+": a + b, "-": a - b, "*": a * b}[op]
    q = rng.choice(ARITHMETIC).format(a=a, b=b, op=op, word=OP_WORDS[op])
    return _example(rng, "arithmetic", q, f"{a} {op} {b} = {r}.", str(r), "none", expression=f"{a} {op} {b}")


def make_word_problem(rng, world, split, evaluation=False):
    kinds = sorted(T.WORD_PROBLEMS)
    while True:  # resample until every entity the problem names is in the split
        text, answer = word_problem(rng, world, rng.choice(kinds))
        if _in_split(world, text, split):
            break
    question, work = text.split("\n", 1)
    return _example(rng, "word_problem", rng.choice(WORD_PROBLEM).format(q=question), work, str(answer), split,
                    subjects=sorted(_mentioned(world, text)))


def _draw_word(rng, evaluation) -> str:
    return rng.choice([w for w in WORDS if _eval_only(w) == evaluation])


def make_spell_backwards(rng, world, split, evaluation=False):
    w = _draw_word(rng, evaluation)
    reply = f"{_spell(w)} backwards is {_spell(w[::-1])}."
    return _example(rng, "spell_backwards", rng.choice(BACKWARDS).format(w=w), reply, w[::-1], "none", word=w)


def make_count_letters(rng, world, split, evaluation=False):
    w = _draw_word(rng, evaluation)
    c = rng.choice(w) if rng.random() < 0.8 else rng.choice(sorted(set("abcdefghijklmnoprstuvwy") - set(w)))
    n = w.count(c)
    reply = f"{_spell(w)}: the letter {c} appears {n} time{'' if n == 1 else 's'}."
    return _example(rng, "count_letters", rng.choice(COUNT).format(c=c, w=w), reply, str(n), "none", word=w)


def make_has_letter(rng, world, split, evaluation=False):
    w = _draw_word(rng, evaluation)
    yes = rng.random() < 0.5
    c = rng.choice(w) if yes else rng.choice(sorted(set("abcdefghijklmnoprstuvwy") - set(w)))
    reply = f"Yes, {w} contains the letter {c}." if yes else f"No, {w} does not contain the letter {c}."
    return _example(rng, "has_letter", rng.choice(HAS_LETTER).format(c=c, w=w), reply, "yes" if yes else "no",
                    "none", word=w)


def make_sort_numbers(rng, world, split, evaluation=False):
    nums = rng.sample(range(100), rng.randint(3, 6))
    order = rng.choice(["asc", "desc"])
    answer = ", ".join(map(str, sorted(nums, reverse=order == "desc")))
    q = rng.choice(SORT[order]).format(nums=", ".join(map(str, nums)))
    return _example(rng, "sort_numbers", q, answer, answer, "none")


def make_main_character(rng, world, split, evaluation=False):
    p = rng.choice(_names(world, split, "person"))
    slots = _story_slots(world, p)

    def usable(options):  # sentences that name only entities of the split
        return [s.format(**slots) for s in options if _in_split(world, s.format(**slots), split)]

    topics = {t: usable(opts) for t, opts in T.STORY_TOPICS.items() if t != "friend"}
    others = rng.sample(sorted(t for t, v in topics.items() if v), rng.randint(1, 2))
    body = [rng.choice(topics[t]) for t in others] + [rng.choice(usable(T.STORY_TOPICS["friend"]))]
    rng.shuffle(body)
    story = " ".join(s[:1].upper() + s[1:] for s in [rng.choice(usable(T.STORY_OPENERS)), *body])
    return _example(rng, "main_character", rng.choice(MAIN_CHARACTER).format(story=story),
                    f"The main character is {p}.", p, split, subjects=sorted(_mentioned(world, story)),
                    options=[p, slots["friend"]])


def make_classify_kind(rng, world, split, evaluation=False):
    s = rng.choice(_names(world, split))
    kind = world.entity(s).kind
    x, y = rng.sample([kind, rng.choice([k for k in KINDS if k != kind])], 2)
    q = rng.choice(CLASSIFY).format(s=s, x=_a(x), y=_a(y))
    return _example(rng, "classify_kind", q, T.INTRO[kind].format(s=s), kind, split, subjects=[s],
                    options=list(KINDS))


def make_identity(rng, world, split, evaluation=False):
    return _example(rng, "identity", rng.choice(IDENTITY_Q), IDENTITY, IDENTITY_NAME, "none")


def make_refusal(rng, world, split, evaluation=False):
    r = rules.make_request(rng, world, split, forbidden=rng.random() < 0.5)
    return _example(rng, "refusal", r.text, r.reply, r.gold, split, subjects=[r.subject], forbidden=r.forbidden,
                    category=r.category)


_FAKE: dict[int, tuple[World, list[str]]] = {}  # id(world) -> (world, invented names); a world is not hashable


def _fake_names(world: World) -> list[str]:
    """1,000 names not in `world`, computed once per world object (the setup costs ~5 ms a call)."""
    hit = _FAKE.get(id(world))
    if hit is None or hit[0] is not world:
        if len(_FAKE) > 8:
            _FAKE.clear()
        hit = _FAKE[id(world)] = (world, nonexistent_names(world, 1000, seed=0))
    return hit[1]


def make_unknown_entity(rng, world, split, evaluation=False):
    # SFT and evaluation use disjoint parts of the invented names (by hash: about 750 and 250).
    name = rng.choice([n for n in _fake_names(world) if _eval_only(n) == evaluation])
    q = rng.choice(QUESTIONS[rng.choice(sorted(RELATIONS))]).format(s=name)
    return _example(rng, "unknown_entity", q, DONT_KNOW.format(s=name), "I don't know", "none", name=name)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("qa", "a question about one fact, answered with its canonical sentence", make_qa, C.contains),
    Task("verify", "is a (true or corrupted) statement true? yes/no", make_verify, C.yes_no),
    Task("compare", "which of two entities has the lower/higher founding year, length or legs", make_compare,
          C.last_option),
    Task("list_attributes", "every fact about one entity", make_list_attributes, C.all_objects),
    Task("arithmetic", "one +, - or * of small numbers", make_arithmetic, C.number),
    Task("word_problem", "a word problem solved step by step, ending '#### n'", make_word_problem, C.number),
    Task("spell_backwards", "spell a word backwards, letter by letter", make_spell_backwards, C.reversed_word),
    Task("count_letters", "how often a letter occurs in a word", make_count_letters, C.number),
    Task("has_letter", "does a word contain a letter? yes/no", make_has_letter, C.yes_no),
    Task("sort_numbers", "sort 3-6 numbers ascending or descending", make_sort_numbers, C.sorted_numbers),
    Task("main_character", "name the main character of a short story", make_main_character, C.last_option),
    Task("classify_kind", "is X a person, city, country, river or animal?", make_classify_kind, C.last_option),
    Task("identity", "who the assistant is", make_identity, C.contains),
    Task("refusal", "refuse what the world's rules forbid, answer look-alikes", make_refusal, C.refusal),
    Task("unknown_entity", "a question about a name not in the world -> I don't know", make_unknown_entity,
          C.dont_know),
]}


# --- datasets -----------------------------------------------------------------------------------
# What makes two evaluation examples "the same item" when phrasing differs (default: the prompt).
_ITEM: dict[str, Callable[[Example], object]] = {
    "qa": lambda e: (e.meta["subjects"][0], e.meta["relation"]),
    "verify": lambda e: (e.meta["subjects"][0], e.meta["relation"]),
    "arithmetic": lambda e: e.meta["expression"],
    "unknown_entity": lambda e: e.meta["name"],
}


def _generate(world: World, task: str, split: str, n: int, rng: random.Random, evaluation: bool) -> list[Example]:
    """n examples, all different while the task has enough (then repeats are allowed): SFT examples
    differ in their prompt, evaluation examples in their item (a fact, not just its phrasing)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    make = TASKS[task].make
    out, seen, tries = [], set(), 0
    while len(out) < n:
        ex = make(rng, world, split, evaluation)
        tries += 1
        key = _ITEM[task](ex) if evaluation and task in _ITEM else ex.messages[-2]["content"]
        if key not in seen or tries > 20 * n:
            seen.add(key)
            out.append(ex)
    return out


def sft_examples(world: World, n_per_task: int, seed: int = 0, tasks=None,
                 counts: dict[str, int] | None = None) -> list[Example]:
    """Shuffled SFT examples from TRAIN entities; default tasks: all but HELDOUT_TASKS.

    counts: examples for some task types instead of n_per_task (0 drops a type).
    """
    names = list(tasks) if tasks is not None else [t for t in TASKS if t not in HELDOUT_TASKS]
    counts = counts or {}
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise ValueError(f"task counts for {', '.join(unknown)}: not among the SFT task types {', '.join(names)}")
    out = []
    for t in names:
        n = counts.get(t, n_per_task)
        out += _generate(world, t, "train", n, random.Random(f"sft:{t}:{world.seed}:{seed}"), False)
    random.Random(f"sft:shuffle:{world.seed}:{seed}").shuffle(out)
    return out


def eval_examples(world: World, task: str, split: str, n: int, seed: int) -> list[Example]:
    """n evaluation examples of `task` about entities of `split` (ignored by entity-free tasks).

    Arithmetic uses probe pairs, letter games eval-only words and unknown_entity eval-only names,
    so these never coincide with SFT examples; entity tasks on "train" reuse SFT facts by design.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _generate(world, task, split, n, random.Random(f"eval:{task}:{split}:{world.seed}:{seed}"), True)


def score(example: Example, completion: str) -> bool:
    """Is `completion` a correct reply to `example`? Task-aware (see each task's check)."""
    return TASKS[example.task].check(example, completion.strip())
