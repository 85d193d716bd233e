"""Running evaluation tasks on a checkpoint: prompts to token ids, batched generation through the
engine, batched log-likelihoods, means and standard errors, and the results JSON.

    results = evaluate_checkpoint("runs/demo/sft/model", ["gsm8k:path=test.jsonl", "bbh"], limit=20)

`LM` is what tasks talk to:
- `generate(prompts, max_new_tokens, stop, chat)`: prompts rendered as text after BOS (base models) or
  with the chat template (`chat=True`), shortened to leave room for the answer (whole few-shot
  examples first, then cut from the left), decoded greedily (or at `temperature`) by
  `lmforge.engine.Engine` in runs of `batch_size`; base-model outputs are cut at the first stop
  string (generation itself stops early at any token that contains one);
- `loglikelihood([(context_ids, continuation_ids)])`: log P(continuation | context) and whether it is
  the greedy continuation, from one forward per batch of `batch_size` rows (longest first, right-padded);
- `rolling_loglikelihood(texts)`: each text scored in context-sized windows (perplexity).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import Loaded, Prompt, Task, TaskOptions, mean_stderr


@dataclass
class GenOutput:
    text: str          # the answer, cut at the first stop string (base models) and stripped
    prompt: str        # the prompt as text, for --log-samples
    truncated: bool    # the prompt was shortened to fit: shots dropped, then cut from the left


class LM:
    """A model and its tokenizer, as evaluation tasks use them (see the module docstring)."""

    def __init__(self, model, tok, *, batch_size: int = 32, temperature: float = 0.0, seed: int = 0,
                 progress: bool = True, tools: bool = False):
        from lmforge.engine import Engine
        from lmforge.tools import TOOLS

        if batch_size < 1:
            raise LmforgeError(f"--batch-size: expected a positive integer, got {batch_size}")
        self.model, self.tok = model.eval(), tok
        self.batch_size, self.temperature, self.seed, self.show_progress = batch_size, temperature, seed, progress
        self.max_len = model.cfg.max_seq_len
        self.device = next(model.parameters()).device
        # tools: tool calls (the calculator) run inside generation, as in `lmforge chat`
        self.engine = Engine(model, tok, tools=TOOLS if tools else None, batch_size=batch_size)
        self.truncated = 0
        self._stop_cache: dict[tuple[str, ...], tuple[int, ...]] = {}

    @contextlib.contextmanager
    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="req", leave=False, disable=None if self.show_progress else True)
        try:
            yield bar
        finally:
            bar.close()

    # -- prompts ------------------------------------------------------------------------------------

    def render(self, prompt: Prompt, chat: bool) -> list[int]:
        from lmforge.chat import render_prompt

        if chat:
            return render_prompt(prompt.messages(), self.tok) + (self.tok.encode(prompt.lead) if prompt.lead else [])
        return [self.tok.bos_id] + self.tok.encode(prompt.text())

    def _fit_prompt(self, prompt: Prompt, chat: bool, room: int) -> tuple[list[int], bool]:
        """Drop whole few-shot examples (earliest first) until the prompt fits, then cut if it must:
        a cut through the middle of an example shows the model a broken demonstration."""
        import dataclasses

        ids, dropped = self.render(prompt, chat), False
        while len(ids) > room and prompt.shots:
            prompt, dropped = dataclasses.replace(prompt, shots=tuple(prompt.shots)[1:]), True
            ids = self.render(prompt, chat)
        if dropped and len(ids) <= room:
            self.truncated += 1
            return ids, True
        return self._fit(ids, room)

    def _fit(self, ids: list[int], room: int) -> tuple[list[int], bool]:
        """Keep BOS and the last tokens: the question and the answer cue matter more than early shots."""
        if len(ids) <= room:
            return ids, False
        self.truncated += 1
        return ids[:1] + ids[len(ids) - room + 1:], True

    def _stop_ids(self, stop: tuple[str, ...], chat: bool) -> tuple[int, ...]:
        from lmforge.tokenizer import END_OF_TURN

        if chat:
            return (self.tok.special[END_OF_TURN], self.tok.eos_id)
        if stop not in self._stop_cache:  # a token that contains a stop string ends the answer for sure
            special = set(self.tok.special.values())
            hits = [i for i in range(self.tok.vocab_size)
                    if i not in special and any(s in self.tok.decode([i]) for s in stop)]
            self._stop_cache[stop] = (self.tok.eos_id, *hits)
        return self._stop_cache[stop]

    # -- generation ---------------------------------------------------------------------------------

    def generate(self, prompts: list[Prompt], *, max_new_tokens: int, stop=(), chat: bool = False,
                 desc: str = "generate") -> list[GenOutput]:
        from lmforge.engine import SamplingParams

        room = max(self.max_len - max_new_tokens, self.max_len // 2)
        encoded = [self._fit_prompt(p, chat, room) for p in prompts]
        stop = () if chat else tuple(stop)
        stop_ids = self._stop_ids(stop, chat)
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i][0]))  # similar lengths share a run
        texts = [""] * len(prompts)
        with self.progress(len(prompts), desc) as bar:
            for run, start in enumerate(range(0, len(order), self.batch_size)):
                rows = order[start:start + self.batch_size]
                params = SamplingParams(max_new_tokens=max_new_tokens, temperature=self.temperature,
                                        stop_ids=stop_ids, seed=self.seed + run)
                outs = self.engine.generate([encoded[i][0] for i in rows], params)
                for i, out in zip(rows, outs, strict=True):
                    text = self.tok.decode(out[0].ids, skip_special=True)
                    cuts = [text.index(s) for s in stop if s in text]
                    texts[i] = (text[:min(cuts)] if cuts else text).strip()
                bar.update(len(rows))
        shown = [p.text() if not chat else self.tok.decode(ids) for p, (ids, _) in zip(prompts, encoded, strict=True)]
        return [GenOutput(t, s, cut) for t, s, (_, cut) in zip(texts, shown, encoded, strict=True)]

    # -- log-likelihoods ----------------------------------------------------------------------------

    def choice_requests(self, prompt: Prompt, continuations: list[str], chat: bool = False):
        """(context_ids, continuation_ids) for each continuation (" Paris") after `prompt`."""
        if chat:
            ctx = self.render(prompt, chat=True)
            return [(ctx, self.tok.encode(c.strip())) for c in continuations]
        text = prompt.text()
        ctx_text_ids = self.tok.encode(text)
        out = []
        for c in continuations:
            # encode context + continuation together (the way the text would be tokenized) and split
            whole = self.tok.encode(text + c)
            if whole[:len(ctx_text_ids)] == ctx_text_ids and len(whole) > len(ctx_text_ids):
                cont = whole[len(ctx_text_ids):]
            else:  # a merge across the boundary: fall back to encoding the continuation alone
                cont = self.tok.encode(c.lstrip())
            out.append(([self.tok.bos_id] + ctx_text_ids, cont))
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: list[tuple[list[int], list[int]]], desc: str = "loglikelihood"):
        """[(sum of log P(continuation tokens), continuation is the greedy one)] per request."""
        prepared = []
        for ctx, cont in requests:
            if not ctx or not cont:
                raise ValueError("loglikelihood requests need a non-empty context and continuation")
            full = (ctx + cont)[-(self.max_len + 1):]  # too long: drop the context's oldest tokens
            prepared.append((full[:-1], full[-min(len(cont), len(full) - 1):]))
        order = sorted(range(len(prepared)), key=lambda i: -len(prepared[i][0]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(prepared)
        with self.progress(len(prepared), desc) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                width = len(prepared[rows[0]][0])
                batch = torch.full((len(rows), width), self.tok.pad_id, dtype=torch.long)
                for r, i in enumerate(rows):  # right padding: causal attention keeps it out of real tokens
                    batch[r, :len(prepared[i][0])] = torch.tensor(prepared[i][0])
                logits = self.model(batch.to(self.device))
                for r, i in enumerate(rows):
                    inputs, targets = prepared[i]
                    logp = logits[r, len(inputs) - len(targets):len(inputs)].float().log_softmax(-1)
                    t = torch.tensor(targets, device=logp.device)
                    results[i] = (logp.gather(-1, t[:, None]).sum().item(), bool((logp.argmax(-1) == t).all()))
                bar.update(len(rows))
        return results

    def rolling_loglikelihood(self, texts: list[str], desc: str = "perplexity") -> list[tuple[float, int]]:
        """(sum of log P(token), tokens scored) per text, BOS + text in windows of max_seq_len."""
        requests, owner, counts = [], [], []
        for d, text in enumerate(texts):
            ids = [self.tok.bos_id] + self.tok.encode(text)
            counts.append(len(ids) - 1)
            for s in range(0, len(ids) - 1, self.max_len):
                requests.append((ids[s:s + 1], ids[s + 1:s + 1 + self.max_len]))
                owner.append(d)
        totals = [0.0] * len(texts)
        for d, (logprob, _) in zip(owner, self.loglikelihood(requests, desc), strict=True):
            totals[d] += logprob
        return list(zip(totals, counts, strict=True))


# --------------------------------------------------------------------------------------------------
# The whole run.

@dataclass
class Planned:
    task: Task
    opts: TaskOptions
    group: str | None


def plan(task_specs: list[str], *, data: str | None = None, **defaults) -> list[Planned]:
    """Tasks to run, each with its resolved options; groups expand to their members."""
    from lmforge.eval.tasks import GROUPS, expand, get_task, parse_task_spec, split_specs

    planned: list[Planned] = []
    for spec in split_specs(task_specs):
        name, overrides = parse_task_spec(spec)
        for member in expand(name):
            if any(p.task.name == member for p in planned):
                raise LmforgeError(f"--tasks: task '{member}' is given twice")
            planned.append(Planned(get_task(member), TaskOptions(**{**defaults, **overrides}),
                                   name if name in GROUPS else None))
    if not planned:
        raise LmforgeError("--tasks: no task given (`lmforge eval --list` shows them)")
    if data is not None:
        takers = [p for p in planned if p.opts.path is None and p.task.kind != "toyworld"]
        if Path(data).is_file() and len(takers) > 1:
            raise LmforgeError(f"--data {data}: a file serves one task, not {len(takers)}; give each task its own "
                               f"with NAME:path=FILE, or --data DIR")
        for p in takers:
            p.opts.path = data
    return planned


def _load(p: Planned, data: str | None) -> Loaded:
    """A task's documents; its errors say what to do about --data."""
    try:
        return p.task.load(p.opts)
    except LmforgeError as e:
        if data and p.opts.path == data and Path(data).is_dir() and str(e).startswith(f"{Path(data)}: is a directory"):
            # the layout of --data DIR has no file for this task (arc_easy, hellaswag, ... load from the Hub)
            raise LmforgeError(f"{p.task.name}: --data {data} has no file for this task ({str(e).split(': ', 1)[1]});"
                               f" give it one with {p.task.name}:path=FILE, or run it without --data") from None
        if data or "cannot load dataset" not in str(e):
            raise
        raise LmforgeError(f"{e}; offline, give --data DIR (a directory of the released files: "
                           f"docs/evaluation.md)") from None


