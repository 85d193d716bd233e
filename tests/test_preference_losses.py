"""Preference losses against hand-worked numbers, their diagnostics and gradient signs, and a tiny
optimization per loss that must raise preference accuracy."""

import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.losses import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    hinge_loss,
    ipo_loss,
    kto_loss,
    kto_mismatched_indices,
    orpo_loss,
    preference_loss,
    simpo_loss,
)

t = torch.tensor
SIG1 = -math.log(1 / (1 + math.exp(-1)))  # -log sigma(1) = 0.3133


def close(x, expected):
    assert x.tolist() == pytest.approx(expected, abs=1e-4)


def test_dpo_by_hand():
    """Example 0: log-ratios chosen -1 - (-2) = 1, rejected -3 - (-2) = -1, so h = 2; beta 0.5 ->
    beta h = 1 -> sigma(1) = 0.7311 -> loss -log 0.7311 = 0.3133; rewards 0.5 and -0.5, margin 1.
    Example 1 swaps them: h = -2 -> -log sigma(-1) = 1.3133 (= 1 + 0.3133), accuracy 0."""
    losses, d = dpo_loss(t([-1.0, -3.0]), t([-3.0, -1.0]), t([-2.0, -2.0]), t([-2.0, -2.0]), beta=0.5)
    close(losses, [0.3133, 1.3133])
    close(d["chosen_rewards"], [0.5, -0.5])
    close(d["rejected_rewards"], [-0.5, 0.5])
    close(d["margins"], [1.0, -1.0])
    assert d["accuracies"].tolist() == [1.0, 0.0]


def test_cdpo_by_hand():
    """cDPO, eps 0.1, h = 2, beta 0.5: 0.9 * (-log sigma(1)) + 0.1 * (-log sigma(-1))
    = 0.9 * 0.3133 + 0.1 * 1.3133 = 0.4133. The registry's "cdpo" uses eps 0.1 by default."""
    args = (t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0]))
    close(dpo_loss(*args, beta=0.5, label_smoothing=0.1)[0], [0.4133])
    tensors = dict(zip(PREFERENCE_LOSSES["cdpo"].inputs, args, strict=True))
    close(preference_loss("cdpo", tensors, beta=0.5)[0], [0.4133])


def test_ipo_by_hand():
    """beta 0.25 -> target 1/(2 beta) = 2. Example 0: (-1 - -2) - (-4 - -2) = 1 + 2 = 3 -> (3 - 2)^2 = 1.
    Example 1: log-ratios equal, h = 0 -> (0 - 2)^2 = 4; rewards 0.25 * 1 = 0.25 and 0.25 * -2 = -0.5."""
    losses, d = ipo_loss(t([-1.0, -1.0]), t([-4.0, -1.0]), t([-2.0, -1.0]), t([-2.0, -1.0]), beta=0.25)
    close(losses, [1.0, 4.0])
    close(d["chosen_rewards"], [0.25, 0.0])
    close(d["rejected_rewards"], [-0.5, 0.0])
    assert d["accuracies"].tolist() == [1.0, 0.0]


def test_hinge_by_hand():
    """beta 0.5: h = 2 -> relu(1 - 1) = 0; h = -2 -> relu(1 + 1) = 2; h = 1 -> relu(0.5) = 0.5."""
    losses, d = hinge_loss(t([-1.0, -3.0, -1.0]), t([-3.0, -1.0, -2.0]), t([-2.0] * 3), t([-2.0] * 3), beta=0.5)
    close(losses, [0.0, 2.0, 0.5])
    assert d["accuracies"].tolist() == [1.0, 0.0, 1.0]


