"""Preference data (pairs for reward models and DPO-style losses, unpaired examples for KTO) from
JSONL/JSON, parquet and Hugging Face datasets, read like chat sources (`lmforge.data.chat_sources`).

Record formats (`format`; "auto" decides per record by its fields, in this order):
- unpaired (has "completion" or "label"): {"prompt", "completion", "label": true|false (or 1|0)}
  -> UnpairedExample; label true = desirable.
- hh_rlhf (no "prompt", "chosen" is a string): Anthropic HH-RLHF, two whole transcripts
  "\\n\\nHuman: ...\\n\\nAssistant: ..." that share the conversation and differ in the final Assistant
  turn. Human -> user, Assistant -> assistant; turn text is stripped (the transcript's whitespace is
  formatting). The prompt is the shared run of turns; each transcript must then end with exactly one
  Assistant turn of its own.
- pairs (otherwise): {"prompt", "chosen", "rejected"}, optional "system" (a system message put first).
  prompt: a string (one user message) or a list of OpenAI-style messages; chosen/rejected: strings,
  or message lists holding one assistant message, optionally after a copy of the prompt's messages
  (UltraFeedback style). Without "prompt", chosen/rejected message lists are whole conversations
  and, as in HH-RLHF, the shared messages become the prompt.
Strings from JSON pairs are kept verbatim; parquet's nulls for absent struct fields are dropped and
OpenAI's nested tool calls flattened, as for chat data.

Every pair is checked: a well-formed conversation (`lmforge.chat.validate`), a prompt that ends with
a user message (or a tool output), non-empty replies without tool calls, and chosen != rejected.
A bad record is a one-line LmforgeError "<file>:<line>: ..." (or "<file>: record <i>: ..."), or,
with `skip_invalid`, skipped and counted by reason. Real HH-RLHF has such records (about 0.5% of
the test splits: identical transcripts, transcripts that differ before the last turn because a
"Human:" inside a reply lacks its blank line, empty turns): read it with skip_invalid: true.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lmforge.chat import validate
from lmforge.data.chat_sources import (
    _EXT_HELP,
    _format_of,
    _iter_hf,
    _iter_parquet,
    check_weight,
    draw_mixture,
    iter_json_records,
    normalize_messages,
)
from lmforge.data.sources import _json_type, resolve_files
from lmforge.errors import LmforgeError

FORMATS = ("auto", "pairs", "hh_rlhf", "unpaired")
FILE_FORMATS = ("auto", "jsonl", "parquet", "hf")
_EXPECT = {"pairs": "prompt/chosen/rejected", "hh_rlhf": "HH-RLHF chosen/rejected transcripts",
           "unpaired": "prompt/completion/label",
           "auto": "prompt/chosen/rejected or HH-RLHF chosen/rejected transcripts"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass
class PreferenceSourceConfig:
    path: str                   # file, directory or glob; or an HF hub id / saved dataset dir (file_format="hf")
    format: str = "auto"        # auto|pairs|hh_rlhf|unpaired: record format (auto: by fields, per record)
    file_format: str = "auto"   # auto|jsonl|parquet|hf
    split: str = "train"        # hf split
    name: str = ""              # hf configuration name
    weight: float = 1.0         # mixture weight: examples drawn = weight x records (see `mix`)
    limit: int = 0              # keep only the first `limit` valid records (0: all)
    skip_invalid: bool = False  # skip (and count) malformed records instead of failing


@dataclass
class PreferencePair:
    prompt: list[dict]  # messages, ending with a user message (or a tool output)
    chosen: str         # the preferred assistant reply
    rejected: str

    def conversations(self) -> tuple[list[dict], list[dict]]:
        """(prompt + chosen reply, prompt + rejected reply) as message lists for the chat template."""
        return ([*self.prompt, {"role": "assistant", "content": self.chosen}],
                [*self.prompt, {"role": "assistant", "content": self.rejected}])


@dataclass
class UnpairedExample:
    prompt: list[dict]
    completion: str
    label: bool  # True: desirable


Record = PreferencePair | UnpairedExample


# ---------------------------------------------------------------- records


def _need(rec: dict, key: str, where: str, fmt: str):
    if rec.get(key) is None:
        raise LmforgeError(f"{where}: missing field '{key}' (fields: {', '.join(rec)}; expected {_EXPECT[fmt]})")
    return rec[key]


def _messages(value, field: str, where: str) -> list[dict]:
    """A string or OpenAI-style message list, normalized like chat_sources' messages format."""
    if not isinstance(value, list):
        raise LmforgeError(f"{where}: field '{field}' must be a string or a list of messages, got {_json_type(value)}")
    return normalize_messages(value)


