"""What every evaluation task shares: options, prompts, loaded data, outputs, data reading, statistics.

A task is declared once as a `Task` subclass instance: a name, a description, where its data
comes from (a Hugging Face dataset id, or a local file with `--data` / `path=`), and two
methods. `load(opts)` reads and validates the documents (and picks the few-shot examples) before
any model is loaded, so bad input fails fast; `evaluate(lm, data, opts)` builds prompts, asks the
model through `lmforge.eval.runner.LM` and scores every document. The runner turns the
per-document scores into means and standard errors.

Errors in data raise `LmforgeError` with the file and line (or record) and what was expected.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from lmforge.errors import LmforgeError


@dataclass
class TaskOptions:
    """Settings for one task run; every field but seed/chat/world can be set per task (`name:key=value`)."""

    path: str | None = None          # local data file (or directory: bbh, or a tree like ../shared/data)
    fewshot: str | None = None       # local file the few-shot examples come from
    hf: str | None = None            # Hugging Face dataset id, instead of the task's default
    config: str | None = None        # its configuration name
    split: str | None = None         # its split
    num_fewshot: int | None = None   # None: the task's default
    cot: bool | None = None          # chain of thought (True) or direct answer (False); None: default
    limit: int | None = None         # evaluate only the first N documents
    max_new_tokens: int | None = None
    seed: int = 0                    # few-shot sampling, toyworld examples, sampling at temperature > 0
    chat: bool = False               # render prompts with the chat template
    world: str | None = None         # toyworld world.json; None: generate_world(0)


PER_TASK_KEYS = tuple(f.name for f in fields(TaskOptions) if f.name not in ("seed", "chat", "world"))


@dataclass
class Prompt:
    """A few-shot prompt, rendered as plain text for base models or as a conversation for chat models.

    Base:  description, then "{question_prefix}{q}\\n{answer_prefix} {a}" per shot, then the query
           with its answer prefix and `lead`, blocks separated by blank lines (no answer prefix:
           "{q} {a}", the answer continuing the query).
    Chat:  description as the system message, each shot as a user/assistant exchange, the query as
           the last user message; `lead` is written at the start of the assistant's reply.
    """

    query: str
    shots: Sequence[tuple[str, str]] = ()
    description: str = ""
    question_prefix: str = ""
    answer_prefix: str = ""
    lead: str = ""                   # the answer's first words, given to the model ("Let's think step by step.")

    def text(self) -> str:
        # without an answer prefix the answer continues the query's line (sentence completion)
        sep = f"\n{self.answer_prefix}" if self.answer_prefix else ""
        blocks = [self.description] if self.description else []
        blocks += [f"{self.question_prefix}{q}{sep} {a}" for q, a in self.shots]
        last = f"{self.question_prefix}{self.query}{sep}"
        blocks.append(f"{last} {self.lead}" if self.lead else last)
        return "\n\n".join(blocks)

    def messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.description}] if self.description else []
        for q, a in self.shots:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return msgs + [{"role": "user", "content": self.query}]


@dataclass
class Loaded:
    """A task's data, ready to evaluate."""

    docs: list                       # documents to evaluate (after --limit)
    shots: list = field(default_factory=list)  # few-shot documents (never among `docs`)
    source: str = ""                 # where the documents came from
    info: dict = field(default_factory=dict)   # extra facts for the results (skipped rows, settings)


@dataclass
class TaskOutput:
    """Per-document scores (metric -> one value per document) and the logged samples.

    `aggregate` holds corpus-level metrics that are not a mean over documents (perplexity), with
    their standard errors in `stderr`; the runner computes mean and stderr for everything in `scores`.
    """

    scores: dict[str, list[float]]
    samples: list[dict]
    aggregate: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    breakdown: dict = field(default_factory=dict)


class Task:
    """Base class; see the module docstring."""

    name: str = ""
    description: str = ""
    kind: str = "generate"           # generate | choice | perplexity | toyworld (for --list)

    def load(self, opts: TaskOptions) -> Loaded:
        raise NotImplementedError

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Reading data: local files (JSONL, JSON) and Hugging Face datasets, as (where, record) pairs so that
# every error can say which line or record is wrong.

Record = tuple[str, dict]