def test_kto_by_hand():
    """beta 0.5; r = policy - ref = [1, -1]; labels [desirable, undesirable].
    KL pairs: (-2 - -2.2, -2.5 - -2.5) = (0.2, 0) -> z0 = mean = 0.1.
    Desirable: 1 - sigma(0.5 * (1 - 0.1)) = 1 - sigma(0.45) = 1 - 0.6106 = 0.3894.
    Undesirable, weight 2: 2 * (1 - sigma(0.5 * (0.1 + 1))) = 2 * (1 - sigma(0.55)) = 2 * 0.3659 = 0.7317.
    With a negative KL mean, z0 is clamped to 0: desirable 1 - sigma(0.5) = 0.3775."""
    pol, ref, labels = t([-1.0, -3.0]), t([-2.0, -2.0]), t([True, False])
    losses, d = kto_loss(pol, ref, labels, t([-2.0, -2.5]), t([-2.2, -2.5]), beta=0.5, undesirable_weight=2.0)
    close(losses, [0.3894, 0.7317])
    close(d["rewards"], [0.5, -0.5])
    close(d["kl"], [0.1, 0.1])
    assert d["accuracies"].tolist() == [1.0, 1.0]
    close(kto_loss(pol, ref, labels, t([-3.0, -3.0]), t([-2.0, -2.0]), beta=0.5)[0][:1], [0.3775])


def test_kto_reference_point_is_detached():
    kl_pol = t([-2.0, -1.0], requires_grad=True)
    pol = t([-1.0, -3.0], requires_grad=True)
    kto_loss(pol, t([-2.0, -2.0]), t([True, False]), kl_pol, t([-3.0, -3.0]))[0].sum().backward()
    assert kl_pol.grad is None and pol.grad is not None


def test_kto_mismatched_indices():
    assert kto_mismatched_indices(4) == [1, 2, 3, 0]
    # pairs_to_unpaired puts each prompt twice in a row: shift 1 would match them, shift 2 does not
    assert kto_mismatched_indices(["a", "a", "b", "b", "c", "c"]) == [2, 3, 4, 5, 0, 1]
    # no uniform shift works (a is 3 of 4): each takes the next different prompt
    assert kto_mismatched_indices(["a", "a", "a", "b"]) == [3, 3, 3, 0]
    assert kto_mismatched_indices(["a", "a"]) == [1, 0]  # nothing mismatched exists
    assert kto_mismatched_indices([[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]]) == [1, 0]


def test_orpo_by_hand():
    """Averages a_c = log 0.5 (odds 0.5/0.5 = 1, log odds 0) and a_r = log 0.2 (odds 0.25,
    log odds -1.3863): log odds ratio ln 4, sigma(ln 4) = 0.8, or_term = -log 0.8 = 0.2231;
    nll 0.6931, lam 0.1 -> 0.6931 + 0.0223 = 0.7155."""
    losses, d = orpo_loss(t([math.log(0.5)]), t([math.log(0.2)]), t([math.log(2)]), lam=0.1)
    close(losses, [0.7155])
    close(d["or_term"], [0.2231])
    close(d["nll"], [0.6931])
    close(d["margins"], [math.log(4)])
    assert d["accuracies"].tolist() == [1.0]


def test_orpo_is_finite_at_the_edges():
    """Log-probs of exactly 0 (p = 1), tiny and very negative: finite losses and gradients."""
    c = t([0.0, -1e-9, -50.0, -0.69], requires_grad=True)
    r = t([-1e-3, -100.0, -0.69, -0.7], requires_grad=True)
    losses, _ = orpo_loss(c, r, -c.detach())
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()


def test_simpo_by_hand():
    """a_c = -1, a_r = -1.75, beta 2, gamma 0.5: 2 * -1 - 2 * -1.75 - 0.5 = 1 -> -log sigma(1) = 0.3133;
    rewards beta * a = -2 and -3.5, margin 1.5."""
    losses, d = simpo_loss(t([-1.0]), t([-1.75]))
    close(losses, [0.3133])
    close(d["chosen_rewards"], [-2.0])
    close(d["rejected_rewards"], [-3.5])
    close(d["margins"], [1.5])


