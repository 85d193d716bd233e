"""Preference losses: reward model (Bradley-Terry) and the DPO family, as pure functions.

Inputs are per-sequence log-probabilities, 1-D float tensors of shape (B,): the log-probability
of a completion given its prompt, either summed over the completion's tokens ("sum") or that sum
divided by the completion's token count ("length-averaged"; IPO, SimPO and ORPO want those; the
registry says which). Every function returns `(losses, diagnostics)`: `losses` is per example,
shape (B,), so reduction (mean over the global batch) stays in the trainer; diagnostics are
detached (B,) tensors, as applicable:

- chosen_rewards / rejected_rewards: the implicit reward of each completion; for the DPO family
  beta * (log pi - log pi_ref) (see each function for the reference-free ones)
- margins: chosen_rewards - rejected_rewards
- accuracies: 1.0 where the chosen completion gets the higher reward, else 0.0 (ties count as 0)

Notation: h = (log pi(chosen) - log pi_ref(chosen)) - (log pi(rejected) - log pi_ref(rejected)),
the difference of the two log-ratios; sigma is the logistic function. Adding a loss = one function
here, one `PreferenceLossSpec` in `PREFERENCE_LOSSES`, one hand-worked test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError

Tensor = torch.Tensor
Diagnostics = dict[str, Tensor]


def _paired_diagnostics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Diagnostics:
    c, r = chosen_rewards.detach(), rejected_rewards.detach()
    return {"chosen_rewards": c, "rejected_rewards": r, "margins": c - r, "accuracies": (c > r).float()}


def _log_ratio_diff(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> tuple[Tensor, Tensor, Tensor]:
    chosen, rejected = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    return chosen - rejected, chosen, rejected


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> tuple[Tensor, Diagnostics]:
    """Direct Preference Optimization (sigmoid loss) on summed log-probs: -log sigma(beta * h).

    beta (default 0.1) is the strength of the implicit KL leash to the reference model: small beta
    lets the policy move far from it. label_smoothing = eps > 0 gives conservative DPO (cDPO), which
    assumes each label is flipped with probability eps: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h);
    the loss then has a finite optimum (h stops growing) instead of pushing h to infinity.
    Rewards: beta * (log pi - log pi_ref).

    Example: h = 2, beta = 0.5 -> sigma(1) = 0.7311 -> loss = -log 0.7311 = 0.3133.
    """
    h, chosen, rejected = _log_ratio_diff(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    losses = -F.logsigmoid(beta * h)
    if label_smoothing:
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * h)
    return losses, _paired_diagnostics(beta * chosen, beta * rejected)


def ipo_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
             beta: float = 0.1) -> tuple[Tensor, Diagnostics]:
    """Identity Preference Optimization: (h - 1/(2 beta))^2 on length-averaged log-probs.

    The caller passes every log-prob already averaged per token (summed log-prob / completion tokens),
    as in the IPO paper's practice and TRL. Instead of pushing h without bound like DPO, IPO regresses h
    onto the target 1/(2 beta) (5 with the default beta 0.1): smaller beta = larger target gap, weaker
    regularization. So the gradient's sign flips once h overshoots the target. Rewards: beta * (avg log pi
    - avg log pi_ref).

    Example: beta = 0.25 -> target 2; h = 3 -> loss (3 - 2)^2 = 1.
    """
    h, chosen, rejected = _log_ratio_diff(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (h - 1 / (2 * beta)) ** 2, _paired_diagnostics(beta * chosen, beta * rejected)


def hinge_loss(policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
               beta: float = 0.1) -> tuple[Tensor, Diagnostics]:
    """Hinge (SLiC-style) loss on summed log-probs: relu(1 - beta * h).

    Zero (and no gradient) once beta * h >= 1, i.e. once the log-ratio gap exceeds the margin
    1/beta (10 nats with the default beta 0.1); linear below it. Rewards: beta * (log pi - log pi_ref).

    Example: beta = 0.5, h = -2 -> relu(1 + 1) = 2; h = 2 -> 0.
    """
    h, chosen, rejected = _log_ratio_diff(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return F.relu(1 - beta * h), _paired_diagnostics(beta * chosen, beta * rejected)


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, kl_policy_logps: Tensor,
             kl_ref_logps: Tensor, beta: float = 0.1, desirable_weight: float = 1.0,
             undesirable_weight: float = 1.0) -> tuple[Tensor, Diagnostics]:
    """Kahneman-Tversky Optimization on unpaired examples (summed log-probs).

    r = log pi - log pi_ref per example; labels (bool) say which completions are desirable.
    The reference point z0 = max(0, mean(kl_policy_logps - kl_ref_logps)), detached, estimates
    KL(pi || pi_ref) from *mismatched* prompt/completion pairs of the same batch (see
    `kto_mismatched_indices`); a trainer with several processes may pass all-gathered KL log-probs.
    Desirable: w_d * (1 - sigma(beta (r - z0))); undesirable: w_u * (1 - sigma(beta (z0 - r))).
    Defaults: beta 0.1, w_d = w_u = 1; the KTO paper suggests choosing the weights so that
    w_d * n_desirable / (w_u * n_undesirable) lies in [1, 4/3].
    Diagnostics: rewards = beta * r, kl = z0 (repeated per example), accuracies = 1.0 where the
    reward is on the label's side of the reference point (r > z0 for desirable, r < z0 otherwise).

    Example: beta = 0.5, r = 1 (desirable), z0 = 0.1 -> 1 - sigma(0.45) = 0.3894.
    """
    labels = labels.bool()
    z0 = (kl_policy_logps - kl_ref_logps).mean().clamp(min=0).detach()
    r = policy_logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(labels, desirable, undesirable)
    rd = r.detach()
    return losses, {"rewards": beta * rd, "kl": z0.expand_as(rd), "accuracies": ((rd > z0) == labels).float()}


def kto_mismatched_indices(prompts: int | Sequence) -> list[int]:
    """For each example i of a batch, the index j of the completion to pair with prompt i for KTO's
    KL estimate: j = (i + s) mod n with the smallest shift s >= 1 for which no prompt meets its own
    prompt's completion (`prompts` compared with ==; pass an int n when all prompts differ: s = 1).
    Pairs converted from preferences (`pairs_to_unpaired`) put one prompt twice in a row, where
    s = 1 would pair a prompt with its own other completion. If no uniform shift works, each i takes
    the next index with a different prompt, or (i + 1) mod n if there is none (then the estimate is
    not mismatched; a batch of one prompt cannot give a mismatched pair).
    """
    if isinstance(prompts, int):
        return [(i + 1) % prompts for i in range(prompts)]
    n = len(prompts)
    for s in range(1, n):
        if all(prompts[(i + s) % n] != prompts[i] for i in range(n)):
            return [(i + s) % n for i in range(n)]
    return [next(((i + s) % n for s in range(1, n) if prompts[(i + s) % n] != prompts[i]), (i + 1) % n)
            for i in range(n)]


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stably (Maechler 2012): log(-expm1(x)) near 0, log1p(-exp(x)) far from it.
    x is clamped below 0 so that a log-prob of exactly 0 gives a large finite value, not inf."""
    x = x.clamp(max=-1e-6)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen_avg: Tensor, policy_rejected_avg: Tensor, chosen_nll: Tensor,
              lam: float = 0.1) -> tuple[Tensor, Diagnostics]:
    """Odds Ratio Preference Optimization: SFT loss plus an odds-ratio term, no reference model.

    On length-averaged log-probs a: log odds = a - log(1 - exp(a)) (computed stably);
    or_term = -log sigma(log odds(chosen) - log odds(rejected)); total = chosen_nll + lam * or_term,
    where chosen_nll is the per-example mean token NLL of the chosen completion (usually -a_chosen).
    lam (default 0.1) weighs preference against imitation.
    Diagnostics: nll, or_term, chosen_rewards / rejected_rewards = the log odds, margins = their
    difference (the log odds ratio).

    Example: a_c = log 0.5 (odds 1), a_r = log 0.2 (odds 1/4): log odds ratio = ln 4,
    or_term = -log(4/5) = 0.2231; nll 0.6931, lam 0.1 -> 0.6931 + 0.0223 = 0.7155.
    """
    log_odds_c = policy_chosen_avg - _log1mexp(policy_chosen_avg)
    log_odds_r = policy_rejected_avg - _log1mexp(policy_rejected_avg)
    or_term = -F.logsigmoid(log_odds_c - log_odds_r)
    diag = _paired_diagnostics(log_odds_c, log_odds_r)
    diag.update(nll=chosen_nll.detach(), or_term=or_term.detach())
    return chosen_nll + lam * or_term, diag


