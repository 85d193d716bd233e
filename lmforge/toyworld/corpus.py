"""The pretraining corpus of the toy world: a pure function of (world, config).

Five kinds of documents, shuffled together:
- "encyclopedia": one entry per entity, a title line then its facts in random order and
  random phrasing, plus inverse listings ("The cities of Velora are ...");
- "facts": short paragraphs restating each fact `paraphrases_per_fact` more times; the first
  `canonical_per_fact` restatements (default 1) are the relation's canonical sentence (the one
  the probes cut), the rest are other paraphrases; `paragraphs_per_doc` paragraphs per document
  (default: 2 to 4 at random). Seeing one fact in many phrasings is what makes it retrievable by
  new questions later (Allen-Zhu & Li, "Physics of Language Models 3.1"; knowledge augmentation);
- "story": 3-6 sentences about one person that use their facts in passing;
- "arithmetic": lines like "37 + 48 = 85";
- "word_problem": a question about world entities, its steps ("12 + 7 = 19. 19 - 4 = 15.")
  and a last line "#### 15" (the GSM8K convention).

Every sentence is true of the world. Each part draws from its own random stream, so changing
`n_stories` does not change the arithmetic documents. Equations whose operands are "probe
pairs" (`is_probe_pair`) never appear anywhere in the corpus: the arithmetic probes use only
those, so they measure generalisation rather than recall.
"""

from __future__ import annotations

import operator
import random
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from lmforge.errors import FieldError
from lmforge.toyworld import templates as T
from lmforge.toyworld.phrasings import QUESTIONS
from lmforge.toyworld.world import World, canonical_sentence

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
# Operand ranges of the arithmetic lines and probes: (first, second) for "+" and "*"; for "-"
# the second operand is drawn in 1..min(first, 99) so no result is negative.
RANGES = {"+": ((0, 99), (0, 99)), "-": ((10, 199), (1, 99)), "*": ((2, 12), (2, 12))}


def is_probe_pair(op: str, a: int, b: int) -> bool:
    """About 1 in 6 ordered operand pairs is reserved for the probes and never written in the corpus.

    The rule hashes the ordered pair, so "7 * 8" may be a probe while "8 * 7" is in the corpus.
    """
    return zlib.crc32(f"{a} {op} {b}".encode()) % 6 == 0


def draw_operands(rng: random.Random, op: str, probe: bool) -> tuple[int, int]:
    """Operands in RANGES[op]: a probe pair if `probe`, else a pair the corpus may use."""
    (lo1, hi1), (lo2, hi2) = RANGES[op]
    while True:
        a = rng.randint(lo1, hi1)
        b = rng.randint(lo2, min(hi2, a) if op == "-" else hi2)
        if is_probe_pair(op, a, b) == probe:
            return a, b


