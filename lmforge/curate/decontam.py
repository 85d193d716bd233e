"""Decontamination: drop training documents that contain evaluation questions.

Items are the questions of the evaluation sets lmforge knows, read in their released formats by
the same parsers `lmforge eval` uses (a local file or directory, e.g. ../shared/data, or a hub id):
GSM8K `question`, SVAMP `Body + Question`, ASDiv `Body + Question`, MultiArith `sQuestion`, the
27 BBH tasks' `input`, any JSON/JSONL file with a `field`, and toyworld's evaluation prompts.

The rule (PaLM, Chowdhery et al. 2022, sec. 8): text is lower-cased and split into words (runs of
letters and digits; punctuation and spacing do not count). A document is contaminated by an item
when it contains at least `min_overlap` (default 70%) of the item's distinct word `ngram`-grams
(default 8). Items shorter than `ngram` words are skipped and counted: a 5-word question such as
"What is the capital of Zali?" is no evidence of a leak. Numbers are kept as written unless
`normalize_numbers` (then "12 apples" and "13 apples" match), because templated corpora share
whole sentences that differ only in their numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from lmforge.errors import LmforgeError

_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
MATH_SETS = ("gsm8k", "svamp", "asdiv", "multiarith")


def words(text: str, normalize_numbers: bool = False) -> list[str]:
    text = text.lower()
    if normalize_numbers:
        text = _DIGITS.sub("0", text)
    return _WORD.findall(text)


def _math_items(cfg) -> list[str]:
    from lmforge.eval.tasks.base import read_hf, resolve_local
    from lmforge.eval.tasks.math import MATH_TASKS

    task = next(t for t in MATH_TASKS if t.name == cfg.name)
    local = resolve_local(cfg.path, task.local_files) if cfg.path else None
    if local is not None:
        records = task._read(local)
    else:
        records = read_hf(cfg.hf or task.hf, task.hf_config, cfg.split or task.split)
    return [task.parse(where, rec).question for where, rec in records]


def _bbh_items(cfg) -> list[str]:
    from lmforge.eval.tasks.base import get_field, read_hf, read_json_array
    from lmforge.eval.tasks.bbh import BBH_SUBTASKS

    if not cfg.path:
        return [get_field(r, w, ["input"], "a string") for t in BBH_SUBTASKS
                for w, r in read_hf(cfg.hf or "lukaemon/bbh", t, cfg.split or "test")]
    root = Path(cfg.path)
    if not root.exists():
        raise LmforgeError(f"{root}: file not found (curate.decontam.sets: bbh)")
    files = [root] if root.is_file() else [f for t in BBH_SUBTASKS for f in (
        root / f"{t}.json", root / "bbh" / f"{t}.json", root / "bbh" / "bbh" / f"{t}.json") if f.exists()][:27]
    if not files:
        raise LmforgeError(f"{root}: no BBH task files (<task>.json) in it, in bbh/ or in bbh/bbh/")
    return [get_field(r, w, ["input"], "a string (the question)") for f in files
            for w, r in read_json_array(f, key="examples")]


def _field_items(cfg) -> list[str]:
    from lmforge.eval.tasks.base import get_field, read_hf, read_local

    if not cfg.field:
        raise LmforgeError(f"curate.decontam.sets: '{cfg.name}' is not one of {', '.join(MATH_SETS)}, bbh; "
                           f"give `field` (the record field holding the question) to read it as JSON/JSONL")
    if cfg.path:
        p = Path(cfg.path)
        if not p.is_file():
            raise LmforgeError(f"{p}: file not found (curate.decontam.sets: {cfg.name})")
        records = read_local(p)
    else:
        records = read_hf(cfg.hf, None, cfg.split or "test")
    return [get_field(r, w, [cfg.field], "a string (the question)") for w, r in records]


def load_eval_items(sets) -> list[tuple[str, str]]:
    """(set name, question) for every configured evaluation set."""
    out = []
    for i, cfg in enumerate(sets):
        if not cfg.path and not cfg.hf and cfg.name not in MATH_SETS + ("bbh",):
            raise LmforgeError(f"curate.decontam.sets: '{cfg.name}' needs a path or an hf id")
        try:
            if cfg.name in MATH_SETS:
                items = _math_items(cfg)
            elif cfg.name == "bbh":
                items = _bbh_items(cfg)
            else:
                items = _field_items(cfg)
        except LmforgeError as e:  # the reader names the file; say which entry of the recipe it came from
            if "curate.decontam.sets" in str(e):
                raise
            raise LmforgeError(f"{e} (curate.decontam.sets.{i}: {cfg.name})") from None
        out += [(cfg.name, q) for q in items]
    return out


def toyworld_items(world, tasks: list[str], per_task: int, seeds: list[int]) -> list[tuple[str, str]]:
    """The user prompts of toyworld evaluation examples (both splits; each seed that evaluations use)."""
    from lmforge.toyworld.tasks import TASKS, eval_examples

    out = []
    for task in tasks:
        if task not in TASKS:
            raise LmforgeError(f"curate.decontam.toyworld_tasks: unknown task '{task}' (tasks: {', '.join(TASKS)})")
        for split in ("train", "heldout"):
            for seed in seeds:
                out += [(f"toyworld_{task}", ex.messages[-2]["content"])
                        for ex in eval_examples(world, task, split, per_task, seed)]
    return list(dict.fromkeys(out))


def write_items(path: Path, items: list[tuple[str, str]], ngram: int, normalize_numbers: bool) -> dict:
    """Save the usable items for the filter; return counts per set (items, usable, too short)."""
    usable, counts = [], defaultdict(lambda: {"items": 0, "usable": 0, "too_short": 0})
    for name, text in dict.fromkeys(items):
        c = counts[name]
        c["items"] += 1
        if len(words(text, normalize_numbers)) >= ngram:
            c["usable"] += 1
            usable.append({"set": name, "text": text})
        else:
            c["too_short"] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(usable), encoding="utf-8")
    return dict(counts)


def item_ngrams(text: str, n: int, normalize_numbers: bool) -> set[str]:
    w = words(text, normalize_numbers)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


class NGramDecontFilter(BaseFilter):
    """datatrove filter: the rule above, against the items in `items_file` (loaded once per task)."""

    type = "🦠 - DECONT"
    name = "lmforge n-gram decontamination"

    def __init__(self, items_file: str, ngram: int, min_overlap: float, normalize_numbers: bool,
                 exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.items_file, self.n, self.min_overlap = items_file, ngram, min_overlap
        self.normalize_numbers = normalize_numbers
        self._index = None

    def _load(self):
        items = json.loads(Path(self.items_file).read_text(encoding="utf-8"))
        index: dict[str, list[int]] = defaultdict(list)
        self._need, self._items = [], items
        for k, item in enumerate(items):
            grams = item_ngrams(item["text"], self.n, self.normalize_numbers)
            for g in grams:
                index[g].append(k)
            self._need.append(max(1, math.ceil(self.min_overlap * len(grams) - 1e-9)))
        self._index = dict(index)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index is None:
            self._load()
        w = words(doc.text, self.normalize_numbers)
        n, index = self.n, self._index
        hit_grams = {g for i in range(len(w) - n + 1) if (g := " ".join(w[i:i + n])) in index}
        if not hit_grams:
            return True
        counts: dict[int, int] = defaultdict(int)
        for g in hit_grams:
            for k in index[g]:
                counts[k] += 1
        best = max(counts, key=lambda k: counts[k] / self._need[k])
        if counts[best] < self._need[best]:
            return True
        item = self._items[best]
        doc.metadata["contaminated_set"] = item["set"]
        doc.metadata["contaminated_item"] = item["text"][:200]
        self.stat_update(f"contaminated_{item['set']}")
        return False, f"decontam:{item['set']}"
