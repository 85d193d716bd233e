"""lmforge checkpoints as an lm-evaluation-harness model, registered as `lmforge`.

    python -m lmforge.eval.lm_eval_adapter --model lmforge --model_args path=runs/x/sft \\
        --tasks hellaswag --batch_size 16              # lm-eval's own CLI, every option forwarded

    import lmforge.eval.lm_eval_adapter, lm_eval       # Python: importing registers the model
    lm_eval.simple_evaluate(model="lmforge", model_args={"path": ...}, tasks=[...])

lm-eval (0.4.13) fills its model registry only from its own `lm_eval.models` module and reads
no entry points, so the stock `lm_eval` command cannot see a model defined in another package;
`main()` registers this one and then runs lm-eval's CLI in the same process (docs/lm_eval.md).

Tokens: a context is `[BOS] + encode(context)`, as every lmforge document starts. A
continuation is scored as the tail of `encode(context + continuation)` after its common
prefix with the context's encoding (lm-eval's HF model splits at len(context tokens) instead):
the scored tokens are then exactly how the model reads the whole text, even when BPE merges
across the boundary. Encoding the continuation on its own would be wrong for lmforge's
tokenizer, which starts every encoded text with a space. A string that starts with the BOS
text came from `apply_chat_template`: its special-token texts become the special tokens, as
in Hugging Face tokenizers, so it encodes to exactly `lmforge.chat.render_prompt`'s ids.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.tokenizer import BOS, END_OF_TURN

try:
    from lm_eval.api.model import LM
except ImportError:  # the optional extra is absent: the module still imports, and using it says what to install
    LM = object

log = logging.getLogger(__name__)
MISSING = "lm-eval is not installed (pip install lm-eval); it is needed to evaluate with lm-evaluation-harness"

NAME = "lmforge"
DEFAULT_BATCH_SIZE = 16
FIRST_CHUNK = 32  # generation runs in chunks of 32, 64, 128... new tokens, checking `until` strings between them


class LmforgeLM(LM):
    """model_args: path (checkpoint directory, required), device (default cuda if available, else cpu),
    batch_size (rows per forward / generation run), dtype (float32 | bfloat16 | float16),
    max_gen_toks (default generation budget when a task sets none). max_batch_size, which lm-eval's
    CLI passes for batch_size=auto, is accepted and unused."""

    def __init__(self, path: str, device: str | None = None, batch_size: int | str | None = DEFAULT_BATCH_SIZE,
                 dtype: str = "float32", max_gen_toks: int = 256, max_batch_size: int | None = None, **ignored):
        if LM is object:
            raise LmforgeError(MISSING)
        super().__init__()
        from lmforge.model.io import load_model
        from lmforge.tokenizer import Tokenizer

        if ignored:
            log.warning("lmforge model: ignoring model arguments %s", sorted(ignored))
        if batch_size is not None and not str(batch_size).isdigit():  # "auto", "auto:4": no OOM search here
            log.warning("lmforge model: batch_size=%r is not supported, using %d", batch_size, DEFAULT_BATCH_SIZE)
        self.batch_size = max(1, int(batch_size)) if str(batch_size).isdigit() else DEFAULT_BATCH_SIZE
        from lmforge.train.distributed import resolve_device

        self._device = resolve_device(device or "auto", flag="model_args device")
        self.path = Path(path)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"lmforge model: dtype must be float32, bfloat16 or float16, got {dtype!r}")
        self.model = load_model(self.path, self._device).to(getattr(torch, dtype)).eval()
        self.tok = Tokenizer.load(self.path)
        self.max_length = self.model.cfg.max_seq_len
        self.max_gen_toks = int(max_gen_toks)
        self._special_split = re.compile("(" + "|".join(map(re.escape, self.tok.special)) + ")")

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        # lm-eval always passes its CLI's --batch_size (default 1) and --device next to model_args; a
        # duplicate keyword would be a TypeError, so model_args (the more specific setting) wins
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's --device defaults to cuda: on a machine without one, the adapter's own default applies
            log.warning("lmforge model: --device %s is not available here; using cpu", extra.pop("device"))
        return cls(**arg_dict, **extra)

    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # -- tokens --------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        if not text.startswith(BOS):
            return [self.tok.bos_id, *self.tok.encode(text)]
        ids = []  # rendered by apply_chat_template: special-token texts are those tokens, text between is text
        for piece in self._special_split.split(text):
            if piece in self.tok.special:
                ids.append(self.tok.special[piece])
            elif piece:
                ids.extend(self.tok.encode(piece))
        return ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:  # trailing spaces of the context belong to the continuation's first word (as lm-eval does)
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole, ctx = self._encode(context + continuation), self._encode(context)
        k = 0
        while k < min(len(whole), len(ctx)) and whole[k] == ctx[k]:
            k += 1
        return whole[:k], whole[k:]

    def _decode_after(self, prompt: list[int], new: list[int]) -> str:
        """Text of `new` as it reads after `prompt` (keeps a leading space that decoding `new` alone would drop)."""
        head, full = self.tok.decode(prompt, skip_special=True), self.tok.decode(prompt + new, skip_special=True)
        return full[len(head):] if full.startswith(head) else self.tok.decode(new, skip_special=True)

    # -- scoring -------------------------------------------------------------------------------

    @torch.inference_mode()
    def _score(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), continuation is the greedy path) per (context, continuation) ids."""
        L, out = self.max_length, [None] * len(pairs)
        longest = max((len(cont) for _, cont in pairs), default=0)
        if longest > L:  # its first tokens would have no context at all; lm-eval's HF model refuses too
            raise ValueError(f"a continuation of {longest} tokens does not fit the model's {L}-token window")
        # longest first: the rows of a batch have similar lengths, so little padding
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        for s in range(0, len(order), self.batch_size):
            rows = []
            for i in order[s:s + self.batch_size]:
                ctx, cont = pairs[i]
                rows.append((i, (ctx + cont)[-(L + 1):][:-1], cont))  # left-truncated; the last token is only a target
            T = max(len(inp) for _, inp, _ in rows)
            # right padding: a causal model's logits at real positions never see the pad columns after them
            idx = torch.tensor([inp + [self.tok.pad_id] * (T - len(inp)) for _, inp, _ in rows], device=self._device)
            logits = self.model(idx)
            for b, (i, inp, cont) in enumerate(rows):
                logp = logits[b, len(inp) - len(cont):len(inp)].float().log_softmax(-1)
                target = torch.tensor(cont, device=self._device)
                out[i] = (logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._encode_pair(*r.args) for r in requests]
        # an empty continuation (or one the context's tokens already cover) has probability 1
        todo = [i for i, (_, cont) in enumerate(pairs) if cont]
        res = [(0.0, True)] * len(pairs)
        for i, r in zip(todo, self._score([pairs[i] for i in todo]), strict=True):
            res[i] = r
        for req, r in zip(requests, res, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, r)
        return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owner = [], []
        for n, req in enumerate(requests):
            # lm-eval's windows: every token predicted exactly once, BOS before the first, each with
            # as much context as the model's window holds
            for w in get_rolling_token_windows(self.tok.encode(req.args[0]), self.tok.bos_id, self.max_length, 1):
                windows.append(make_disjoint_window(w))
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, (ll, _) in zip(owner, self._score(windows), strict=True):
            totals[n] += ll
        for req, t in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, t)
        return totals

    # -- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        res: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with equal generation arguments share engine runs
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        for idxs in groups.values():
            texts = self._generate([requests[i].args[0] for i in idxs], requests[idxs[0]].args[1])
            for i, text in zip(idxs, texts, strict=True):
                res[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return res

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

        from lmforge.engine import Engine, SamplingParams

        kw = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
        until = handle_stop_sequences(kw.pop("until", None), eos=None)
        max_gen = kw.pop("max_gen_toks")
        temperature = float(kw.pop("temperature", 1.0))  # absent only with do_sample=True: sample at 1, as HF does
        if not kw.pop("do_sample", False):
            temperature = 0.0
        params = SamplingParams(temperature=temperature, top_k=int(kw.pop("top_k", 0) or 0),
                                top_p=float(kw.pop("top_p", 1.0) or 1.0), seed=int(kw.pop("seed", 0) or 0),
                                stop_ids=(self.tok.eos_id, self.tok.special[END_OF_TURN]))
        if kw:
            log.warning("lmforge model: ignoring generation arguments %s", sorted(kw))
        # room to generate, but never more than half the window: a budget larger than the window must
        # not cut the whole prompt away (generation then ends at the window's end)
        keep = self.max_length - min(max_gen, self.max_length // 2)
        prompts = [self._encode(c)[-keep:] for c in contexts]
        new: list[list[int]] = [[] for _ in prompts]
        engine = Engine(self.model, self.tok, batch_size=self.batch_size)
        active, chunk, done = list(range(len(prompts))), FIRST_CHUNK, 0
        # Chunks that double in size: most answers end at an `until` string long before max_gen, and the
        # engine only stops on tokens, so checking the text between chunks saves most of the budget.
        # Each chunk re-prefills prompt + tokens so far: greedy, the same tokens as one long run (up to
        # float rounding between a prefill and a cached decode step).
        while active and done < max_gen:
            n = min(chunk, max_gen - done)
            outs = engine.generate([prompts[i] + new[i] for i in active],
                                   replace(params, max_new_tokens=n, seed=params.seed + done))
            still = []
            for i, (c,) in zip(active, outs, strict=True):
                new[i].extend(c.ids)
                hit = any(u and u in self._decode_after(prompts[i], new[i]) for u in until)
                if not hit and c.finish_reason == "length" and len(c.ids) == n:
                    still.append(i)  # neither a stop token nor the window's end
            active, done, chunk = still, done + n, chunk * 2
        return [postprocess_generated_text(self._decode_after(p, ids), until, None)
                for p, ids in zip(prompts, new, strict=True)]

    # -- chat ----------------------------------------------------------------------------------

    @property
    def tokenizer_name(self) -> str:
        return f"lmforge__{self.path.resolve().name}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        from lmforge.chat import chat_template as template

        return template()

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        from lmforge.chat import chat_template as template

        def fail(msg):
            raise ValueError(msg)

        env = ImmutableSandboxedEnvironment()
        env.globals["raise_exception"] = fail
        text = env.from_string(template()).render(messages=chat_history, add_generation_prompt=add_generation_prompt)
        if not add_generation_prompt and chat_history and chat_history[-1]["role"] == "assistant":
            text = text.removesuffix(END_OF_TURN)  # lm-eval's gen_prefix: the model continues that assistant turn
        return text


def register() -> None:
    """Add `lmforge` to lm-eval's model registry (idempotent)."""
    if LM is object:
        raise LmforgeError(MISSING)
    import lm_eval.models  # noqa: F401  lm-eval loads its built-in models only into an empty registry
    from lm_eval.api.registry import MODEL_REGISTRY, register_model

    if NAME not in MODEL_REGISTRY:
        register_model(NAME)(LmforgeLM)


if LM is not object:
    register()


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with the `lmforge` model registered: every argument is lm-eval's."""
    import sys

    if LM is object:
        print(f"error: {MISSING}", file=sys.stderr)
        raise SystemExit(LmforgeError.exit_code)
    from lm_eval.__main__ import cli_evaluate

    from lmforge.data.sources import _one_line, offline_if_unreachable

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    host = None
    try:  # offline: the tasks' datasets come from the cache or fail at once (no retries)
        with offline_if_unreachable() as host:
            cli_evaluate()
    except LmforgeError as e:  # a wrong checkpoint path or model argument: one line, as lmforge's own commands
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except ConnectionError as e:  # a task's dataset is on the Hub, and the Hub cannot be reached
        where = f"the Hugging Face Hub ({host}) does not resolve, and " if host else ""
        print(f"error: {where}a task's dataset could not be loaded ({_one_line(e)}); offline, use tasks whose "
              f"data is local (--include_path DIR with task YAMLs over local files: docs/lm_eval.md)", file=sys.stderr)
        raise SystemExit(LmforgeError.exit_code) from None


if __name__ == "__main__":
    main()
