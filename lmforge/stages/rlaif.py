"""Stage `rlaif`: preference pairs labeled by an AI judge with a written constitution.

The Constitutional AI recipe's feedback step: the policy samples two answers per prompt, and an
AI judge (a local lmforge checkpoint, by default the policy itself, or any OpenAI-compatible
endpoint; see lmforge/rewards/ai_judge.py) reads the constitution and says which is better, in both
orders to cancel position bias. The preferred answer becomes `chosen`. Output: `rlaif/train.jsonl`
and `rlaif/val.jsonl` in the pairs format, so `dpo.sources` (or `rm.sources`) can train on AI
feedback. On toyworld the hidden judge also labels the same pairs, and the stage reports how often
the two agree (`agreement_with_hidden_judge`, over pairs the hidden judge does not call a tie).
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError, above_zero, fraction, positive
from lmforge.pipeline import Stage
from lmforge.rewards.ai_judge import AIJudgeConfig
from lmforge.stages.common import check_task_mix


@dataclass
class RLAIFConfig:
    policy: str = "sft"               # the model whose answers are judged: a stage or a checkpoint dir
    judge: AIJudgeConfig = field(default_factory=AIJudgeConfig)  # local checkpoint "" = the policy
    n_prompts: int = 300
    temperature: float = 0.8
    max_new_tokens: int = 64
    tasks: dict[str, float] = field(default_factory=dict)  # task mix; empty: pairs.tasks, else the default
    val_fraction: float = 0.1

    def __post_init__(self):
        positive(self, "n_prompts", "max_new_tokens")
        above_zero(self, "temperature", why="a prompt's two answers must differ")
        fraction(self, "val_fraction", closed_top=False)
        check_task_mix(self, "tasks")


def run(ctx) -> dict:
    from lmforge.model.io import load_model
    from lmforge.rewards.config import build_judge
    from lmforge.stages.common import load_world, model_dir, progress_bar
    from lmforge.stages.pairs import sample_answers, write_jsonl
    from lmforge.tokenizer import Tokenizer
    from lmforge.toyworld.judge import judge_score, preference_prompts
    from lmforge.train.distributed import resolve_device

    rc, out = ctx.cfg.rlaif, ctx.stage_dir("rlaif")
    device = resolve_device(ctx.cfg.train.device, ctx.info)
    world = load_world(ctx)
    src = model_dir(ctx, rc.policy, "rlaif.policy")
    model, tok = load_model(src, device).eval(), Tokenizer.load(src)
    examples = preference_prompts(world, rc.n_prompts, seed=ctx.cfg.seed + 60_000, split="train",
                                  tasks=rc.tasks or ctx.cfg.pairs.tasks or None)
    prompts = [e.messages[:-1] for e in examples]
    judge = build_judge(ctx, rc.judge, "rlaif.judge", policy=rc.policy, device=device)  # before sampling
    answers = sample_answers(model, tok, prompts, 2, temperature=rc.temperature, top_k=0,
                             max_new_tokens=rc.max_new_tokens, seed=ctx.cfg.seed + 2,
                             progress=progress_bar(ctx, "rlaif"))
    keep = [i for i, (a, b) in enumerate(answers) if a.strip() and b.strip() and a != b]
    if not keep:
        raise LmforgeError(f"rlaif: all {len(examples)} answer pairs are identical or empty: nothing to judge "
                           f"(raise rlaif.temperature or rlaif.max_new_tokens)")
    ctx.log(f"[rlaif] judging {len(keep)} answer pairs ({len(examples) - len(keep)} identical or empty) with "
            f"the {rc.judge.backend} AI judge")
    probs = judge.compare_batch([(prompts[i], answers[i][0], answers[i][1]) for i in keep])
    pairs, agree, decided = [], 0, 0
    for i, p in zip(keep, probs, strict=True):
        a, b = answers[i]
        chosen, rejected = (a, b) if p >= 0.5 else (b, a)
        ha, hb = (judge_score(world, examples[i], x).total for x in (a, b))
        if ha != hb:
            decided += 1
            agree += (ha > hb) == (p >= 0.5)
        pairs.append({"prompt": prompts[i], "chosen": chosen, "rejected": rejected, "judge_prob": round(p, 4),
                      "task": examples[i].task})
    random.Random(ctx.cfg.seed).shuffle(pairs)
    n_val = min(int(round(len(pairs) * rc.val_fraction)), len(pairs) - 1)  # at least one pair to train on
    write_jsonl(out / "val.jsonl", pairs[:n_val])
    write_jsonl(out / "train.jsonl", pairs[n_val:])
    return {"prompts": len(examples), "pairs": len(pairs), "train_pairs": len(pairs) - n_val, "val_pairs": n_val,
            "hidden_judge_decided": decided,
            "agreement_with_hidden_judge": round(agree / decided, 4) if decided else float("nan"),
            "mean_confidence": round(statistics.fmean(abs(p - 0.5) * 2 for p in probs), 4) if probs else 0.0,
            "position_bias": round(float(getattr(judge, "last_position_bias", 0.0) or 0.0), 4)}


STAGE = Stage("rlaif", run, requires=("toyworld",),
              description="label answer pairs with an AI judge and a constitution (Constitutional AI feedback)",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "rlaif"))
