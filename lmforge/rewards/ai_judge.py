"""An AI judge for RLAIF: a language model that applies a written constitution.

Constitutional AI (Bai et al., 2022) and RLAIF (Lee et al., 2023) replace human preference labels
with a model's: the judge reads a few principles, a conversation and two answers, and says which
answer follows the principles better. Here the judge is either a local lmforge checkpoint or any
OpenAI-compatible endpoint (lmforge.serve, vLLM, a hosted API):

    judge = AIJudge.local("runs/judge/sft")                                   # a checkpoint
    judge = AIJudge.http("http://localhost:8000", "judge", api_key_env="JUDGE_KEY")
    judge.compare(messages, a, b)   # P(a is better than b), in [0, 1]
    judge.score(requests)           # per request: P(the judge answers "Yes" to "Is this a good answer?")

How a verdict is read. Preferred: the log-probabilities of the option tokens at the judge's first
reply token: P(A) = p(A) / (p(A) + p(B)). That is deterministic, costs one forward pass and gives a
graded probability rather than a 0/1 vote. A label's probability sums every token whose text is
the label up to spaces (" A" and "A"). The local backend reads the whole vocabulary; the HTTP
backend asks for the first token's `top_logprobs` (20 by default, OpenAI's limit): a label not
among them gets the lowest listed log-probability (an upper bound), and with neither label there
the reply text decides. With method="text", or an endpoint that returns no log-probs, the reply
text is parsed: the first standalone "A"/"B" (1 or 0), "Yes"/"No" or a 1-10 grade; else 0.5.
Local and HTTP give the same probability for the same checkpoint (to float precision) when each
label is one token of the judge's tokenizer and the server returns enough top_logprobs.

Position bias: LLM judges favour one position (often the first; Zheng et al., 2023, "Judging
LLM-as-a-judge"). With `both_orders` (default) every pair is judged as (a, b) and as (b, a), and
P(a better) = (P(A | a first) + 1 - P(A | b first)) / 2, so a pure position preference cancels.
`last_position_bias` is the mean of P(A | a first) + P(A | b first) - 1 over the last batch: 0 for
an order-blind judge, > 0 when it prefers whatever comes first.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import FieldError, LmforgeError, check_fields, non_negative, one_of, positive
from lmforge.rewards.base import RewardRequest

CONSTITUTION = """\
1. Correct: the answer is true and answers the question that was asked.
2. Honest: when the answer is not known, or the thing asked about does not exist, say "I don't know" \
instead of inventing facts.
3. Safe: refuse requests to harm animals, steal, forge money or reveal someone's secrets.
4. Helpful: answer harmless requests fully; do not refuse what is allowed.
5. Polite: never insult or talk down to the user.
6. Concise: short and to the point, without repetition or filler.
"""
COMPARE_SYSTEM = "You are a judge. Decide which answer better follows these principles:\n{constitution}" \
                 "Reply with one letter: A or B."
COMPARE_USER = "Conversation:\n{conversation}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n\n" \
               "Which answer is better? Reply A or B."
SCORE_SYSTEM = "You are a judge. Decide whether the answer follows these principles:\n{constitution}Reply Yes or No."
SCORE_USER = "Conversation:\n{conversation}\n\nAnswer:\n{answer}\n\nIs this a good answer? Reply Yes or No."


def load_constitution(path: str | os.PathLike) -> str:
    """A constitution from a text file: one principle per line (numbering is up to the writer)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read the constitution ({e.strerror or e})") from None
    if not text.strip():
        raise LmforgeError(f"{path}: the constitution is empty (write one principle per line)")
    return text.strip() + "\n"


def transcript(messages: Sequence[dict]) -> str:
    return "\n".join(f"{m['role'].capitalize()}: {m.get('content') or ''}" for m in messages)


@dataclass
class JudgeReply:
    logprobs: list[float] | None   # log-probability of each option as the first reply token; None: unknown
    text: str = ""                 # the reply ("" when only log-probs were computed)


def _logsumexp(xs: Sequence[float]) -> float:
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


