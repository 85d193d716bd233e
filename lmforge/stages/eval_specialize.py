"""Stage `eval_specialize`: what specialization gained on its domain, and what it cost elsewhere.

The starting model (`specialize.init`; its metrics are prefixed with its model's name in the report
card: `sft_`, `base_` for pretrain, `init_` for a checkpoint directory) and the specialized one
(`specialize_`) answer greedily, in the chat format:
  - the **domain**: `domain_examples` toyworld examples of `specialize.task` about *held-out*
    entities (word problems: people and places no training problem names; the grpo stage's kind of set);
  - **general**: the eval_sft suites (held-out-entity QA, held-out task types, trained task types),
    with the domain's task type left out, so "general" means everything else (a suite that held
    it is reported as `other_<suite>`: by default `other_trained_tasks`; the others are the very
    examples eval_sft scores, so their numbers match).
`general_acc` is the mean of the general suites (three, unless the domain's task filled one whole:
`specialize.task=qa` leaves no held-out-entity QA to score); `general_retained` the specialized model's
general_acc over the starting model's (1.0: nothing forgotten).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from lmforge.pipeline import Stage
from lmforge.utils import write_json


@dataclass
class SpecializeEvalConfig:
    domain_examples: int = 200        # held-out domain examples
    max_new_tokens: int = 96          # per reply (a worked word problem with tool calls runs ~60-90 tokens)

    def __post_init__(self):
        from lmforge.errors import positive

        positive(self, "domain_examples", "max_new_tokens")


def suites(ctx) -> dict:
    from lmforge.stages.common import load_world
    from lmforge.stages.eval_sft import suites as general_suites
    from lmforge.toyworld.tasks import eval_examples

    world, task, seed = load_world(ctx), ctx.cfg.specialize.task, ctx.cfg.seed
    # held-out entities where the task names any (the others ignore the split: arithmetic, letter games)
    data = {"domain": eval_examples(world, task, "heldout", ctx.cfg.eval_specialize.domain_examples, seed + 60_000)}
    for name, examples in general_suites(world, ctx.cfg.eval_sft, seed + 20_000).items():
        kept = [e for e in examples if e.task != task]
        # same examples as eval_sft's suite of that name; one the domain's task left is another suite
        data[name if len(kept) == len(examples) else f"other_{name}"] = kept
    return data


def summarize(metrics: dict, start: str, done: str, general: list[str]) -> dict:
    """`metrics` plus each model's general_acc, the domain gain and the share of general_acc retained.

    >>> m = summarize({"sft_domain_acc": 0.2, "sft_qa_acc": 0.6, "sft_tasks_acc": 0.4,
    ...                "specialize_domain_acc": 0.5, "specialize_qa_acc": 0.5, "specialize_tasks_acc": 0.4},
    ...               "sft", "specialize", ["qa", "tasks"])
    >>> m["sft_general_acc"], m["specialize_general_acc"], m["domain_gain"], m["general_retained"]
    (0.5, 0.45, 0.3, 0.9)
    """
    out = dict(metrics)
    for model in (start, done):
        out[f"{model}_general_acc"] = round(statistics.fmean(metrics[f"{model}_{s}_acc"] for s in general), 4)
    out["domain_gain"] = round(metrics[f"{done}_domain_acc"] - metrics[f"{start}_domain_acc"], 4)
    out["general_retained"] = round(out[f"{done}_general_acc"] / out[f"{start}_general_acc"], 4) \
        if out[f"{start}_general_acc"] else None
    return out


def run(ctx) -> dict:
    from lmforge.eval.chat_tasks import evaluate_examples
    from lmforge.model.io import load_model
    from lmforge.report_data import MODEL_OF_STAGE
    from lmforge.stages.common import model_dir
    from lmforge.tokenizer import Tokenizer
    from lmforge.tools import TOOLS
    from lmforge.train.distributed import resolve_device

    ec = ctx.cfg.eval_specialize
    device = resolve_device(ctx.cfg.train.device, ctx.info)
    tools = TOOLS if ctx.cfg.sft.calculator else None
    data = suites(ctx)
    metrics, details = {}, {}
    init = ctx.cfg.specialize.init
    start = MODEL_OF_STAGE.get(init, init) if init in ctx.cfg.stages else "init"  # the report card's model name
    models = {start: model_dir(ctx, init, "specialize.init"),
              "specialize": ctx.stage_dir("specialize") / "model"}
    for name, path in models.items():
        model, tok = load_model(path, device).eval(), Tokenizer.load(path)
        for suite, examples in data.items():
            if not examples:
                continue
            res = evaluate_examples(model, tok, examples, max_new_tokens=ec.max_new_tokens, tools=tools)
            metrics[f"{name}_{suite}_acc"] = round(res["acc"], 4)
            details[f"{name}_{suite}"] = res
    metrics = summarize(metrics, *models, general=[s for s in data if s != "domain" and data[s]])
    write_json(ctx.stage_dir("eval_specialize") / "eval.json", {"metrics": metrics, "details": details})
    return metrics


STAGE = Stage("eval_specialize", run, measures_only=True, requires=("toyworld", "specialize"),
              description="evaluate the specialized model against its start: the domain, and everything else",
              inputs=("seed", "toyworld", "data", "tokenizer", "model", "train", "sft", "specialize", "eval_sft",
                      "eval_specialize"))