def summarize(task: Task, loaded: Loaded, output, elapsed: float, truncated: int) -> dict:
    entry = {"kind": task.kind, "n": len(loaded.docs), "source": loaded.source, **loaded.info,
             "metrics": {}, "stderr": {}}
    for metric, values in output.scores.items():
        entry["metrics"][metric], entry["stderr"][metric] = mean_stderr(values)
    entry["metrics"].update(output.aggregate)
    entry["stderr"].update(output.stderr)
    if output.breakdown:
        entry["breakdown"] = output.breakdown
    entry["truncated_prompts"] = truncated
    entry["elapsed_s"] = round(elapsed, 3)
    return entry


def check_flags(out: Path, *, out_given: bool, max_new_tokens: int | None, batch_size: int,
                temperature: float) -> None:
    """Flags checked before any data or model loads: otherwise a bad one surfaces as a traceback from
    SamplingParams at the first generation, as a score of 0 from an empty budget, or as a failed write
    after the whole run."""
    from lmforge.errors import MAX_NEW_TOKENS, TEMPERATURE, check_flags
    from lmforge.utils import not_a_dir

    check_flags(("--batch-size", batch_size, lambda v: v >= 1, "a positive integer"),
                ("--max-new-tokens", 1 if max_new_tokens is None else max_new_tokens, *MAX_NEW_TOKENS),
                ("--temperature", temperature, *TEMPERATURE))

    if what := not_a_dir(out):  # results.json could not be written after the whole run
        raise LmforgeError(f"--out {out}: {what}" if out_given else f"{out}: {what}; give --out DIR for the results")


