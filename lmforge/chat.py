"""The chat template: one rendering of conversations for training, generation and export.

Messages are OpenAI-style dicts, `{"role": "system"|"user"|"assistant"|"tool", "content": str}`;
an assistant message may carry `"tool_calls": [{"name": str, "arguments": str}]`, and a `tool`
message carries the output of one call. Rendered as token ids (`<|x|>` are special tokens):

    <|begin_of_text|>
    system:     <|system|>{content}<|end_of_turn|>
    user:       <|user|>{content}<|end_of_turn|>
    assistant:  <|assistant|>{content}<|end_of_turn|>
      with tool_calls: <|assistant|>{content}<|tool_call|>{name}({arguments})<|end_tool_call|>...
                       (no <|end_of_turn|>: the turn goes on after the tool outputs)
    tool:       <|tool_output|>{content}<|end_tool_output|>
    assistant right after a tool message: {content}<|end_of_turn|>  (same turn: no <|assistant|>)

Each piece of text is encoded on its own with `Tokenizer.encode`, so text never turns into a
special token; special tokens enter only by id. The tokenizer starts every piece with a space
(see tokenizer.py), so an answer's first word is the same token as that word mid-sentence.
This equals what Hugging Face gets by tokenizing the rendered string (it splits at special tokens first), which is why
`chat_template()` reproduces `render` exactly, as long as no content contains the literal text
of a special token (HF would turn that text into the token; lmforge keeps it text).

The loss mask is 1 exactly on what the model must learn to produce: assistant content, the
tool calls (markers included) and the `<|end_of_turn|>` closing an assistant turn (without
it the model never learns to stop). Everything else is 0: BOS, role markers, system/user
text, and tool outputs with their markers, which the generation engine forces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.tokenizer import (
    ASSISTANT,
    BOS,
    END_OF_TURN,
    END_TOOL_CALL,
    END_TOOL_OUTPUT,
    SYSTEM,
    TOOL_CALL,
    TOOL_OUTPUT,
    USER,
)

ROLES = ("system", "user", "assistant", "tool")
_KEYS = {"system": ("role", "content"), "user": ("role", "content"),
         "assistant": ("role", "content", "tool_calls"), "tool": ("role", "content")}
# A tool (function) name: no parentheses or spaces, so `name(arguments)` parses back unambiguously.
# The one rule for tool names: the engine's call parser (engine._CALL) is built from it too.
TOOL_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]*"
_NAME = re.compile(TOOL_NAME)


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(v), "null" if v is None else type(v).__name__)


def call_text(call: dict) -> str:
    """The text between <|tool_call|> and <|end_tool_call|>: `name(arguments)`."""
    return f"{call['name']}({call['arguments']})"


def validate(messages, where: str, *, require_assistant: bool = True, label=None) -> None:
    """Raise a one-line `LmforgeError("<where>: ...")` unless `messages` is a well-formed conversation.

    Checks: a non-empty list of objects; known roles and keys; string, non-empty content (an
    assistant message with tool_calls may have empty content); well-formed tool calls; a system
    message only first; tool messages only right after an assistant message with tool_calls, one
    per call; after tool outputs the assistant continues; and (with require_assistant) at least
    one assistant message, else there is nothing to train on. `label(i)` names message i in the
    errors (default `messages[i]`), for readers whose records name their turns differently.
    """
    label = label or (lambda i: f"messages[{i}]")

    def fail(i, msg):
        raise LmforgeError(f"{where}: {label(i)}: {msg}")

    if not isinstance(messages, list):
        raise LmforgeError(f"{where}: expected a list of messages, got {_json_type(messages)}")
    if not messages:
        raise LmforgeError(f"{where}: no messages")
    pending_calls = 0   # calls of the last assistant message not yet answered by a tool message
    call_at = -1        # index of that assistant message
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail(i, f"expected an object with 'role' and 'content', got {_json_type(m)}")
        if "role" not in m:
            fail(i, "missing 'role'")
        role = m["role"]
        if role not in ROLES:
            fail(i, f"unknown role {role!r} (expected system, user, assistant or tool)")
        allowed = _KEYS[role]
        for k in m:
            if k not in allowed:
                fail(i, f"unknown key {k!r} in a {role} message (allowed: {', '.join(allowed)})")
        calls = m.get("tool_calls")
        if role == "assistant" and "tool_calls" in m:
            _check_calls(calls, lambda msg, i=i: fail(i, msg))
        content = m.get("content")
        if content is None and not calls:
            fail(i, "missing 'content'")
        if content is not None and not isinstance(content, str):
            fail(i, f"'content' must be a string, got {_json_type(content)}")
        if not calls and not content.strip():
            fail(i, "empty content")
        if role == "system" and i != 0:
            fail(i, "a system message must be the first message")
        if role == "tool":
            if call_at < 0:
                fail(i, "a tool message must follow an assistant message with tool_calls")
            if pending_calls == 0:
                fail(i, f"more tool messages than the {len(messages[call_at]['tool_calls'])} tool call(s) "
                        f"of {label(call_at)}")
            pending_calls -= 1
            continue
        if call_at >= 0:  # the run of tool outputs has ended
            if pending_calls:
                fail(call_at, f"{len(messages[call_at]['tool_calls'])} tool call(s) but only "
                              f"{len(messages[call_at]['tool_calls']) - pending_calls} tool message(s) after it")
            if role != "assistant":
                fail(i, f"after tool outputs the assistant continues its turn (got a {role} message)")
        pending_calls, call_at = (len(calls), i) if calls else (0, -1)
    if require_assistant and not any(m["role"] == "assistant" for m in messages):
        raise LmforgeError(f"{where}: no assistant message (nothing to train on)")


def _check_calls(calls, fail) -> None:
    if not isinstance(calls, list) or not calls:
        fail('\'tool_calls\' must be a non-empty list of {"name": ..., "arguments": ...}')
    for j, c in enumerate(calls):
        if not isinstance(c, dict):
            fail(f"tool_calls[{j}]: expected an object with 'name' and 'arguments', got {_json_type(c)}")
        for k in ("name", "arguments"):
            if k not in c:
                fail(f"tool_calls[{j}]: missing '{k}'")
        for k in c:
            if k not in ("name", "arguments"):
                fail(f"tool_calls[{j}]: unknown key {k!r} (allowed: name, arguments)")
        if not isinstance(c["name"], str) or not _NAME.fullmatch(c["name"]):
            fail(f"tool_calls[{j}]: 'name' must be a function name such as get_weather, got {c['name']!r}")
        if not isinstance(c["arguments"], str):
            fail(f"tool_calls[{j}]: 'arguments' must be a string, got {_json_type(c['arguments'])}")


def _generation_marker(messages) -> bool:
    """Whether a generation prompt opens a new assistant turn: not after a tool output, where
    the assistant's turn is still open and it simply continues."""
    return messages[-1]["role"] != "tool"


