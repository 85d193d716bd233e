"""Stage `grpo`: group-relative policy optimization with verifiable rewards (and RLOO).

    lmforge grpo RECIPE [grpo.baseline=rloo] [grpo.scale=none] [grpo.beta=0.04]

Each step: `prompts_per_step` toyworld word problems (training entities) x `group_size` samples
from the current policy; the verifiable-math reward (1 when the final `#### n` is right, plus an
optional format bonus) is turned into advantages *within each group* (no value model: the group
is the baseline), and one clipped policy-gradient update per rollout batch (`updates_per_batch`
slices it into several). Defaults and why are in docs/grpo.md. Accuracy on *held-out* word
problems (greedy) is measured before and after, and the KL to the starting model is reported.
Output: `grpo/model/`.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

import torch

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import FieldError, LmforgeError, above_zero, check_fields, non_negative, one_of, positive
from lmforge.pipeline import Stage
from lmforge.rewards.config import RewardPartConfig, check_parts
from lmforge.stages.common import resume_step
from lmforge.train.config import TrainConfig

NUMERIC_TASKS = ("word_problem", "arithmetic", "count_letters")  # toyworld tasks whose answer is a number


def _grpo_train_defaults() -> TrainConfig:
    return TrainConfig(steps=40, micro_batch_size=32, seq_len=256, lr=1e-5, warmup_steps=0, schedule="constant",
                       weight_decay=0.0, eval_every=20, ckpt_every=20, log_every=1)


@dataclass
class GRPOConfig:
    init: str = "sft"                 # starting policy (and reference): a stage of this run or a checkpoint dir
    task: str = "word_problem"        # toyworld task the prompts come from (training entities)
    n_prompts: int = 2000             # prompt pool (drawn without replacement, epoch by epoch)
    # real data instead of toyworld: chat records whose last reply ends in the answer's number ("#### 72"),
    # e.g. GSM8K's train split through `fields: {instruction: question, output: answer}`
    sources: list[ChatSourceConfig] = field(default_factory=list)
    eval_sources: list[ChatSourceConfig] = field(default_factory=list)  # held-out problems (e.g. GSM8K test);
                                      # empty: eval_examples of `sources` (at most 10%), kept out of training
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 64
    temperature: float = 1.0
    baseline: str = "mean"            # mean (GRPO) | rloo (leave-one-out)
    scale: str = "group"              # group (GRPO) | batch | none (Dr. GRPO)
    aggregation: str = "token_mean"   # token_mean | seq_mean | fixed_length
    clip_low: float = 0.2
    clip_high: float = 0.28           # > clip_low: DAPO's clip-higher
    beta: float = 0.0                 # k3 KL coefficient; 0 loads no reference for the loss
    updates_per_batch: int = 1        # optimizer steps per rollout batch (each on its own slice)
    skip_idle: bool = True            # do not run rows whose advantage is 0 when beta is 0 (the same
                                      # update, faster: see RolloutBatches)
    format_reward: float = 0.1        # bonus for ending with a "#### n" line
    length_penalty: float = 0.0       # subtracted when a completion hits max_new_tokens unfinished
    malformed_penalty: float = 0.0    # subtracted when a reply does not end its turn or leaves a tool call open
    eval_examples: int = 200          # held-out problems scored before and after: greedy, and
    eval_samples: int = 4             # this many samples each at `temperature` (the policy RL trains)
    calculator: bool = False          # rollouts and evaluation run the calculator tool (sft.calculator)
    # weighted reward parts (kinds math, rules, rm, judge; see lmforge/rewards/config.py), each logged as
    # reward_<name>; empty: the verifiable answer alone (math). Held-out accuracy is the answer's either way
    rewards: list[RewardPartConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=_grpo_train_defaults)

    def __post_init__(self):
        from lmforge.data.chat_sources import need_replies

        need_replies(self.sources)                      # the answer is read from the reply
        need_replies(self.eval_sources, "eval_sources")
        one_of(self, "baseline", ("mean", "rloo"))
        one_of(self, "scale", ("group", "batch", "none"))
        one_of(self, "aggregation", ("token_mean", "seq_mean", "fixed_length"))
        check_fields(self, ["task"], lambda v: v in NUMERIC_TASKS,
                     f"one of {', '.join(NUMERIC_TASKS)} (the verifiable-math reward checks a numeric answer)")
        positive(self, "n_prompts", "prompts_per_step", "max_new_tokens", "updates_per_batch", "eval_examples")
        check_fields(self, ["updates_per_batch"], lambda v: self.prompts_per_step * self.group_size % v == 0,
                     f"a divisor of prompts_per_step x group_size ({self.prompts_per_step * self.group_size}): "
                     f"every rollout in one update's slice")
        if self.group_size < 2:
            raise FieldError("group_size", f"a group needs at least 2 samples, got {self.group_size}")
        above_zero(self, "temperature", why="a group's samples must differ")
        check_fields(self, ["clip_low"], lambda v: 0 < v < 1, "a number between 0 and 1")
        check_fields(self, ["clip_high"], lambda v: v >= self.clip_low, f"a number >= clip_low ({self.clip_low})")
        non_negative(self, "beta", "eval_samples", "format_reward", "length_penalty", "malformed_penalty")
        check_parts(self.rewards, "rewards")


class GRPOModule:
    """Clipped token-level policy gradient (+ beta * k3 KL) on one micro-batch of rollouts.

    The trainer divides by the global count: tokens (token_mean) or sequences (seq_mean and
    fixed_length), so micro-batching does not change the loss.
    """

    def __init__(self, gc: GRPOConfig, temperature: float):
        self.gc, self.temperature = gc, temperature

    def count(self, batch) -> int:
        """Tokens (token_mean) or sequences; a 6th tensor holds the targets of rows counted but not run,
        or is 0-d: the mark of a filler micro-batch (`RolloutBatches`: run for FSDP2's collectives only)."""
        if len(batch) > 5 and batch[5].dim() == 0:
            return 0
        return sum(self._count(targets) for targets in (batch[1], *batch[5:]))

    def _count(self, targets) -> int:
        if self.gc.aggregation == "token_mean":
            return int((targets != -100).sum())
        return targets.shape[0]

    def loss(self, model, batch):
        from lmforge.losses.rl import aggregate, kl_penalty, policy_loss
        from lmforge.rl import token_logps

        ids, targets, old, ref, adv = batch[:5]
        mask = (targets != -100).float()
        logp = token_logps(model, ids, targets, self.temperature)
        gc = self.gc
        pg, diag = policy_loss(logp, old, adv, mask, gc.clip_low, gc.clip_high, gc.aggregation, gc.max_new_tokens)
        n = self._count(targets)
        total = pg * n                                             # mean -> sum over what `count` counts
        stats = {"clip_fraction": diag["clip_fraction"] * n}
        if gc.beta > 0:
            kl_tok = kl_penalty(logp, ref, "k3")
            kl = aggregate(kl_tok, mask, gc.aggregation, gc.max_new_tokens)
            total = total + gc.beta * kl * n
            stats["kl"] = kl.detach() * n
        return total, stats


def advantage_fn(gc: GRPOConfig):
    from lmforge.losses.rl import group_advantages

    return lambda rewards, g: group_advantages(rewards, g, scale=gc.scale, baseline=gc.baseline)


def rl_prompts(world, task: str, n: int, seed: int, split: str = "train", evaluation: bool = False):
    """(messages, meta) for RL from toyworld examples; meta carries the verifiable answer."""
    from lmforge.toyworld.tasks import eval_examples, sft_examples

    exs = eval_examples(world, task, split, n, seed) if evaluation else sft_examples(world, n, seed, tasks=[task])
    return [(e.messages[:-1], {"answer": e.answer, "task": e.task}) for e in exs], exs


def word_problem_accuracy(model, tok, examples, max_new_tokens: int, tools=None, temperature: float = 0.0,
                          samples: int = 1, seed: int = 0) -> float:
    from lmforge.eval.chat_tasks import evaluate_examples

    return evaluate_examples(model, tok, examples, max_new_tokens=max_new_tokens, tools=tools,
                             temperature=temperature, samples=samples, seed=seed)["acc"]


@torch.no_grad()
def sequence_kl(model, ref, tok, prompts, max_new_tokens: int, seed: int, device) -> float:
    """Mean over sampled completions of sum_t (log pi - log pi_ref): KL(pi || pi_ref) per sequence."""
    from lmforge.engine import Engine, SamplingParams
    from lmforge.rl import rows_from_rollouts, token_logps
    from lmforge.tokenizer import END_OF_TURN

    if not prompts:
        return 0.0
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                            stop_ids=(tok.special[END_OF_TURN], tok.eos_id))
    outs = Engine(model, tok, batch_size=64).generate(prompts, params)
    ids, targets, _ = rows_from_rollouts(prompts, [o[0] for o in outs], tok.pad_id)
    ids, targets = ids.to(device), targets.to(device)
    model.eval()
    diff = token_logps(model, ids, targets) - token_logps(ref, ids, targets)
    return float(diff.sum(1).mean())


