"""Stage `ppo`: RLHF with PPO (the InstructGPT sequence SFT -> reward model -> PPO).

Each rollout batch: `prompts_per_step` toyworld prompts (training entities), one sample each from the
current policy. The reward model scores each completion at its end-of-turn token; every token pays
kl_coef * k1 KL to the frozen SFT reference (`token_rewards`); a value model (initialized from the
reward model, as InstructGPT did) gives V per token; GAE (gamma, lambda) turns those into advantages,
whitened over the batch; then `ppo_epochs` passes over `minibatches` slices with the clipped policy
loss and the clipped value loss. Policy and value model train together on the shared trainer loop
(one AdamW over both). The adaptive KL controller (Ziegler et al.) steers the KL toward `kl_target`.
Output: `ppo/model/` (the policy). `eval_ppo` judges it against the SFT model.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import LmforgeError, above_zero, check_fields, fraction, non_negative, one_of, positive
from lmforge.losses import IGNORE_INDEX
from lmforge.pipeline import Stage
from lmforge.rewards.config import RewardPartConfig, check_parts
from lmforge.stages.common import check_task_mix, resume_step
from lmforge.train.config import TrainConfig


def _ppo_train_defaults() -> TrainConfig:
    return TrainConfig(steps=60, micro_batch_size=32, seq_len=256, lr=1e-5, warmup_steps=0, schedule="constant",
                       weight_decay=0.0, eval_every=10**9, ckpt_every=20, log_every=1)


@dataclass
class PPOConfig:
    init: str = "sft"                 # policy and frozen reference
    reward: str = "rm"                # reward-model stage (also the value model's starting point)
    prompts_per_step: int = 32
    n_prompts: int = 2000
    max_new_tokens: int = 48
    temperature: float = 1.0
    kl_coef: float = 0.05             # initial coefficient of the per-token KL penalty
    kl_estimator: str = "k1"          # k1 (log-ratio: unbiased, the classic penalty) | k3 (>= 0 per token) | k2
    kl_target: float = 0.0            # > 0: adaptive controller toward this sequence KL (nats)
    gamma: float = 1.0
    lam: float = 0.95
    ppo_epochs: int = 2
    minibatches: int = 2
    clip: float = 0.2
    value_clip: float = 0.2
    value_coef: float = 0.1
    length_penalty: float = 1.0       # subtracted from the score of completions cut at max_new_tokens
    tasks: dict[str, float] = field(default_factory=dict)   # prompt mix; empty: pairs.tasks or the default
    # real prompts instead of toyworld's (then n_prompts and tasks do not apply): chat records in any format
    # SFT reads, each up to its last user turn; eval_prompts distinct ones (at most 10%) are held out for
    # the before/after reward-model score
    sources: list[ChatSourceConfig] = field(default_factory=list)
    eval_prompts: int = 200
    # what the policy is rewarded with: weighted parts (kinds rm, rules, judge; see lmforge/rewards/config.py);
    # empty: the `reward` model alone. The value model starts from `reward` either way
    rewards: list[RewardPartConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=_ppo_train_defaults)

    def __post_init__(self):
        positive(self, "prompts_per_step", "n_prompts", "max_new_tokens", "ppo_epochs", "minibatches", "eval_prompts")
        check_fields(self, ["minibatches"], lambda v: self.prompts_per_step % v == 0,
                     f"a divisor of prompts_per_step ({self.prompts_per_step}): every rollout in one minibatch")
        above_zero(self, "temperature")
        non_negative(self, "kl_coef", "kl_target", "clip", "value_clip", "value_coef", "length_penalty")
        fraction(self, "gamma", "lam")
        one_of(self, "kl_estimator", ("k1", "k2", "k3"))
        check_task_mix(self, "tasks")
        check_parts(self.rewards, "rewards", ("rm", "rules", "judge"))  # no verifiable answers in PPO's prompts


class PolicyAndValue(nn.Module):
    """The two trained networks as one module, so one trainer (and one checkpoint) holds both, and
    DDP wraps both: the loss calls this module's forward, which is where DDP prepares the all-reduce."""

    def __init__(self, policy, value):
        super().__init__()
        self.policy, self.value = policy, value

    def forward(self, ids, targets, temperature: float):
        """(B, T) log-probs of targets under the policy, (B, T) values."""
        from lmforge.rl import token_logps

        return token_logps(self.policy, ids, targets, temperature), self.value(ids)


