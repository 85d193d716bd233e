"""Online RL (PPO, GRPO and relatives) as pure functions: KL estimators, advantages, clipped losses.

Shapes: B rollouts (sequences), T completion tokens; `mask` (B, T), float or bool, is 1 on real
completion tokens and 0 on padding (and on tokens that get no loss, such as tool output). Per-token
tensors are (B, T); group rewards and scores are (B,). Losses return `(scalar, diagnostics)` where
diagnostics are detached scalar tensors; advantage, return and reward helpers return detached tensors
(they are targets, never differentiated). Nothing here knows about models or sampling.

Conventions the trainer must know (docs/rl.md explains each):
- standard deviations (`group_advantages`, `whiten`) use Bessel's correction (divide by n - 1),
  as torch.std, TRL, verl and OpenRLHF do;
- `aggregate` turns per-token values into the scalar loss: token_mean (DAPO), seq_mean (GRPO paper)
  or fixed_length (Dr. GRPO); use the same mode for the policy loss and the KL term.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lmforge.errors import LmforgeError

Tensor = torch.Tensor
Diagnostics = dict[str, Tensor]

KL_KINDS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean", "fixed_length")
ADVANTAGE_SCALES = ("group", "batch", "none")
BASELINES = ("mean", "rloo")


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise LmforgeError(f"unknown {what} '{value}' (expected one of: {', '.join(choices)})")


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def _masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Sample variance (Bessel: divide by n - 1, or by 1 when n < 2) of x over the mask."""
    n = mask.sum()
    return (((x - _masked_mean(x, mask)) * mask) ** 2).sum() / (n - 1).clamp(min=1)


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman, "Approximating KL
    Divergence", 2020). With d = logp - ref_logp:

    - k1 = d: unbiased, high variance, negative on some tokens. The classic PPO-RLHF reward penalty.
    - k2 = d^2 / 2: biased (low when the policies are close), low variance, >= 0.
    - k3 = exp(-d) + d - 1: unbiased and >= 0 (exp(x) >= 1 + x), low variance; GRPO puts it in the loss.
      -d is clamped to at most 20 before exp so one very unlikely reference token cannot give inf.

    Pure and elementwise (no mask): pass the result to `aggregate` (loss term) or `token_rewards`
    (reward penalty). Example: d = 1 -> k1 1, k2 0.5, k3 e^-1 + 1 - 1 = 0.3679; d = -1 -> k3 e - 2 = 0.7183.
    """
    _check_choice("KL estimator", kind, KL_KINDS)
    d = logp - ref_logp
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d**2
    return torch.exp((-d).clamp(max=20.0)) + d - 1


def group_advantages(rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-6,
                     baseline: str = "mean") -> Tensor:
    """Outcome advantages from groups of samples of the same prompt (GRPO and relatives); (B,) -> (B,).

    `rewards` holds B / G consecutive groups of G = group_size samples each. Baseline: "mean" subtracts
    the group mean; "rloo" subtracts the mean of the *other* G - 1 samples (leave-one-out; equal to
    G / (G - 1) * (r - group mean), an unbiased baseline). Scale: "group" divides by the group's std + eps
    (GRPO, DeepSeekMath), "batch" by the std of all B rewards + eps, "none" not at all (Dr. GRPO: std
    scaling over-weights prompts that are nearly always solved or failed). Stds use Bessel's correction
    (n - 1), as torch.std, TRL and verl; a group whose rewards are all equal gets advantage 0 whatever
    the scale. eps 1e-6 only guards that division by zero.

    Example: one group [1, 0, 0, 1]: mean 0.5, sample std sqrt(1/3) = 0.5774 -> "group" +-0.8660,
    "none" +-0.5, "rloo" + "none" +-2/3 (1 - mean(0, 0, 1) = 2/3).
    LmforgeError when B is not a multiple of G or G < 2 (one sample is its own baseline: advantage 0).
    """
    _check_choice("advantage scale", scale, ADVANTAGE_SCALES)
    _check_choice("advantage baseline", baseline, BASELINES)
    n = rewards.numel()
    if group_size < 2:
        raise LmforgeError(f"group_size must be at least 2, got {group_size}: with one sample per prompt "
                           f"the baseline is the reward itself and every advantage is 0")
    if n % group_size:
        raise LmforgeError(f"{n} rewards do not split into groups of {group_size}: the rollout batch must be "
                           f"a multiple of group_size")
    r = rewards.detach().float().reshape(-1, group_size)
    adv = r - r.mean(dim=1, keepdim=True)
    if baseline == "rloo":
        adv = adv * group_size / (group_size - 1)
    if scale == "group":
        adv = adv / (r.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (r.std() + eps)
    # exactly 0, not a rounding residue of r - mean (8 x 0.1 / 8 != 0.1 in floats): such rows carry
    # no gradient, which lets the trainer skip them (lmforge.rl.RolloutBatches)
    adv = adv.masked_fill((r == r[:, :1]).all(dim=1, keepdim=True), 0.0)
    return adv.reshape(rewards.shape)


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016); returns (advantages, returns), (B, T), detached.

    Backwards over the real tokens t of each row: delta_t = r_t + gamma * V_next - V_t and
    A_t = delta_t + gamma * lam * A_next, where "next" is the next *real* token (masked positions are
    skipped, so tool-output holes do not cut the chain) and V_next = A_next = 0 after the last one (the
    episode ends there). Returns R_t = A_t + V_t, the value targets. Both are 0 outside the mask.
    Defaults gamma 1.0 (an episode is one short completion: no reason to discount) and lam 0.95
    (Ziegler et al. 2019's code, TRL's PPO): a little bias from the value model for much less variance.
    With gamma = lam = 1, A_t = (sum of rewards from t on) - V_t.

    Example: rewards [0, 1], values [0.5, 0.2], gamma 0.9, lam 0.5: delta_1 = 1 - 0.2 = 0.8 = A_1;
    delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32, A_0 = -0.32 + 0.45 * 0.8 = 0.04; returns [0.54, 1.0].
    """
    m = mask.detach().float()
    r, v = rewards.detach().float() * m, values.detach().float() * m
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(r.shape[1])):
        real = m[:, t] > 0
        a_t = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        adv[:, t] = torch.where(real, a_t, 0.0)
        next_value = torch.where(real, v[:, t], next_value)
        next_adv = torch.where(real, a_t, next_adv)
    return adv, (adv + v) * m


def whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8,
           all_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalize x to mean 0 and variance 1 over the masked entries: (x - mean) / sqrt(var + eps), with
    the sample variance (n - 1). shift_mean=False adds the mean back (only rescales; TRL uses it for
    rewards so their sign survives). 0 outside the mask. Used on PPO advantages across the batch.
    all_sum: sums a tensor over processes (torchrun), so that the mean and variance are those of every
    process's entries together; None: this x alone.

    Example: x = [2, 4, 6] (a 4th entry masked): mean 4, var (4 + 0 + 4) / 2 = 4 -> [-1, 0, 1];
    shift_mean=False -> [3, 4, 5].
    """
    m = mask.to(x.dtype)
    if all_sum is None:
        mean, var = _masked_mean(x, m), _masked_var(x, m)
    else:
        n = all_sum(m.sum())
        mean = all_sum((x * m).sum()) / n.clamp(min=1)
        var = all_sum((((x - mean) * m) ** 2).sum()) / (n - 1).clamp(min=1)
    out = (x - mean) * torch.rsqrt(var + eps)
    return (out if shift_mean else out + mean) * m


def aggregate(per_token: Tensor, mask: Tensor, aggregation: str = "token_mean", max_len: int | None = None) -> Tensor:
    """Reduce (B, T) per-token values to the scalar loss; the policy loss and a KL term
    (beta * aggregate(kl_penalty(...))) must use the same mode.

    - token_mean: sum over all real tokens / their count (DAPO's token-level loss): every token weighs
      the same, so long answers weigh more in total. TRL's GRPO default ("dapo").
    - seq_mean: mean over the B rows of (row sum / row token count) (the GRPO paper): every sequence
      weighs the same, so a token of a short answer weighs more; a row without tokens counts as 0.
    - fixed_length: sum / (B * max_len) (Dr. GRPO): a constant normalizer, no length bias; pass the
      generation limit (max_new_tokens) as max_len, required here.

    Example: row 0 has one token of value 4, row 1 four tokens of value 1: token_mean 8 / 5 = 1.6,
    seq_mean (4 + 1) / 2 = 2.5, fixed_length with max_len 4: 8 / 8 = 1.0.
    With micro-batches, all three are means over *this* batch; divide sums by global counts in the trainer
    for exact gradient accumulation.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    m = mask.to(per_token.dtype)
    total = per_token * m
    if aggregation == "token_mean":
        return total.sum() / m.sum().clamp(min=1)
    if aggregation == "seq_mean":
        return (total.sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if max_len is None or max_len < 1:
        raise ValueError(f"aggregation 'fixed_length' needs max_len >= 1 (the generation limit), got {max_len}")
    return total.sum() / (per_token.shape[0] * max_len)


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float = 0.2,
                clip_high: float | None = None, aggregation: str = "token_mean",
                max_len: int | None = None) -> tuple[Tensor, Diagnostics]:
    """PPO / GRPO clipped surrogate (Schulman et al. 2017). ratio = exp(logp - old_logp) per token;
    per-token loss = -min(ratio * A, clip(ratio, 1 - clip_low, 1 + clip_high) * A), reduced by `aggregate`.

    advantages: (B, T), or (B,) (one per sequence, as from `group_advantages`) broadcast over tokens.
    old_logp: the log-probs under the policy that sampled the rollouts (detached; at the first update on
    fresh rollouts logp equals it and ratio = 1). Empty (numel 0): the rollouts get this one update, so
    logp itself, detached, is old_logp (trl's shortcut: no separate no-grad forward to recompute it).
    The min makes the objective pessimistic: once the ratio has moved past the clip range in the
    direction the advantage favours, the token gives no gradient.
    clip_low 0.2: PPO's and the GRPO paper's value. clip_high None = clip_low; a larger one (DAPO:
    0.28) is "clip-higher": rare tokens with A > 0 can grow more, which keeps entropy from collapsing.

    Diagnostics (over real tokens): clip_fraction (tokens whose gradient was clipped away), split into
    clip_fraction_low (ratio < 1 - clip_low, A < 0) and clip_fraction_high (ratio > 1 + clip_high, A > 0);
    approx_kl = mean k3 estimate of KL(pi_old || pi) = mean(ratio - 1 - log ratio); ratio_mean; ratio_max.

    Example, A = 2, clip 0.2: ratio 1.5 -> -min(3, 1.2 * 2) = -2.4; with clip_high 0.28 -> -2.56.
    A = -1, ratio 0.5 -> -min(-0.5, 0.8 * -1) = 0.8 (clipped); ratio 1.5 -> 1.5 (not clipped).
    """
    clip_high = clip_low if clip_high is None else clip_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.detach().expand_as(logp)
    log_ratio = logp - (old_logp.detach() if old_logp.numel() else logp.detach())
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    loss = aggregate(-torch.minimum(unclipped, clipped), mask, aggregation, max_len)
    with torch.no_grad():
        m = mask.to(ratio.dtype)
        low = ((ratio < 1 - clip_low) & (advantages < 0)).to(m.dtype)
        high = ((ratio > 1 + clip_high) & (advantages > 0)).to(m.dtype)
        diag = {"clip_fraction": _masked_mean(low + high, m), "clip_fraction_low": _masked_mean(low, m),
                "clip_fraction_high": _masked_mean(high, m),
                "approx_kl": _masked_mean(ratio - 1 - log_ratio, m), "ratio_mean": _masked_mean(ratio, m),
                "ratio_max": ratio.masked_fill(m == 0, float("-inf")).max()}
    return loss, diag


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.2,
               aggregation: str = "token_mean", max_len: int | None = None) -> tuple[Tensor, Diagnostics]:
    """PPO clipped value loss: 1/2 * max((v - R)^2, (v_clip - R)^2), v_clip = v_old + clip(v - v_old, +-clip),
    reduced by `aggregate`. The value may not move more than `clip` from the rollout's value in one update
    without paying the worse of the two errors. clip 0.2 (TRL's cliprange_value, OpenAI baselines);
    None disables clipping (plain 1/2 (v - R)^2; "Implementation Matters in Deep RL" found the clipping
    rarely helps, and it is scale-dependent: the clip is in reward units).

    Diagnostics: value_clip_fraction (tokens where the clipped error is the larger one), explained_variance
    = 1 - Var(R - v) / Var(R) over real tokens (1 = perfect, 0 = no better than a constant), value_mean.

    Example, clip 0.2, v_old 0.5: v 1.0, R 2 -> v_clip 0.7, max(1, 1.69) / 2 = 0.845 (clipped);
    v 1.0, R 0 -> max(1, 0.49) / 2 = 0.5 (not clipped).
    """
    returns = returns.detach()
    err = (values - returns) ** 2
    if clip is not None:
        old = old_values.detach()
        v_clip = old + torch.clamp(values - old, -clip, clip)
        err_clip = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(err, err_clip)
    else:
        err_clip, per_token = err, 0.5 * err
    loss = aggregate(per_token, mask, aggregation, max_len)
    with torch.no_grad():
        m = mask.to(err.dtype)
        var_r = _masked_var(returns, m)
        diag = {"value_clip_fraction": _masked_mean((err_clip > err).to(m.dtype), m),
                "explained_variance": 1 - _masked_var(returns - values, m) / var_r.clamp(min=1e-8),
                "value_mean": _masked_mean(values, m)}
    return loss, diag


