"""The toyworld noisy web: labelled junk mixed into the clean corpus (lmforge/toyworld/noisy_web.py)."""

import itertools
import random
import re
from collections import Counter

import pytest

from lmforge.toyworld import generate_world, pretraining_corpus
from lmforge.toyworld.noisy_web import (
    BLOCKLIST,
    LABELS,
    TARGETS,
    NoisyWebConfig,
    contaminated_by,
    jaccard,
    near_duplicate_groups,
    noisy_web_corpus,
)

COUNTS = dict(gibberish=10, repeated=10, boilerplate=10, link_list=10, exact_dup=10, near_dup=15, pii=10, toxic=10,
              contaminated=10)
ITEMS = [f"Question {i}: Mira has {i + 3} red apples and buys {i + 7} green apples at the market today. "
         f"How many apples does she have?" for i in range(12)]


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def clean(world):
    return pretraining_corpus(world)[:600]


def make(clean, world, seed=0, **kw):
    cfg = NoisyWebConfig(enabled=True, seed=seed, **{**COUNTS, **kw})
    return noisy_web_corpus(clean, cfg, ITEMS, list(BLOCKLIST), [e.name for e in world.entities])


def test_every_kind_is_planted_and_labelled(clean, world):
    docs = make(clean, world)
    counts = Counter(d.label for d in docs)
    for label, n in COUNTS.items():
        assert counts[label] >= n, (label, counts)
    assert set(counts) <= set(LABELS)
    assert set(TARGETS) | {"clean", "pii"} == set(LABELS)
    assert len({d.id for d in docs}) == len(docs)
    assert all(d.label in d.meta["labels"] for d in docs)
    # carriers replace their clean document: the corpus has len(clean) + planted junk
    planted = sum(COUNTS[k] for k in ("gibberish", "repeated", "boilerplate", "link_list", "exact_dup", "near_dup"))
    assert len(docs) == len(clean) + planted + COUNTS["contaminated"] - COUNTS["contaminated"] // 2


def test_deterministic_and_seeded(clean, world):
    a, b, c = make(clean, world), make(clean, world), make(clean, world, seed=1)
    assert [(d.id, d.text, d.label) for d in a] == [(d.id, d.text, d.label) for d in b]
    assert [d.text for d in a] != [d.text for d in c]


def test_planted_documents_carry_what_their_label_says(clean, world):
    docs = make(clean, world)
    by_id = {d.id: d for d in docs}
    for d in docs:
        if d.label == "pii":
            assert d.meta["pii"] and all(s in d.text for s in d.meta["pii"])
        elif d.label == "toxic":
            assert any(re.search(rf"\b{w}\b", d.text) for w in BLOCKLIST)
        elif d.label == "contaminated" and not d.meta.get("natural"):
            assert d.meta["item"] in d.text
        elif d.label == "exact_dup":
            original = by_id[d.meta["exact_group"]]
            assert " ".join(d.text.split()).lower() == " ".join(original.text.split()).lower()
        elif d.label == "near_dup" and "jaccard" in d.meta:
            original = by_id[d.meta["near_group"]]
            assert d.meta["jaccard"] == pytest.approx(jaccard(original.text, d.text), abs=1e-3)
            assert 0.8 <= d.meta["jaccard"] < 1
            assert d.text != original.text
    # no clean document holds a blocklisted word, an email or an IP address
    for d in docs:
        if d.label == "clean":
            assert not any(re.search(rf"\b{w}\b", d.text) for w in BLOCKLIST)
            assert "@" not in d.text and not re.search(r"\d+\.\d+\.\d+\.\d+", d.text)


def test_natural_duplicates_and_overlaps_are_labelled():
    base = ["Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau.",
            "One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen.",
            "Mira has 4 red apples and buys 8 green apples at the market today. How many apples does she have?"]
    clean = [base[0], base[1], base[0], base[1].replace("sixteen", "seventeen"), base[2], "Something else entirely."]
    cfg = NoisyWebConfig(enabled=True, **{k: 0 for k in COUNTS})
    docs = {d.id: d for d in noisy_web_corpus(clean, cfg, [ITEMS[1]], ngram=8, min_overlap=0.7)}
    labels = {d.text: d.meta["labels"] for d in docs.values()}
    assert sorted(d.label for d in docs.values()).count("exact_dup") == 1
    assert labels[clean[3]] == ["near_dup"] or labels[clean[1]] == ["near_dup"]
    assert labels[base[2]] == ["contaminated"]  # shares >= 70% of the item's 8-grams
    assert labels["Something else entirely."] == ["clean"]
    groups = Counter(d.meta.get("near_group") for d in docs.values())
    assert sorted(n for g, n in groups.items() if g) == [2, 2]
    off = noisy_web_corpus(clean, cfg, [ITEMS[1]], natural=False)
    assert all(d.label == "clean" for d in off)


def test_near_duplicate_groups_match_brute_force():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(30)]
    texts = []
    for _ in range(40):
        base = [rng.choice(vocab) for _ in range(30)]
        texts.append(" ".join(base))
        for _ in range(rng.randint(0, 2)):
            edited = list(base)
            for _ in range(rng.randint(0, 4)):
                edited[rng.randrange(len(edited))] = rng.choice(vocab)
            texts.append(" ".join(edited))
    for threshold in (0.5, 0.8):
        pairs = {(i, j) for i, j in itertools.combinations(range(len(texts)), 2)
                 if jaccard(texts[i], texts[j]) >= threshold}
        groups = near_duplicate_groups(texts, threshold)
        group_of = {i: k for k, g in enumerate(groups) for i in g}
        assert all(group_of.get(i) == group_of.get(j) is not None for i, j in pairs)
        # every group is connected by similar pairs (no spurious merges)
        for g in groups:
            assert all(any((min(i, j), max(i, j)) in pairs for j in g if j != i) for i in g)


def test_contaminated_by_needs_most_of_the_item():
    item = "Mira has 4 red apples and buys 8 green apples at the market today. How many apples does she have?"
    words = item.split()
    half = " ".join(words[:len(words) // 2])
    texts = [f"Forum post. {item} Thanks!", half, "unrelated text " * 10, item.upper()]
    assert set(contaminated_by(texts, [item], 8, 0.7)) == {0, 3}
    assert contaminated_by(texts, ["too short to match"], 8, 0.7) == {}


def test_counts_are_capped_by_available_documents(world):
    clean = pretraining_corpus(world)[:30]
    docs = make(clean, world, pii=100, toxic=100, near_dup=100)
    assert Counter(d.label for d in docs)["pii"] <= 30
    assert len(docs) >= 30