def test_bradley_terry_by_hand():
    """r_c - r_r = 1.5 - 0.5 = 1 -> -log sigma(1) = 0.3133; margin 1 -> -log sigma(0) = ln 2 = 0.6931;
    a per-example margin [0, 1] gives both."""
    rc, rr = t([1.5, 1.5]), t([0.5, 0.5])
    close(bradley_terry_loss(rc, rr)[0], [SIG1, SIG1])
    close(bradley_terry_loss(rc, rr, margin=1.0)[0], [0.6931, 0.6931])
    losses, d = bradley_terry_loss(rc, rr, margin=t([0.0, 1.0]))
    close(losses, [0.3133, 0.6931])
    assert d["accuracies"].tolist() == [1.0, 1.0] and d["margins"].tolist() == [1.0, 1.0]


# Paired inputs where every loss is in its active regime (IPO: h below its target; hinge: beta h < 1).
PAIRED_INPUTS = {"policy_chosen": -3.0, "policy_rejected": -3.0, "ref_chosen": -3.0, "ref_rejected": -3.0,
                 "policy_chosen_avg": -1.0, "policy_rejected_avg": -1.0, "chosen_nll": 1.0}


@pytest.mark.parametrize("name", [n for n, s in PREFERENCE_LOSSES.items() if s.paired])
def test_gradient_signs_paired(name):
    """Raising the chosen log-prob lowers the loss; raising the rejected one raises it."""
    spec = PREFERENCE_LOSSES[name]
    tensors = {k: t([v], requires_grad=True) for k, v in PAIRED_INPUTS.items() if k in spec.inputs}
    losses, _ = preference_loss(name, tensors)
    losses.sum().backward()
    chosen, rejected = [k for k in spec.inputs if k.startswith("policy_")]
    assert tensors[chosen].grad.item() < 0 < tensors[rejected].grad.item()
    # the trainer's input contract: one (B,) loss per example and detached diagnostics
    assert losses.shape == (1,) and all(not v.requires_grad for v in _.values())


def test_gradient_signs_kto_and_bt():
    pol = t([-3.0, -3.0], requires_grad=True)
    losses, _ = kto_loss(pol, t([-3.0, -3.0]), t([True, False]), t([-3.0, -3.0]), t([-3.0, -3.0]))
    losses.sum().backward()
    assert pol.grad[0] < 0 < pol.grad[1]  # desirable pulled up, undesirable pushed down
    rc, rr = t([0.0], requires_grad=True), t([0.0], requires_grad=True)
    bradley_terry_loss(rc, rr)[0].sum().backward()
    assert rc.grad.item() < 0 < rr.grad.item()


def test_registry_metadata_and_errors():
    assert set(PREFERENCE_LOSSES) == {"dpo", "cdpo", "ipo", "hinge", "kto", "orpo", "simpo"}
    assert {n for n, s in PREFERENCE_LOSSES.items() if not s.needs_reference} == {"orpo", "simpo"}
    assert {n for n, s in PREFERENCE_LOSSES.items() if s.length_averaged} == {"ipo", "orpo", "simpo"}
    assert [n for n, s in PREFERENCE_LOSSES.items() if not s.paired] == ["kto"]
    assert PREFERENCE_LOSSES["simpo"].defaults == {"beta": 2.0, "gamma": 0.5}
    with pytest.raises(LmforgeError, match=r"^unknown preference loss 'rpo' \(expected one of: dpo, cdpo,"):
        preference_loss("rpo", {})
    with pytest.raises(LmforgeError, match=r"^preference loss 'dpo': unknown hyperparameter 'bta' "
                                           r"\(expected: beta, label_smoothing\)$"):
        preference_loss("dpo", {}, bta=0.1)


