"""Generation engine: token ids in, token ids out, with a KV cache, batching, N samples and tools.

    engine = Engine(model, tokenizer, tools=TOOLS)
    params = SamplingParams(max_new_tokens=64, temperature=0.8, top_k=50, stop_ids=(eot,), seed=1)
    outs = engine.generate(prompts, params, n=4)      # outs[prompt][sample]: Completion(ids, mask, finish_reason)
    for tok in engine.stream(prompt, params): ...     # one conversation, token by token

How a batch runs:
- Prompts are sorted by length and cut into runs of at most `batch_size` rows. A run is one
  left-padded prefill (`pad_left`: row b's real tokens start at column pad_left[b]), then one
  token per step for every row through the KV cache. All rows share the column index, so a
  step is a single (rows, 1) forward whatever the prompt lengths. A run's longest prompt plus
  any row's new tokens stays within `max_seq_len`: near that limit a short prompt goes to
  another run rather than lose tokens.
- N samples per prompt: each prompt is prefilled once; the fast path then keeps its keys and
  values once and gives each of the N rows only its own columns (`lmforge.group_decode`: a step
  reads the prompt once per group, not N times), the reference path copies its cache rows N
  times (as nanochat does). The N rows sample independently from then on.
- Sampling (greedy at temperature 0, else temperature / top-k / top-p) draws from a private
  `torch.Generator` seeded by `params.seed`: the same call with the same seed gives the same
  outputs, and the global RNG of a training run is never touched. With temperature > 0 a
  prompt's samples depend on the rows it shares a run with (one generator serves the run);
  greedy outputs do not.
- Each row stops at its first stop token (included in the output), after `max_new_tokens`, or
  when prompt + output reach `model.cfg.max_seq_len`. Finished rows ride along (their tokens
  are discarded) until half of the batch is done; then they are dropped from the batch and
  the cache, so a few long completions do not keep paying for many short ones.

Tool use is a small per-row state machine. When a row samples `<|tool_call|>`, the engine
collects its tokens until `<|end_tool_call|>`, decodes the text `name(arguments)`, runs
`tools[name](arguments)`, and then *forces* `<|tool_output|>` + the result's tokens +
`<|end_tool_output|>` into that row, one per step, fed through the model exactly like sampled
tokens while the other rows keep sampling. Every completion carries a mask: 1 for tokens the
model sampled, 0 for forced ones, so training can leave tool outputs out of the loss. Stop
tokens are only checked on sampled tokens. Without a tokenizer, tool calls are not executed.

Speed: decode steps do not go through `Transformer.forward`, which rebuilds RoPE tables and
masks on every call; `lmforge.fast_decode._Decoder` runs the same layers with what does not change
across steps prepared once per call: a RoPE table, the padding mask, and on CPU the linear weights
fused (q|k|v, gate|up) and pre-packed for oneDNN (about twice as fast as the default matmul at a
handful of rows), or in bf16 on a CPU with AVX512-BF16 for lmforge's own kernel (`lmforge.cpu_gemm`,
2-4x oneDNN's call at decode sizes). Configurations it does not cover (ALiBi, sliding window) decode through
`Transformer.forward`, as does `Engine(fast=False)`, the reference path the tests compare against.
The packed weights are copies made at the start of a generate/stream call (tens of milliseconds)
and reused while no parameter changed (`_Decoder.weights_key`: identity, storage and in-place
version of every parameter), so a model that keeps training between calls is always sampled with
its current weights. `Engine(bf16=True)` (RL rollouts of a bf16-autocast trainer) packs bf16
weights; the KV cache and attention stay in the model's dtype, and greedy outputs drift from fp32's.

`Engine(compile=True)` (opt-in: bench) runs each decode step of one-sample runs (n = 1) through
torch.compile (`_Decoder.step`; n > 1 decodes eagerly through a GroupCache): the KV cache length is
rounded up to a multiple of 64 and attention over the columns in use is an opaque op, so a run's
steps share one static graph. The first call compiles (a few seconds warm, 15-30 s cold on a busy
CPU); any compile error warns once and decodes eagerly. Measured speeds against transformers, and
where a step's time goes, are in docs/model.md and bench/README.md.
"""