def evaluate_checkpoint(checkpoint: str, task_specs: list[str], *, data: str | None = None, world: str | None = None,
                        num_fewshot: int | None = None, cot: bool | None = None, chat: bool = False,
                        limit: int | None = None, seed: int = 0, max_new_tokens: int | None = None,
                        batch_size: int = 32, temperature: float = 0.0, device: str = "auto",
                        dtype: str = "float32", out_dir: str | None = None, log_samples: bool = False,
                        progress: bool = True, tools: bool = False) -> dict:
    """Run the tasks on the checkpoint, write results.json (+ samples/<task>.jsonl), return the results."""
    from lmforge.model.io import load_config, load_model, load_tokenizer
    from lmforge.utils import atomic_write_text, write_json

    config = {"task_specs": task_specs, "data": data, "world": world, "num_fewshot": num_fewshot, "cot": cot,
              "chat": chat, "limit": limit, "seed": seed, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
              "temperature": temperature, "device": device, "dtype": dtype, "log_samples": log_samples,
              "tools": tools}
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    out = Path(out_dir) if out_dir else Path(checkpoint) / "eval"
    check_flags(out, out_given=bool(out_dir), max_new_tokens=max_new_tokens, batch_size=batch_size,
                temperature=temperature)
    tok = load_tokenizer(checkpoint, load_config(checkpoint))  # a wrong path fails now, not after the data loads
    planned = plan(task_specs, data=data, world=world, num_fewshot=num_fewshot, cot=cot, chat=chat, limit=limit,
                   seed=seed, max_new_tokens=max_new_tokens)
    for p in planned:  # the flag is checked above, so a bad value here came from NAME:max_new_tokens=N
        if p.opts.max_new_tokens is not None and p.opts.max_new_tokens < 1:
            raise LmforgeError(f"--tasks {p.task.name}: option 'max_new_tokens' must be positive, "
                               f"got {p.opts.max_new_tokens}")
    loaded = [_load(p, data) for p in planned]  # every data error surfaces before the model loads
    for p, ld in zip(planned, loaded, strict=True):
        if not ld.docs:
            raise LmforgeError(f"{p.task.name}: no documents to evaluate in {ld.source}")
    from lmforge.train.distributed import resolve_device

    model = load_model(checkpoint, resolve_device(device, flag="--device"))
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    lm = LM(model, tok, batch_size=batch_size, temperature=temperature, seed=seed,
            progress=progress, tools=tools)
    results, samples, scores_by_task = {}, {}, {}
    for p, ld in zip(planned, loaded, strict=True):
        t, before = time.perf_counter(), lm.truncated
        output = p.task.evaluate(lm, ld, p.opts)
        results[p.task.name] = summarize(p.task, ld, output, time.perf_counter() - t, lm.truncated - before)
        samples[p.task.name], scores_by_task[p.task.name] = output.samples, output.scores
    groups = {}
    for group in dict.fromkeys(p.group for p in planned if p.group):
        members = [p.task.name for p in planned if p.group == group]
        shared = set.intersection(*(set(scores_by_task[m]) for m in members))
        pooled = {m: [v for name in members for v in scores_by_task[name][m]] for m in sorted(shared)}
        stats = {m: mean_stderr(v) for m, v in pooled.items()}
        groups[group] = {"tasks": members, "n": sum(results[m]["n"] for m in members),
                         "metrics": {m: s[0] for m, s in stats.items()}, "stderr": {m: s[1] for m, s in stats.items()}}
    report = {"checkpoint": str(Path(checkpoint).resolve()), "created": started.isoformat(timespec="seconds"),
              "elapsed_s": round(time.perf_counter() - t0, 3), "device": str(lm.device),
              "config": {**config, "tasks": [p.task.name for p in planned]},
              "task_options": {p.task.name: {k: v for k, v in asdict(p.opts).items() if v is not None}
                               for p in planned},
              "results": results, "groups": groups}
    if log_samples:
        report["samples"] = {}
        for name, records in samples.items():
            path = out / "samples" / f"{name}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            report["samples"][name] = str(path.relative_to(out))
    write_json(out / "results.json", report)
    report["path"] = str(out / "results.json")
    return report