def simpo_loss(policy_chosen_avg: Tensor, policy_rejected_avg: Tensor, beta: float = 2.0,
               gamma: float = 0.5) -> tuple[Tensor, Diagnostics]:
    """Simple Preference Optimization: -log sigma(beta * a_c - beta * a_r - gamma), no reference model.

    a_c, a_r: length-averaged log-probs, so the reward beta * a has no length bias. gamma is the target
    reward margin, absolute (as in the paper's formula and TRL), not the gamma/beta ratio the SimPO
    authors' code takes: the chosen must beat the rejected by gamma/beta nats per token (0.25 with the
    defaults beta 2.0, gamma 0.5). The paper tunes beta in 2..10 and gamma/beta in 0..1.
    Rewards: beta * a.

    Example: a_c = -1, a_r = -1.75, beta 2, gamma 0.5 -> 2 * 0.75 - 0.5 = 1 -> loss 0.3133.
    """
    chosen, rejected = beta * policy_chosen_avg, beta * policy_rejected_avg
    return -F.logsigmoid(chosen - rejected - gamma), _paired_diagnostics(chosen, rejected)


def bradley_terry_loss(reward_chosen: Tensor, reward_rejected: Tensor,
                       margin: Tensor | float | None = None) -> tuple[Tensor, Diagnostics]:
    """Reward-model loss: -log sigma(r_c - r_r - margin), the Bradley-Terry negative log-likelihood
    that the chosen completion wins. margin (optional, per example or scalar; Llama 2 uses larger
    margins for more clearly preferred pairs) demands the reward gap exceed it.
    Rewards: the scalar scores themselves.

    Example: r_c = 1.5, r_r = 0.5 -> -log sigma(1) = 0.3133; with margin 1 -> -log sigma(0) = ln 2.
    """
    diff = reward_chosen - reward_rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff), _paired_diagnostics(reward_chosen, reward_rejected)


