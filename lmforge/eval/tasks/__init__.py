"""The evaluation tasks of `lmforge eval`, each declared once (see base.py for what a task is).

    TASKS        name -> Task
    GROUPS       name -> task names it runs (bbh, math, toyworld, ...); results also get the group's
                 pooled score over all its documents
    get_task(name), expand(name) -> [task names], list_tasks() -> [(name, kind, description)]
    parse_task_spec("gsm8k:path=test.jsonl,num_fewshot=3") -> ("gsm8k", {"path": ..., "num_fewshot": 3})
"""

from __future__ import annotations

import difflib

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import PER_TASK_KEYS, Task, TaskOptions
from lmforge.eval.tasks.bbh import BBH_TASKS
from lmforge.eval.tasks.choice import CHOICE_TASKS
from lmforge.eval.tasks.math import MATH_TASKS
from lmforge.eval.tasks.text import TEXT_TASKS
from lmforge.eval.tasks.toyworld import TOYWORLD_TASKS

TASKS: dict[str, Task] = {t.name: t for t in [*MATH_TASKS, *BBH_TASKS, *CHOICE_TASKS, *TEXT_TASKS, *TOYWORLD_TASKS]}
GROUPS: dict[str, tuple[str, ...]] = {
    "math": tuple(t.name for t in MATH_TASKS),
    "bbh": tuple(t.name for t in BBH_TASKS),
    "arc": ("arc_easy", "arc_challenge"),
    "toyworld": tuple(t.name for t in TOYWORLD_TASKS),
}
GROUP_DESCRIPTIONS = {
    "math": "GSM8K, SVAMP, ASDiv and MultiArith",
    "bbh": "all 27 BIG-Bench Hard tasks (3-shot chain of thought)",
    "arc": "ARC-Easy and ARC-Challenge",
    "toyworld": "every toyworld suite (probes and chat)",
}


def _unknown(name: str) -> LmforgeError:
    close = difflib.get_close_matches(name, [*TASKS, *GROUPS], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return LmforgeError(f"unknown task '{name}'{hint} (`lmforge eval --list` shows the tasks)")


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise _unknown(name)
    return TASKS[name]


def expand(name: str) -> list[str]:
    """The task names `name` stands for: a group's members, or the task itself."""
    if name in GROUPS:
        return list(GROUPS[name])
    return [get_task(name).name]


def list_tasks() -> list[tuple[str, str, str]]:
    """(name, kind, description) of every group and task, groups first."""
    groups = [(g, "group", GROUP_DESCRIPTIONS[g]) for g in GROUPS]
    return groups + [(t.name, t.kind, t.description) for t in TASKS.values()]


def _convert(key: str, value: str, spec: str):
    if key in ("num_fewshot", "limit", "max_new_tokens"):
        try:
            return int(value)
        except ValueError:
            raise LmforgeError(f"--tasks {spec}: option '{key}' must be an integer, got '{value}'") from None
    if key == "cot":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise LmforgeError(f"--tasks {spec}: option 'cot' must be true or false, got '{value}'")
        return value.lower() in ("true", "1", "yes")
    return value


def parse_task_spec(spec: str) -> tuple[str, dict]:
    """"name" or "name:key=value,key=value" -> (name, options)."""
    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise LmforgeError(f"--tasks {spec}: expected NAME:key=value[,key=value], got '{item}'")
        if key not in PER_TASK_KEYS:
            raise LmforgeError(f"--tasks {spec}: unknown option '{key}' (options: {', '.join(PER_TASK_KEYS)})")
        options[key] = _convert(key, value.strip(), spec)
    return name.strip(), options


def split_specs(specs: list[str]) -> list[str]:
    """`--tasks a,b c:path=x` -> ["a", "b", "c:path=x"] (commas separate names only before any ':')."""
    out = []
    for s in specs:
        out += [s] if ":" in s else [p for p in s.split(",") if p]
    return out


__all__ = ["GROUPS", "TASKS", "Task", "TaskOptions", "expand", "get_task", "list_tasks", "parse_task_spec",
           "split_specs"]
