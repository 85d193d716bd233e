"""Conversations from JSONL/JSON, parquet and Hugging Face datasets, in three record formats.

Record formats (`format`, detected per record with "auto"):
- messages (OpenAI): {"messages": [{"role": ..., "content": ...}, ...], "system" (optional)}. OpenAI's nested
  tool calls ({"type": "function", "function": {"name", "arguments"}}, arguments as a string or object) are
  flattened to lmforge's {"name", "arguments": str}; `tool_call_id`/`name` of tool messages and
  null-valued keys (parquet fills absent struct fields with null) are dropped. A top-level "system"
  becomes the first message (an error beside a different system message).
- sharegpt: {"conversations": [{"from": "human"|"gpt"|"system"|..., "value": str}]}; optional
  top-level "system"; "function_call" turns (value: JSON {"name", "arguments"} or a list of them)
  become assistant tool calls, "observation"/"tool" turns tool outputs.
- alpaca: {"instruction", "input" (optional), "output", "system" (optional), "history" (optional)} ->
  user = instruction + "\\n\\n" + input (an empty input is left out), assistant = output; "history"
  (LLaMA-Factory's earlier turns, [[instruction, output], ...]) comes before them.
Records in another shape are read by renaming their fields first (`fields`, the format's name ->
the record's): GSM8K's {"question", "answer"} with `fields: {instruction: question, output: answer}`
reads as alpaca. Content is kept verbatim (not stripped).

Unknown fields. Real records carry metadata (ids, sources, categories, tools), so other top-level
fields are ignored, except the ones that look like a typo of a field the record's format reads
("inptu", "ouput", "Instruction": at most one edit away, two for the long names) and the well-known
name "system_prompt": those are errors ("did you mean 'input'?"), since ignoring them would silently
drop text (a null or empty value loses nothing and is ignored). Inside a message or turn every key
must be known: besides role/content/tool_calls (from/value), a message (or turn) may carry OpenAI's
"name" (dropped) and "weight" (null, or what lmforge trains on anyway: 1 on assistant messages, 0 on the
others); anything else is an error naming the key and the allowed ones.

Every bad record is a one-line `LmforgeError` "<file>:<line>: ..." (JSONL) or "<file>: record <i>: ..."
(JSON arrays, parquet, datasets; i counts from 0), or, with `skip_invalid`, skipped and counted.
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.chat import validate
from lmforge.data.record_fields import SHAREGPT_ROLES as _SHAREGPT_ROLES
from lmforge.data.record_fields import TURN_KEYS, check_fields, message_allowed, message_keys, typo_of
from lmforge.data.sources import _is_saved_hf_dir, _json_type, _one_line, _open_error, load_hf_split, resolve_files
from lmforge.errors import LmforgeError

FORMATS = ("auto", "messages", "sharegpt", "alpaca")
RECORD_FIELDS = ("messages", "conversations", "system", "instruction", "input", "output", "history")  # `fields` names
FILE_FORMATS = ("auto", "jsonl", "parquet", "hf")
# .json may hold a JSON array (alpaca_data.json) or JSON lines: the reader looks at the first byte.
_EXTENSIONS = {".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".jsonl": "jsonl", ".json": "jsonl",
               ".parquet": "parquet"}
_EXT_HELP = ".jsonl, .json, .jsonl.gz, .json.gz, .parquet, or a datasets.save_to_disk directory"


@dataclass
class ChatSourceConfig:
    path: str                   # file, directory or glob; or an HF hub id / saved dataset dir (file_format="hf")
    format: str = "auto"        # auto|messages|sharegpt|alpaca: record format (auto: by keys, per record)
    file_format: str = "auto"   # auto|jsonl|parquet|hf
    split: str = "train"        # hf split
    name: str = ""              # hf configuration name
    weight: float = 1.0         # mixture weight: examples drawn = weight x conversations (see `mix`)
    skip_invalid: bool = False  # skip (and count) malformed records instead of failing
    fields: dict[str, str] = field(default_factory=dict)  # rename before reading: {format's name: record's}
    prompts: bool = False       # records may end without a reply (RL prompts: ppo.sources); SFT needs replies
    # top-level fields that are metadata even though one resembles a field the format reads (an `inputs`
    # column beside `input`): dropped before reading, never an error
    ignore_fields: list[str] = field(default_factory=list)

    def __post_init__(self):
        from lmforge.errors import FieldError

        for dst, src in self.fields.items():
            if dst not in RECORD_FIELDS:
                close = difflib.get_close_matches(str(dst), RECORD_FIELDS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise FieldError(f"fields.{dst}", f"not a field the record formats read{hint}; expected one of "
                                                  f"{', '.join(RECORD_FIELDS)}")
            if not isinstance(src, str) or not src:
                raise FieldError(f"fields.{dst}", f"expected the name of a field of the records, got {src!r}")


# ---------------------------------------------------------------- files


def _format_of(p: Path) -> str | None:
    if _is_saved_hf_dir(p):
        return "hf"
    name = p.name.lower()
    return next((fmt for ext, fmt in _EXTENSIONS.items() if name.endswith(ext)), None)


def _resolve(cfg: ChatSourceConfig) -> list[tuple[Path | str, str]]:
    """cfg.path as (path, file format) pairs, sorted (lmforge.data.sources.resolve_files, chat extensions)."""
    if cfg.format not in FORMATS:
        raise LmforgeError(f"{cfg.path}: unknown record format '{cfg.format}' (expected one of: {', '.join(FORMATS)})")
    if cfg.file_format not in FILE_FORMATS:
        raise LmforgeError(f"{cfg.path}: unknown file_format '{cfg.file_format}' "
                           f"(expected one of: {', '.join(FILE_FORMATS)})")
    return resolve_files(cfg.path, cfg.file_format, _format_of, _EXT_HELP, "file_format")


# Readers yield (where, record) pairs; a record that cannot even be parsed comes as an LmforgeError
# instance (not raised) so that skip_invalid can count it. Errors about the whole file are raised.


def iter_json_records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) from a JSONL file (optionally .gz) or one JSON array. A line that is not
    valid JSON yields an LmforgeError as its record, so a caller may skip it and count it."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rb")
    except OSError as e:
        raise _open_error(path, e) from None
    with f:
        try:
            first = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
            f.seek(0)
            if first == b"[":  # one JSON array of records
                try:
                    records = json.loads(f.read().decode("utf-8-sig"))
                except UnicodeDecodeError as e:
                    raise LmforgeError(f"{path}: not valid UTF-8 ({e.reason})") from None
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
                for i, rec in enumerate(records):
                    yield f"{path}: record {i}", rec
                return
            for lineno, raw in enumerate(f, 1):
                where = f"{path}:{lineno}"
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError as e:
                    yield where, LmforgeError(f"{where}: not valid UTF-8 ({e.reason})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield where, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, LmforgeError(f"{where}: invalid JSON ({e.msg})")
        except (OSError, EOFError) as e:  # a truncated or corrupt .gz
            raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None


def _iter_parquet(path: Path) -> Iterator[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except Exception as e:  # ArrowInvalid / OSError for bytes that are not parquet
        raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None
    i = 0
    try:
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                yield f"{path}: record {i}", rec
                i += 1
    except Exception as e:
        raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None


def _iter_hf(path: Path | str, cfg: ChatSourceConfig) -> Iterator[tuple[str, object]]:
    for i, rec in enumerate(load_hf_split(path, cfg.name, cfg.split)):
        yield f"{path}: record {i}", rec


# ---------------------------------------------------------------- records


def _need_str(rec: dict, key: str, where: str, optional: bool = False) -> str:
    if key not in rec or rec[key] is None:
        if optional:
            return ""
        raise LmforgeError(f"{where}: missing field '{key}' (fields: {', '.join(rec)})")
    if not isinstance(rec[key], str):
        raise LmforgeError(f"{where}: field '{key}' must be a string, got {_json_type(rec[key])}")
    return rec[key]


def _flat_call(c):
    """OpenAI's {"id", "type": "function", "function": {"name", "arguments"}} -> {"name", "arguments": str}."""
    if isinstance(c, dict) and isinstance(c.get("function"), dict) and c.get("type", "function") == "function":
        c = c["function"]
    if isinstance(c, dict):
        c = {k: v for k, v in c.items() if v is not None}
        if isinstance(c.get("arguments"), (dict, list)):
            c["arguments"] = json.dumps(c["arguments"], ensure_ascii=False)
    return c


