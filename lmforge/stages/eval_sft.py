"""Stage `eval_sft`: what instruction tuning unlocked, measured in the chat format.

For the base model and the SFT model alike, greedy answers to toyworld conversations:
  (a) QA about **held-out** entities, whose facts only pretraining text ever stated;
  (b) the **held-out task types**, never seen in SFT data (zero-shot instruction following);
  (c) the **trained task types**, on new examples.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.pipeline import Stage
from lmforge.utils import write_json


@dataclass
class ChatEvalConfig:
    qa_examples: int = 200          # held-out-entity QA questions
    per_task: int = 30              # examples per task type for (b) and (c)
    max_new_tokens: int = 64

    def __post_init__(self):
        from lmforge.errors import positive

        positive(self, "qa_examples", "per_task", "max_new_tokens")


def suites(world, ec: ChatEvalConfig, seed: int) -> dict:
    from lmforge.toyworld.tasks import HELDOUT_TASKS, TASKS, eval_examples

    trained = [t for t in TASKS if t not in HELDOUT_TASKS]
    return {
        "qa_heldout": eval_examples(world, "qa", "heldout", ec.qa_examples, seed),
        "heldout_tasks": [e for t in HELDOUT_TASKS for e in eval_examples(world, t, "train", ec.per_task, seed)],
        "trained_tasks": [e for t in trained for e in eval_examples(world, t, "train", ec.per_task, seed)],
    }


def run(ctx) -> dict:
    from lmforge.eval.chat_tasks import evaluate_examples
    from lmforge.model.io import load_model
    from lmforge.stages.common import load_world
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import resolve_device

    ec = ctx.cfg.eval_sft
    device = resolve_device(ctx.cfg.train.device, ctx.info)
    data = suites(load_world(ctx), ec, ctx.cfg.seed + 20_000)
    metrics, details = {}, {}
    from lmforge.tools import TOOLS

    tools = TOOLS if ctx.cfg.sft.calculator else None
    for name, stage in (("base", "pretrain"), ("sft", "sft")):
        model_dir = ctx.stage_dir(stage) / "model"
        model, tok = load_model(model_dir, device).eval(), Tokenizer.load(model_dir)
        for suite, examples in data.items():
            res = evaluate_examples(model, tok, examples, max_new_tokens=ec.max_new_tokens, tools=tools)
            metrics[f"{name}_{suite}_acc"] = round(res["acc"], 4)
            details[f"{name}_{suite}"] = res
    write_json(ctx.stage_dir("eval_sft") / "eval.json", {"metrics": metrics, "details": details})
    return metrics


STAGE = Stage("eval_sft", run, measures_only=True, requires=("pretrain", "sft"),
              description="evaluate base vs SFT model in the chat format",
              inputs=("seed", "toyworld", "data", "tokenizer", "model", "train", "sft", "eval_sft"))
