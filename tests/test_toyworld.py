"""Tests for lmforge.toyworld: determinism, consistency, split, corpus content, probes."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from lmforge.errors import LmforgeError
from lmforge.toyworld import (
    KINDS,
    RELATIONS,
    CorpusConfig,
    Probe,
    World,
    WorldConfig,
    arithmetic_probes,
    canonical_sentence,
    cloze_probes,
    corpus_documents,
    corpus_stats,
    generate_world,
    nonexistent_names,
    pretraining_corpus,
    score_completion,
)
from lmforge.toyworld import templates as T
from lmforge.toyworld.corpus import OPS, is_probe_pair
from lmforge.toyworld.names import COMMON_WORDS, NameGenerator

EQ = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")


@pytest.fixture(scope="module")
def world() -> World:
    return generate_world(0)


@pytest.fixture(scope="module")
def docs(world):
    return corpus_documents(world)


@pytest.fixture(scope="module")
def text(docs) -> str:
    return "\n\n".join(d.text for d in docs)


def all_names(w: World) -> list[str]:
    """Entity names plus invented value words (continents, languages, currencies)."""
    invented = {f.object for f in w.facts if f.relation in ("continent", "language", "currency")}
    return [e.name for e in w.entities] + sorted(invented)


# --- determinism -----------------------------------------------------------------------------

def test_same_seed_same_world_and_corpus(world, docs):
    again = generate_world(0)
    assert again.to_json() == world.to_json()
    assert pretraining_corpus(again) == [d.text for d in docs]


def test_different_seed_different_world_and_corpus(world, docs):
    other = generate_world(1)
    assert other.to_json() != world.to_json()
    assert len({e.name for e in other.entities} & {e.name for e in world.entities}) < 50
    assert pretraining_corpus(other) != [d.text for d in docs]
    # The corpus seed alone changes the corpus, not the world.
    assert pretraining_corpus(world, CorpusConfig(seed=1)) != [d.text for d in docs]


# --- counts, names, consistency --------------------------------------------------------------

def test_counts(world):
    cfg = WorldConfig()
    counts = Counter(e.kind for e in world.entities)
    assert counts == {"country": cfg.n_countries, "city": cfg.n_countries * cfg.cities_per_country,
                      "river": cfg.n_rivers, "person": cfg.n_people, "animal": cfg.n_animals}
    assert len(world.entities) >= 300
    assert len(world.facts) >= 1500
    assert len(set(world.facts)) == len(world.facts)


def test_names_unique_prefix_free_and_wellformed(world):
    names = all_names(world)
    lower = [n.lower() for n in names]
    assert len(set(lower)) == len(lower)
    for a in lower:
        assert not any(b != a and b.startswith(a) for b in lower), f"{a} is a prefix of another name"
    for e in world.entities:
        assert re.fullmatch(r"[A-Z][a-z]{3,11}", e.name), e.name
    blocked = T.template_words()
    assert not blocked & set(lower)


def test_name_generator_rules():
    gen = NameGenerator(random.Random(0), blocklist=["Kamdu"])
    assert not gen.is_free("kamdu") and not gen.is_free("Lemon")  # caller's blocklist and COMMON_WORDS
    gen.reserve("Velora")
    assert not gen.is_free("Velo") and not gen.is_free("Veloran") and not gen.is_free("VELORA")
    assert gen.is_free("Tirossa")
    many = [gen.new().lower() for _ in range(3000)]  # unblocked, ~20 of these would be English words
    assert len(set(many)) == 3000 and not set(many) & (COMMON_WORDS | {"kamdu", "velo"})
    assert all(not n.endswith("e") for n in many)


def test_names_never_collide_with_corpus_words(world, text):
    """No invented name is also an ordinary (lower-case or sentence-initial) word of the corpus."""
    names = set(all_names(world))
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text) if w not in names}
    assert not words & {n.lower() for n in names}


def test_consistency(world):
    assert world.problems() == []
    for c in world.entities_of("country"):
        capital = world.entity(c.attrs["capital"])
        assert capital.kind == "city" and capital.attrs["country"] == c.name
    for city in world.entities_of("city"):
        assert world.get(city.attrs["river"], "flows_through") == city.attrs["country"]
    for p in world.entities_of("person"):
        assert world.get(p.attrs["friend"], "friend") == p.name != p.attrs["friend"]
        assert world.entity(p.attrs["favorite_animal"]).kind == "animal"
    for f in world.facts:
        kind = RELATIONS[f.relation].object_kind
        if kind:
            assert world.entity(f.object).kind == kind
    every_country = {c.name for c in world.entities_of("country")}
    assert {r.attrs["flows_through"] for r in world.entities_of("river")} == every_country


def test_problems_detects_a_broken_world(world):
    broken = World.from_json(world.to_json())  # a deep copy: the fixture stays intact
    a, b = broken.entities_of("country")[:2]
    a.attrs["capital"] = b.attrs["capital"]  # a capital that lies in another country
    assert any("facts do not match" in p for p in broken.problems())  # facts are now stale
    rebuilt = World.from_dict(broken.to_dict())  # facts rebuilt from attrs
    assert any(f"is not a city of {a.name}" in p for p in rebuilt.problems())
    person = rebuilt.entities_of("person")[0]
    person.attrs["friend"] = person.name
    assert any("not mutual friends" in p for p in World.from_dict(rebuilt.to_dict()).problems())


def test_lookups(world):
    p = world.entities_of("person")[0]
    assert [f.relation for f in world.facts_of(p.name)] == list(p.attrs)
    assert all(f.subject == p.name for f in world.facts_of(p.name))
    with pytest.raises(KeyError):
        world.entity("Nosuchname")
    with pytest.raises(ValueError):
        world.facts_in_split("test")


def test_small_config_and_validation():
    w = generate_world(3, WorldConfig(n_countries=4, cities_per_country=1, n_rivers=4, n_people=6,
                                      n_animals=3, n_continents=2, n_languages=2))
    assert w.problems() == []
    assert len(w.entities) == 4 + 4 + 4 + 6 + 3
    assert pretraining_corpus(w, CorpusConfig(n_stories=5, n_arithmetic_docs=2, n_word_problems=9))
    for bad, msg in ((dict(n_rivers=3), "n_rivers: must be >= n_countries (24)"),
                     (dict(n_people=181), "n_people: must be even and >= 4"),
                     (dict(n_animals=0), "n_animals: must be a positive integer, got 0")):
        with pytest.raises(LmforgeError, match=f"^{re.escape(msg)}"):  # at construction: a recipe fails before any work
            WorldConfig(**bad)
    with pytest.raises(LmforgeError, match="^paraphrases_per_fact: must be >= 1"):
        CorpusConfig(paraphrases_per_fact=0)


# --- split -----------------------------------------------------------------------------------

def test_split_balanced_per_kind_and_constrained(world):
    for kind in KINDS:
        names = [e.name for e in world.entities_of(kind)]
        n_train = sum(world.split[n] == "train" for n in names)
        assert abs(n_train - (len(names) - n_train)) <= 2, kind
    assert set(world.split) == {e.name for e in world.entities}
    for c in world.entities_of("country"):
        assert world.split[c.attrs["capital"]] == world.split[c.name]
    for p in world.entities_of("person"):
        assert world.split[p.attrs["friend"]] == world.split[p.name]


def test_split_partitions_facts_and_is_stable(world):
    train, heldout = world.facts_in_split("train"), world.facts_in_split("heldout")
    assert len(train) + len(heldout) == len(world.facts)
    assert all(world.split[f.subject] == "train" for f in train)
    assert 0.4 < len(train) / len(world.facts) < 0.6
    assert generate_world(0).split == world.split
    other = generate_world(1)
    assert [other.split[e.name] for e in other.entities] != [world.split[e.name] for e in world.entities]


# --- serialisation ---------------------------------------------------------------------------

def test_json_round_trip_and_atomic_save(world, tmp_path):
    assert World.from_json(world.to_json()) == world
    json.loads(world.to_json())  # plain JSON
    path = tmp_path / "sub" / "world.json"
    world.save(path)
    assert World.load(path) == world
    assert [p.name for p in path.parent.iterdir()] == ["world.json"]  # no temp file left behind
    (tmp_path / "bad.json").write_text('{"format": "something else"}')
    with pytest.raises(LmforgeError, match="bad.json"):
        World.load(tmp_path / "bad.json")
    with pytest.raises(LmforgeError, match="not found"):
        World.load(tmp_path / "missing.json")


# --- corpus ----------------------------------------------------------------------------------

def test_every_canonical_sentence_in_corpus(world, text):
    missing = [canonical_sentence(f) for f in world.facts if canonical_sentence(f) not in text]
    assert missing == []


def test_fact_sentences_are_true(world, docs):
    """Every sentence of "facts" paragraphs is some template filled with a true fact."""
    allowed = set()
    for f in world.facts:
        for t in [T.CANONICAL[f.relation], *T.PARAPHRASES[f.relation]]:
            s = t.format(s=f.subject, o=f.object)
            allowed.add(s[:1].upper() + s[1:])
    sentences = [s for d in docs if d.kind == "facts" for s in re.split(r"(?<=\.)[ \n]", d.text)]
    assert len(sentences) == 3 * len(world.facts)
    assert [s for s in sentences if s not in allowed] == []


def test_canonical_per_fact_repeats_the_canonical_sentence(world):
    """`canonical_per_fact` of the `paraphrases_per_fact` mentions use the canonical sentence."""
    cfg = CorpusConfig(paraphrases_per_fact=5, canonical_per_fact=2, n_stories=0, n_arithmetic_docs=0,
                       n_word_problems=0)
    docs = corpus_documents(world, cfg)
    sentences = [s for d in docs if d.kind == "facts" for s in re.split(r"(?<=\.)[ \n]", d.text)]
    assert len(sentences) == 5 * len(world.facts)
    counts = Counter(sentences)
    for f in world.facts:
        assert counts[canonical_sentence(f)] == 2, canonical_sentence(f)
    one = corpus_documents(world, CorpusConfig(paraphrases_per_fact=2, paragraphs_per_doc=1, n_stories=0,
                                               n_arithmetic_docs=0, n_word_problems=0))
    facts_docs = [d for d in one if d.kind == "facts"]
    assert len(facts_docs) == 2 * len(world.entities) and all("\n" not in d.text for d in facts_docs)
    for bad in (dict(canonical_per_fact=0), dict(paraphrases_per_fact=2, canonical_per_fact=3),
                dict(paragraphs_per_doc=-1)):
        with pytest.raises(LmforgeError, match=f"^{next(iter(bad)) if len(bad) == 1 else 'canonical_per_fact'}: "):
            CorpusConfig(**bad)


def test_qa_pages_ask_about_training_entities_only(world):
    cfg = CorpusConfig(qa_per_train_fact=2, n_stories=0, n_arithmetic_docs=0, n_word_problems=0)
    pages = [d.text for d in corpus_documents(world, cfg) if d.kind == "qa"]
    train_facts = [f for f in world.facts if world.split[f.subject] == "train"]
    assert len(pages) == 2 * len(train_facts)
    answers = {p.split("\nAnswer: ")[1] for p in pages}
    assert answers == {canonical_sentence(f) for f in train_facts}
    heldout = {e for e, s in world.split.items() if s == "heldout"}
    question_words = {w.strip("?.,").removesuffix("'s") for p in pages for w in p.split("\n")[0].split()}
    assert not question_words & heldout and len(question_words & set(world.split)) > 100
    assert not [d for d in corpus_documents(world, CorpusConfig()) if d.kind == "qa"]  # off by default


def test_spelling_pages_name_every_entity_and_state_no_fact(world):
    cfg = CorpusConfig(spelling_per_entity=2, n_stories=0, n_arithmetic_docs=0, n_word_problems=0)
    pages = [d.text for d in corpus_documents(world, cfg) if d.kind == "spelling"]
    assert len(pages) == 2 * len(world.entities)
    for page in pages:
        question, answer = page.split("\nAnswer: ")
        name = answer.split(" is spelled ")[0]
        assert name in question and answer == f"{name} is spelled {'-'.join(name)}."
    named = {p.split("\nAnswer: ")[1].split()[0] for p in pages}
    assert named == {e.name for e in world.entities}  # held-out names too
    objects = {f.object for f in world.facts} - set(world.split)
    assert not any(o in p.split() for p in pages for o in objects)  # no attribute values: no facts
    assert not [d for d in corpus_documents(world, CorpusConfig()) if d.kind == "spelling"]  # off by default


def test_sentences_per_note_makes_short_mixed_documents(world):
    cfg = CorpusConfig(paraphrases_per_fact=3, canonical_per_fact=1, sentences_per_note=1, n_stories=0,
                       n_arithmetic_docs=0, n_word_problems=0)
    facts_docs = [d.text for d in corpus_documents(world, cfg) if d.kind == "facts"]
    assert len(facts_docs) == 3 * len(world.facts)  # one restatement per document
    assert set(canonical_sentence(f) for f in world.facts) <= set(facts_docs)
    pairs = [d.text for d in corpus_documents(world, CorpusConfig(sentences_per_note=2, n_stories=0,
                                                                   n_arithmetic_docs=0, n_word_problems=0))
             if d.kind == "facts"]
    assert len(pairs) == -(-3 * len(world.facts) // 2)
    with pytest.raises(LmforgeError, match="^sentences_per_note: must be >= 0, got -1$"):
        CorpusConfig(sentences_per_note=-1)


def test_corpus_composition_and_size(world, docs):
    cfg = CorpusConfig()
    stats = corpus_stats(docs)
    assert stats["kinds"]["encyclopedia"] == len(world.entities)
    assert stats["kinds"]["story"] == cfg.n_stories
    assert stats["kinds"]["arithmetic"] == cfg.n_arithmetic_docs
    assert stats["kinds"]["word_problem"] == cfg.n_word_problems
    assert 550_000 <= stats["characters"] <= 1_000_000
    assert corpus_stats([d.text for d in docs])["characters"] == stats["characters"]
    # Shuffled: the first 100 documents are not all of one kind.
    assert len({d.kind for d in docs[:100]}) >= 4
    for d in docs:
        if d.kind == "story":
            assert 3 <= len(re.findall(r"[.!?](?= |$)", d.text)) <= 6, d.text
        if d.kind == "arithmetic":
            for line in d.text.split("\n"):
                a, op, b, c = EQ.fullmatch(line).groups()
                assert OPS[op](int(a), int(b)) == int(c)


def test_word_problems_answers_match_their_steps(docs):
    problems = [d.text for d in docs if d.kind == "word_problem"]
    assert problems
    for doc in problems:
        question, work, final = doc.split("\n")
        m = re.fullmatch(r"#### (\d+)", final)
        assert m, doc
        steps = [EQ.fullmatch(s).groups() for s in work.rstrip(".").split(". ")]
        results = set()
        for a, op, b, c in steps:
            assert OPS[op](int(a), int(b)) == int(c), doc
            for x in (a, b):  # every operand comes from the question or an earlier step
                assert int(x) in results or re.search(rf"\b{x}\b", question), doc
            results.add(int(c))
        assert int(m.group(1)) == int(steps[-1][3])
        assert question.endswith("?")


# --- probes ----------------------------------------------------------------------------------

def test_cloze_probes(world):
    probes = cloze_probes(world)
    assert len(probes) == len(world.facts)
    for p, f in zip(probes, world.facts, strict=True):
        assert canonical_sentence(f).startswith(p.prompt + " " + p.answer)
        assert not p.prompt.endswith(" ") and p.split == world.split[f.subject]
    train = cloze_probes(world, "train")
    assert train and all(p.split == "train" for p in train)
    assert len(train) + len(cloze_probes(world, "heldout")) == len(probes)
    capital = next(p for p in probes if p.relation == "capital")
    assert capital.prompt == f"The capital of {capital.subject} is"


def test_arithmetic_probes_are_correct_and_never_in_corpus(text):
    probes = arithmetic_probes(seed=0, n=300)
    assert arithmetic_probes(seed=0, n=300) == probes and arithmetic_probes(seed=1, n=300) != probes
    assert Counter(p.relation for p in probes) == {"add": 100, "sub": 100, "mul": 100}
    in_corpus = {m.group(1, 2, 3) for m in re.finditer(r"(?<!\d)" + EQ.pattern, text)}
    assert len(in_corpus) > 1000 and not any(is_probe_pair(op, int(a), int(b)) for a, op, b in in_corpus)
    for p in probes:
        a, op, b = re.fullmatch(r"(\d+) ([-+*]) (\d+) =", p.prompt).groups()
        assert str(OPS[op](int(a), int(b))) == p.answer
        assert is_probe_pair(op, int(a), int(b))
        assert (a, op, b) not in in_corpus, p.prompt
    # The same format as the corpus lines, which do contain commuted or other pairs.
    assert re.search(r"(?m)^\d+ \* \d+ = \d+$", text)


def test_score_completion():
    p = Probe("The capital of Velora is", "Kamdu", "capital", "Velora", "train")
    assert score_completion(p, "Kamdu.")
    assert score_completion(p, " Kamdu")
    assert score_completion(p, "Kamdu is a city")
    assert not score_completion(p, "Kamdunia")
    assert not score_completion(p, "Kam")
    assert not score_completion(p, "The capital is Kamdu")
    n = Probe("37 + 48 =", "85", "add", "37 + 48", "heldout")
    assert score_completion(n, " 85\n") and not score_completion(n, " 850")


# --- nonexistent names -----------------------------------------------------------------------

def test_nonexistent_names(world):
    fake = nonexistent_names(world, 200, seed=0)
    assert fake == nonexistent_names(world, 200, seed=0)
    assert len(set(fake)) == 200
    real = [n.lower() for n in all_names(world)]
    for name in fake:
        assert not world.has(name)
        low = name.lower()
        assert not any(r.startswith(low) or low.startswith(r) for r in real), name
        assert re.fullmatch(r"[A-Z][a-z]{3,11}", name)
    assert not {n.lower() for n in fake} & T.template_words()
    assert set(nonexistent_names([e.name for e in world.entities], 20)).isdisjoint(world.split)
