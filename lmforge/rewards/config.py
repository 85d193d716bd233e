"""Reward sources from a recipe: a list of weighted parts that RL stages sum into one reward.

    grpo:
      rewards:
        - {kind: math, weight: 1.0}                  # the verifiable answer (+ grpo.format_reward)
        - {kind: rules, weight: 0.5}                 # written safety rules: minus each broken rule's penalty
    ppo:
      rewards:
        - {kind: rm, model: rm}                      # a reward-model stage of this recipe, or a checkpoint dir
        - {kind: judge, weight: 0.5, judge: {backend: http, base_url: "http://localhost:8000", model: m}}

An empty list keeps each stage's own reward (GRPO: the math verifier; PPO: `ppo.reward`). Every part's
mean score is logged per rollout batch as `reward_<name>` and, for the rules, each rule's violation
rate as `violations_<rule id>` (see `reward_columns`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmforge.errors import FieldError, one_of
from lmforge.rewards.ai_judge import AIJudgeConfig

KINDS = ("math", "rules", "rm", "judge")


@dataclass
class RewardPartConfig:
    kind: str = "math"               # math | rules | rm | judge
    weight: float = 1.0              # the part's factor in the sum (negative: a cost)
    model: str = "rm"                # rm: a reward-model stage of this recipe or a reward checkpoint dir
    # judge: local checkpoint "" = the stage's starting policy, run on the stage's device unless
    # judge.device names another
    judge: AIJudgeConfig = field(default_factory=AIJudgeConfig)

    def __post_init__(self):
        one_of(self, "kind", KINDS)
        if not math.isfinite(self.weight):
            raise FieldError("weight", f"expected a finite number, got {self.weight}")
        if self.weight == 0:
            raise FieldError("weight", "a part with weight 0 changes nothing; leave it out")
        if self.kind != "rm" and self.model != "rm":
            raise FieldError("model", f"only an rm part reads a model (this part is {self.kind!r})")
        if self.kind != "judge" and self.judge != AIJudgeConfig():
            raise FieldError("judge", f"only a judge part reads judge settings (this part is {self.kind!r})")


def check_parts(parts: list[RewardPartConfig], key: str, allowed: tuple[str, ...] = KINDS) -> None:
    """Kinds the stage can score, each at most once (a part's name keys its logged column)."""
    kinds = [p.kind for p in parts]
    for i, k in enumerate(kinds):
        if k not in allowed:
            raise FieldError(f"{key}.{i}.kind", f"{k!r} cannot score this stage's prompts (allowed: "
                                                f"{', '.join(allowed)})")
        if k in kinds[:i]:
            raise FieldError(f"{key}.{i}.kind", f"{k!r} is already part {kinds.index(k)}; give each kind once")


def build_reward(ctx, parts: list[RewardPartConfig], key: str, device, *, policy: str, format_bonus: float = 0.0,
                 world=None, loaded: dict | None = None):
    """A WeightedSum of the parts, each built and checked before any sampling starts: checkpoints load,
    and an HTTP judge answers one probe request, so an unreachable endpoint fails in seconds.

    policy: the stage's starting model, the default checkpoint of a local judge; format_bonus: the math
    part's bonus for a final "#### n" line; world: toyworld's, which lets the rules check invented facts;
    loaded: {model: RewardModelSource} the stage already holds (PPO's `reward`), not loaded twice.
    """
    from lmforge.rewards import RuleSafety, VerifiableMath, WeightedSum
    from lmforge.stages.bon import reward_source

    sources = []
    for i, p in enumerate(parts):
        if p.kind == "math":
            src = VerifiableMath(format_bonus=format_bonus)
        elif p.kind == "rules":
            src = RuleSafety(world=world)
        elif p.kind == "rm":
            src = (loaded or {}).get(p.model) or reward_source(ctx, p.model, f"{key}.{i}.model", device)
        else:
            src = build_judge(ctx, p.judge, f"{key}.{i}.judge", policy=policy, device=device)
        sources.append((src, p.weight))
    return WeightedSum(sources)


def build_judge(ctx, jc: AIJudgeConfig, key: str, *, policy: str, device):
    """An AIJudge from its config, for a stage: a local judge's checkpoint defaults to the stage's policy
    (a stage of the recipe or a directory) and its device to the stage's; an HTTP judge answers one probe
    request, so an unreachable endpoint fails in seconds, not after the sampling before its first use."""
    from lmforge.rewards import RewardRequest
    from lmforge.stages.common import model_dir

    if jc.backend == "local":
        ckpt = str(model_dir(ctx, jc.checkpoint or policy, f"{key}.checkpoint"))
        at = str(device) if jc.device == AIJudgeConfig.device else jc.device
        jc = AIJudgeConfig(**{**jc.__dict__, "checkpoint": ckpt, "device": at})
    judge = jc.build()
    if jc.backend == "http":
        judge.score([RewardRequest([{"role": "user", "content": "Say hello."}], "Hello.")])
    return judge


def reward_columns(reward) -> dict[str, list[float]]:
    """Per-row details of the last `score` call, for logging: `reward_<name>` for each part of a WeightedSum,
    and `violations_<rule id>` (1.0 where the row broke the rule) for written rules (alone or as a part)."""
    parts = getattr(reward, "parts", None)
    sources = [s for s, _ in parts] if parts is not None else [reward]
    out = {f"reward_{k}": list(v) for k, v in (getattr(reward, "last_parts", None) or {}).items()}
    for s in sources:
        rows = getattr(s, "last_violated", None)
        if rows is not None and hasattr(s, "rules"):
            for r in s.rules:
                out[f"violations_{r.id}"] = [float(r.id in ids) for ids in rows]
    return out
