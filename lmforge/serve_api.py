"""The OpenAI chat API's side of `lmforge serve` that is not HTTP: request fields checked into
lmforge's terms (`APIError` carries the status and the field), stop strings, token texts and
log-probabilities. `lmforge.serve` builds the service and the app on these; the AI judge reuses the
token and log-probability helpers.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from lmforge.errors import LmforgeError


class APIError(Exception):
    """An error returned to the client as OpenAI-style JSON."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def token_bytes(tok) -> list[bytes]:
    """The bytes each token id stands for (byte-level BPE); special tokens give their marker text."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, extra = bs[:], 0
    for b in range(256):  # GPT-2's byte -> printable character table (bytes_to_unicode), inverted below
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    char_to_byte = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    special = set(tok.special.values())
    out = []
    for i in range(tok.vocab_size):
        piece = tok.tok.id_to_token(i) or ""
        if i in special or any(c not in char_to_byte for c in piece):
            out.append(piece.encode("utf-8"))
        else:
            out.append(bytes(char_to_byte[c] for c in piece))
    return out


@torch.no_grad()
def position_logprobs(model, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]], pad_id: int,
                      batch_size: int = 8) -> list[torch.Tensor]:
    """log_softmax of the next-token logits at the given positions of each sequence: one (len(pos), V)
    fp32 tensor per sequence. Sequences are right-padded in batches (causal attention: a token never
    sees the padding after it) and only the asked-for positions go through the output head."""
    device = next(model.parameters()).device
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        T = max(len(seqs[i]) for i in chunk)
        idx = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for r, i in enumerate(chunk):
            idx[r, :len(seqs[i])] = torch.tensor(list(seqs[i]))
        h = model.hidden(idx.to(device))
        for r, i in enumerate(chunk):
            pos = torch.tensor(list(positions[i]), dtype=torch.long, device=device)
            out[i] = torch.log_softmax(model.lm_head(h[r, pos]).float(), -1).cpu()
    return out


def number_field(body: dict, key: str, default, lo: float, hi: float, integer: bool = False):
    v = body.get(key)
    if v is None:
        return default
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not lo <= v <= hi:
        kind = "an integer" if integer else "a number"
        span = f"between {lo:g} and {hi:g}" if hi < float("inf") else f">= {lo:g}"
        raise APIError(400, f"'{key}' must be {kind} {span}, got {v!r}", key)
    return v


def request_messages(raw) -> list[dict]:
    """OpenAI messages -> lmforge's: content parts joined, "developer" read as "system", names dropped."""
    from lmforge.chat import validate

    if not isinstance(raw, list) or not raw:
        raise APIError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for m in raw:
        if not isinstance(m, dict):
            raise APIError(400, "every message must be an object with 'role' and 'content'", "messages")
        m = {k: v for k, v in m.items() if k in ("role", "content", "tool_calls")}
        if m.get("role") == "developer":
            m["role"] = "system"
        if isinstance(m.get("content"), list):
            m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
        out.append(m)
    try:
        validate(out, "messages", require_assistant=False)
    except LmforgeError as e:
        raise APIError(400, str(e), "messages") from None
    return out


def stop_cut(text: str, stops: Sequence[str]) -> tuple[int | None, bool]:
    """(where the reply is cut: the earliest start of a stop string in `text`, or None; whether a stop
    string that would start earlier than that may still complete, its start being a suffix of `text`).

    >>> stop_cut("it would break the", ["break the rules", "the"])  # "the" is there, but "break the r..." may come
    (15, True)
    >>> stop_cut("it would break the rules", ["break the rules", "the"]), stop_cut("no", ["x"])
    ((9, False), (None, False))
    """
    found = [text.find(s) for s in stops if s in text]
    cut = min(found) if found else None
    limit = len(text) if cut is None else cut
    pending = any(s.startswith(text[q:]) for s in stops for q in range(max(0, len(text) - len(s) + 1), limit)
                  if len(text) - q < len(s))
    return cut, pending


def default_model_name(ckpt_dir: str | os.PathLike) -> str:
    """The checkpoint directory's name; a stage's `<run>/<stage>/model` is `<run>-<stage>` (every stage's
    model directory is called `model`, which would tell clients nothing).

    >>> default_model_name("runs/demo/grpo/model"), default_model_name("exports/my-chat")
    ('demo-grpo', 'my-chat')
    """
    d = Path(ckpt_dir).resolve()
    return f"{d.parent.parent.name}-{d.parent.name}" if d.name == "model" and d.parent.parent.name else d.name