from __future__ import annotations

import contextlib
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from lmforge.chat import TOOL_NAME
from lmforge.fast_decode import _Decoder
from lmforge.group_decode import GroupCache
from lmforge.model.transformer import KVCache, Transformer

MAX_TOOL_OUTPUT_CHARS = 256  # a tool's answer is cut to this many characters before it is forced in


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 1.0        # 0: greedy
    top_k: int = 0                  # 0: off
    top_p: float = 1.0              # 1: off
    stop_ids: tuple[int, ...] = ()
    seed: int = 0
    logprobs: bool = False          # record each sampled token's log-probability (RL rollouts): under
                                    # the model's distribution at `temperature`, before top-k/top-p cuts

    def __post_init__(self):
        ok = {"max_new_tokens": self.max_new_tokens >= 0, "top_k": self.top_k >= 0,
              "temperature": 0 <= self.temperature < float("inf"), "top_p": 0 < self.top_p <= 1}
        for name in (k for k, good in ok.items() if not good):
            raise ValueError(f"SamplingParams.{name}: out of range, got {getattr(self, name)} (expected "
                             f"max_new_tokens, top_k >= 0; temperature >= 0 and finite; 0 < top_p <= 1)")


@dataclass
class Completion:
    ids: list[int]          # new tokens only; includes the stop token when one was hit
    mask: list[int]         # per token: 1 sampled by the model, 0 forced by the engine (tool output)
    finish_reason: str      # "stop" | "length"
    logprobs: list[float] = field(default_factory=list)  # per token when asked for (0.0 on forced tokens)


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits: (B, V) -> next ids (B,). temperature 0 means greedy."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0 < top_p < 1:
        sorted_logits, order = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop tokens once the mass before them already exceeds top_p (always keep the first)
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    # inverse-CDF sampling: one uniform per row, where torch.multinomial draws one exponential per
    # vocabulary entry (2.8 ms per step at 64 rows x 2048 on one CPU core). searchsorted's
    # right side never lands on a zero-probability token (its CDF step is flat)
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


def _token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> list[float]:
    """log p(ids) under softmax(logits / temperature) (temperature 0: the raw logits), fp32."""
    scaled = logits.float() / temperature if temperature > 0 else logits.float()
    return torch.log_softmax(scaled, -1).gather(1, ids[:, None]).squeeze(1).tolist()


@dataclass
class _Row:  # one sample's state in the run loop
    budget: int                                   # most new tokens this row may get
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    finish: str = ""                              # "" while running
    forced: deque = field(default_factory=deque)  # tokens to force before sampling again
    call: list[int] | None = None                 # tokens of a tool call being collected
    logprobs: list[float] = field(default_factory=list)

    def completion(self) -> Completion:
        return Completion(self.ids, self.mask, self.finish or "length", self.logprobs)


_CALL = re.compile(rf"\s*({TOOL_NAME})\s*\((.*)\)\s*", re.DOTALL)  # names: chat.TOOL_NAME