def normalize_messages(msgs: list) -> list:
    """OpenAI-style messages as lmforge's: null fields dropped, tool messages without their call id and
    name, tool calls flattened to {"name", "arguments"}. Non-dict items pass through for `validate`."""
    out = []
    for m in msgs:
        if isinstance(m, dict):
            m = {k: v for k, v in m.items() if v is not None}
            if m.get("role") == "tool":
                m.pop("tool_call_id", None)
                m.pop("name", None)
            if isinstance(m.get("tool_calls"), list):
                m["tool_calls"] = [_flat_call(c) for c in m["tool_calls"]]
                m.setdefault("content", "")  # OpenAI: content null beside tool calls
        out.append(m)
    return out


def _from_messages(rec: dict, where: str, reply: bool = True) -> list[dict]:
    msgs = rec["messages"]
    if not isinstance(msgs, list):
        raise LmforgeError(f"{where}: field 'messages' must be a list, got {_json_type(msgs)}")
    out = normalize_messages(msgs)
    message_keys(out, where, lambda i: f"messages[{i}]", message_allowed)
    system = _need_str(rec, "system", where, optional=True)
    if system.strip():
        first = out[0] if out and isinstance(out[0], dict) else {}
        if first.get("role") != "system":
            out.insert(0, {"role": "system", "content": system})
        elif first.get("content") != system:  # the same text twice is fine
            raise LmforgeError(f"{where}: a top-level 'system' and a different system message (messages[0]): "
                               "keep one")
    offset = len(out) - len(msgs)
    validate(out, where, require_assistant=reply,
             label=lambda i: "system" if i < offset else f"messages[{i - offset}]")
    return out