def test_compute_from_sums_and_counts():
    """spec.compute feeds every loss from summed log-probs, reference sums and token counts.
    Sums -2 and -7 over 2 and 4 tokens: averages -1 and -1.75 (the SimPO example: 0.3133);
    ORPO's NLL is -(chosen average) = 1; IPO divides the reference sums too."""
    pa, pb, ra, rb, ca, cb = t([-2.0]), t([-7.0]), t([-4.0]), t([-4.0]), t([2]), t([4])
    close(PREFERENCE_LOSSES["simpo"].compute(pa, pb, None, None, ca, cb)[0], [0.3133])
    close(PREFERENCE_LOSSES["orpo"].compute(pa, pb, None, None, ca, cb)[1]["nll"], [1.0])
    assert PREFERENCE_LOSSES["dpo"].compute(pa, pb, ra, rb, ca, cb, beta=0.5)[0] == \
        dpo_loss(pa, pb, ra, rb, beta=0.5)[0]
    # ipo: (-1 - -2) - (-1.75 - -1) = 1.75 -> beta 0.25: (1.75 - 2)^2 = 0.0625
    close(PREFERENCE_LOSSES["ipo"].compute(pa, pb, ra, rb, ca, cb, beta=0.25)[0], [0.0625])
    # kto: a = the completion, b = the mismatched one (its log-ratio -3 is clamped to z0 = 0)
    losses, d = PREFERENCE_LOSSES["kto"].compute(pa, pb, ra, rb, ca, cb, t([True]), beta=0.5)
    close(losses, [1 - 1 / (1 + math.exp(-1))])  # r = 2, z0 = 0: 1 - sigma(1) = 0.2689
    close(d["kl"], [0.0])
    with pytest.raises(LmforgeError, match="preference loss 'simpo': unknown hyperparameter 'gamma_beta_ratio'"):
        PREFERENCE_LOSSES["simpo"].compute(pa, pb, None, None, ca, cb, gamma_beta_ratio=0.5)


# ---------------------------------------------------------------- tiny optimization


def _toy_problem(n=64, d=8, seed=0):
    """Pairs of feature vectors; the true scorer w* prefers one of each pair. A 'policy' with
    parameters w gives completion log-prob logsigmoid(w . x) (< 0, so also a valid average)."""
    g = torch.Generator().manual_seed(seed)
    w_true = torch.randn(d, generator=g)
    a, b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    a_wins = (a @ w_true > b @ w_true).unsqueeze(1)
    return torch.where(a_wins, a, b), torch.where(a_wins, b, a), torch.randn(d, generator=g) * 0.1


def _accuracy(w, xc, xr):
    return ((xc @ w) > (xr @ w)).float().mean().item()


def _loss(name, w, w_ref, xc, xr):
    logp = lambda w_, x: torch.nn.functional.logsigmoid(x @ w_)
    if name == "bt":
        return bradley_terry_loss(xc @ w, xr @ w)[0]
    if name == "kto":  # chosen desirable, rejected undesirable; KL on completions shifted by one
        x = torch.cat([xc, xr])
        labels = torch.cat([torch.ones(len(xc)), torch.zeros(len(xr))]).bool()
        x_kl = x[kto_mismatched_indices(len(x))]
        return preference_loss(name, {"policy_logps": logp(w, x), "ref_logps": logp(w_ref, x), "labels": labels,
                                      "kl_policy_logps": logp(w, x_kl), "kl_ref_logps": logp(w_ref, x_kl)})[0]
    pc, pr = logp(w, xc), logp(w, xr)
    tensors = {"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": logp(w_ref, xc),
               "ref_rejected": logp(w_ref, xr), "policy_chosen_avg": pc, "policy_rejected_avg": pr,
               "chosen_nll": -pc}
    return preference_loss(name, tensors)[0]


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add synchronization (100x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", [*PREFERENCE_LOSSES, "bt"])
def test_optimizing_raises_preference_accuracy(name, one_thread):
    """100 steps of normalized gradient descent (step 0.5 along -grad/|grad|) from a random start;
    the reference model is the start. Accuracy: the chosen completion's log-prob (BT: score) is higher."""
    xc, xr, w0 = _toy_problem()
    before = _accuracy(w0, xc, xr)
    w = w0.clone().requires_grad_(True)
    for _ in range(100):
        (g,) = torch.autograd.grad(_loss(name, w, w0, xc, xr).mean(), w)
        with torch.no_grad():
            w -= 0.5 * g / (g.norm() + 1e-12)
    after = _accuracy(w.detach(), xc, xr)
    assert before < 0.5 and after >= 0.9, (before, after)