def _prompt(rec: dict, where: str, fmt: str) -> tuple[list[dict], object]:
    """(prompt messages, label function for validate's errors)."""
    p = _need(rec, "prompt", where, fmt)
    msgs = [{"role": "user", "content": p}] if isinstance(p, str) else _messages(p, "prompt", where)
    system = rec.get("system")
    if system is not None and not isinstance(system, str):
        raise LmforgeError(f"{where}: field 'system' must be a string, got {_json_type(system)}")
    offset = 1 if system and system.strip() else 0
    if offset:
        msgs = [{"role": "system", "content": system}, *msgs]
    name = (lambda i: "prompt") if isinstance(p, str) else (lambda i: f"prompt[{i}]")
    return msgs, lambda i: "system" if i < offset else name(i - offset)


def _reply_text(m, field: str, where: str) -> str:
    if not isinstance(m, dict) or m.get("role") != "assistant":
        role = m.get("role") if isinstance(m, dict) else _json_type(m)
        raise LmforgeError(f"{where}: field '{field}' must end with one assistant message, got {role!r}")
    if m.get("tool_calls"):
        raise LmforgeError(f"{where}: field '{field}': tool calls are not supported in preference data")
    extra = [k for k in m if k not in ("role", "content")]
    if extra:
        raise LmforgeError(f"{where}: field '{field}': unknown key {extra[0]!r} in the assistant message "
                           "(allowed: role, content)")
    if not isinstance(m.get("content"), str):
        raise LmforgeError(f"{where}: field '{field}': 'content' must be a string, got {_json_type(m.get('content'))}")
    return m["content"]


def _reply(value, prompt: list[dict], field: str, where: str) -> str:
    """chosen/rejected/completion: a string, or [assistant] / prompt messages + [assistant]."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, field, where)
    if len(msgs) > len(prompt) and msgs[: len(prompt)] == prompt:
        msgs = msgs[len(prompt):]
    if len(msgs) != 1:
        raise LmforgeError(f"{where}: field '{field}' must be a string or one assistant message (after the prompt's "
                           f"messages), got {len(msgs)} messages")
    return _reply_text(msgs[0], field, where)


def _split_shared(chosen: list, rejected: list, where: str) -> tuple[list[dict], dict, dict]:
    """Whole conversations -> (shared prompt, chosen's last message, rejected's last message)."""
    if chosen == rejected:
        raise LmforgeError(f"{where}: chosen and rejected are identical (nothing to prefer)")
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if len(chosen) != k + 1 or len(rejected) != k + 1:
        raise LmforgeError(f"{where}: chosen and rejected differ before their final assistant turn "
                           "(expected a shared conversation, then one assistant turn each)")
    return chosen[:k], chosen[k], rejected[k]


def hh_messages(text: str, field: str = "chosen", where: str = "transcript") -> list[dict]:
    """An HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." as messages (turn text stripped)."""
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        raise LmforgeError(f"{where}: field '{field}' is not an HH-RLHF transcript (expected turns "
                           "'\\n\\nHuman: ...' and '\\n\\nAssistant: ...')")
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _checked(prompt: list[dict], label, replies: list[tuple[str, str]], where: str) -> None:
    """The prompt plus each reply as one conversation: well-formed, prompt ending in a user/tool turn."""
    msgs = prompt + [{"role": "assistant", "content": text} for _, text in replies]
    validate(msgs, where, label=lambda i: label(i) if i < len(prompt) else replies[i - len(prompt)][0])
    last = prompt[-1]["role"] if prompt else None
    if last not in ("user", "tool"):
        raise LmforgeError(f"{where}: the prompt must end with a user message, got " +
                           (f"{'an' if last == 'assistant' else 'a'} {last} message" if last else "no messages"))