def _from_sharegpt(rec: dict, where: str, reply: bool = True) -> list[dict]:
    turns = rec["conversations"]
    if not isinstance(turns, list):
        raise LmforgeError(f"{where}: field 'conversations' must be a list, got {_json_type(turns)}")
    system = _need_str(rec, "system", where, optional=True)
    out = [{"role": "system", "content": system}] if system.strip() else []
    for i, t in enumerate(turns):
        at = f"{where}: conversations[{i}]"
        if not isinstance(t, dict):
            raise LmforgeError(f"{at}: expected an object with 'from' and 'value', got {_json_type(t)}")
        t = {k: v for k, v in t.items() if v is not None or k in ("from", "value")}  # parquet's nulls
        message_keys([t], where, lambda _, i=i: f"conversations[{i}]", lambda _: TURN_KEYS)
        for k in ("from", "value"):
            if k not in t:
                raise LmforgeError(f"{at}: missing '{k}'")
        src, value = t["from"], t["value"]
        if src not in _SHAREGPT_ROLES:
            raise LmforgeError(f"{at}: unknown 'from' value {src!r} (expected one of: {', '.join(_SHAREGPT_ROLES)})")
        if not isinstance(value, str):
            raise LmforgeError(f"{at}: 'value' must be a string, got {_json_type(value)}")
        if src == "function_call":
            try:
                calls = json.loads(value)
            except json.JSONDecodeError:
                calls = None
            calls = calls if isinstance(calls, list) else [calls]
            if not all(isinstance(c, dict) for c in calls):
                raise LmforgeError(f'{at}: a function_call value must be JSON {{"name": ..., "arguments": ...}} '
                                   "or a list of them")
            out.append({"role": "assistant", "content": "", "tool_calls": [_flat_call(c) for c in calls]})
        else:
            out.append({"role": _SHAREGPT_ROLES[src], "content": value})
    offset = len(out) - len(turns)  # 1 when a top-level system message was put first
    validate(out, where, require_assistant=reply,
             label=lambda i: "system" if i < offset else f"conversations[{i - offset}]")
    return out


