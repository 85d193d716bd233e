"""Toyworld "noisy web": the clean corpus mixed with labelled junk, to measure data curation.

Real web crawls are mostly junk; whether a filter removes the junk and keeps the text can only
be measured when every document carries the truth. `noisy_web_corpus` returns the clean
documents plus planted ones, each `WebDoc` labelled with what it is, and `TARGETS` names the
curation step that should remove each label:

    label         what it is                                         removed by
    clean         a toyworld document, untouched                      (nothing: kept)
    gibberish     random letter strings, hashtag spam, "..." lines    gopher_quality
    repeated      one line or paragraph over and over                 gopher_repetition
    boilerplate   cookie and legal notices, scripts, lorem ipsum      c4
    link_list     navigation menus, tag lists                         fineweb (newline/word ratio)
    exact_dup     a verbatim copy of a clean document                 exact_dedup
    near_dup      a copy with a few words changed and a header/footer near_dedup (MinHash)
    pii           a clean document with an email, phone, IP added     (kept; pii replaces the strings)
    toxic         a clean document with a blocklisted word added      blocklist
    contaminated  a clean document or a help-forum post quoting an    decontam
                  evaluation question

Junk built on a clean document (pii, toxic, contaminated) *replaces* it, so no clean copy of the
same text remains to make it a near-duplicate; hosts are prose documents (an email line added to an
arithmetic drill would trip FineWeb's line-punctuation rule, which is right but not what is measured).
Duplicates and their originals share a group key (`meta["exact_group"]`, `meta["near_group"]`: the
original's id; an exact group lies inside a near group); planted near duplicates record their word-5-gram
Jaccard similarity to the original (`meta["jaccard"]`), spread between `near_dup_min_jaccard` and ~0.97.

The clean corpus has its own duplicates and overlaps: identical short stories, word problems that
differ only in a name, word problems that match a toyworld evaluation item. With `natural=True` these
are labelled too (by plain reference implementations of the same definitions), so that removing them
counts as right; a document can carry several labels (`meta["labels"]`).
Everything is a pure function of the inputs and `seed`.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from dataclasses import dataclass, field

# Blocklist words for the noisy web: invented, and spelled with letters (c, h, j, q, w, x, y) that
# toyworld names never use, so a clean document can never contain one by accident.
BLOCKLIST = ("xqzfilth", "hexcrud", "wyrmspit", "jhunkrot", "chwazzle", "quxslime")

TARGETS = {"gibberish": "gopher_quality", "repeated": "gopher_repetition", "boilerplate": "c4",
           "link_list": "fineweb", "exact_dup": "exact_dedup", "near_dup": "near_dedup", "toxic": "blocklist",
           "contaminated": "decontam"}
LABELS = ("clean", "pii", *TARGETS)


@dataclass
class NoisyWebConfig:
    """Planted documents of each kind (capped by the clean documents available to build them)."""

    enabled: bool = False     # curate: read the toyworld corpus mixed with this junk
    seed: int = 0
    gibberish: int = 100
    repeated: int = 100
    boilerplate: int = 100
    link_list: int = 100
    exact_dup: int = 100
    near_dup: int = 150
    pii: int = 100
    toxic: int = 100
    contaminated: int = 100
    near_dup_min_jaccard: float = 0.8
    near_dup_min_words: int = 60   # originals of near duplicates: long enough for a few edits


@dataclass
class WebDoc:
    id: str
    text: str
    label: str
    meta: dict = field(default_factory=dict)


_WORDS = re.compile(r"\w+")  # on lower-cased text: the words of lmforge/curate/decontam.py


def shingles(text: str, n: int = 5) -> set[str]:
    words = _WORDS.findall(text.lower())
    return {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = shingles(a, n), shingles(b, n)
    return len(sa & sb) / max(1, len(sa | sb))


# --- junk makers: (rng, names) -> text -----------------------------------------------------------
_CONSONANTS, _VOWELS = "bcdfghjklmnpqrstvwxz", "aeiouy"
# Every line names cookies, a policy or JavaScript: C4's line rules delete each one, leaving no sentence.
_COOKIE = ["This website uses cookies to improve your experience.", "We use cookies to personalise content and ads.",
           "By continuing to browse you agree to our cookie policy.", "Read our privacy policy and terms of use.",
           "Please enable JavaScript to view the comments.", "JavaScript is disabled in your browser.",
           "Our terms of use changed on Monday.", "We use cookies: accept all or manage your preferences."]
_LOREM = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
          "et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris.")
_SCRIPT = ["function track(e) { window.dataLayer.push(e); }", "var cfg = { id: 42, mode: 'auto' };",
           ".header { color: #333; margin: 0 auto; }"]
_LINKS = ["Home", "About us", "Contact", "Shop", "Blog", "Careers", "Help center", "Sign in", "Register", "Sitemap",
          "News", "Events", "Gallery", "Forum", "Downloads", "Press"]
_SPAM = ["Buy cheap {x} now!", "Best {x} deals in {y}, click here!", "Visit {y} for the lowest prices.",
         "Free shipping on all {x} today!", "Limited offer: {x} from {y}."]
_PRODUCTS = ["silk", "honey", "pottery", "wool", "glass", "tea", "spices", "rugs"]


def _name(rng: random.Random, names: list[str]) -> str:
    return rng.choice(names) if names else "Velora"


def _random_word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_CONSONANTS if i % 3 else _VOWELS) for i in range(rng.randint(lo, hi)))


def make_gibberish(rng: random.Random, names: list[str]) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # long random strings: mean word length far above 10
        return "\n".join(" ".join(_random_word(rng, 11, 18) for _ in range(rng.randint(6, 12)))
                         for _ in range(rng.randint(2, 5)))
    if kind == 1:  # hashtag spam: '#' per word far above the Gopher limit
        return " ".join(f"#{rng.choice(names or ['velora']).lower()}{rng.choice(['', 'life', 'love', 'daily'])}"
                        for _ in range(rng.randint(12, 30)))
    return "\n".join(f"{rng.choice(['Click here', 'Read more', 'Continue', 'See more'])} about "  # teaser lines
                     f"{_name(rng, names)} and {rng.choice(_PRODUCTS)}..." for _ in range(rng.randint(4, 10)))


def make_repeated(rng: random.Random, names: list[str]) -> str:
    line = rng.choice(_SPAM).format(x=rng.choice(_PRODUCTS), y=_name(rng, names))
    if rng.random() < 0.5:
        return "\n".join([line] * rng.randint(8, 25))
    para = " ".join(rng.choice(_SPAM).format(x=rng.choice(_PRODUCTS), y=_name(rng, names)) for _ in range(3))
    return "\n\n".join([para] * rng.randint(4, 8))


def make_boilerplate(rng: random.Random, names: list[str]) -> str:
    lines = rng.sample(_COOKIE, rng.randint(2, 4))
    kind = rng.randrange(3)
    if kind == 0:
        lines.insert(rng.randrange(len(lines) + 1), _LOREM)
    elif kind == 1:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(_SCRIPT))
    return "\n".join(lines)


def make_link_list(rng: random.Random, names: list[str]) -> str:
    links = rng.sample(_LINKS, rng.randint(5, 10))
    links += [f"{_name(rng, names)} {rng.choice(_PRODUCTS)}" for _ in range(rng.randint(2, 5))]
    rng.shuffle(links)
    return "\n".join(links)


def make_email(rng: random.Random, names: list[str]) -> str:
    user = f"{_name(rng, names).lower()}.{_name(rng, names).lower()}{rng.randint(1, 99)}"
    return f"{user}@{rng.choice(['mailbox', 'postal', 'kamdu-mail', 'letters'])}.{rng.choice(['com', 'net', 'org'])}"


def make_phone(rng: random.Random) -> str:
    d = lambda k: "".join(str(rng.randint(0, 9)) for _ in range(k))  # noqa: E731
    a = str(rng.randint(2, 9)) + d(2)
    return rng.choice([f"({a}) {d(3)}-{d(4)}", f"{a}-{d(3)}-{d(4)}", f"{a}.{d(3)}.{d(4)}", f"+1 {a} {d(3)} {d(4)}",
                       f"+44 {rng.randint(20, 79)} {d(4)} {d(4)}"])


def make_ip(rng: random.Random) -> str:
    while True:
        ip = ".".join(str(x) for x in (rng.randint(11, 223), rng.randint(0, 255), rng.randint(0, 255),
                                       rng.randint(1, 254)))
        if ipaddress.ip_address(ip).is_global:
            return ip


def add_pii(rng: random.Random, text: str, names: list[str]) -> tuple[str, list[str]]:
    email, phone, ip = make_email(rng, names), make_phone(rng), make_ip(rng)
    kind = rng.randrange(3)
    if kind == 0:
        line, planted = f"Write to {email} or call {phone} for details.", [email, phone]
    elif kind == 1:
        line, planted = f"Questions? Email {email}. Our server is at {ip}.", [email, ip]
    else:
        line, planted = f"Call {phone} or visit the office at {ip} today.", [phone, ip]
    return f"{text}\n{line}", planted


def add_toxic(rng: random.Random, text: str, words: list[str], names: list[str]) -> str:
    w = rng.choice(words)
    line = rng.choice([f"What a {w} this is.", f"{_name(rng, names)} is a {w}.", f"Only a {w} would say that."])
    return f"{line}\n{text}" if rng.random() < 0.5 else f"{text}\n{line}"


def add_question(rng: random.Random, text: str | None, item: str) -> str:
    if text is None:  # a help-forum post
        return rng.choice([f"Can anyone solve this? {item} Thanks in advance!",
                           f"Homework help needed.\n{item}\nI got stuck on the second step.",
                           f"Q: {item}\nAnswers welcome in the comments."])
    return f"{text}\nPractice question: {item}"


def near_copy(rng: random.Random, text: str, min_jaccard: float) -> tuple[str, float]:
    """A copy with a header or footer line and some words replaced until its similarity to `text` would
    fall below a target drawn uniformly in [min_jaccard, 0.97] (a header-only copy may be closer)."""
    target = rng.uniform(min_jaccard, 0.97)
    extra = rng.choice(["Posted by the editors.", "Share this page.", "Updated last week.", "Reposted from a forum."])
    words = text.split(" ")

    def render(ws: list[str]) -> str:
        body = " ".join(ws)
        return f"{extra}\n{body}" if len(extra) % 2 else f"{body}\n{extra}"

    copy, sim = render(words), jaccard(text, render(words))
    for _ in range(len(words)):
        i = rng.randrange(len(words))
        trial = words[:i] + [rng.choice(["really", "also", "indeed", "very", "now"])] + words[i + 1:]
        s = jaccard(text, render(trial))
        if s < target:
            break
        words, copy, sim = trial, render(trial), s
    if sim < min_jaccard:  # too short to take even the header: a copy differing only in spacing
        return text.replace(". ", ".  "), 1.0
    return copy, sim


def _usable_item(item: str, ngram: int) -> bool:
    """Evaluation items that quality rules would drop anyway (code-like braces), or too short for the
    decontamination rule, are not planted."""
    return "{" not in item and "}" not in item and len(_WORDS.findall(item.lower())) >= ngram


def _prose(text: str) -> bool:
    """Most lines end like sentences (not an arithmetic drill): a fit host for an added sentence."""
    lines = [x for x in text.splitlines() if x.strip()]
    return sum(x.rstrip().endswith((".", "!", "?")) for x in lines) * 2 >= len(lines)


def _groups(keys: list) -> list[list[int]]:
    """Indices grouped by equal key (groups of two or more)."""
    by: dict = {}
    for i, k in enumerate(keys):
        by.setdefault(k, []).append(i)
    return [g for g in by.values() if len(g) > 1]


def near_duplicate_groups(texts: list[str], threshold: float, n: int = 5) -> list[list[int]]:
    """Clusters (union-find) of texts whose word-n-gram Jaccard similarity is >= threshold, exactly: prefix
    filtering (shingles ordered rarest first; two sets this similar share one of their first
    |s| - ceil(threshold |s|) + 1), then the similarity of every candidate pair."""
    sets = [shingles(t, n) for t in texts]
    df: dict[str, int] = {}
    for s in sets:
        for g in s:
            df[g] = df.get(g, 0) + 1
    index: dict[str, list[int]] = {}
    prefixes = []
    for i, s in enumerate(sets):
        prefix = sorted(s, key=lambda g: (df[g], g))[:len(s) - math.ceil(threshold * len(s) - 1e-9) + 1]
        prefixes.append(prefix)
        for g in prefix:
            index.setdefault(g, []).append(i)
    parent = list(range(len(texts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, prefix in enumerate(prefixes):
        for j in {j for g in prefix for j in index[g] if j > i}:
            if len(sets[i] & sets[j]) / len(sets[i] | sets[j]) >= threshold - 1e-9:
                parent[root(j)] = root(i)
    return _groups([root(i) for i in range(len(texts))])


def contaminated_by(texts: list[str], items: list[str], ngram: int, min_overlap: float) -> dict[int, str]:
    """text index -> an item of which the text holds >= min_overlap of the word n-grams (the decontamination
    rule of lmforge/curate/decontam.py, written out plainly here as an independent reference)."""
    def grams(t):
        w = _WORDS.findall(t.lower())
        return {" ".join(w[i:i + ngram]) for i in range(len(w) - ngram + 1)}

    item_grams = [(q, g) for q in items if (g := grams(q))]
    index: dict[str, list[int]] = {}
    for k, (_, g) in enumerate(item_grams):
        for x in g:
            index.setdefault(x, []).append(k)
    out = {}
    for i, t in enumerate(texts):
        counts: dict[int, int] = {}
        for x in grams(t):
            for k in index.get(x, ()):
                counts[k] = counts.get(k, 0) + 1
        for k, c in counts.items():
            if c >= min_overlap * len(item_grams[k][1]) - 1e-9:
                out[i] = item_grams[k][0]
                break
    return out


def noisy_web_corpus(clean: list[str], cfg: NoisyWebConfig, eval_items: list[str] = (),
                     blocklist: list[str] = BLOCKLIST, names: list[str] = (), ngram: int = 8,
                     min_overlap: float = 0.7, natural: bool = True) -> list[WebDoc]:
    """The clean documents (some turned into pii/toxic/contaminated carriers) plus planted junk, shuffled.

    eval_items: questions to plant (each at most once); blocklist: words for toxic documents; names: words
    to season the junk with (toyworld entity names); ngram, min_overlap: the decontamination rule.
    natural: also label what the clean corpus already holds: exact duplicates, near duplicates (Jaccard >=
    near_dup_min_jaccard) and text overlapping an evaluation item, so that removing those counts as right.
    A document may have several labels (`meta["labels"]`); `label` is the first in pipeline order.
    """
    rng = random.Random(f"noisy_web:{cfg.seed}")
    names = list(names)
    ids = [f"c{i:06d}" for i in range(len(clean))]
    labels: list[list[str]] = [[] for _ in clean]
    meta: list[dict] = [{} for _ in clean]
    busy = set()                                  # in a natural group: not used to build junk
    if natural:
        # group keys: the first member's id; exact groups lie inside near groups (similarity 1)
        for key, label, groups in (("exact_group", "exact_dup", _groups([" ".join(t.lower().split()) for t in clean])),
                                   ("near_group", "near_dup", near_duplicate_groups(clean, cfg.near_dup_min_jaccard))):
            for g in groups:
                busy.update(g)
                for i in g:
                    meta[i].update({key: ids[g[0]], "natural": True})
                    if i != g[0] and not labels[i]:  # an exact copy is labelled exact_dup only
                        labels[i].append(label)
        for i, item in contaminated_by(clean, list(eval_items), ngram, min_overlap).items():
            labels[i].append("contaminated")
            meta[i].update(item=item, natural=True)
            busy.add(i)
    pool = [i for i in range(len(clean)) if i not in busy]
    rng.shuffle(pool)

    def take(n: int, ok=lambda i: True) -> list[int]:
        picked = [i for i in pool if ok(i)][:n]
        chosen = set(picked)
        pool[:] = [i for i in pool if i not in chosen]
        return picked

    items = [q for q in dict.fromkeys(eval_items) if _usable_item(q, ngram)]
    rng.shuffle(items)
    n_contam = min(cfg.contaminated, len(items))
    prose = lambda i: _prose(clean[i])  # noqa: E731
    texts = list(clean)
    for i in take(cfg.pii, prose):
        texts[i], planted = add_pii(rng, clean[i], names)
        labels[i], meta[i] = ["pii"], {"pii": planted}
    for i in take(cfg.toxic if blocklist else 0, prose):
        texts[i], labels[i] = add_toxic(rng, clean[i], list(blocklist), names), ["toxic"]
    hosts = take(n_contam // 2, prose)
    planted_docs: list[WebDoc] = []
    for k, item in enumerate(items[:n_contam]):
        if k < len(hosts):
            texts[hosts[k]], labels[hosts[k]], meta[hosts[k]] = add_question(rng, clean[hosts[k]], item), \
                ["contaminated"], {"item": item}
        else:
            planted_docs.append(WebDoc("", add_question(rng, None, item), "contaminated", {"item": item}))
    near = take(cfg.near_dup, lambda i: prose(i) and len(clean[i].split()) >= cfg.near_dup_min_words)
    for i in near:
        text, sim = near_copy(rng, clean[i], cfg.near_dup_min_jaccard)
        meta[i]["near_group"] = ids[i]
        planted_docs.append(WebDoc("", text, "near_dup", {"near_group": ids[i], "jaccard": round(sim, 3)}))
    for i in take(cfg.exact_dup):
        text = clean[i] if rng.random() < 0.7 else clean[i].replace("\n", "  \r\n") + "  "  # same after cleanup
        meta[i].update(exact_group=ids[i], near_group=ids[i])
        planted_docs.append(WebDoc("", text, "exact_dup", {"exact_group": ids[i], "near_group": ids[i]}))
    for label, make in (("gibberish", make_gibberish), ("repeated", make_repeated),
                        ("boilerplate", make_boilerplate), ("link_list", make_link_list)):
        planted_docs += [WebDoc("", make(rng, names), label) for _ in range(getattr(cfg, label))]
    order = {lab: k for k, lab in enumerate(("exact_dup", "near_dup", "contaminated"))}
    docs = [WebDoc(ids[i], texts[i], min(labels[i], key=lambda x: order.get(x, -1)) if labels[i] else "clean",
                   {**meta[i], "labels": labels[i] or ["clean"]}) for i in range(len(clean))]
    for k, d in enumerate(planted_docs):
        d.id, d.meta["labels"] = f"j{k:06d}", [d.label]
    docs += planted_docs
    rng.shuffle(docs)
    return docs