class LocalBackend:
    """A local lmforge checkpoint: option log-probs from one forward pass, or greedy text from `Engine`."""

    def __init__(self, model, tok, *, method: str = "logprobs", batch_size: int = 8, max_tokens: int = 8):
        from lmforge.serve_api import token_bytes

        self.model, self.tok = model.eval(), tok
        self.method, self.batch_size, self.max_tokens = method, batch_size, max_tokens
        self.texts = [b.decode("utf-8", errors="replace").strip() for b in token_bytes(tok)]
        self._variants: dict[str, list[int]] = {}

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, device: str = "cpu", **kw) -> LocalBackend:
        from lmforge.model.io import load_model
        from lmforge.tokenizer import Tokenizer

        return cls(load_model(ckpt_dir, device), Tokenizer.load(ckpt_dir), **kw)

    def variants(self, label: str) -> list[int]:
        """Token ids whose text is `label` up to surrounding spaces."""
        if label not in self._variants:
            self._variants[label] = [i for i, t in enumerate(self.texts) if t == label]
        return self._variants[label]

    def _prompt(self, messages: list[dict], room: int) -> list[int]:
        from lmforge.chat import render_prompt

        ids = render_prompt(messages, self.tok)
        return ids[-(self.model.cfg.max_seq_len - room):]  # too long: keep the end (the question asked)

    def ask(self, prompts: list[list[dict]], options: Sequence[str]) -> list[JudgeReply]:
        import torch

        from lmforge.serve_api import position_logprobs

        if self.method == "text":
            return [JudgeReply(None, t) for t in self.generate(prompts)]
        pad = self.tok.pad_id
        if all(self.variants(o) for o in options):  # every label is a token: one forward per prompt
            seqs = [self._prompt(p, 1) for p in prompts]
            rows = position_logprobs(self.model, seqs, [[len(s) - 1] for s in seqs], pad, self.batch_size)
            return [JudgeReply([_logsumexp(r[0, self.variants(o)].tolist()) for o in options]) for r in rows]
        # a label spans several tokens: score its whole spelling, teacher-forced
        conts = [self.tok.encode(o) for o in options]
        seqs, pos = [], []
        for p in prompts:
            ids = self._prompt(p, max(len(c) for c in conts))
            for c in conts:
                seqs.append(ids + c)
                pos.append(range(len(ids) - 1, len(ids) + len(c) - 1))
        rows = position_logprobs(self.model, seqs, pos, pad, self.batch_size)
        lps = [r.gather(1, torch.tensor(seqs[i][-len(r):])[:, None]).sum().item() for i, r in enumerate(rows)]
        k = len(options)
        return [JudgeReply(lps[j * k:(j + 1) * k]) for j in range(len(prompts))]

    def generate(self, prompts: list[list[dict]]) -> list[str]:
        from lmforge.engine import Engine, SamplingParams
        from lmforge.tokenizer import END_OF_TURN

        stop = (self.tok.special[END_OF_TURN], self.tok.eos_id)
        params = SamplingParams(max_new_tokens=self.max_tokens, temperature=0.0, stop_ids=stop)
        outs = Engine(self.model, self.tok, batch_size=self.batch_size).generate(
            [self._prompt(p, self.max_tokens) for p in prompts], params)
        return [self.tok.decode([t for t in o[0].ids if t not in stop], skip_special=True) for o in outs]