def _from_alpaca(rec: dict, where: str, reply: bool = True) -> list[dict]:
    instruction = _need_str(rec, "instruction", where)
    extra = _need_str(rec, "input", where, optional=True)
    output = _need_str(rec, "output", where, optional=not reply)
    system = _need_str(rec, "system", where, optional=True)
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise LmforgeError(f"{where}: field 'history' must be a list of [instruction, output] pairs, "
                           f"got {_json_type(history)}")
    out = [{"role": "system", "content": system}] if system.strip() else []
    labels = ["system"] * len(out)
    for j, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise LmforgeError(f"{where}: history[{j}]: expected [instruction, output] (two strings), "
                               f"got {json.dumps(pair, ensure_ascii=False)[:80]}")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        labels += [f"history[{j}][0]", f"history[{j}][1]"]
    user = "\n\n".join(x for x in (instruction, extra) if x.strip())
    out += [{"role": "user", "content": user}] + ([{"role": "assistant", "content": output}] if reply or output else [])
    labels += ["instruction", "output"]
    validate(out, where, require_assistant=reply, label=lambda i: labels[i])
    return out


_CONVERTERS = {"messages": _from_messages, "sharegpt": _from_sharegpt, "alpaca": _from_alpaca}
_KEY = {"messages": "messages", "sharegpt": "conversations", "alpaca": "instruction"}


def to_messages(rec, fmt: str, where: str, reply: bool = True) -> list[dict]:
    """One record as a validated list of messages; LmforgeError("<where>: ...") if malformed.
    reply=False: a record may end without an assistant reply (a prompt)."""
    if not isinstance(rec, dict):
        raise LmforgeError(f"{where}: expected a JSON object, got {_json_type(rec)}")
    if fmt == "auto":
        fmt = next((f for f in ("messages", "sharegpt", "alpaca") if _KEY[f] in rec), None)
        if fmt is None:
            near = next(((k, n) for k in rec if (n := typo_of(k, tuple(_KEY.values())))), None)
            hint = f"; did you mean {near[1]!r} for {near[0]!r}?" if near else ""
            raise LmforgeError(f"{where}: cannot tell the record format: expected a 'messages', 'conversations' or "
                               f"'instruction' field (fields: {', '.join(map(str, rec))}){hint}")
    check_fields(rec, fmt, where)
    if _KEY[fmt] not in rec:
        raise LmforgeError(f"{where}: missing field '{_KEY[fmt]}' (fields: {', '.join(rec)})")
    return _CONVERTERS[fmt](rec, where, reply)


def renamed(rec, fields: dict[str, str], where: str):
    """`rec` with its fields renamed (`fields`: new name -> the record's name for it).

    >>> renamed({"question": "2+2?", "answer": "4", "id": 7}, {"instruction": "question", "output": "answer"}, "f:1")
    {'id': 7, 'instruction': '2+2?', 'output': '4'}
    """
    if not fields or not isinstance(rec, dict):
        return rec
    missing = [src for src in fields.values() if src not in rec]
    if missing:
        raise LmforgeError(f"{where}: missing field '{missing[0]}' (named in fields; the record has: {', '.join(rec)})")
    out = {k: v for k, v in rec.items() if k not in fields.values()}
    out.update({dst: rec[src] for dst, src in fields.items()})
    return out


def _read(cfg: ChatSourceConfig) -> tuple[list[list[dict]], int, str]:
    """(conversations, number skipped, the first skipped record's error or "")."""
    convs, skipped, first = [], 0, ""
    for path, ffmt in _resolve(cfg):
        records = _iter_hf(path, cfg) if ffmt == "hf" else _iter_parquet(path) if ffmt == "parquet" \
            else iter_json_records(path)
        for where, rec in records:
            try:
                if isinstance(rec, LmforgeError):
                    raise rec
                if cfg.ignore_fields and isinstance(rec, dict):
                    rec = {k: v for k, v in rec.items() if k not in cfg.ignore_fields}
                convs.append(to_messages(renamed(rec, cfg.fields, where), cfg.format, where, not cfg.prompts))
            except LmforgeError as e:
                if not cfg.skip_invalid:
                    raise
                skipped += 1
                first = first or str(e)
    if not convs:
        why = f" ({skipped} invalid records skipped; the first: {first})" if skipped else ""
        raise LmforgeError(f"{cfg.path}: no conversations{why}")
    return convs, skipped, first