class Engine:
    """Batched, cached sampling over a `Transformer` (see the module docstring).

    tokenizer: an `lmforge.tokenizer.Tokenizer`; needed only for tools (decode calls, encode results).
    tools: name -> function of the argument text returning the result text (`lmforge.tools.TOOLS`).
    batch_size: most rows (prompts x samples) decoded together.
    fast: decode with `_Decoder` where the configuration allows; False always uses `Transformer.forward`.
    compile: torch.compile the fast path's decode step (see the module docstring); ignored without `fast`.
    bf16: the fast path's packed CPU matmuls in bf16 (RL rollouts of a bf16-autocast trainer: about as
        exact as its forward, and faster); ignored where the weights are not packed.
    """

    def __init__(self, model: Transformer, tokenizer=None, tools: dict[str, Callable[[str], str]] | None = None,
                 batch_size: int = 64, fast: bool = True, compile: bool = False, bf16: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.tools = dict(tools or {}) if tokenizer is not None else {}
        self.fast = fast and _Decoder.supports(model)
        self.compile = compile and self.fast
        self.bf16 = bf16
        self._prepared: tuple | None = None  # (weights key, parameters kept alive, _Decoder) of the last call
        self.special: dict[str, int] = {}
        if self.tools:
            from lmforge.tokenizer import END_TOOL_CALL, END_TOOL_OUTPUT, TOOL_CALL, TOOL_OUTPUT

            sp = tokenizer.special
            self.special = {"call": sp[TOOL_CALL], "end_call": sp[END_TOOL_CALL],
                            "out": sp[TOOL_OUTPUT], "end_out": sp[END_TOOL_OUTPUT]}

    # -- public API ----------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 progress: str | None = None) -> list[list[Completion]]:
        """Complete every prompt `n` times; returns completions indexed [prompt][sample].

        progress: a description to show a progress bar (completions done) under, for long calls.
        """
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        out: list[list[Completion]] = [[] for _ in prompts]
        todo = []
        for i, p in enumerate(prompts):
            if self._budget(p, params) <= 0:
                out[i] = [Completion([], [], "length") for _ in range(n)]
            else:
                todo.append(i)
        todo.sort(key=lambda i: -len(prompts[i]))  # similar lengths share a run: little padding
        per_run = max(1, self.batch_size // n)
        groups: list[list[int]] = []
        for i in todo:
            # a run's columns (longest prompt + most new tokens) stay within max_seq_len, so no row's
            # position, nor any column, ever passes it (learned positions have no embedding beyond)
            if not groups or len(groups[-1]) == per_run or \
                    len(prompts[groups[-1][0]]) + self._budget(prompts[i], params) > self.model.cfg.max_seq_len:
                groups.append([])
            groups[-1].append(i)
        gen = torch.Generator(device=self._device()).manual_seed(params.seed)
        bar = contextlib.nullcontext()
        if progress is not None:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo) * n, desc=progress, unit="answer", leave=False, mininterval=1.0)
        with self._session() as decoder, bar:
            for group in groups:
                for s0 in range(0, n, self.batch_size):  # n > batch_size: a prompt's samples in pieces
                    k = min(n - s0, self.batch_size)
                    rows = [_Row(self._budget(prompts[i], params)) for i in group for _ in range(k)]
                    for _ in self._run(decoder, [prompts[i] for i in group], k, params, gen, rows):
                        pass
                    for j, i in enumerate(group):
                        out[i].extend(r.completion() for r in rows[j * k:(j + 1) * k])
                    if progress is not None:
                        bar.update(len(group) * k)
        return out

    def stream(self, prompt: list[int], params: SamplingParams) -> Iterator[int]:
        """Yield the new tokens of one completion as they are produced (forced tool tokens included)."""
        if self._budget(prompt, params) <= 0:
            return
        gen = torch.Generator(device=self._device()).manual_seed(params.seed)
        row = _Row(self._budget(prompt, params))
        with self._session() as decoder:
            for _ in self._run(decoder, [prompt], 1, params, gen, [row]):
                yield row.ids[-1]

    # -- internals -----------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _budget(self, prompt: list[int], params: SamplingParams) -> int:
        if not prompt:
            raise ValueError("cannot generate from an empty prompt (start it with BOS)")
        return min(params.max_new_tokens, self.model.cfg.max_seq_len - len(prompt))

    @contextlib.contextmanager
    def _session(self):
        """Eval mode (LoRA dropout off) for the duration, restored after; yields the prepared decoder."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                decoder = self._decoder() if self.fast else None
            yield decoder
        finally:
            self.model.train(was_training)

    def _decoder(self) -> _Decoder:
        """The prepared decoder, rebuilt only when the weights changed since the last call."""
        key = _Decoder.weights_key(self.model)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = None  # free the old packed copies first
            decoder = _Decoder(self.model, compile=self.compile, bf16=self.bf16)
            self._prepared = (key, list(self.model.parameters()), decoder)
        return self._prepared[2]

    def _forward(self, decoder: _Decoder | None, idx, start: int, pos, bias, pad_left, cache) -> torch.Tensor:
        if decoder is not None:
            return decoder.forward(idx, start, pos, bias, cache)
        return self.model(idx, cache=cache, start=start, pad_left=pad_left)[:, -1]

    def _prefill(self, decoder: _Decoder | None, prompts: list[list[int]], n: int, total: int):
        """One left-padded forward over the prompts -> (last logits, cache, pad, decode mask, columns used).

        Everything comes back with n rows per prompt.
        """
        dev, cfg = self._device(), self.model.cfg
        L = max(len(p) for p in prompts)
        pad = torch.tensor([L - len(p) for p in prompts], device=dev)
        idx = torch.tensor([[0] * (L - len(p)) + p for p in prompts], device=dev)
        padded = bool(pad.any())
        # n samples from a fast decoder: the prompts' keys and values are kept once (GroupCache), else
        # each prompt's cache rows are copied n times after the prefill
        group = n > 1 and decoder is not None
        cache = KVCache(cfg, len(prompts), L if group else total, dev, next(self.model.parameters()).dtype)
        cols = torch.arange(total, device=dev)
        pos = (cols[None, :L] - pad[:, None]).clamp(min=0)                              # (B, L)
        bias = None
        if padded:  # causal, and pad keys hidden from every query but themselves (as the model does)
            q, k = cols[:L, None], cols[None, :L]
            allowed = (q >= k)[None] & ((k >= pad[:, None, None]) | (q == k)[None])      # (B, L, L)
            bias = torch.zeros(allowed.shape, dtype=cache.k[0].dtype, device=dev)
            bias = bias.masked_fill(~allowed, float("-inf"))[:, None]                   # (B, 1, L, L)
        logits = self._forward(decoder, idx, 0, pos, bias, pad if padded else None, cache)
        if group:
            cache = GroupCache(cache, pad if padded else None, n, total - L)
            return logits.repeat_interleave(n, 0), cache, (pad.repeat_interleave(n, 0) if padded else None), None, L
        if n > 1:  # prefill once, then copy each prompt's cache rows for its n samples
            cache.k = [t.repeat_interleave(n, 0) for t in cache.k]
            cache.v = [t.repeat_interleave(n, 0) for t in cache.v]
            logits, pad = logits.repeat_interleave(n, 0), pad.repeat_interleave(n, 0)
        step_bias = None
        if padded:  # decoding: a query sees every real key, never a pad column
            step_bias = torch.zeros(len(pad), 1, 1, total, dtype=cache.k[0].dtype, device=dev)
            step_bias = step_bias.masked_fill((cols[None, :] < pad[:, None])[:, None, None], float("-inf"))
        return logits, cache, (pad if padded else None), step_bias, L

    def _run(self, decoder: _Decoder | None, prompts: list[list[int]], n: int, params: SamplingParams,
             gen: torch.Generator, rows: list[_Row]) -> Iterator[None]:
        """Generate into `rows` (n consecutive rows per prompt); yields after every step.

        Tensor work happens under inference_mode, entered per step rather than around the
        generator so that it never leaks into a streaming caller's code between tokens.
        """
        total = max(len(p) for p in prompts) + max(r.budget for r in rows)
        if self.compile and n == 1:  # cache lengths in steps of 64: runs of similar lengths share a compiled step
            total = -(-total // 64) * 64
        stop = set(params.stop_ids)
        with torch.inference_mode():
            logits, cache, pad, step_bias, col = self._prefill(decoder, prompts, n, total)
            pos = torch.full((len(rows), 1), col, device=logits.device)    # next position of each row
            if pad is not None:
                pos = pos - pad[:, None]
        active = list(range(len(rows)))  # the rows still in the batch, in batch order
        while True:
            with torch.inference_mode():
                picked = sample_next(logits, params.temperature, params.top_k, params.top_p, gen)
                sampled = picked.tolist()
                lps = _token_logprobs(logits, picked, params.temperature) if params.logprobs else None
            feed = sampled
            for j, r in enumerate(active):
                if rows[r].finish:
                    continue
                n_before = len(rows[r].ids)
                tok = self._advance(rows[r], sampled[j], stop)
                if lps is not None:
                    rows[r].logprobs.append(lps[j] if rows[r].mask[n_before] else 0.0)
                if tok != sampled[j]:  # a forced token replaces the sample as this row's input
                    feed = list(sampled) if feed is sampled else feed
                    feed[j] = tok
            yield
            live = [j for j, r in enumerate(active) if not rows[r].finish]
            if not live:
                return
            with torch.inference_mode():
                if len(live) <= len(active) // 2:  # half the batch is done: drop finished rows, halve the work
                    keep = torch.tensor(live, device=logits.device)
                    cache.keep_rows(keep)
                    pos = pos[keep]
                    pad = pad[keep] if pad is not None else None
                    step_bias = step_bias[keep] if step_bias is not None else None
                    feed, active = [feed[j] for j in live], [active[j] for j in live]
                idx = torch.tensor(feed, device=logits.device)[:, None]
                logits = self._forward(decoder, idx, col, pos, step_bias, pad, cache)  # (the decoder slices)
                col, pos = col + 1, pos + 1

    def _advance(self, row: _Row, sampled: int, stop: set[int]) -> int:
        """Append this step's token to `row` (forced if any is pending, else sampled); returns it."""
        if row.forced:
            tok = row.forced.popleft()
            row.ids.append(tok)
            row.mask.append(0)
        else:
            tok = sampled
            row.ids.append(tok)
            row.mask.append(1)
            if tok in stop:
                row.finish = "stop"
                return tok
            if self.tools:
                self._tool_state(row, tok)
        if len(row.ids) >= row.budget:
            row.finish = "length"
        return tok

    def _tool_state(self, row: _Row, tok: int) -> None:
        sp = self.special
        if tok == sp["call"]:
            row.call = []
        elif row.call is not None:
            if tok == sp["end_call"]:
                result = self._call_tool(self.tokenizer.decode(row.call))
                row.forced.extend([sp["out"], *self.tokenizer.encode(result), sp["end_out"]])
                row.call = None
            else:
                row.call.append(tok)

    def _call_tool(self, text: str) -> str:
        """Run `name(arguments)`; any failure becomes an error string the model can read."""
        m = _CALL.fullmatch(text)
        if not m:
            return "error: malformed tool call (expected name(arguments))"
        name, args = m.groups()
        if name not in self.tools:
            return f"error: unknown tool {name!r}"
        try:
            result = str(self.tools[name](args))
        except Exception as e:  # a tool's failure is reported to the model, not raised
            result = f"error: {type(e).__name__}: {e}"
        return result[:MAX_TOOL_OUTPUT_CHARS]


def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int = 32, *,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             stop_ids: tuple[int, ...] = (), seed: int = 0, batch_size: int = 64) -> list[list[int]]:
    """Continue each prompt; returns only the new tokens (the stop token, if hit, is included).

    The functional form of `Engine(model, batch_size=batch_size).generate(prompts, params)`.
    """
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            stop_ids=tuple(stop_ids), seed=seed)
    return [c[0].ids for c in Engine(model, batch_size=batch_size).generate(prompts, params)]