def render(messages, tok, *, add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation; see the module docstring for the format.

    add_generation_prompt appends `<|assistant|>` (mask 0) so the model writes the next assistant
    turn; after a tool message nothing is appended (the assistant's turn is still open). The
    conversation must then not end with an assistant message.
    """
    validate(messages, "messages", require_assistant=False)
    if add_generation_prompt and messages[-1]["role"] == "assistant":
        raise LmforgeError("messages: a generation prompt cannot follow an assistant message "
                           "(end the conversation with a user, system or tool message)")
    sp = tok.special
    ids, mask = [sp[BOS]], [0]

    def add(xs, m):
        ids.extend(xs)
        mask.extend([m] * len(xs))

    prev = None
    for m in messages:
        role, content = m["role"], m.get("content") or ""
        if role in ("system", "user"):
            add([sp[SYSTEM if role == "system" else USER]], 0)
            add(tok.encode(content), 0)
            add([sp[END_OF_TURN]], 0)
        elif role == "tool":
            add([sp[TOOL_OUTPUT]], 0)
            add(tok.encode(content), 0)
            add([sp[END_TOOL_OUTPUT]], 0)
        else:
            if prev != "tool":
                add([sp[ASSISTANT]], 0)
            if content:
                add(tok.encode(content), 1)
            calls = m.get("tool_calls") or []
            for c in calls:
                add([sp[TOOL_CALL], *tok.encode(call_text(c)), sp[END_TOOL_CALL]], 1)
            if not calls:
                add([sp[END_OF_TURN]], 1)
        prev = role
    if add_generation_prompt and _generation_marker(messages):
        add([sp[ASSISTANT]], 0)
    return ids, mask


def render_prompt(messages, tok) -> list[int]:
    """Ids of the conversation so far plus the generation prompt, ready for the engine."""
    return render(messages, tok, add_generation_prompt=True)[0]


# Whitespace control: every tag trims around itself (`{%-`/`-%}`), so the only text emitted is
# the literal special tokens and the message contents. `tool_calls` in OpenAI's nested form
# ({"type": "function", "function": {...}}) and dict arguments are accepted too, for callers of
# `apply_chat_template`; lmforge's own data is normalized to the flat form before rendering.
_TEMPLATE = (
    "{{- '" + BOS + "' -}}"
    "{%- set ns = namespace(prev='') -%}"
    "{%- for message in messages -%}"
    "{%- set role = message['role'] -%}"
    "{%- set content = message['content'] if message['content'] is defined and message['content'] is not none "
    "else '' -%}"
    "{%- if role == 'system' -%}"
    "{{- '" + SYSTEM + "' + content + '" + END_OF_TURN + "' -}}"
    "{%- elif role == 'user' -%}"
    "{{- '" + USER + "' + content + '" + END_OF_TURN + "' -}}"
    "{%- elif role == 'tool' -%}"
    "{{- '" + TOOL_OUTPUT + "' + content + '" + END_TOOL_OUTPUT + "' -}}"
    "{%- elif role == 'assistant' -%}"
    "{%- if ns.prev != 'tool' -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
    "{{- content -}}"
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set f = call['function'] if call['function'] is defined else call -%}"
    "{%- set args = f['arguments'] if f['arguments'] is string else f['arguments'] | tojson -%}"
    "{{- '" + TOOL_CALL + "' + f['name'] + '(' + args + ')' + '" + END_TOOL_CALL + "' -}}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{- '" + END_OF_TURN + "' -}}"
    "{%- endif -%}"
    "{%- else -%}"
    "{{- raise_exception('unknown role: ' + role) -}}"
    "{%- endif -%}"
    "{%- set ns.prev = role -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and ns.prev != 'tool' -%}{{- '" + ASSISTANT + "' -}}{%- endif -%}"
)


def chat_template() -> str:
    """Jinja2 template for transformers' `chat_template`: `apply_chat_template` gives `render`'s ids."""
    return _TEMPLATE


def write_chat_template(tokenizer_dir) -> Path:
    """Add `chat_template` to an existing `tokenizer_config.json` (atomically); returns its path."""
    from lmforge.utils import atomic_write_text

    p = Path(tokenizer_dir) / "tokenizer_config.json"
    try:
        cfg = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{p}: file not found (save the tokenizer first)") from None
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{p}: cannot read ({str(e).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise LmforgeError(f"{p}: expected a JSON object, got {_json_type(cfg)}")
    cfg["chat_template"] = chat_template()
    atomic_write_text(p, json.dumps(cfg, indent=2, ensure_ascii=False))
    return p


def _split_call(text: str) -> dict:
    """`name(arguments)` -> {"name", "arguments"}; a malformed call keeps its text in `name`."""
    name, sep, rest = text.partition("(")
    if sep and rest.endswith(")"):
        return {"name": name, "arguments": rest[:-1]}
    return {"name": name if sep else text, "arguments": rest}


def parse_turn(ids, tok) -> list[dict]:
    """Messages of one generated assistant turn: the inverse of rendering an assistant turn.

    `ids` are what follows the prompt (a leading `<|assistant|>` is skipped). Returns the
    assistant message, and when the engine forced tool outputs into the sequence, the tool
    messages and the assistant's continuations after them: [assistant, tool, assistant, ...].
    Parsing stops at `<|end_of_turn|>`, `<|end_of_text|>` or any marker that cannot occur inside an
    assistant turn; a sequence cut off (max tokens) keeps what it has, an unfinished call included.
    """
    sp = tok.special
    start, stop = sp[TOOL_CALL], sp[TOOL_OUTPUT]
    closers = {sp[END_TOOL_CALL]: start, sp[END_TOOL_OUTPUT]: stop}
    special = set(sp.values())
    ids = list(ids)
    if ids and ids[0] == sp[ASSISTANT]:
        ids = ids[1:]
    out: list[dict] = []
    cur: dict = {"role": "assistant", "content": ""}
    run: list[int] = []   # text ids not yet decoded
    inside = None         # TOOL_CALL or TOOL_OUTPUT while inside one, else None

    def flush() -> str:
        text = tok.decode(run)
        run.clear()
        return text

    for t in ids:
        if t not in special:
            run.append(t)
            continue
        if inside is None and t in (start, stop):
            cur["content"] += flush()
            inside = t
            if t == stop:  # a forced tool output ends this assistant message (unless it is another output)
                if not (out and out[-1]["role"] == "tool" and not cur["content"] and "tool_calls" not in cur):
                    out.append(cur)
                cur = {"role": "assistant", "content": ""}
            continue
        if inside is not None and closers.get(t) == inside:
            text = flush()
            if inside == start:
                cur.setdefault("tool_calls", []).append(_split_call(text))
            else:
                out.append({"role": "tool", "content": text})
            inside = None
            continue
        break  # end of turn, end of text, or a marker that does not belong here
    if inside == start:
        cur.setdefault("tool_calls", []).append(_split_call(flush()))
    elif inside == stop:
        out.append({"role": "tool", "content": flush()})
    else:
        cur["content"] += flush()
    if not out or cur["content"] or cur.get("tool_calls"):
        out.append(cur)
    return out


def parse_assistant(ids, tok) -> dict:
    """The assistant message generated in `ids` (up to its first tool output, if any):
    {"role": "assistant", "content": str, "tool_calls": [...]} (tool_calls only when present)."""
    return parse_turn(ids, tok)[0]