def source_problems(gc: GRPOConfig, seed: int) -> tuple[list, list, dict]:
    """(train, held-out, stats) problems from grpo.sources (and grpo.eval_sources): (messages up to the
    question, {"answer": the reference reply's final number}). Held out of `sources` when there are no
    eval_sources: the first eval_examples (at most 10%). A training problem whose prompt is a held-out
    one's (a copy from an upsampled source, or the same question in both) is dropped, and counted."""
    train, skipped = _problems(gc.sources, seed, "grpo.sources")
    if gc.eval_sources:
        heldout, _ = _problems(gc.eval_sources, seed, "grpo.eval_sources")
    else:
        n = min(gc.eval_examples, len(train) // 10)
        if n == 0:
            raise LmforgeError(f"grpo.sources: {len(train)} problems; holding 10% out for evaluation needs at least "
                               f"10 (add problems, or give held-out ones in grpo.eval_sources)")
        heldout, train = train[:n], train[n:]
    seen: set[str] = set()
    heldout = [p for p in heldout if not (repr(p[0]) in seen or seen.add(repr(p[0])))][:gc.eval_examples]
    held = {repr(p[0]) for p in heldout}
    kept = [p for p in train if repr(p[0]) not in held]
    if not kept:
        raise LmforgeError("grpo.sources: every problem's prompt is also a held-out one; nothing is left to train on")
    return kept, heldout, {"train_problems": len(kept), "heldout_problems": len(heldout), "skipped_records": skipped,
                           "dropped_heldout_copies": len(train) - len(kept)}


def reference_answer(text: str) -> str | None:
    r"""The verifiable answer a reference reply ends with: the number of a "#### n" line, else a number
    that ends the reply; None when it ends otherwise (free text, "3/4", "1e3").

    >>> [reference_answer(t) for t in ["So 4 + 6 = 10.\n#### 1,600", "It costs $18.", "It is 3/4.", "3 tips: eat."]]
    ['1,600', '$18', None, None]
    """
    line = _ANSWER_LINE.search(text)
    if line:
        return line.group(1)
    end = _ANSWER_END.search(text)
    return end.group(1) if end else None


_NUMBER = r"(-?\$?\d[\d,]*(?:\.\d+)?)"
_ANSWER_LINE = re.compile(r"(?m)^[ \t]*####[ \t]*" + _NUMBER + r"[ \t]*\.?[ \t]*$")
_ANSWER_END = re.compile(r"(?<![\w/.,^$-])" + _NUMBER + r"[ \t]*[.!]?\s*$")


def _problems(sources: list, seed: int, key: str) -> tuple[list, int]:
    """(messages without the last reply, {"answer"}) per conversation whose last reply ends in a number;
    and how many distinct records were skipped (unreadable, or not ending in a number)."""
    from lmforge.data.chat_sources import mix

    convs, stats = mix(sources, seed=seed)
    out, bad = [], set()
    for conv in convs:
        answer = reference_answer(conv[-1]["content"]) if len(conv) > 1 and conv[-1]["role"] == "assistant" else None
        if answer is None:
            bad.add(repr(conv))
        else:
            out.append((conv[:-1], {"answer": answer, "task": "source"}))
    if not out:
        raise LmforgeError(f"{key}: none of {len(convs)} conversations ends with an assistant reply whose last line "
                           f"is '#### <number>' or ends in a number (the verifiable answer); for GSM8K-style "
                           f"records set fields: {{instruction: question, output: answer}}")
    return out, len(bad) + sum(row["skipped"] for row in stats["sources"])


def answer_accuracy(model, tok, problems, max_new_tokens: int, tools=None, temperature: float = 0.0,
                    samples: int = 1, seed: int = 0) -> float:
    """Share of answers (greedy, or `samples` each at `temperature`) whose final number is the problem's."""
    from lmforge.chat import render_prompt
    from lmforge.engine import Engine, SamplingParams
    from lmforge.rewards import RewardRequest
    from lmforge.rewards.math import VerifiableMath
    from lmforge.tokenizer import END_OF_TURN

    if not problems:
        return 0.0
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            stop_ids=(tok.special[END_OF_TURN], tok.eos_id))
    outs = Engine(model, tok, tools=tools, batch_size=64).generate([render_prompt(m, tok) for m, _ in problems],
                                                                   params, n=samples)
    reqs = [RewardRequest(m, tok.decode(a.ids, skip_special=True).strip(), meta)
            for (m, meta), answers in zip(problems, outs, strict=True) for a in answers]
    return sum(VerifiableMath().score(reqs)) / len(reqs)


