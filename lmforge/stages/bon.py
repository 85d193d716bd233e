"""Stage `bon`: best-of-n sampling with a reward source, and rejection-sampling data.

For each prompt the policy samples `n` answers; the reward source (by default the `rm` stage's
reward model) picks the best. Toyworld's hidden judge then measures what that selection buys:
its mean score of best-of-k for k = 1, 2, 4, ... n (the first k samples), and the win rate of
best-of-n over best-of-1 (a single sample) on the same prompts. The kept answers are written as
an SFT dataset (`bon/sft_data.jsonl`, OpenAI messages), which `sft.sources` can train on:
rejection-sampling fine-tuning. Use `bon.split: train` for that, `heldout` (default) to measure.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from lmforge.errors import LmforgeError, above_zero, non_negative, one_of, positive
from lmforge.pipeline import Stage
from lmforge.utils import write_json


@dataclass
class BoNConfig:
    policy: str = "sft"              # the sampling model: a stage of this run or a checkpoint dir
    reward: str = "rm"               # a reward-model stage of this run, or a reward checkpoint dir
    n: int = 8
    n_prompts: int = 200
    split: str = "heldout"           # prompts: heldout (to measure) | train (to build RFT data)
    prompt_entities: str = "train"   # entities the prompts ask about (see eval_dpo.prompt_entities)
    temperature: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64

    def __post_init__(self):
        positive(self, "n", "n_prompts", "max_new_tokens")
        non_negative(self, "temperature", "top_k")
        if self.n > 1:  # greedy answers are all one answer: best-of-n would be best-of-1
            above_zero(self, "temperature", why=f"greedy gives one answer, not {self.n} to choose from")
        one_of(self, "split", ("heldout", "train"))
        one_of(self, "prompt_entities", ("heldout", "train"))


def reward_source(ctx, ref: str, key: str, device):
    """A RewardModelSource from a stage name or a reward checkpoint dir."""
    from pathlib import Path

    from lmforge.rewards import RewardModelSource

    d = ctx.stage_dir(ref) / "model" if ref in ctx.cfg.stages else Path(ref)
    if not (d / "model_config.json").exists():
        raise LmforgeError(f"{key}: {ref!r} is neither a reward-model stage of this recipe nor a checkpoint dir")
    return RewardModelSource.load(d, device=device)


def run(ctx) -> dict:
    from lmforge.model.io import load_model
    from lmforge.rewards import RewardRequest
    from lmforge.stages.common import load_world, model_dir, progress_bar
    from lmforge.stages.pairs import sample_answers, write_jsonl
    from lmforge.tokenizer import Tokenizer
    from lmforge.toyworld.judge import judge_compare, judge_score, preference_prompts
    from lmforge.train.distributed import resolve_device

    bc, out = ctx.cfg.bon, ctx.stage_dir("bon")
    device = resolve_device(ctx.cfg.train.device, ctx.info)
    world = load_world(ctx)
    src = model_dir(ctx, bc.policy, "bon.policy")
    model, tok = load_model(src, device).eval(), Tokenizer.load(src)
    rm = reward_source(ctx, bc.reward, "bon.reward", device)
    examples = preference_prompts(world, bc.n_prompts, seed=ctx.cfg.seed + 30_000, split=bc.split,
                                  entities=bc.prompt_entities, tasks=ctx.cfg.pairs.tasks or None)
    prompts = [e.messages[:-1] for e in examples]
    ctx.log(f"[bon] {bc.n} samples for each of {len(examples)} {bc.split} prompts from {src}, scored by {rm.name}")
    samples = sample_answers(model, tok, prompts, bc.n, temperature=bc.temperature, top_k=bc.top_k,
                             max_new_tokens=bc.max_new_tokens, seed=ctx.cfg.seed + 1, progress=progress_bar(ctx, "bon"))
    rewards = rm.score([RewardRequest(p, s) for p, ss in zip(prompts, samples, strict=True) for s in ss])
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < bc.n] + [bc.n]
    judged = {k: [] for k in ks}
    best_n, records, wins = [], [], []
    for i, (e, ss) in enumerate(zip(examples, samples, strict=True)):
        r = rewards[i * bc.n:(i + 1) * bc.n]
        for k in ks:
            pick = max(range(k), key=lambda j: r[j])  # first index wins ties: deterministic
            judged[k].append(judge_score(world, e, ss[pick]).total)
        best = max(range(bc.n), key=lambda j: r[j])
        best_n.append(ss[best])
        wins.append(judge_compare(world, e, ss[best], ss[0]))
        if ss[best].strip():  # an empty answer is no training example
            records.append({"messages": [*prompts[i], {"role": "assistant", "content": ss[best]}]})
    write_jsonl(out / "sft_data.jsonl", records)
    metrics = {f"judge_score_best_of_{k}": round(statistics.fmean(v), 4) for k, v in judged.items()}
    metrics.update({
        "prompts": len(examples), "n": bc.n,
        "win_rate_best_of_n_vs_1": round((wins.count(1) + 0.5 * wins.count(0)) / len(wins), 4),
        "wins": wins.count(1), "losses": wins.count(-1), "ties": wins.count(0),
    })
    write_json(out / "bon.json", {"metrics": metrics, "samples": [
        {"prompt": p[-1]["content"], "samples": ss, "rewards": rewards[i * bc.n:(i + 1) * bc.n], "best": b}
        for i, (p, ss, b) in enumerate(zip(prompts[:50], samples[:50], best_n[:50], strict=True))]})
    return metrics


STAGE = Stage("bon", run, measures_only=True, requires=("toyworld",),
              description="best-of-n sampling scored by a reward model; writes rejection-sampling SFT data",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "rm", "bon"))