class PPOBatches:
    """Step s trains on rollout batch s // (epochs * minibatches), minibatch s % minibatches of it."""

    def __init__(self, make, micro: int, updates: int, minibatches: int):
        self.make, self.micro, self.updates, self.minibatches = make, micro, updates, minibatches
        self._index, self._batch, self.last_stats = -1, None, {}

    def batches(self, step: int) -> list:
        index = step // self.updates
        if index != self._index:
            self._batch, self._index = self.make(index), index
            self.last_stats = self._batch["stats"]
        b = self._batch
        B = b["ids"].shape[0]
        per = B // self.minibatches
        lo = (step % self.minibatches) * per
        out = []
        for s in range(lo, lo + per, self.micro):
            r = slice(s, min(s + self.micro, lo + per))
            out.append(tuple(b[k][r] for k in ("ids", "targets", "old_logp", "old_values", "adv", "returns")))
        return out


class PPOModule:
    def __init__(self, pc: PPOConfig, temperature: float):
        self.pc, self.temperature = pc, temperature

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def loss(self, model, batch):
        from lmforge.losses.rl import policy_loss, value_loss

        ids, targets, old, old_v, adv, ret = batch
        mask = (targets != IGNORE_INDEX).float()
        logp, values = model(ids, targets, self.temperature)                     # (B, T) each
        pg, d = policy_loss(logp, old, adv, mask, self.pc.clip)
        vf, dv = value_loss(values, old_v, ret, mask, self.pc.value_clip)
        n = self.count(batch)
        stats = {"clip_fraction": d["clip_fraction"] * n, "value_loss": vf.detach() * n,
                 "explained_variance": dv["explained_variance"] * n}
        return (pg + self.pc.value_coef * vf) * n, stats


