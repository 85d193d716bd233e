"""The toy world's data model and its seeded generator.

A world is a set of entities (countries, cities, rivers, people, animals), each with one
value per relation of its kind. `Entity.attrs` is the record (relation -> object) and
`World.facts` is the same information flattened into (subject, relation, object) triples,
in a fixed order. Objects are either other entities (a city's country) or plain values
(a year, a colour, an invented currency word).

The split: every entity is "train" or "heldout", about half of each kind, and a fact
belongs to the split of its subject. Later stages build instruction data only from train
facts; heldout facts appear only in pretraining text, so asking about them measures
whether fine-tuning taught the model to *retrieve* what pretraining stored. To keep a
train fact from stating a heldout fact backwards, friends are paired within a split and a
capital city shares its country's split. Longer chains (a city's river flows through its
country) are not blocked: that would need the split to follow the whole graph.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field

from lmforge.errors import FieldError, LmforgeError
from lmforge.toyworld import templates as T
from lmforge.toyworld.names import NameGenerator

FORMAT = "lmforge.toyworld.v1"
KINDS = ("country", "city", "river", "person", "animal")
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class Relation:
    name: str
    subject_kind: str
    object_kind: str | None  # an entity kind, or None when the object is a plain value

    @property
    def canonical(self) -> str:
        return T.CANONICAL[self.name]


# In the order they appear in every entity's attrs (and hence in World.facts).
RELATIONS: dict[str, Relation] = {r.name: r for r in [
    Relation("capital", "country", "city"), Relation("continent", "country", None),
    Relation("language", "country", None), Relation("currency", "country", None),
    Relation("country", "city", "country"), Relation("river", "city", "river"),
    Relation("founded", "city", None), Relation("known_for", "city", None),
    Relation("flows_through", "river", "country"), Relation("length", "river", None),
    Relation("born_in", "person", "city"), Relation("lives_in", "person", "city"),
    Relation("profession", "person", None), Relation("favorite_animal", "person", "animal"),
    Relation("friend", "person", "person"), Relation("hobby", "person", None),
    Relation("color", "animal", None), Relation("diet", "animal", None),
    Relation("habitat", "animal", None), Relation("legs", "animal", None),
]}


def relations_of(kind: str) -> list[str]:
    return [r.name for r in RELATIONS.values() if r.subject_kind == kind]


@dataclass
class Entity:
    name: str
    kind: str
    attrs: dict[str, str]


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    object: str


def canonical_sentence(fact: Fact) -> str:
    """The one sentence per fact that the corpus always contains and the probes cut."""
    return T.CANONICAL[fact.relation].format(s=fact.subject, o=fact.object)


@dataclass
class WorldConfig:
    n_countries: int = 24
    cities_per_country: int = 3
    n_rivers: int = 30         # at least one per country; the rest go to random countries
    n_people: int = 180        # even: friends come in pairs within each split
    n_animals: int = 40
    n_continents: int = 4      # invented names, shared by countries
    n_languages: int = 8       # invented names, shared by countries; currencies are one per country

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise FieldError(key, msg)
        for key, value in asdict(self).items():
            need(isinstance(value, int) and value >= 1, key, f"must be a positive integer, got {value!r}")
        need(self.n_rivers >= self.n_countries, "n_rivers", f"must be >= n_countries ({self.n_countries}): every "
             f"city lies on a river of its own country; got {self.n_rivers}")
        need(self.n_people >= 4 and self.n_people % 2 == 0, "n_people",
             f"must be even and >= 4 (friends are pairs in each split), got {self.n_people}")
        for key in ("n_continents", "n_languages"):
            need(getattr(self, key) <= self.n_countries, key, f"must be <= n_countries ({self.n_countries}): each "
                 f"one is used by some country; got {getattr(self, key)}")


@dataclass
class World:
    seed: int
    entities: list[Entity]
    facts: list[Fact]
    split: dict[str, str]  # entity name -> "train" | "heldout"
    config: WorldConfig = field(default_factory=WorldConfig)
    _by_name: dict[str, Entity] = field(init=False, repr=False, compare=False)
    _facts_by_subject: dict[str, list[Fact]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self._by_name = {e.name: e for e in self.entities}
        self._facts_by_subject = {e.name: [] for e in self.entities}
        for f in self.facts:
            self._facts_by_subject.setdefault(f.subject, []).append(f)

    # --- queries ---
    def entity(self, name: str) -> Entity:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no entity named {name!r} in this world") from None

    def has(self, name: str) -> bool:
        return name in self._by_name

    def entities_of(self, kind: str) -> list[Entity]:
        return [e for e in self.entities if e.kind == kind]

    def facts_of(self, name: str) -> list[Fact]:
        """Facts whose subject is `name` (facts that only mention it as object are not included)."""
        self.entity(name)  # unknown names are an error, not an empty list
        return list(self._facts_by_subject[name])

    def facts_in_split(self, split: str) -> list[Fact]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [f for f in self.facts if self.split[f.subject] == split]

    def get(self, subject: str, relation: str) -> str:
        return self.entity(subject).attrs[relation]

    def reserved_words(self) -> set[str]:
        """Everything a new name must not collide with: names, value words, template words."""
        words = {e.name for e in self.entities} | {v for e in self.entities for v in e.attrs.values()}
        return words | T.template_words()

    def problems(self) -> list[str]:
        """Consistency checks; an empty list means the world is sound."""
        out = []
        if len(self._by_name) != len(self.entities):
            out.append("entity names are not unique")
        if set(self.facts) != {Fact(e.name, r, v) for e in self.entities for r, v in e.attrs.items()}:
            out.append("facts do not match entity attrs")
        for e in self.entities:
            if self.split.get(e.name) not in SPLITS:
                out.append(f"{e.name}: split is {self.split.get(e.name)!r}")
            if list(e.attrs) != relations_of(e.kind):
                out.append(f"{e.name}: relations {list(e.attrs)} != {relations_of(e.kind)}")
        for f in self.facts:
            kind = RELATIONS[f.relation].object_kind
            if kind and (not self.has(f.object) or self.entity(f.object).kind != kind):
                out.append(f"{f}: object should be a {kind}")
        if out:
            return out  # the checks below assume well-typed facts
        for c in self.entities_of("country"):
            cap = c.attrs["capital"]
            if self.get(cap, "country") != c.name:
                out.append(f"capital {cap} of {c.name} is not a city of {c.name}")
            if self.split[cap] != self.split[c.name]:
                out.append(f"capital {cap} and its country {c.name} are in different splits")
        for city in self.entities_of("city"):
            if self.get(city.attrs["river"], "flows_through") != city.attrs["country"]:
                out.append(f"{city.name} lies on a river that does not flow through its country")
        for p in self.entities_of("person"):
            friend = p.attrs["friend"]
            if friend == p.name or self.get(friend, "friend") != p.name:
                out.append(f"{p.name} and {friend} are not mutual friends")
            if self.split[friend] != self.split[p.name]:
                out.append(f"friends {p.name} and {friend} are in different splits")
        return out

    # --- serialisation: plain JSON, facts are rebuilt from attrs ---
    def to_dict(self) -> dict:
        return {"format": FORMAT, "seed": self.seed, "config": asdict(self.config),
                "entities": [{"name": e.name, "kind": e.kind, "attrs": dict(e.attrs)} for e in self.entities],
                "split": dict(self.split)}

    @classmethod
    def from_dict(cls, d: dict) -> World:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise LmforgeError(f"not a toy world: expected format {FORMAT!r}, got {got!r}")
        entities = [Entity(e["name"], e["kind"], dict(e["attrs"])) for e in d["entities"]]
        return cls(seed=d["seed"], entities=entities, facts=_facts_from(entities), split=dict(d["split"]),
                   config=WorldConfig(**d["config"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> World:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file, fsync, rename): a reader never sees half a world."""
        from lmforge.utils import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> World:
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_json(f.read())
        except FileNotFoundError:
            raise LmforgeError(f"{path}: toy world file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LmforgeError(f"{path}: not a valid toy world file ({type(e).__name__}: {e})") from None
        except LmforgeError as e:
            raise LmforgeError(f"{path}: {e}") from None


def _facts_from(entities: list[Entity]) -> list[Fact]:
    return [Fact(e.name, r, v) for e in entities for r, v in e.attrs.items()]


def _spread(rng: random.Random, values: list[str], n: int) -> list[str]:
    """n picks in which every value is used (as evenly as possible), in random order."""
    out = [values[i % len(values)] for i in range(n)]
    rng.shuffle(out)
    return out


def _split_kind(rng: random.Random, names: list[str], forced: dict[str, str], n_train: int) -> dict[str, str]:
    """Exactly n_train names go to "train"; `forced` names keep the split they are given."""
    free = [n for n in names if n not in forced]
    rng.shuffle(free)
    k = n_train - sum(1 for s in forced.values() if s == "train")
    out = dict(forced)
    out.update({n: ("train" if i < k else "heldout") for i, n in enumerate(free)})
    return out


def generate_world(seed: int = 0, config: WorldConfig | None = None) -> World:
    """Build a world from a seed; the same (seed, config) always gives the same world."""
    cfg = config or WorldConfig()
    cfg.validate()
    # String seeds are hashed with SHA-512 by `random`, so they are stable across processes.
    rng = random.Random(f"world:{seed}")
    vocab = T.PROFESSIONS + T.HOBBIES + T.PRODUCTS + T.COLORS + T.DIETS + T.HABITATS
    gen = NameGenerator(random.Random(f"names:{seed}"), blocklist=T.template_words() | set(vocab))

    continents = [gen.new(2, 2, suffix="ia") for _ in range(cfg.n_continents)]
    languages = [gen.new(2, 2, suffix=rng.choice(T.LANGUAGE_SUFFIXES)) for _ in range(cfg.n_languages)]
    countries = [gen.new() for _ in range(cfg.n_countries)]
    currencies = [gen.new(2, 2, capitalize=False) for _ in range(cfg.n_countries)]
    cities_of = {c: [gen.new() for _ in range(cfg.cities_per_country)] for c in countries}
    rivers = [gen.new() for _ in range(cfg.n_rivers)]
    people = [gen.new() for _ in range(cfg.n_people)]
    animals = [gen.new() for _ in range(cfg.n_animals)]
    cities = [city for c in countries for city in cities_of[c]]

    # Every country gets one river, the extra rivers go to random countries.
    extra = [rng.choice(countries) for _ in rivers[len(countries):]]
    river_country = dict(zip(rivers, countries + extra, strict=True))
    rivers_of = {c: [r for r in rivers if river_country[r] == c] for c in countries}

    attrs: dict[str, dict[str, str]] = {}
    for c, cont, lang, cur in zip(countries, _spread(rng, continents, len(countries)),
                                  _spread(rng, languages, len(countries)), currencies, strict=True):
        attrs[c] = {"capital": rng.choice(cities_of[c]), "continent": cont, "language": lang, "currency": cur}
    for c in countries:
        for city in cities_of[c]:
            attrs[city] = {"country": c, "river": rng.choice(rivers_of[c]),
                           "founded": str(rng.randint(800, 1899)), "known_for": rng.choice(T.PRODUCTS)}
    for r in rivers:
        attrs[r] = {"flows_through": river_country[r], "length": str(rng.randrange(80, 1000, 10))}
    for a in animals:
        attrs[a] = {"color": rng.choice(T.COLORS), "diet": rng.choice(T.DIETS),
                    "habitat": rng.choice(T.HABITATS), "legs": rng.choice(T.LEGS)}

    split: dict[str, str] = {}
    split.update(_split_kind(rng, countries, {}, (len(countries) + 1) // 2))
    capitals = {attrs[c]["capital"]: split[c] for c in countries}
    split.update(_split_kind(rng, cities, capitals, (len(cities) + 1) // 2))
    split.update(_split_kind(rng, rivers, {}, (len(rivers) + 1) // 2))
    split.update(_split_kind(rng, animals, {}, (len(animals) + 1) // 2))
    half = len(people) // 2
    split.update(_split_kind(rng, people, {}, half + half % 2))  # both halves even, for pairing

    friend: dict[str, str] = {}
    for s in SPLITS:
        group = [p for p in people if split[p] == s]
        rng.shuffle(group)
        for a, b in zip(group[::2], group[1::2], strict=True):  # both halves are even (see above)
            friend[a], friend[b] = b, a
    for p in people:
        attrs[p] = {"born_in": rng.choice(cities), "lives_in": rng.choice(cities),
                    "profession": rng.choice(T.PROFESSIONS), "favorite_animal": rng.choice(animals),
                    "friend": friend[p], "hobby": rng.choice(T.HOBBIES)}

    by_kind = {"country": countries, "city": cities, "river": rivers, "person": people, "animal": animals}
    entities = [Entity(n, kind, attrs[n]) for kind in KINDS for n in by_kind[kind]]
    return World(seed=seed, entities=entities, facts=_facts_from(entities), split=split, config=cfg)
