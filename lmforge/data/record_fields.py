"""Field and key checks for chat records (lmforge/data/chat_sources.py): a field that is a near miss
of one the record's format reads, or an unknown key inside a message, is an error naming it, so a typo
("inptu") never silently drops text; any other top-level field is metadata and ignored.
"""

from __future__ import annotations

import functools

from lmforge.errors import LmforgeError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system", "tool": "tool", "observation": "tool", "function_call": "assistant"}
# The top-level fields each format reads; other fields are metadata unless they look like a typo of one.
_FIELDS = {"messages": ("messages", "system"), "sharegpt": ("conversations", "system"),
           "alpaca": ("instruction", "input", "output", "system", "history")}
_ALIASES = {"system_prompt": "system"}  # common names of a field the formats read under another name
TURN_KEYS = ("from", "value", "weight")
_MESSAGE_EXTRAS = ("name", "weight")    # optional OpenAI keys a message may carry besides role/content/tool_calls


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn a into b.

    >>> _distance("inptu", "input"), _distance("ouput", "output"), _distance("conversation_id", "conversations")
    (1, 1, 3)
    """
    d = [[i + j if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


@functools.lru_cache(maxsize=4096)  # called for every field of every record: the same few names repeat
def typo_of(key: str, names: tuple[str, ...]) -> str | None:
    """The name in `names` that `key` is a near miss of (one edit; two for names of 10+ characters; case
    ignored), or None: "inptu" -> "input", but "conversation_id" is not "conversations"."""
    if not isinstance(key, str) or key in names:
        return None
    return next((n for n in names if abs(len(key) - len(n)) <= max(1, len(n) // 5)
                 and _distance(key.lower(), n) <= max(1, len(n) // 5)), None)


def check_fields(rec: dict, fmt: str, where: str) -> None:
    """Top-level fields that would silently drop text if ignored are errors; the rest are metadata."""
    names = _FIELDS[fmt]
    for k, v in rec.items():
        if k in names or v is None or v == "" or v == []:  # nothing to lose
            continue
        alias = _ALIASES.get(k)
        if alias in names:
            raise LmforgeError(f"{where}: field {k!r} is not read: {fmt} records take it as {alias!r} (rename it "
                               f"with fields: {{{alias}: {k}}})")
        near = typo_of(k, names)
        if near:
            raise LmforgeError(f"{where}: unknown field {k!r} (did you mean {near!r}? {fmt} records read "
                               f"{', '.join(names)}; fields not close to these are metadata, as are ignore_fields)")


def message_keys(msgs: list, where: str, label, allowed) -> None:
    """Check the keys of each message dict (`allowed(m)` -> the keys its role may have) with a hint for a
    near miss; drop `name` and a `weight` equal to what lmforge trains on. Other problems: `validate`'s."""
    for i, m in enumerate(msgs):
        keys = allowed(m) if isinstance(m, dict) else None
        if keys is None:  # not an object, or no known role: validate says so
            continue
        for k in m:
            if k not in keys:
                near = typo_of(k, keys)
                hint = f"did you mean {near!r}? " if near else ""
                what = f" in {'an' if m['role'] == 'assistant' else 'a'} {m['role']} message" if "role" in m else ""
                raise LmforgeError(f"{where}: {label(i)}: unknown key {k!r}{what} ({hint}allowed: {', '.join(keys)})")
        if "weight" in m:
            w, trained = m.pop("weight"), m.get("role", SHAREGPT_ROLES.get(m.get("from"))) == "assistant"
            if isinstance(w, bool) or w not in (0, 1):
                raise LmforgeError(f"{where}: {label(i)}: 'weight' must be 0 or 1, got {w!r}")
            if w != trained:
                raise LmforgeError(f"{where}: {label(i)}: weight {w!r} is not supported: lmforge trains on every "
                                   f"assistant message and on nothing else")
        m.pop("name", None)


def message_allowed(m: dict):
    from lmforge.chat import _KEYS

    keys = _KEYS.get(m.get("role")) if isinstance(m.get("role"), str) else None
    return None if keys is None else keys + tuple(k for k in _MESSAGE_EXTRAS if k not in keys)
