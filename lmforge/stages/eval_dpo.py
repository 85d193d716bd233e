"""Stage `eval_dpo`: what preference optimization changed, judged by toyworld's hidden judge.

On held-out prompts (never used to build pairs), greedy answers of the aligned model and of its
starting point (SFT) are compared by the hidden judge: the win rate counts ties as half. The
"alignment tax" is the change in knowledge-QA accuracy (questions about training and held-out
entities) from SFT to the aligned model: a negative number means alignment cost knowledge.
Later alignment stages reuse `compare` with their own model names.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from lmforge.pipeline import Stage
from lmforge.utils import write_json


@dataclass
class AlignEvalConfig:
    n_prompts: int = 300             # held-out judge prompts (texts no training pair used)
    tasks: dict[str, float] = field(default_factory=dict)  # task mix of the judged prompts; empty: pairs.tasks
    prompt_entities: str = "train"   # entities those prompts ask about: train (behavior on what the model
                                     # knows) | heldout (facts only pretraining stated: mostly ties)
    qa_examples: int = 200           # knowledge questions per entity split (held-out: eval_sft's, as many)
    max_new_tokens: int = 64

    def __post_init__(self):
        from lmforge.errors import one_of, positive
        from lmforge.stages.common import check_task_mix

        one_of(self, "prompt_entities", ("heldout", "train"))
        positive(self, "n_prompts", "qa_examples", "max_new_tokens")
        check_task_mix(self, "tasks")


def greedy_answers(model, tok, prompts, max_new_tokens: int) -> list[str]:
    from lmforge.stages.pairs import sample_answers

    return [s[0] for s in sample_answers(model, tok, prompts, 1, temperature=0.0, top_k=0,
                                         max_new_tokens=max_new_tokens, seed=0)]


def compare(ctx, models: dict[str, str], baseline: str, ec: AlignEvalConfig, out_name: str) -> dict:
    """models: name -> stage (or checkpoint dir); each is judged against `baseline` (one of the names)."""
    from lmforge.eval.chat_tasks import evaluate_examples
    from lmforge.model.io import load_model
    from lmforge.stages.common import load_world, model_dir
    from lmforge.tokenizer import Tokenizer
    from lmforge.toyworld.judge import judge_score, preference_prompts, win_rate
    from lmforge.toyworld.tasks import eval_examples
    from lmforge.train.distributed import resolve_device

    device = resolve_device(ctx.cfg.train.device, ctx.info)
    world = load_world(ctx)
    seed = ctx.cfg.seed + 40_000
    prompts = preference_prompts(world, ec.n_prompts, seed=seed, split="heldout", entities=ec.prompt_entities,
                                 tasks=ec.tasks or ctx.cfg.pairs.tasks or None)
    # the knowledge questions are drawn as eval_sft draws its held-out QA (same seed; the same examples when
    # qa_examples match), so the report card's qa_heldout_acc row compares every model on one set
    qa = {split: eval_examples(world, "qa", split, ec.qa_examples, ctx.cfg.seed + 20_000)
          for split in ("train", "heldout")}
    answers, metrics, details = {}, {}, {}
    for name, ref in models.items():
        d = model_dir(ctx, ref, f"{out_name}: model {name}")
        model, tok = load_model(d, device).eval(), Tokenizer.load(d)
        answers[name] = greedy_answers(model, tok, [e.messages[:-1] for e in prompts], ec.max_new_tokens)
        scores = [judge_score(world, e, a) for e, a in zip(prompts, answers[name], strict=True)]
        metrics[f"{name}_judge_score"] = round(statistics.fmean(s.total for s in scores), 4)
        # the share of answers the judge found impolite (rude words or shouting): the hasty writer's habit
        # the SFT model may have copied (sft.hasty_fraction), and what preference learning should remove
        metrics[f"{name}_impolite_rate"] = round(statistics.fmean(s.parts["polite"] < 0 for s in scores), 4)
        for split, examples in qa.items():
            res = evaluate_examples(model, tok, examples, max_new_tokens=ec.max_new_tokens)
            metrics[f"{name}_qa_{split}_acc"] = round(res["acc"], 4)
    for name in models:
        if name == baseline:
            continue
        wr = win_rate(world, prompts, answers[name], answers[baseline])
        metrics[f"{name}_win_rate_vs_{baseline}"] = round(wr["win_rate"], 4)
        for split in qa:
            metrics[f"{name}_alignment_tax_qa_{split}"] = round(
                metrics[f"{name}_qa_{split}_acc"] - metrics[f"{baseline}_qa_{split}_acc"], 4)
        details[f"{name}_vs_{baseline}"] = wr
    details["samples"] = [{"prompt": e.messages[-2]["content"], **{n: answers[n][i] for n in models}}
                          for i, e in enumerate(prompts[:60])]
    write_json(ctx.stage_dir(out_name) / "eval.json", {"metrics": metrics, "details": details})
    return metrics


def run(ctx) -> dict:
    metrics = compare(ctx, {"sft": "sft", "dpo": "dpo"}, "sft", ctx.cfg.eval_dpo, "eval_dpo")
    if "rm" in ctx.cfg.stages and ctx.is_complete("rm"):  # the reward model's accuracy, next to what it led to
        metrics["rm_val_accuracy"] = ctx.metrics("rm").get("val_accuracy")
    return metrics


STAGE = Stage("eval_dpo", run, measures_only=True, requires=("sft", "dpo"),
              description="judge the DPO model against the SFT model; knowledge-QA alignment tax",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "dpo", "eval_dpo"))