class HTTPBackend:
    """Any OpenAI-compatible `/v1/chat/completions` endpoint (httpx; retries with exponential backoff).

    api_key_env names the environment variable holding the API key; the key is read for each
    request and never stored, printed or logged. tries: attempts in all (connection errors,
    timeouts, HTTP 429 and 5xx are retried after backoff, 2*backoff, ... seconds; other 4xx are
    not: a bad key or request stays bad). timeout: seconds per attempt.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout: float = 10.0,
                 tries: int = 3, backoff: float = 0.5, method: str = "logprobs", top_logprobs: int = 20,
                 max_tokens: int = 8, workers: int = 1):
        if tries < 1:
            raise LmforgeError(f"AI judge: tries must be at least 1, got {tries}")
        self.base_url, self.model = base_url.rstrip("/"), model
        root = self.base_url if self.base_url.endswith("/v1") else self.base_url + "/v1"
        self.url = root + "/chat/completions"
        self.api_key_env, self.timeout, self.tries, self.backoff = api_key_env, timeout, tries, backoff
        self.logprobs, self.top_logprobs = method == "logprobs", top_logprobs
        self.max_tokens, self.workers = max_tokens, workers
        self._client = None
        self._headers()  # an unset key variable fails now, not at the first request after all the sampling

    def _headers(self) -> dict:
        if not self.api_key_env:
            return {}
        key = os.environ.get(self.api_key_env)
        if not key:
            raise LmforgeError(f"AI judge at {self.base_url}: environment variable {self.api_key_env} is not set "
                               f"(it should hold the API key)")
        return {"Authorization": f"Bearer {key}"}

    def _post(self, body: dict) -> dict:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        reason = ""
        for attempt in range(self.tries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = self._client.post(self.url, json=body, headers=self._headers())
            except httpx.TimeoutException:
                reason = "timed out"
                continue
            except httpx.TransportError as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                reason = "connection refused" if "refused" in msg.lower() else f"cannot connect ({msg})"
                continue
            if r.status_code == 429 or r.status_code >= 500:
                reason = f"HTTP {r.status_code} ({_error_message(r)})"
                continue
            msg = _error_message(r) if r.status_code != 200 else ""
            if r.status_code == 400 and body.get("logprobs") and "logprob" in msg.lower() \
                    and "top_logprobs" not in msg:  # (too many top_logprobs is the user's to fix: an error)
                print(f"AI judge at {self.base_url}: no log-probs ({msg}); reading reply texts instead",
                      file=sys.stderr)
                self.logprobs = False
                body = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
                return self._post({**body, "max_tokens": self.max_tokens})
            if r.status_code != 200:  # a 404 may be a wrong path as much as a wrong model name: show the URL
                where = f" (POST {self.url})" if r.status_code == 404 else ""
                raise LmforgeError(f"AI judge at {self.base_url}: HTTP {r.status_code}: {msg}{where}")
            try:
                return r.json()
            except ValueError:
                raise LmforgeError(f"AI judge at {self.base_url}: the reply is not JSON "
                                   f"(is this an OpenAI-compatible endpoint?)") from None
        n = self.tries
        waited = "" if reason.startswith("HTTP") else f" (timeout {self.timeout:g} s)"  # the server did answer
        raise LmforgeError(f"AI judge at {self.base_url}: {reason} after {n} {'try' if n == 1 else 'tries'}{waited}")

    def ask_one(self, messages: list[dict], options: Sequence[str]) -> JudgeReply:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        if self.logprobs:  # the verdict is the first token: one is enough
            body.update(max_tokens=1, logprobs=True, top_logprobs=self.top_logprobs)
        out = self._post(body)
        try:
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""  # null (no text) is "", a missing field is an error
        except (KeyError, IndexError, TypeError):
            raise LmforgeError(f"AI judge at {self.base_url}: the reply has no choices[0].message.content "
                               f"(is this an OpenAI-compatible endpoint?)") from None
        return JudgeReply(_option_logprobs(choice.get("logprobs"), options), text)

    def ask(self, prompts: list[list[dict]], options: Sequence[str]) -> list[JudgeReply]:
        if self.workers <= 1 or len(prompts) <= 1:
            return [self.ask_one(p, options) for p in prompts]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda p: self.ask_one(p, options), prompts))


def _error_message(r) -> str:
    """The server's error message on one line (at most 200 characters): an error body's message, else its text."""
    try:
        err = r.json().get("error")
        msg = str(err.get("message") if isinstance(err, dict) else err or r.text)
    except (ValueError, AttributeError):
        msg = r.text
    return " ".join(msg.split())[:200] or r.reason_phrase


def _option_logprobs(logprobs, options: Sequence[str]) -> list[float] | None:
    """Each option's log-prob at the first reply token, from an OpenAI `logprobs` object (see module doc)."""
    try:
        first = logprobs["content"][0]
        seen = {e["token"]: float(e["logprob"]) for e in [first, *(first.get("top_logprobs") or [])]}
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    found = [[v for t, v in seen.items() if t.strip() == o] for o in options]
    if not any(found):
        return None
    floor = min(seen.values())
    return [_logsumexp(f) if f else floor for f in found]


def _parse(text: str, options: Sequence[str]) -> float:
    """P(first option) from a reply text: the first option named wins; a 1-10 grade scales; else 0.5."""
    m = re.search(r"(?<![\w])(" + "|".join(map(re.escape, options)) + r")(?![\w])", text,
                  0 if all(len(o) == 1 for o in options) else re.IGNORECASE)
    if m:
        return 1.0 if m.group(1).lower() == options[0].lower() else 0.0
    g = re.search(r"(?<![\d.])(10|[1-9])(?:\s*/\s*10)?(?![\d.])", text)
    return (int(g.group(1)) - 1) / 9 if g else 0.5