class AdaptiveKLController:
    """The reward KL coefficient of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
    Preferences"), steered toward a target KL: after n_steps rollouts (episodes) with measured KL,
    coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon. A proportional controller whose
    step is capped at 20% of n_steps / horizon; it reacts over about `horizon` rollouts.
    Defaults (TRL's classic PPOConfig): init_kl_coef 0.2, target 6 nats per sequence, horizon 10000.

    Example: coef 0.2, target 6, horizon 10000, kl 9 over 1000 rollouts: error clip(0.5) = 0.2 ->
    0.2 * (1 + 0.2 * 0.1) = 0.204.
    """

    def __init__(self, init_kl_coef: float = 0.2, target: float = 6.0, horizon: float = 10000):
        if target <= 0 or horizon <= 0:
            raise LmforgeError(f"adaptive KL needs target > 0 and horizon > 0, got target {target}, horizon {horizon}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        error = min(max(float(current_kl) / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        """What a checkpoint keeps (the coefficient moves; target and horizon come from the config)."""
        return {"kl_coef": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["kl_coef"])


class FixedKLController:
    """A constant KL coefficient with the controller interface (`value`, `update` does nothing)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float | Tensor, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:  # nothing moves: the config's coefficient stands
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def entropy_from_logits(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens of the entropy -sum_v p_v log p_v of each next-token distribution, in fp32.

    Computed from log_softmax (stable for huge logits); -inf logits (banned tokens) contribute 0, not nan.
    Differentiable (an entropy bonus may use it); detach it for logging. Entropy collapsing toward 0 early
    is the failure clip-higher addresses. Example: logits [0, 0] -> ln 2 = 0.6931; [ln 3, 0] -> p
    [0.75, 0.25] -> 0.5623; the mean of both 0.6277.
    """
    ent = token_entropy(torch.log_softmax(logits.float(), dim=-1))
    return _masked_mean(ent, mask.to(ent.dtype))


def token_entropy(logp: Tensor, inplace: bool = False) -> Tensor:
    """(..., V) log-probabilities -> (...) entropies -sum_v p_v log p_v; a -inf log-prob adds 0, not nan.

    inplace=True overwrites `logp` (no grad): logging the entropy of a whole batch's vocabulary-wide
    distributions then needs one such tensor, not three. Example: log [0.75, 0.25] -> 0.5623.
    """
    if inplace:
        p = logp.exp()
        return -p.mul_(logp.clamp_(min=torch.finfo(logp.dtype).min)).sum(-1)
    return -(logp.exp() * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)


def token_rewards(score: Tensor, kl: Tensor, mask: Tensor, kl_coef: float) -> Tensor:
    """Per-token rewards for PPO-RLHF (Ziegler et al. 2019, InstructGPT): -kl_coef * kl on every real
    token, plus the sequence's scalar score (reward model or verifier) on its last real token; 0 outside
    the mask; a row without real tokens gets nothing. Detached. kl is usually `kl_penalty(..., "k1")`,
    whose sum over a sequence estimates the sequence KL without bias; feed the result to `gae`.

    Example: score 1, kl [0.1, 0.2] + one padding token, kl_coef 0.1 -> [-0.01, -0.02 + 1, 0] = [-0.01, 0.98, 0].
    """
    m = mask.detach().float()
    rewards = -kl_coef * kl.detach().float() * m
    last = m.shape[1] - 1 - m.flip(-1).argmax(-1)
    rows = torch.arange(m.shape[0], device=m.device)
    rewards[rows, last] += score.detach().float() * (m.sum(-1) > 0)
    return rewards