def _detect(rec: dict, where: str) -> str:
    if "completion" in rec or "label" in rec:
        return "unpaired"
    if "prompt" not in rec and isinstance(rec.get("chosen"), str):
        return "hh_rlhf"
    if "prompt" in rec or "chosen" in rec or "rejected" in rec:
        return "pairs"
    raise LmforgeError(f"{where}: cannot tell the record format: expected prompt/chosen/rejected, HH-RLHF "
                       f"chosen/rejected transcripts or prompt/completion/label fields (fields: {', '.join(rec)})")


def to_record(rec, fmt: str, where: str) -> Record:
    """One raw record as a PreferencePair or UnpairedExample; LmforgeError("<where>: ...") if malformed."""
    if not isinstance(rec, dict):
        raise LmforgeError(f"{where}: expected a JSON object, got {_json_type(rec)}")
    detected = _detect(rec, where) if fmt == "auto" else fmt
    expect = "auto" if fmt == "auto" and detected != "unpaired" else detected
    if detected == "unpaired":
        prompt, label = _prompt(rec, where, expect)
        completion = _reply(_need(rec, "completion", where, expect), prompt, "completion", where)
        good = _need(rec, "label", where, expect)
        if not (isinstance(good, bool) or (type(good) is int and good in (0, 1))):
            raise LmforgeError(f"{where}: field 'label' must be true (desirable) or false (undesirable), "
                               f"got {good!r}")
        _checked(prompt, label, [("completion", completion)], where)
        return UnpairedExample(prompt, completion, bool(good))
    chosen, rejected = _need(rec, "chosen", where, expect), _need(rec, "rejected", where, expect)
    if detected == "hh_rlhf":
        for k, v in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(v, str):
                raise LmforgeError(f"{where}: field '{k}' must be an HH-RLHF transcript string, "
                                   f"got {_json_type(v)}")
        prompt, c, r = _split_shared(hh_messages(chosen, "chosen", where), hh_messages(rejected, "rejected", where),
                                     where)
        label = lambda i: f"turn {i + 1}"
        chosen, rejected = _reply_text(c, "chosen", where), _reply_text(r, "rejected", where)
    elif "prompt" not in rec and isinstance(chosen, list) and isinstance(rejected, list):
        prompt, c, r = _split_shared(_messages(chosen, "chosen", where), _messages(rejected, "rejected", where), where)
        label = lambda i: f"chosen[{i}]"
        chosen, rejected = _reply_text(c, "chosen", where), _reply_text(r, "rejected", where)
    else:
        prompt, label = _prompt(rec, where, expect)
        chosen, rejected = _reply(chosen, prompt, "chosen", where), _reply(rejected, prompt, "rejected", where)
    if chosen == rejected:
        raise LmforgeError(f"{where}: chosen and rejected are identical (nothing to prefer)")
    _checked(prompt, label, [("chosen", chosen), ("rejected", rejected)], where)
    return PreferencePair(prompt, chosen, rejected)


def pairs_to_unpaired(pairs: list[PreferencePair]) -> list[UnpairedExample]:
    """Each pair as two KTO examples, in order: (prompt, chosen, desirable), (prompt, rejected, undesirable).
    The two share one prompt; `lmforge.losses.kto_mismatched_indices` keeps them apart in the KL estimate."""
    return [ex for p in pairs for ex in (UnpairedExample(p.prompt, p.chosen, True),
                                         UnpairedExample(p.prompt, p.rejected, False))]


# ---------------------------------------------------------------- sources