# ---------------------------------------------------------------- registry

_PAIRED = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")


@dataclass(frozen=True)
class PreferenceLossSpec:
    """How a trainer calls one loss: `fn(*(tensors[k] for k in inputs), **defaults | overrides)`,
    or `compute(...)` from the summed log-probs and token counts every loss can be fed from."""

    name: str
    fn: Callable[..., tuple[Tensor, Diagnostics]]
    inputs: tuple[str, ...]         # positional tensor arguments, by name
    needs_reference: bool           # needs log-probs of a frozen reference model
    length_averaged: bool           # log-probs divided by completion token counts (else summed)
    paired: bool = True             # False: unpaired labelled examples (KTO)
    defaults: Mapping[str, float] = field(default_factory=dict)

    def hparams(self, overrides: Mapping[str, float]) -> dict[str, float]:
        """The defaults updated by `overrides`; LmforgeError naming the valid ones for an unknown name."""
        unknown = [k for k in overrides if k not in self.defaults]
        if unknown:
            raise LmforgeError(f"preference loss '{self.name}': unknown hyperparameter '{unknown[0]}' "
                               f"(expected: {', '.join(self.defaults)})")
        return {**self.defaults, **overrides}

    def __call__(self, tensors: Mapping[str, Tensor], **overrides: float) -> tuple[Tensor, Diagnostics]:
        hparams = self.hparams(overrides)
        missing = [k for k in self.inputs if tensors.get(k) is None]
        if missing:  # a trainer bug, not a user error
            raise ValueError(f"preference loss '{self.name}' needs tensors {', '.join(missing)}")
        return self.fn(*(tensors[k] for k in self.inputs), **hparams)

    def compute(self, policy_a: Tensor, policy_b: Tensor, ref_a: Tensor | None, ref_b: Tensor | None,
                count_a: Tensor, count_b: Tensor, labels: Tensor | None = None,
                **overrides: float) -> tuple[Tensor, Diagnostics]:
        """One call for every loss from each item's two rows: summed log-probs under the policy and the
        reference (None for reference-free losses) and reply token counts. Pairs: a = chosen, b = rejected.
        KTO: a = the completion, b = a mismatched completion under the same prompt (the KL estimate),
        labels = desirable. Length-averaged losses get sum / count; ORPO's NLL is -(chosen sum / count)."""
        if self.length_averaged:
            ca, cb = count_a.clamp(min=1), count_b.clamp(min=1)
            policy_a, policy_b = policy_a / ca, policy_b / cb
            if ref_a is not None:
                ref_a, ref_b = ref_a / ca, ref_b / cb
        named = {"policy_chosen": policy_a, "policy_rejected": policy_b, "ref_chosen": ref_a, "ref_rejected": ref_b,
                 "policy_chosen_avg": policy_a, "policy_rejected_avg": policy_b, "chosen_nll": -policy_a,
                 "policy_logps": policy_a, "ref_logps": ref_a, "kl_policy_logps": policy_b, "kl_ref_logps": ref_b,
                 "labels": labels}
        return self(named, **overrides)