def check_processes(gc: GRPOConfig, info) -> None:
    """Under torchrun: every process gets whole groups that split into the updates' slices."""
    if gc.prompts_per_step % info.world_size:
        raise LmforgeError(f"grpo.prompts_per_step ({gc.prompts_per_step}) must be a multiple of the number of "
                           f"processes ({info.world_size}): each samples whole groups of its share")
    rows = gc.prompts_per_step // info.world_size * gc.group_size
    if rows % gc.updates_per_batch:
        raise LmforgeError(f"grpo.updates_per_batch ({gc.updates_per_batch}) must divide each process's {rows} "
                           f"rollouts (prompts_per_step / {info.world_size} processes x group_size)")


def run(ctx) -> dict:
    import copy

    from lmforge.chat import render_prompt
    from lmforge.model.io import load_model, save_model
    from lmforge.rewards.math import VerifiableMath
    from lmforge.rl import RolloutBatches, RolloutSource, checkpoints_between_batches
    from lmforge.stages.common import load_world, model_dir
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import barrier, gather_full_weights, mean_over_ranks, resolve_device
    from lmforge.train.metrics import read_metrics
    from lmforge.train.trainer import Trainer

    cfg, info, gc = ctx.cfg, ctx.info, ctx.cfg.grpo
    tc, out = gc.train, ctx.stage_dir("grpo")
    tc, note = checkpoints_between_batches(tc, gc.updates_per_batch, "grpo")
    if note:
        ctx.log(note)
    check_processes(gc, info)
    src = model_dir(ctx, gc.init, "grpo.init")
    tok = Tokenizer.load(src)
    device = resolve_device(tc.device, info)
    torch.manual_seed(cfg.seed)
    model = load_model(src, device)
    # the starting policy, frozen: the loss's KL term needs it through training; at beta 0 only the final
    # KL report does, which loads it again then (no second model in memory while training)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if gc.beta > 0 else None
    from lmforge.tools import TOOLS

    tools = TOOLS if gc.calculator else None
    if gc.sources:  # real data: (messages, {"answer"}) items, scored by the same verifier as the reward
        train_prompts, heldout, data_stats = source_problems(gc, cfg.seed)
        score = answer_accuracy
    else:
        world = load_world(ctx)
        train_prompts, _ = rl_prompts(world, gc.task, gc.n_prompts, cfg.seed)
        _, heldout = rl_prompts(world, gc.task, gc.eval_examples, cfg.seed + 50_000, split="heldout", evaluation=True)
        data_stats, score = {}, word_problem_accuracy
    mine = heldout[info.rank::info.world_size]  # under torchrun each rank scores its share

    def pooled(mean: float, n: int) -> float:  # a mean over this rank's n items -> over every rank's
        return mean_over_ranks(mean * n, n, info, device) if info.enabled else mean

    def accuracies(m) -> tuple[float, float]:  # (greedy, mean over eval_samples samples at the RL temperature)
        greedy = pooled(score(m.eval(), tok, mine, gc.max_new_tokens, tools), len(mine))
        if gc.eval_samples < 1:
            return greedy, float("nan")
        return greedy, pooled(score(m, tok, mine, gc.max_new_tokens, tools, gc.temperature, gc.eval_samples,
                                    seed=cfg.seed + 7), len(mine))

    if gc.rewards:  # built before anything samples: a judge that cannot be reached fails in seconds
        from lmforge.rewards.config import build_reward

        reward = build_reward(ctx, gc.rewards, "grpo.rewards", device, policy=gc.init, format_bonus=gc.format_reward,
                              world=None if gc.sources else world)
    else:
        reward = VerifiableMath(format_bonus=gc.format_reward)
    acc_before, sampled_before = accuracies(model)
    # FSDP2 shards the policy's weights; the engine (rollouts, evaluation) and the saved model need them whole:
    # a plain replica, into which they are gathered when needed
    replica = copy.deepcopy(model) if info.enabled and tc.parallel == "fsdp2" else None
    source = RolloutSource(model, tok, train_prompts, reward, advantage_fn(gc), prompts_per_step=gc.prompts_per_step,
                           group_size=gc.group_size, max_new_tokens=gc.max_new_tokens, temperature=gc.temperature,
                           seed=cfg.seed, ref_model=ref,
                           length_penalty=gc.length_penalty, malformed_penalty=gc.malformed_penalty,
                           bf16=tc.use_bf16(device), device=device, tools=tools, info=info, rollout_model=replica)
    batches = RolloutBatches(source, tc.micro_batch_size, gc.updates_per_batch, skip_idle=gc.skip_idle,
                             same_count_on_ranks=replica is not None)

    trainer = Trainer(cfg=tc, model=model, module=GRPOModule(gc, gc.temperature), batches=batches, out_dir=out,
                      device=device, lr=tc.lr, info=info, step_stats=lambda: batches.last_stats)
    start = resume_step(ctx, trainer, "grpo")
    if replica is not None:
        ctx.log(f"[grpo] FSDP2 over {info.world_size} processes: rollouts and evaluation run a whole copy of the "
                f"policy, its weights gathered before each rollout batch")
    ctx.log(f"[grpo] {len(train_prompts)} {'grpo.sources' if gc.sources else gc.task} prompts, "
            f"{gc.prompts_per_step} x {gc.group_size} samples per "
            f"step, baseline={gc.baseline} scale={gc.scale} agg={gc.aggregation} beta={gc.beta}; "
            f"held-out accuracy before: {acc_before:.3f} greedy, {sampled_before:.3f} sampled")
    trainer.run(start_step=start)
    if replica is not None:
        model = gather_full_weights(model, replica)
    model.eval()
    acc_after, sampled_after = accuracies(model)
    kl_prompts = [render_prompt(e[0] if gc.sources else e.messages[:-1], tok)
                  for e in heldout[:64]][info.rank::info.world_size]
    if ref is None:
        ref = load_model(src, device).eval()
    kl = sequence_kl(model, ref, tok, kl_prompts, gc.max_new_tokens, cfg.seed, device)
    kl = pooled(kl, len(kl_prompts))
    if info.is_main:
        save_model(model.cpu(), out / "model", src)
    barrier(info)  # rank 0's metrics file is complete before any rank reads it
    logs = read_metrics(out, "train")
    window = max(1, min(5, len(logs) // 2))  # first and last records averaged: apart in any run of 2 or more
    tail = logs[-window:]
    mean = lambda k: round(statistics.fmean(r[k] for r in tail if k in r), 4) if any(k in r for r in tail) else None
    first = [r["reward"] for r in logs[:window] if "reward" in r]
    return {**data_stats, "steps": tc.steps, "heldout_acc_before": round(acc_before, 4),
            "heldout_acc_after": round(acc_after, 4),
            "heldout_acc_gain": round(acc_after - acc_before, 4),
            "heldout_sampled_acc_before": round(sampled_before, 4),
            "heldout_sampled_acc_after": round(sampled_after, 4),
            "heldout_sampled_acc_gain": round(sampled_after - sampled_before, 4), "kl_to_reference": round(kl, 4),
            "reward_first": round(statistics.fmean(first), 4) if first else None, "reward_last": mean("reward"),
            "response_length_last": mean("response_length"), "logp_max_diff": mean("logp_max_diff")}


STAGE = Stage("grpo", run, distributed=True, requires=lambda cfg: () if cfg.grpo.sources else ("toyworld",),
              description="GRPO / RLOO with verifiable rewards on toyworld word problems (or grpo.sources)",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs", "dpo", "grpo"))