def _read(cfg: PreferenceSourceConfig, unpaired: bool) -> tuple[list[Record], dict]:
    """(records, stats row {"path", "records", "skipped", "first_skipped"?, "skip_reasons"?}).
    unpaired: pairs become two UnpairedExamples each; else unpaired records are errors."""
    if cfg.format not in FORMATS:
        raise LmforgeError(f"{cfg.path}: unknown record format '{cfg.format}' (expected one of: {', '.join(FORMATS)})")
    if cfg.file_format not in FILE_FORMATS:
        raise LmforgeError(f"{cfg.path}: unknown file_format '{cfg.file_format}' "
                           f"(expected one of: {', '.join(FILE_FORMATS)})")
    if isinstance(cfg.limit, bool) or not isinstance(cfg.limit, int) or cfg.limit < 0:
        raise LmforgeError(f"{cfg.path}: limit must be a whole number >= 0, got {cfg.limit!r}")
    out, valid, reasons, first = [], 0, Counter(), ""
    for path, ffmt in resolve_files(cfg.path, cfg.file_format, _format_of, _EXT_HELP, "file_format"):
        records = _iter_hf(path, cfg) if ffmt == "hf" else _iter_parquet(path) if ffmt == "parquet" \
            else iter_json_records(path)
        for where, rec in records:
            try:
                if isinstance(rec, LmforgeError):
                    raise rec
                r = to_record(rec, cfg.format, where)
                if isinstance(r, UnpairedExample) and not unpaired:
                    raise LmforgeError(f"{where}: an unpaired (prompt/completion/label) record where a "
                                       "chosen/rejected pair is needed (only kto reads unpaired data)")
            except LmforgeError as e:
                if not cfg.skip_invalid:
                    raise
                first = first or str(e)
                reasons[str(e).removeprefix(f"{where}: ")] += 1
                continue
            out += pairs_to_unpaired([r]) if unpaired and isinstance(r, PreferencePair) else [r]
            valid += 1
            if valid == cfg.limit:
                break
        if valid == cfg.limit:
            break
    skipped = sum(reasons.values())
    if not out:
        why = f" ({skipped} invalid records skipped; the first: {first})" if skipped else ""
        raise LmforgeError(f"{cfg.path}: no {'examples' if unpaired else 'preference pairs'}{why}")
    row = {"path": cfg.path, "records": len(out), "skipped": skipped}
    if skipped:
        row.update(first_skipped=first, skip_reasons=dict(reasons.most_common()))
    return out, row


def read_pairs(cfg: PreferenceSourceConfig) -> tuple[list[PreferencePair], int]:
    """All preference pairs of one source and the number of records skipped."""
    pairs, row = _read(cfg, unpaired=False)
    return pairs, row["skipped"]


def load_pairs_file(path) -> list[PreferencePair]:
    """The pairs of one JSONL file written by lmforge (e.g. the `pairs` stage), strictly; [] if it is empty."""
    out = []
    for where, rec in iter_json_records(Path(path)):
        if isinstance(rec, LmforgeError):
            raise rec
        out.append(to_record(rec, "pairs", where))
    return out


def read_unpaired(cfg: PreferenceSourceConfig) -> tuple[list[UnpairedExample], int]:
    """All KTO examples of one source (pairs give a desirable and an undesirable example each)
    and the number of records skipped."""
    examples, row = _read(cfg, unpaired=True)
    return examples, row["skipped"]


def mix(sources: list[PreferenceSourceConfig], seed: int, total: int | None = None,
        unpaired: bool = False) -> tuple[list[Record], dict]:
    """A shuffled mixture of several sources, as `lmforge.data.chat_sources.mix`: a source's weight
    multiplies its size (whole passes, then a random subset for the fraction), `total` rescales the
    counts keeping their ratios; deterministic in `seed`. unpaired=True gives UnpairedExamples (pairs
    split in two, see `pairs_to_unpaired`), else PreferencePairs.
    stats: {"total": N, "sources": [{"path", "records", "skipped", "weight", "drawn",
    "first_skipped"?, "skip_reasons"? ({reason: count})}]}.
    """
    if not sources:
        raise LmforgeError("preference sources: none given (expected at least one source)")
    if total is not None and total <= 0:
        raise LmforgeError(f"preference sources: total must be positive, got {total}")
    read, rows = [], []
    for cfg in sources:
        w = check_weight(cfg.weight, cfg.path)
        recs, row = _read(cfg, unpaired) if w > 0 else ([], {"path": cfg.path, "records": 0, "skipped": 0})
        read.append(recs)
        rows.append({**row, "weight": w})
    out, counts = draw_mixture(read, [c.weight for c in sources], seed, total, "preference sources")
    for row, k in zip(rows, counts, strict=True):
        row["drawn"] = k
    return out, {"total": len(out), "sources": rows}