_PAIRED = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
_KTO = ("policy_logps", "ref_logps", "labels", "kl_policy_logps", "kl_ref_logps")
_AVG = ("policy_chosen_avg", "policy_rejected_avg")

PREFERENCE_LOSSES: dict[str, PreferenceLossSpec] = {s.name: s for s in [
    PreferenceLossSpec("dpo", dpo_loss, _PAIRED, True, False, defaults={"beta": 0.1, "label_smoothing": 0.0}),
    PreferenceLossSpec("cdpo", dpo_loss, _PAIRED, True, False, defaults={"beta": 0.1, "label_smoothing": 0.1}),
    PreferenceLossSpec("ipo", ipo_loss, _PAIRED, True, True, defaults={"beta": 0.1}),
    PreferenceLossSpec("hinge", hinge_loss, _PAIRED, True, False, defaults={"beta": 0.1}),
    PreferenceLossSpec("kto", kto_loss, _KTO, True, False, paired=False,
                       defaults={"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}),
    PreferenceLossSpec("orpo", orpo_loss, (*_AVG, "chosen_nll"), False, True, defaults={"lam": 0.1}),
    PreferenceLossSpec("simpo", simpo_loss, _AVG, False, True, defaults={"beta": 2.0, "gamma": 0.5}),
]}


def preference_loss(name: str, tensors: Mapping[str, Tensor], **hparams: float) -> tuple[Tensor, Diagnostics]:
    """Call loss `name` of PREFERENCE_LOSSES with the tensors its spec names and its defaults,
    overridden by `hparams`; LmforgeError for an unknown loss or hyperparameter."""
    if name not in PREFERENCE_LOSSES:
        raise LmforgeError(f"unknown preference loss '{name}' (expected one of: {', '.join(PREFERENCE_LOSSES)})")
    return PREFERENCE_LOSSES[name](tensors, **hparams)