def read_conversations(cfg: ChatSourceConfig) -> tuple[list[list[dict]], int]:
    """All conversations of one source (validated message lists) and the number of records skipped."""
    convs, skipped, _ = _read(cfg)
    return convs, skipped


# ---------------------------------------------------------------- mixture


def _round_to(values: list[float], total: int) -> list[int]:
    """Integers summing to `total`, each the floor or ceiling of its value (largest remainders first)."""
    base = [math.floor(v) for v in values]
    order = sorted(range(len(values)), key=lambda i: (base[i] - values[i], i))
    for i in order[: total - sum(base)]:
        base[i] += 1
    return base


def check_weight(w, path: str) -> float:
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise LmforgeError(f"{path}: weight must be a number >= 0, got {w!r}")
    return w


def draw_mixture(parts: list[list], weights: list[float], seed: int, total: int | None,
                 what: str) -> tuple[list, list[int]]:
    """Items of several sources mixed by weight, shuffled; and how many were drawn from each.

    A source's weight multiplies its size: it contributes round(weight x items) (1.0: each once,
    2.0: each twice, 0.5: a random half, 0: none). With `total`, those counts are scaled to sum to
    `total`, keeping their ratios. Upsampling takes whole passes over a source, then a random subset
    for the fraction, so every item is used before any repeats more than the others (lower variance
    than drawing with replacement). Deterministic in `seed`. `what` names the sources in errors.
    """
    import numpy as np

    if total is not None and total <= 0:
        raise LmforgeError(f"{what}: total must be positive, got {total}")
    want = [w * len(v) for w, v in zip(weights, parts, strict=True)]
    if total is None:
        total = math.floor(sum(want) + 0.5)
    elif sum(want) > 0:
        want = [x * total / sum(want) for x in want]
    if sum(want) == 0 or total == 0:
        raise LmforgeError(f"{what}: the mixture is empty (weights: {', '.join(str(w) for w in weights)})")
    counts = _round_to(want, total)
    out: list = []
    for i, (items, k) in enumerate(zip(parts, counts, strict=True)):
        rng = np.random.default_rng([seed, i])
        full, rest = divmod(k, len(items)) if items else (0, 0)
        idx = [rng.permutation(len(items)) for _ in range(full)] + [rng.permutation(len(items))[:rest]]
        out += [items[j] for j in np.concatenate(idx).tolist()]
    order = np.random.default_rng(seed).permutation(len(out)).tolist()
    return [out[j] for j in order], counts


def need_replies(sources: list[ChatSourceConfig], key: str = "sources") -> None:
    """For a config's `__post_init__`: a source read as prompts (`prompts: true`) where the stage trains on
    (or checks against) the replies is a one-line error, found when the recipe loads."""
    from lmforge.errors import FieldError

    for i, cfg in enumerate(sources):
        if cfg.prompts:
            raise FieldError(f"{key}.{i}.prompts", "true reads records without replies (RL prompts, for "
                                                   "ppo.sources); this stage needs the replies: remove it")


def mix(sources: list[ChatSourceConfig], seed: int, total: int | None = None) -> tuple[list[list[dict]], dict]:
    """A shuffled mixture of several sources (weights and `total` as in `draw_mixture`) and its stats:
    {"total": N, "sources": [{"path", "conversations", "skipped", "weight", "drawn", "first_skipped"?}]}.
    """
    if not sources:
        raise LmforgeError("chat sources: none given (expected at least one source)")
    if total is not None and total <= 0:
        raise LmforgeError(f"chat sources: total must be positive, got {total}")
    read, rows = [], []
    for cfg in sources:
        w = check_weight(cfg.weight, cfg.path)
        convs, skipped, first = _read(cfg) if w > 0 else ([], 0, "")
        read.append(convs)
        row = {"path": cfg.path, "conversations": len(convs), "skipped": skipped, "weight": w}
        if first:
            row["first_skipped"] = first
        rows.append(row)
    out, counts = draw_mixture(read, [c.weight for c in sources], seed, total, "chat sources")
    for row, k in zip(rows, counts, strict=True):
        row["drawn"] = k
    return out, {"total": len(out), "sources": rows}
