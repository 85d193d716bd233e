"""Toyworld tasks answered through tools: the worked steps of a word problem become calculator calls."""

from __future__ import annotations

import re

from lmforge.toyworld.tasks import Example


def with_calculator(ex: Example) -> Example:
    """A word problem answered through the calculator tool: one call per step of the worked solution,
    each followed by the tool's output (which the engine forces, and no loss trains), then "#### n".

    "66 / 6 = 11.\n#### 11" becomes: assistant calls calculator("66 / 6"), tool says "11",
    assistant "#### 11". Examples of other tasks are returned unchanged.
    """
    if ex.task != "word_problem":
        return ex
    *head, reply = ex.messages
    steps = re.findall(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.", reply["content"])
    messages = list(head)
    for a, op, b, result in steps:
        messages.append({"role": "assistant", "content": "",
                         "tool_calls": [{"name": "calculator", "arguments": f"{a} {op} {b}"}]})
        messages.append({"role": "tool", "content": result})
    messages.append({"role": "assistant", "content": f"#### {ex.answer}"})
    return Example(ex.task, messages, ex.answer, ex.split, dict(ex.meta))