def make_rollouts(pc, policy, value, ref, reward, tok, prompts, seed, device, bf16, kl_ctl, info=None,
                  replicas=None):
    """A function batch_index -> rollout batch dict (tensors + stats), closing over the models.

    reward: a RewardSource scoring each completion (the reward model, or a WeightedSum of parts). Logged
    per batch besides reward, KL and length: the policy's entropy on its own samples, each reward part
    (`lmforge.rewards.config.reward_columns`), and the largest difference between the engine's
    sampling log-probs and the trainer's recomputation (`logp_max_diff`; bf16 autocast makes it ~0.1).

    Under torchrun (`info`, world size W) each rank samples its own P / W of the batch's prompts, with a
    seed of its own (rank 0: the single-process seed); advantages are whitened, and statistics and the adaptive KL
    controller's input are averaged, over every rank's rollouts. replicas: under FSDP2, plain copies of the
    policy and the value model, into which each batch first gathers their sharded weights (every rank)."""
    from lmforge.engine import Engine, SamplingParams
    from lmforge.losses.rl import gae, kl_penalty, token_rewards, whiten
    from lmforge.rewards import RewardRequest
    from lmforge.rewards.config import reward_columns
    from lmforge.rl import rows_from_rollouts, token_logps
    from lmforge.tokenizer import END_OF_TURN
    from lmforge.train.distributed import DistInfo, all_reduce_max, all_reduce_sum, gather_full_weights

    info = info or DistInfo()
    per = pc.prompts_per_step // info.world_size

    def all_sum(t: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(t.clone(), info)

    def mean(t: torch.Tensor) -> float:  # a per-rollout quantity, averaged over the whole batch
        if not info.enabled:
            return float(t.float().mean())
        return float(all_sum(t.float().sum().to(device)) / pc.prompts_per_step)  # NCCL reduces device tensors

    def make(index: int) -> dict:
        import random

        t0 = time.perf_counter()  # (as in GRPO's rollouts, generate_s includes FSDP2's weight gather)
        policy_now, value_now = policy, value
        if replicas is not None:  # FSDP2: the engine and these forwards need whole weights
            policy_now, value_now = (gather_full_weights(m, r) for m, r in zip((policy, value), replicas, strict=True))
        rng = random.Random(f"ppo:{seed}:{index}")
        chosen = rng.sample(range(len(prompts)), pc.prompts_per_step)[info.rank * per:(info.rank + 1) * per]
        params = SamplingParams(max_new_tokens=pc.max_new_tokens, temperature=pc.temperature,
                                seed=seed + index + info.rank * 1_000_000_007,  # rank 0: the one-process seed
                                stop_ids=(tok.special[END_OF_TURN], tok.eos_id), logprobs=True)
        enc = [prompts[i][1] for i in chosen]
        comps = [c[0] for c in Engine(policy_now, tok, batch_size=len(enc)).generate(enc, params)]
        generate_s = time.perf_counter() - t0
        texts = [tok.decode(c.ids, skip_special=True).strip() for c in comps]
        score = torch.tensor(reward.score([RewardRequest(prompts[i][0], t) for i, t in zip(chosen, texts,
                                                                                           strict=True)]))
        columns = reward_columns(reward)
        cut = torch.tensor([c.finish_reason == "length" for c in comps], dtype=torch.float32)
        score = score - pc.length_penalty * cut
        ids, targets, eng = rows_from_rollouts(enc, comps, tok.pad_id)
        ids, targets = ids.to(device), targets.to(device)
        mask = (targets != IGNORE_INDEX).float()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            policy_now.eval()
            old, ent = token_logps(policy_now, ids, targets, pc.temperature, entropy=True)
            ref_lp = token_logps(ref, ids, targets, pc.temperature)
            old_v = value_now(ids).float() * mask
            policy_now.train()
        kl = kl_penalty(old, ref_lp, pc.kl_estimator) * mask
        rewards = token_rewards(score.to(device), kl, mask, kl_ctl.value)
        adv, ret = gae(rewards, old_v, mask, pc.gamma, pc.lam)
        adv = whiten(adv, mask, all_sum=all_sum if info.enabled else None)
        seq_kl = mean(kl.sum(1))
        kl_ctl.update(seq_kl, pc.prompts_per_step)
        real = mask.bool()
        diff = (old - eng.to(device)).abs()[real]
        stats = {"score": mean(score), "kl": seq_kl, "kl_coef": kl_ctl.value,
                 "response_length": mean(mask.sum(1)), "truncated_fraction": mean(cut),
                 # mean over the batch's sampled tokens of each one's next-token entropy (collapse shows here)
                 "entropy": float(all_sum(ent[real].float().sum()) / all_sum(mask.sum()).clamp(min=1)),
                 "logp_max_diff": float(all_reduce_max(diff.max() if diff.numel() else torch.zeros((), device=device),
                                                       info)),
                 **{k: mean(torch.tensor(v)) for k, v in columns.items()},
                 # this rank's seconds: sampling alone, and the whole rollout batch
                 "generate_s": generate_s, "rollout_s": time.perf_counter() - t0}
        return {"ids": ids, "targets": targets, "old_logp": old, "old_values": old_v, "adv": adv, "returns": ret,
                "stats": stats}

    return make


def source_prompts(pc: PPOConfig, seed: int) -> tuple[list, list, dict]:
    """(train, held-out, stats) prompts from ppo.sources: each conversation up to its last user turn (what
    followed, a reply or a tool exchange, is dropped). The first eval_prompts distinct prompts (at most
    10%, at least 1) are held out, with every copy of them; the rest keep their copies, so a source's
    `weight` still counts. A conversation without a user turn is skipped and counted."""
    from lmforge.data.chat_sources import mix

    convs, stats = mix(pc.sources, seed=seed)
    prompts, skipped = [], sum(row["skipped"] for row in stats["sources"])
    for conv in convs:
        last_user = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=None)
        if last_user is None:
            skipped += 1
        else:
            prompts.append(conv[:last_user + 1])
    distinct = list({repr(p): p for p in prompts}.values())
    n = min(pc.eval_prompts, max(1, len(distinct) // 10))
    held = {repr(p) for p in distinct[:n]}
    train = [p for p in prompts if repr(p) not in held]
    if len({repr(p) for p in train}) < pc.prompts_per_step:
        raise LmforgeError(f"ppo.sources: {len(distinct)} distinct prompts; with {n} held out for evaluation, fewer "
                           f"than ppo.prompts_per_step ({pc.prompts_per_step}) are left")
    return train, distinct[:n], {"train_prompts": len(train), "heldout_prompts": n, "skipped_records": skipped}


def check_processes(pc: PPOConfig, info) -> None:
    """Under torchrun: every process's share of the rollouts splits into the minibatches."""
    if pc.prompts_per_step % (info.world_size * pc.minibatches):
        raise LmforgeError(f"ppo.prompts_per_step ({pc.prompts_per_step}) must be a multiple of the number of "
                           f"processes ({info.world_size}) x ppo.minibatches ({pc.minibatches}): each process "
                           f"splits its share of the rollouts into the minibatches")


def run(ctx) -> dict:
    from lmforge.chat import render_prompt
    from lmforge.losses.rl import AdaptiveKLController, FixedKLController
    from lmforge.model.io import load_model, save_model
    from lmforge.rl import checkpoints_between_batches
    from lmforge.stages.bon import reward_source
    from lmforge.stages.common import load_world, model_dir
    from lmforge.tokenizer import Tokenizer
    from lmforge.toyworld.judge import preference_prompts
    from lmforge.train.distributed import barrier, gather_full_weights, mean_over_ranks, resolve_device
    from lmforge.train.metrics import read_metrics
    from lmforge.train.trainer import Trainer

    cfg, info, pc = ctx.cfg, ctx.info, ctx.cfg.ppo
    tc, out = pc.train, ctx.stage_dir("ppo")
    tc, note = checkpoints_between_batches(tc, pc.ppo_epochs * pc.minibatches, "ppo")
    if note:
        ctx.log(note)
    check_processes(pc, info)
    device = resolve_device(tc.device, info)
    src = model_dir(ctx, pc.init, "ppo.init")
    tok = Tokenizer.load(src)
    torch.manual_seed(cfg.seed)
    policy = load_model(src, device)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    rm_source = reward_source(ctx, pc.reward, "ppo.reward", device)
    value = copy.deepcopy(rm_source.model).train()                    # the critic starts as the RM
    if pc.sources:
        train_msgs, heldout, data_stats = source_prompts(pc, cfg.seed)
    else:
        world = load_world(ctx)
        mix = pc.tasks or ctx.cfg.pairs.tasks or None
        train_msgs = [e.messages[:-1] for e in
                      preference_prompts(world, pc.n_prompts, seed=cfg.seed + 70_000, split="train", tasks=mix)]
        heldout = [e.messages[:-1] for e in preference_prompts(world, pc.eval_prompts, seed=cfg.seed + 80_000,
                                                               split="heldout", entities="train", tasks=mix)]
        data_stats = {}
    prompts = [(m, render_prompt(m, tok)) for m in train_msgs]
    kl_ctl = AdaptiveKLController(pc.kl_coef, pc.kl_target, 10_000) if pc.kl_target > 0 \
        else FixedKLController(pc.kl_coef)
    bf16 = tc.use_bf16(device)
    # FSDP2 shards both trained models; rollouts, evaluation and the saved model use whole copies (see make_rollouts)
    replicas = (copy.deepcopy(policy), copy.deepcopy(value)) if info.enabled and tc.parallel == "fsdp2" else None
    reward = rm_source
    if pc.rewards:
        from lmforge.rewards.config import build_reward

        reward = build_reward(ctx, pc.rewards, "ppo.rewards", device, policy=pc.init,
                              world=None if pc.sources else world, loaded={pc.reward: rm_source})
    make = make_rollouts(pc, policy, value, ref, reward, tok, prompts, cfg.seed, device, bf16, kl_ctl, info,
                         replicas)
    batches = PPOBatches(make, tc.micro_batch_size, pc.ppo_epochs * pc.minibatches, pc.minibatches)
    both = PolicyAndValue(policy, value)
    mine = heldout[info.rank::info.world_size]  # under torchrun each rank scores its share
    score_before = mean_over_ranks(*heldout_score(policy, tok, mine, rm_source, pc.max_new_tokens), info, device)
    trainer = Trainer(cfg=tc, model=both, module=PPOModule(pc, pc.temperature), batches=batches, out_dir=out,
                      device=device, lr=tc.lr, info=info, step_stats=lambda: batches.last_stats, stage_state=kl_ctl)
    start = resume_step(ctx, trainer, "ppo")
    if replicas is not None:
        ctx.log(f"[ppo] FSDP2 over {info.world_size} processes: rollouts and evaluation run whole copies of the policy "
                f"and the value model, their weights gathered before each rollout batch")
    ctx.log(f"[ppo] {len(prompts)} prompts, {pc.prompts_per_step} rollouts per batch, {pc.ppo_epochs} epochs x "
            f"{pc.minibatches} minibatches, kl_coef {pc.kl_coef}; held-out reward-model score before: "
            f"{score_before:.3f}")
    trainer.run(start_step=start)
    if replicas is not None:
        policy = gather_full_weights(policy, replicas[0])
    score_after = mean_over_ranks(*heldout_score(policy, tok, mine, rm_source, pc.max_new_tokens), info, device)
    if info.is_main:
        save_model(policy.cpu(), out / "model", src)
    barrier(info)  # rank 0's metrics file is complete before any rank reads it
    logs = read_metrics(out, "train")
    tail = logs[-5:]
    mean = lambda k: round(statistics.fmean(r[k] for r in tail if k in r), 4) if tail else None
    return {**data_stats, "steps": tc.steps, "rollout_batches": -(-tc.steps // (pc.ppo_epochs * pc.minibatches)),
            "heldout_rm_score_before": round(score_before, 4), "heldout_rm_score_after": round(score_after, 4),
            "score_first": round(logs[0]["score"], 4) if logs else None, "score_last": mean("score"),
            "kl_last": mean("kl"), "response_length_last": mean("response_length")}


def heldout_score(policy, tok, prompts, rm_source, max_new_tokens: int) -> tuple[float, int]:
    """(summed reward-model score, count) of greedy answers to held-out prompts (message lists)."""
    from lmforge.rewards import RewardRequest
    from lmforge.stages.eval_dpo import greedy_answers

    if not prompts:
        return 0.0, 0
    answers = greedy_answers(policy, tok, prompts, max_new_tokens)
    scores = rm_source.score([RewardRequest(p, a) for p, a in zip(prompts, answers, strict=True)])
    return math.fsum(scores), len(scores)


def run_eval(ctx) -> dict:
    from lmforge.stages.eval_dpo import compare

    if ctx.cfg.ppo.sources:  # its prompts and judge are toyworld's: a score of other prompts than PPO trained on
        raise LmforgeError("eval_ppo judges toyworld prompts with toyworld's hidden judge; with ppo.sources, leave it "
                           "out of stages (the ppo stage reports heldout_rm_score_before/after on your prompts)")
    metrics = compare(ctx, {"sft": "sft", "ppo": "ppo"}, "sft", ctx.cfg.eval_dpo, "eval_ppo")
    if ctx.is_complete("ppo"):
        m = ctx.metrics("ppo")
        metrics.update({k: m.get(k) for k in ("heldout_rm_score_before", "heldout_rm_score_after", "kl_last")})
    return metrics


STAGE = Stage("ppo", run, requires=lambda cfg: () if cfg.ppo.sources else ("toyworld",), distributed=True,
              description="PPO against the reward model with a KL penalty to the SFT model (RLHF)",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "rm", "ppo"))
EVAL_STAGE = Stage("eval_ppo", run_eval, measures_only=True, requires=("sft", "ppo"),
                   description="judge the PPO model against the SFT model; knowledge-QA alignment tax",
                   inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "rm", "ppo", "eval_dpo"))