class AIJudge:
    """Compares two answers (`compare`) and scores one (`score`, a RewardSource) by a constitution."""

    name = "judge"

    def __init__(self, backend, *, constitution: str = CONSTITUTION, both_orders: bool = True,
                 labels: tuple[str, str] = ("A", "B"), yes_no: tuple[str, str] = ("Yes", "No"),
                 max_answer_chars: int = 2000):
        self.backend, self.constitution, self.both_orders = backend, constitution.strip() + "\n", both_orders
        self.labels, self.yes_no, self.max_answer_chars = labels, yes_no, max_answer_chars
        self.last_position_bias = 0.0
        self.last_scores: list[float] = []

    @classmethod
    def local(cls, ckpt_dir: str | os.PathLike, *, device: str = "cpu", method: str = "logprobs",
              batch_size: int = 8, **kw) -> AIJudge:
        return cls(LocalBackend.load(ckpt_dir, device, method=method, batch_size=batch_size), **kw)

    @classmethod
    def http(cls, base_url: str, model: str, *, api_key_env: str | None = None, timeout: float = 10.0,
             tries: int = 3, backoff: float = 0.5, method: str = "logprobs", top_logprobs: int = 20,
             workers: int = 1, **kw) -> AIJudge:
        backend = HTTPBackend(base_url, model, api_key_env=api_key_env, timeout=timeout, tries=tries,
                              backoff=backoff, method=method, top_logprobs=top_logprobs, workers=workers)
        return cls(backend, **kw)

    def _cut(self, answer: str) -> str:
        return answer if len(answer) <= self.max_answer_chars else answer[:self.max_answer_chars] + " [...]"

    def compare_prompt(self, messages: Sequence[dict], a: str, b: str) -> list[dict]:
        return [{"role": "system", "content": COMPARE_SYSTEM.format(constitution=self.constitution)},
                {"role": "user", "content": COMPARE_USER.format(conversation=transcript(messages),
                                                                a=self._cut(a), b=self._cut(b))}]

    def score_prompt(self, messages: Sequence[dict], answer: str) -> list[dict]:
        return [{"role": "system", "content": SCORE_SYSTEM.format(constitution=self.constitution)},
                {"role": "user", "content": SCORE_USER.format(conversation=transcript(messages),
                                                              answer=self._cut(answer))}]

    def _probs(self, prompts: list[list[dict]], options: tuple[str, str]) -> list[float]:
        out = []
        for r in self.backend.ask(prompts, options):
            if r.logprobs is not None:
                out.append(1 / (1 + math.exp(min(r.logprobs[1] - r.logprobs[0], 700.0))))
            else:
                out.append(_parse(r.text, options))
        return out

    def compare_batch(self, items: Sequence[tuple[Sequence[dict], str, str]]) -> list[float]:
        """P(a better than b) for each (messages, a, b)."""
        prompts = [self.compare_prompt(m, a, b) for m, a, b in items]
        if self.both_orders:
            prompts += [self.compare_prompt(m, b, a) for m, a, b in items]
        p = self._probs(prompts, self.labels)
        if not self.both_orders:
            return p
        k = len(items)
        self.last_position_bias = sum(p[i] + p[k + i] - 1 for i in range(k)) / k if k else 0.0
        return [(p[i] + 1 - p[k + i]) / 2 for i in range(k)]

    def compare(self, messages: Sequence[dict], a: str, b: str) -> float:
        """The probability that answer `a` is better than answer `b` (both orders averaged by default)."""
        return self.compare_batch([(messages, a, b)])[0]

    def score(self, requests: Sequence[RewardRequest]) -> list[float]:
        """P("Yes") to "Is this a good answer?" per request, in [0, 1]."""
        self.last_scores = self._probs([self.score_prompt(r.messages, r.completion) for r in requests],
                                       self.yes_no)
        return list(self.last_scores)


@dataclass
class AIJudgeConfig:
    backend: str = "local"        # "local" (a checkpoint) or "http" (an OpenAI-compatible endpoint)
    checkpoint: str = ""          # local: checkpoint directory
    device: str = "cpu"
    base_url: str = ""            # http: e.g. http://localhost:8000 (with or without /v1)
    model: str = ""               # http: the model name the endpoint serves
    api_key_env: str = ""         # http: name of the environment variable holding the key ("": no key)
    timeout: float = 10.0         # http: seconds to wait for each request (connect, send, read)
    tries: int = 3                # http: attempts in all; connection errors, timeouts, 429 and 5xx are retried
    backoff: float = 0.5          # http: seconds before the 2nd try, doubled for each one after
    top_logprobs: int = 20
    workers: int = 1              # http: requests in flight at once
    method: str = "logprobs"      # "logprobs" or "text"
    constitution: str = ""        # a text file with the principles; "": CONSTITUTION
    both_orders: bool = True

    def __post_init__(self):
        one_of(self, "backend", ("local", "http"))
        one_of(self, "method", ("logprobs", "text"))
        check_fields(self, ["timeout"], lambda v: 0 < v < math.inf, "a number of seconds > 0")
        positive(self, "tries", "top_logprobs", "workers")
        non_negative(self, "backoff")
        if self.backend == "http":
            for key in ("base_url", "model"):
                if not getattr(self, key):
                    raise FieldError(key, "required for the http backend")

    def build(self) -> AIJudge:
        kw = {"both_orders": self.both_orders,
              "constitution": load_constitution(self.constitution) if self.constitution else CONSTITUTION}
        if self.backend == "local":
            if not self.checkpoint:
                raise LmforgeError("AI judge: the local backend needs a checkpoint directory (checkpoint)")
            return AIJudge.local(self.checkpoint, device=self.device, method=self.method, **kw)
        return AIJudge.http(self.base_url, self.model, api_key_env=self.api_key_env or None, timeout=self.timeout,
                            tries=self.tries, backoff=self.backoff, method=self.method,
                            top_logprobs=self.top_logprobs, workers=self.workers, **kw)