def equation(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {OPS[op](a, b)}"


@dataclass
class CorpusConfig:
    paraphrases_per_fact: int = 3     # mentions in "facts" documents; the first is canonical
    canonical_per_fact: int = 1       # how many of those mentions use the canonical sentence (the rest
                                      # cycle through the other paraphrases)
    paragraphs_per_doc: int = 0       # "facts" paragraphs per document; 0: 2 to 4 at random
    sentences_per_note: int = 0       # >0: "facts" documents are this many sentences drawn from all
                                      # entities (1: every restatement is its own document) instead of
                                      # one paragraph per entity
    qa_per_train_fact: int = 0        # "Question: ... Answer: <canonical sentence>" documents per fact of a
                                      # *training* entity: web text is full of Q&A pages, and seeing some lets
                                      # a model learn to answer from what it stored (held-out entities: never)
    encyclopedia_per_entity: int = 1  # entries per entity (each copy re-drawn phrasings and order): an
                                      # entry names its subject in every sentence, which is where a model
                                      # learns to copy a name it has read, for every entity alike
    spelling_per_entity: int = 0      # "Question: How do you spell X?" pages for every name, held-out ones
                                      # too: the answer starts by repeating the name the question asked
                                      # about, which is the step answering any question about X needs.
                                      # They state no fact, so held-out facts still appear only in statements.
    n_stories: int = 1080             # 6 per person with the default world
    n_arithmetic_docs: int = 400
    arithmetic_lines_per_doc: int = 10  # on average; each document has 0.5x to 1.5x this many
    n_word_problems: int = 720        # 80 of each of the 9 kinds
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.paraphrases_per_fact < 1:
            raise FieldError("paraphrases_per_fact", "must be >= 1 (the canonical sentence of every fact must "
                             f"appear), got {self.paraphrases_per_fact}")
        for key in ("encyclopedia_per_entity", "arithmetic_lines_per_doc"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        for key in ("n_stories", "n_arithmetic_docs", "n_word_problems", "qa_per_train_fact",
                    "spelling_per_entity", "paragraphs_per_doc", "sentences_per_note"):
            if getattr(self, key) < 0:
                raise FieldError(key, f"must be >= 0, got {getattr(self, key)}")
        if not 1 <= self.canonical_per_fact <= self.paraphrases_per_fact:
            raise FieldError("canonical_per_fact", "must be in 1..paraphrases_per_fact "
                             f"({self.paraphrases_per_fact}), got {self.canonical_per_fact}")


@dataclass(frozen=True)
class Document:
    kind: str  # encyclopedia | facts | story | arithmetic | word_problem
    text: str


def _cap(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _say(rng: random.Random, relation: str, s: str, o: str, canonical: bool = False) -> str:
    options = [T.CANONICAL[relation]] if canonical else [T.CANONICAL[relation], *T.PARAPHRASES[relation]]
    return _cap(rng.choice(options).format(s=s, o=o))


def _encyclopedia(rng: random.Random, world: World, copies: int = 1) -> list[Document]:
    cities_of: dict[str, list[str]] = {}
    cities_on: dict[str, list[str]] = {}
    for city in world.entities_of("city"):
        cities_of.setdefault(city.attrs["country"], []).append(city.name)
        cities_on.setdefault(city.attrs["river"], []).append(city.name)
    capital_of = {c.attrs["capital"]: c.name for c in world.entities_of("country")}
    docs = []
    for e in [e for _ in range(copies) for e in world.entities]:
        sents = [_say(rng, r, e.name, o) for r, o in e.attrs.items()]
        if e.kind == "country" and len(cities_of[e.name]) > 1:
            sents.append(T.CITIES_OF.format(s=e.name, list=_join(cities_of[e.name])))
        elif e.kind == "city" and e.name in capital_of:
            sents.append(T.CAPITAL_OF.format(s=e.name, country=capital_of[e.name]))
        elif e.kind == "river" and e.name in cities_on:
            sents.append(T.CITIES_ON.format(s=e.name, list=_join(cities_on[e.name])))
        rng.shuffle(sents)
        body = " ".join([T.INTRO[e.kind].format(s=e.name), *sents])
        docs.append(Document("encyclopedia", f"{e.name}\n{body}"))
    return docs


def _fact_notes(rng: random.Random, world: World, mentions: int, canonical: int = 1,
                per_doc: int = 0, sentences: int = 0) -> list[Document]:
    paragraphs = []
    loose: list[str] = []  # restatements as separate sentences, when sentences > 0
    for e in world.entities:
        # Per fact: the canonical sentence `canonical` times, then distinct paraphrases while they
        # last (cycling when there are more mentions than paraphrases).
        phrasings = {}
        for r in e.attrs:
            extra = list(T.PARAPHRASES[r])
            rng.shuffle(extra)
            phrasings[r] = [T.CANONICAL[r]] * canonical + [extra[i % len(extra)] for i in range(mentions - canonical)]
        for i in range(mentions):
            rels = list(e.attrs)
            rng.shuffle(rels)
            said = [_cap(phrasings[r][i].format(s=e.name, o=e.attrs[r])) for r in rels]
            if sentences:
                loose.extend(said)
            else:
                paragraphs.append(" ".join(said))
    if sentences:
        # Short notes mixing entities: a fact must be recalled from its subject alone, the way a
        # probe asks for it, not continued from the other facts of the same entity.
        rng.shuffle(loose)
        return [Document("facts", " ".join(loose[i:i + sentences])) for i in range(0, len(loose), sentences)]
    rng.shuffle(paragraphs)
    docs = []
    while paragraphs:
        k = per_doc or rng.randint(2, 4)
        docs.append(Document("facts", "\n".join(paragraphs[:k])))
        paragraphs = paragraphs[k:]
    return docs


def _story_slots(world: World, p: str) -> dict[str, str]:
    a = world.entity(p).attrs
    animal = world.entity(a["favorite_animal"]).attrs
    return {"p": p, "born": a["born_in"], "born_country": world.get(a["born_in"], "country"),
            "born_product": world.get(a["born_in"], "known_for"), "lives": a["lives_in"],
            "lives_country": world.get(a["lives_in"], "country"),
            "lives_river": world.get(a["lives_in"], "river"),
            "prof": a["profession"], "hobby": a["hobby"], "friend": a["friend"],
            "friend_prof": world.get(a["friend"], "profession"), "animal": a["favorite_animal"],
            "color": animal["color"], "diet": animal["diet"], "habitat": animal["habitat"]}


def _qa_pages(rng: random.Random, world: World, per_fact: int) -> list[Document]:
    """Q&A documents about training-split facts only, in the phrasings of the qa instruction task."""
    docs = []
    for f in world.facts:
        if world.split[f.subject] != "train":
            continue
        for _ in range(per_fact):
            q = rng.choice(QUESTIONS[f.relation]).format(s=f.subject)
            docs.append(Document("qa", f"Question: {q}\nAnswer: {canonical_sentence(f)}"))
    return docs


def _spelling_pages(rng: random.Random, world: World, per_entity: int) -> list[Document]:
    """Q&A documents that ask how a name is spelled, for every entity of both splits."""
    docs = []
    for e in [e for _ in range(per_entity) for e in world.entities]:
        q = rng.choice(T.SPELL_QUESTIONS).format(s=e.name)
        docs.append(Document("spelling", f"Question: {q}\nAnswer: {e.name} is spelled {'-'.join(e.name)}."))
    return docs


def _stories(rng: random.Random, world: World, n: int) -> list[Document]:
    people = [e.name for e in world.entities_of("person")]
    rng.shuffle(people)
    docs = []
    for i in range(n):
        slots = _story_slots(world, people[i % len(people)])  # every person gets a turn before any repeats
        topics = rng.sample(sorted(T.STORY_TOPICS), rng.randint(2, 4))
        sents = [rng.choice(T.STORY_OPENERS)] + [rng.choice(T.STORY_TOPICS[t]) for t in topics]
        if rng.random() < 0.5:
            sents.append(rng.choice(T.STORY_CLOSERS))
        docs.append(Document("story", " ".join(_cap(s.format(**slots)) for s in sents)))
    return docs


def _arithmetic(rng: random.Random, n: int, avg_lines: int) -> list[Document]:
    docs = []
    for _ in range(n):
        # Half the documents drill one operation (like a worksheet), half mix them.
        ops = [rng.choice("+-*")] if rng.random() < 0.5 else list("+-*")
        lines = []
        for _ in range(rng.randint(max(1, avg_lines // 2), max(1, avg_lines * 3 // 2))):
            op = rng.choice(ops)
            a, b = draw_operands(rng, op, probe=False)
            lines.append(equation(a, op, b))
        docs.append(Document("arithmetic", "\n".join(lines)))
    return docs


def _problem(rng: random.Random, world: World, kind: str) -> tuple[dict, list[tuple[int, str, int]]]:
    """Slots for T.WORD_PROBLEMS[kind] and its steps; each step's result feeds the next one."""
    p = rng.choice(world.entities_of("person"))
    city = rng.choice(world.entities_of("city"))
    animal = world.entity(p.attrs["favorite_animal"])
    s = {"p": p.name, "item": rng.choice(T.ITEMS), "friend": p.attrs["friend"], "prof": p.attrs["profession"],
         "lives": p.attrs["lives_in"], "city": city.name, "product": city.attrs["known_for"],
         "animal": animal.name, "habitat": animal.attrs["habitat"], "legs": animal.attrs["legs"]}
    r = rng.randint
    if kind == "buy_give":
        s.update(a=r(3, 30), b=r(2, 20))
        s["c"] = r(1, s["a"] + s["b"])
        return s, [(s["a"], "+", s["b"]), (s["a"] + s["b"], "-", s["c"])]
    if kind == "lose":
        s["a"] = r(5, 60)
        s["b"] = r(1, s["a"] - 1)
        return s, [(s["a"], "-", s["b"])]
    if kind == "friends_total":
        s.update(a=r(2, 40), b=r(2, 40))
        return s, [(s["a"], "+", s["b"])]
    if kind in ("wage", "market"):
        s.update(a=r(2, 15), b=r(2, 9))
        return s, [(s["a"], "*", s["b"])]
    if kind == "share":
        b, q = r(2, 6), r(2, 12)
        s.update(a=b * q, b=b)
        return s, [(b * q, "/", b)]
    if kind == "boxes":
        s.update(a=r(2, 9), b=r(2, 12), c=r(1, 20))
        return s, [(s["a"], "*", s["b"]), (s["a"] * s["b"], "+", s["c"])]
    if kind == "legs":
        s["a"] = r(2, 9)
        return s, [(s["a"], "*", int(s["legs"]))]
    if kind == "founded":
        s.update(a=int(city.attrs["founded"]), b=r(1900, 2020))
        return s, [(s["b"], "-", s["a"])]
    raise ValueError(f"unknown word problem kind {kind!r}")


def word_problem(rng: random.Random, world: World, kind: str) -> tuple[str, int]:
    """(text, answer): question, one line of steps, then "#### answer"."""
    while True:  # resample until no step uses a probe pair (about 1 in 6 steps does)
        slots, steps = _problem(rng, world, kind)
        if not any(is_probe_pair(op, a, b) for a, op, b in steps):
            break
    answer = OPS[steps[-1][1]](steps[-1][0], steps[-1][2])
    work = " ".join(equation(a, op, b) + "." for a, op, b in steps)
    return f"{T.WORD_PROBLEMS[kind].format(**slots)}\n{work}\n#### {answer}", answer


def corpus_documents(world: World, config: CorpusConfig | None = None) -> list[Document]:
    """All documents with their kind, shuffled; `pretraining_corpus` drops the kinds."""
    cfg = config or CorpusConfig()
    cfg.validate()

    def stream(part: str) -> random.Random:
        return random.Random(f"corpus:{part}:{world.seed}:{cfg.seed}")

    kinds = sorted(T.WORD_PROBLEMS)
    wp_rng = stream("word_problems")
    docs = (_encyclopedia(stream("encyclopedia"), world, cfg.encyclopedia_per_entity)
            + _fact_notes(stream("facts"), world, cfg.paraphrases_per_fact, cfg.canonical_per_fact,
                           cfg.paragraphs_per_doc, cfg.sentences_per_note)
            + _qa_pages(stream("qa"), world, cfg.qa_per_train_fact)
            + _spelling_pages(stream("spelling"), world, cfg.spelling_per_entity)
            + _stories(stream("stories"), world, cfg.n_stories)
            + _arithmetic(stream("arithmetic"), cfg.n_arithmetic_docs, cfg.arithmetic_lines_per_doc)
            + [Document("word_problem", word_problem(wp_rng, world, kinds[i % len(kinds)])[0])
               for i in range(cfg.n_word_problems)])
    stream("shuffle").shuffle(docs)
    return docs


def pretraining_corpus(world: World, config: CorpusConfig | None = None) -> list[str]:
    """The corpus as plain documents (no BOS/EOS: the data pipeline adds those)."""
    return [d.text for d in corpus_documents(world, config)]


def corpus_stats(docs: Sequence[Document | str]) -> dict:
    """Documents, characters and lines, in total and per kind (plain strings count as kind "text")."""
    kinds: Counter = Counter()
    chars: Counter = Counter()
    for d in docs:
        kind, text = (d.kind, d.text) if isinstance(d, Document) else ("text", d)
        kinds[kind] += 1
        chars[kind] += len(text)
    return {"documents": sum(kinds.values()), "characters": sum(chars.values()),
            "kinds": dict(sorted(kinds.items())), "characters_by_kind": dict(sorted(chars.items()))}