def read_jsonl(path: Path) -> list[Record]:
    """Every line of a JSONL file as a JSON object (the chat readers' record reader, strict)."""
    from lmforge.data.chat_sources import iter_json_records

    if path.is_dir():
        raise LmforgeError(f"{path}: is a directory, expected a file")
    out = []
    for where, rec in iter_json_records(path):
        if isinstance(rec, LmforgeError):
            raise rec
        if not isinstance(rec, dict):
            raise LmforgeError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        out.append((where, rec))
    return out


def read_json_array(path: Path, key: str | None = None) -> list[Record]:
    """A JSON array of objects, or (with `key`) an object holding the array under `key`."""
    with _open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise LmforgeError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if key is not None and isinstance(data, dict):
        if key not in data:
            raise LmforgeError(f"{path}: missing field '{key}' (expected a list of examples)")
        data = data[key]
    if not isinstance(data, list):
        raise LmforgeError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise LmforgeError(f"{path}: record {i}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path}: record {i}", rec))
    return out


def read_local(path: Path, json_key: str | None = None) -> list[Record]:
    """JSONL by line, anything else as a JSON array (or an object with `json_key`)."""
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    return read_json_array(path, json_key)


def read_hf(dataset_id: str, config: str | None, split: str) -> list[Record]:
    """Rows of a Hugging Face dataset split (hub id, or a directory `datasets` can load)."""
    from lmforge.data.sources import load_hf_split

    rows = load_hf_split(dataset_id, config, split)
    return [(f"{dataset_id}[{split}]: row {i}", dict(rec)) for i, rec in enumerate(rows)]


def _open(path: Path):
    try:
        return open(path, encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LmforgeError(f"{path}: is a directory, expected a file") from None



def get_field(rec: dict, where: str, names: Sequence[str], expected: str, types=(str,)):
    """The first of `names` present in `rec` (datasets spell fields differently), checked against `types`."""
    for name in names:
        if name in rec and rec[name] is not None:
            value = rec[name]
            if not isinstance(value, types) or isinstance(value, bool) and bool not in types:
                raise LmforgeError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__}")
            return value
    raise LmforgeError(f"{where}: missing field '{names[0]}' (expected {expected}; fields: {', '.join(rec)})")


def resolve_local(opts_path: str | None, candidates: Sequence[str]) -> Path | None:
    """The local file for a task: `path` itself, or under a directory the first of `candidates` that exists."""
    if opts_path is None:
        return None
    p = Path(opts_path)
    if not p.exists():
        raise LmforgeError(f"{p}: file not found")
    if p.is_dir():
        for rel in candidates:
            if (p / rel).exists():
                return p / rel
        if not candidates:
            raise LmforgeError(f"{p}: is a directory, expected a data file")
        raise LmforgeError(f"{p}: is a directory without any of {', '.join(candidates)}")
    return p


def pick_shots(pool: list, k: int, seed: int, name: str, where: str) -> list:
    """k few-shot documents drawn from `pool` (seeded, so the same run always shows the same examples)."""
    if k < 0:
        raise LmforgeError(f"{name}: num_fewshot must be >= 0, got {k}")
    if k > len(pool):
        raise LmforgeError(f"{name}: num_fewshot {k} exceeds the {len(pool)} examples available in {where}")
    return random.Random(f"fewshot:{name}:{seed}").sample(pool, k)


def apply_limit(docs: list, limit: int | None) -> list:
    if limit is not None and limit < 1:
        raise LmforgeError(f"--limit must be a positive number of documents, got {limit}")
    return docs if limit is None else docs[:limit]


# --------------------------------------------------------------------------------------------------
# Statistics.

def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error, sample stdev / sqrt(n) (as lm-evaluation-harness reports).

    For 0/1 scores this is the binomial sqrt(p (1 - p) / (n - 1)). None when n < 2.
    """
    n = len(values)
    if n == 0:
        return float("nan"), None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def bootstrap_stderr(statistic: Callable, n: int, seed: int = 0, iters: int = 1000) -> float | None:
    """Standard deviation of `statistic(indices)` over `iters` resamples of range(n) with replacement.

    `indices` is a numpy integer array; used for corpus-level metrics (perplexity) whose
    documents, not tokens, are the independent units.
    """
    import numpy as np

    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(iters)], dtype=np.float64)
    return float(values.std(ddof=1))
