"""Online RL losses against hand-worked numbers, their gradients and errors, and a tiny categorical
policy that GRPO-style updates must teach to pick the rewarded token."""

import math

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.losses import (
    AdaptiveKLController,
    FixedKLController,
    aggregate,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalty,
    policy_loss,
    token_rewards,
    value_loss,
    whiten,
)

t = torch.tensor


def close(x, expected):
    """x (tensor, scalar or list of scalar tensors) equals the nested list `expected` to 1e-4."""
    x = torch.stack(x) if isinstance(x, list) else torch.as_tensor(x)
    assert x.flatten().tolist() == pytest.approx(torch.as_tensor(expected).flatten().tolist(), abs=1e-4)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: intra-op threads only add synchronization (100x slower on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---------------------------------------------------------------- KL estimators


def test_kl_penalty_by_hand():
    """d = logp - ref_logp = [0, 1, -1]: k1 = d = [0, 1, -1]; k2 = d^2 / 2 = [0, 0.5, 0.5];
    k3 = exp(-d) + d - 1 = [1 + 0 - 1, e^-1 + 1 - 1, e^1 - 1 - 1] = [0, 0.3679, 0.7183]."""
    logp, ref = t([-1.0, -1.0, -2.0]), t([-1.0, -2.0, -1.0])
    close(kl_penalty(logp, ref, "k1"), [0.0, 1.0, -1.0])
    close(kl_penalty(logp, ref, "k2"), [0.0, 0.5, 0.5])
    close(kl_penalty(logp, ref), [0.0, 0.3679, 0.7183])  # k3 is the default


def test_k3_nonnegative_zero_when_equal_and_finite():
    g = torch.Generator().manual_seed(0)
    logp, ref = -torch.rand(1000, generator=g) * 10, -torch.rand(1000, generator=g) * 10
    assert (kl_penalty(logp, ref) >= 0).all()
    assert kl_penalty(logp, logp).abs().max() == 0
    assert torch.isfinite(kl_penalty(t([0.0]), t([-1000.0]))).all()  # huge ratio: clamped, not inf


def test_k1_and_k3_are_unbiased():
    """The expectation under pi of k1 and k3 is exactly KL(pi || pi_ref) = sum pi log(pi / pi_ref);
    k2 is biased (here it differs)."""
    pi, ref = t([0.5, 0.3, 0.2]), t([0.2, 0.3, 0.5])
    kl = (pi * (pi / ref).log()).sum()
    for kind in ("k1", "k3"):
        close((pi * kl_penalty(pi.log(), ref.log(), kind)).sum(), kl.item())
    assert abs((pi * kl_penalty(pi.log(), ref.log(), "k2")).sum() - kl) > 1e-3


def test_kl_penalty_unknown_kind():
    with pytest.raises(LmforgeError, match=r"^unknown KL estimator 'k4' \(expected one of: k1, k2, k3\)$"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


# ---------------------------------------------------------------- group advantages


def test_group_advantages_one_group_by_hand():
    """Rewards [1, 0, 0, 1], G = 4: mean 0.5, deviations +-0.5; sample std (Bessel, n - 1) =
    sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.5774 -> "group": +-0.5 / 0.5774 = +-0.8660.
    "none" (Dr. GRPO): +-0.5. rloo: r - mean of the other three: 1 - 1/3 = 2/3, 0 - 2/3 = -2/3
    = 4/3 * (+-0.5)."""
    r = t([1.0, 0.0, 0.0, 1.0])
    close(group_advantages(r, 4), [0.8660, -0.8660, -0.8660, 0.8660])
    close(group_advantages(r, 4, scale="none"), [0.5, -0.5, -0.5, 0.5])
    rloo = group_advantages(r, 4, scale="none", baseline="rloo")
    close(rloo, [2 / 3, -2 / 3, -2 / 3, 2 / 3])
    leave_one_out = torch.stack([r[i] - torch.cat([r[:i], r[i + 1:]]).mean() for i in range(4)])
    close(rloo, leave_one_out.tolist())
    close(rloo, (4 / 3 * (r - r.mean())).tolist())


def test_group_advantages_two_groups_by_hand():
    """Rewards [1, 0 | 2, 2], G = 2. Mean baseline: [0.5, -0.5, 0, 0].
    group: group 1 std sqrt(0.5) = 0.7071 -> +-0.7071; group 2 std 0 -> 0 / eps = 0.
    batch: all four: mean 1.25, sample var (0.0625 + 1.5625 + 0.5625 + 0.5625) / 3 = 0.9167, std 0.9574
    -> [0.5222, -0.5222, 0, 0]. rloo G = 2: r - the other one = [1, -1, 0, 0]."""
    r = t([1.0, 0.0, 2.0, 2.0])
    close(group_advantages(r, 2), [0.7071, -0.7071, 0.0, 0.0])
    close(group_advantages(r, 2, scale="batch"), [0.5222, -0.5222, 0.0, 0.0])
    close(group_advantages(r, 2, scale="none", baseline="rloo"), [1.0, -1.0, 0.0, 0.0])
    assert not group_advantages(t([1.0, 0.0], requires_grad=True), 2).requires_grad


def test_group_advantages_errors():
    with pytest.raises(LmforgeError, match=r"^6 rewards do not split into groups of 4: the rollout batch must be "
                                           r"a multiple of group_size$"):
        group_advantages(torch.zeros(6), 4)
    for baseline in ("mean", "rloo"):
        with pytest.raises(LmforgeError, match=r"^group_size must be at least 2, got 1: with one sample per prompt "
                                               r"the baseline is the reward itself and every advantage is 0$"):
            group_advantages(torch.zeros(4), 1, baseline=baseline)
    with pytest.raises(LmforgeError, match=r"^unknown advantage scale 'std' \(expected one of: group, batch, none\)$"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(LmforgeError, match=r"^unknown advantage baseline 'median' \(expected one of: mean, rloo\)$"):
        group_advantages(torch.zeros(4), 2, baseline="median")


# ---------------------------------------------------------------- GAE, whitening, token rewards


def test_gae_gamma_lambda_one_is_reward_to_go_minus_value():
    """gamma = lam = 1: rewards [0, 0, 1] -> reward-to-go [1, 1, 1]; values [0.5, 0.6, 0.7]
    -> advantages [0.5, 0.4, 0.3]; returns = advantages + values = [1, 1, 1]."""
    adv, ret = gae(t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]]), torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])


def test_gae_by_hand_with_padding_and_holes():
    """gamma 0.9, lam 0.5, rewards [0, 1], values [0.5, 0.2]: delta_1 = 1 + 0 - 0.2 = 0.8 = A_1;
    delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32, A_0 = -0.32 + 0.9 * 0.5 * 0.8 = 0.04; returns [0.54, 1.0].
    Row 1 pads after the end (reward 5, value 9 ignored: the value after the last token is 0);
    row 2 has a masked hole in the middle (tool output), skipped: same numbers around it."""
    rewards = t([[0.0, 1.0, 5.0], [0.0, 7.0, 1.0]])
    values = t([[0.5, 0.2, 9.0], [0.5, 9.0, 0.2]])
    mask = t([[1, 1, 0], [1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.04, 0.8, 0.0], [0.04, 0.0, 0.8]])
    close(ret, [[0.54, 1.0, 0.0], [0.54, 0.0, 1.0]])


def test_whiten_by_hand():
    """x = [2, 4, 6] (100 masked): mean 4, sample var (4 + 0 + 4) / 2 = 4, std 2 -> [-1, 0, 1, 0];
    shift_mean=False adds the mean back: [3, 4, 5, 0]."""
    x, mask = t([[2.0, 4.0, 6.0, 100.0]]), t([[True, True, True, False]])
    close(whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    close(whiten(x, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])


def test_whiten_over_processes_by_hand():
    """Two processes holding x = [2, 4, 6] each (all_sum doubles every sum): the entries are
    [2, 4, 6, 2, 4, 6], mean 4, sample var (4 + 0 + 4) * 2 / 5 = 3.2 -> (x - 4) / sqrt(3.2) = +-1.1180."""
    x, mask = t([[2.0, 4.0, 6.0, 100.0]]), t([[True, True, True, False]])
    close(whiten(x, mask, all_sum=lambda v: 2 * v), [[-1.118034, 0.0, 1.118034, 0.0]])


def test_token_rewards_by_hand():
    """kl_coef 0.1. Row 0: kl [0.1, 0.2], padding, score 1 -> [-0.01, -0.02 + 1, 0] = [-0.01, 0.98, 0].
    Row 1: kl 0.5 on all 3, score 2 on the last -> [-0.05, -0.05, 1.95]. Row 2: no real token -> zeros."""
    kl = t([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])
    mask = t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    close(token_rewards(t([1.0, 2.0, 3.0]), kl, mask, kl_coef=0.1),
          [[-0.01, 0.98, 0.0], [-0.05, -0.05, 1.95], [0.0, 0.0, 0.0]])


def test_token_rewards_into_gae():
    """No KL, zero values, gamma = lam = 1: every real token's advantage is the sequence score."""
    mask = t([[1.0, 1.0, 0.0]])
    rewards = token_rewards(t([3.0]), torch.zeros(1, 3), mask, kl_coef=0.1)
    close(gae(rewards, torch.zeros(1, 3), mask, gamma=1.0, lam=1.0)[0], [[3.0, 3.0, 0.0]])


# ---------------------------------------------------------------- policy loss and aggregation


def _one_token(ratio, adv, **kw):
    """Policy loss of a single token with the given ratio and advantage."""
    logp = t([[math.log(ratio)]], requires_grad=True)
    loss, d = policy_loss(logp, torch.zeros(1, 1), t([adv]), torch.ones(1, 1), **kw)
    (grad,) = torch.autograd.grad(loss, logp)
    return loss.item(), grad.item(), d


def test_policy_loss_clipping_by_hand():
    """A = 2, ratio 1.5, clip 0.2: -min(1.5 * 2, 1.2 * 2) = -2.4 = -1.2 A, clipped (zero gradient);
    clip_high 0.28 (DAPO clip-higher): -1.28 * 2 = -2.56. A = -1, ratio 0.5: -min(-0.5, 0.8 * -1) = 0.8,
    clipped at 0.8; ratio 1.5 with A = -1: -min(-1.5, -1.2) = 1.5, not clipped (gradient -A * ratio = 1.5).
    ratio 1.1 inside the range: -1.1 * 2 = -2.2, gradient -2.2."""
    loss, grad, d = _one_token(1.5, 2.0)
    assert (loss, grad) == pytest.approx((-2.4, 0.0), abs=1e-4) and d["clip_fraction_high"].item() == 1.0
    assert _one_token(1.5, 2.0, clip_high=0.28)[0] == pytest.approx(-2.56, abs=1e-4)
    loss, grad, d = _one_token(0.5, -1.0)
    assert (loss, grad) == pytest.approx((0.8, 0.0), abs=1e-4) and d["clip_fraction_low"].item() == 1.0
    loss, grad, d = _one_token(1.5, -1.0)
    assert (loss, grad) == pytest.approx((1.5, 1.5), abs=1e-4) and d["clip_fraction"].item() == 0.0
    assert _one_token(1.1, 2.0)[:2] == pytest.approx((-2.2, -2.2), abs=1e-4)


def test_policy_loss_diagnostics_by_hand():
    """Tokens (ratio, A): (1.5, 2) clipped high, (0.5, -1) clipped low, (1.5, -1), (1.0, 1), and one
    padding token (ratio 9, ignored). clip_fraction 2/4, low 1/4, high 1/4; ratio mean (1.5 + 0.5 + 1.5 + 1)
    / 4 = 1.125, max 1.5; approx_kl = mean(ratio - 1 - ln ratio): 1.5 -> 0.0945, 0.5 -> 0.1931, 1 -> 0:
    (2 * 0.0945 + 0.1931) / 4 = 0.0956. Loss (token_mean): (-2.4 + 0.8 + 1.5 - 1) / 4 = -0.275."""
    logp = t([[1.5, 0.5, 1.5, 1.0, 9.0]]).log().requires_grad_(True)
    mask = t([[1, 1, 1, 1, 0]])
    loss, d = policy_loss(logp, torch.zeros(1, 5), t([[2.0, -1.0, -1.0, 1.0, 5.0]]), mask)
    close(loss, -0.275)
    close([d[k] for k in ("clip_fraction", "clip_fraction_low", "clip_fraction_high")], [0.5, 0.25, 0.25])
    close([d["ratio_mean"], d["ratio_max"], d["approx_kl"]], [1.125, 1.5, 0.0956])
    assert all(not v.requires_grad and v.dim() == 0 for v in d.values())


def test_aggregation_modes_by_hand():
    """Row 0 has one real token of value 4, row 1 four tokens of value 1 (row 0's padding holds 100).
    token_mean: (4 + 4) / 5 = 1.6; seq_mean: (4/1 + 4/4) / 2 = 2.5; fixed_length, max_len 4: 8 / (2 * 4) = 1.0,
    max_len 8: 0.5. policy_loss with ratio 1 and A = -value gives the same numbers."""
    values = t([[4.0, 100.0, 100.0, 100.0], [1.0, 1.0, 1.0, 1.0]])
    mask = t([[1, 0, 0, 0], [1, 1, 1, 1]])
    expected = {("token_mean", None): 1.6, ("seq_mean", None): 2.5, ("fixed_length", 4): 1.0, ("fixed_length", 8): 0.5}
    for (mode, max_len), want in expected.items():
        close(aggregate(values, mask, mode, max_len), want)
        close(policy_loss(torch.zeros(2, 4), torch.zeros(2, 4), -values, mask, aggregation=mode,
                          max_len=max_len)[0], want)
    with pytest.raises(LmforgeError, match=r"^unknown aggregation 'sum' \(expected one of: token_mean, seq_mean, "
                                           r"fixed_length\)$"):
        aggregate(values, mask, "sum")
    with pytest.raises(ValueError, match=r"^aggregation 'fixed_length' needs max_len >= 1"):
        aggregate(values, mask, "fixed_length")


def test_policy_loss_broadcasts_sequence_advantages():
    """(B,) advantages equal the same values repeated over each row's tokens."""
    g = torch.Generator().manual_seed(0)
    logp, old = -torch.rand(2, 3, generator=g), -torch.rand(2, 3, generator=g)
    mask, adv = t([[1, 1, 0], [1, 1, 1]]), t([1.0, -0.5])
    for mode in ("token_mean", "seq_mean"):
        close(policy_loss(logp, old, adv, mask, aggregation=mode)[0],
              policy_loss(logp, old, adv[:, None].expand(2, 3), mask, aggregation=mode)[0].item())


# ---------------------------------------------------------------- value loss, controllers, entropy


def test_value_loss_by_hand():
    """clip 0.2, v_old 0.5. Token 0: v 1.0, R 2: v_clip 0.7, max((1 - 2)^2, (0.7 - 2)^2) = 1.69 -> 0.845,
    clipped. Token 1: v 0.6 (inside the range), R 0: 0.36 / 2 = 0.18. Token 2: v 1.0, R 0: max(1, 0.49)
    / 2 = 0.5, not clipped. token_mean (0.845 + 0.18 + 0.5) / 3 = 0.5083; clip fraction 1/3.
    Explained variance: R = [2, 0, 0] (sum of squared deviations 24/9), R - v = [1, -0.6, -1] (2.24):
    1 - 2.24 / 2.6667 = 0.16. Without clipping: (1 + 0.36 + 1) / 2 / 3 = 0.3933."""
    v, old, ret = t([[1.0, 0.6, 1.0, 7.0]]), t([[0.5, 0.5, 0.5, 0.0]]), t([[2.0, 0.0, 0.0, 0.0]])
    mask = t([[1, 1, 1, 0]])
    loss, d = value_loss(v, old, ret, mask)
    close(loss, 0.5083)
    close([d["value_clip_fraction"], d["explained_variance"], d["value_mean"]], [1 / 3, 0.16, 2.6 / 3])
    close(value_loss(v, old, ret, mask, clip=None)[0], 0.3933)


def test_kl_controllers_by_hand():
    """coef 0.2, target 6, horizon 10000, 1000 rollouts per update (n_steps / horizon = 0.1):
    kl 9 -> error clip(9/6 - 1 = 0.5) = 0.2 -> 0.2 * 1.02 = 0.204; kl 6 -> unchanged;
    kl 3 -> error -0.2 -> 0.204 * 0.98 = 0.19992. The fixed controller never moves."""
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert ctl.update(9.0, 1000) == pytest.approx(0.204)
    assert ctl.update(t(6.0), 1000) == pytest.approx(0.204)
    assert ctl.update(3.0, 1000) == pytest.approx(0.19992) and ctl.value == pytest.approx(0.19992)
    fixed = FixedKLController(0.04)
    assert fixed.update(100.0, 1000) == 0.04 and fixed.value == 0.04
    with pytest.raises(LmforgeError, match="adaptive KL needs target > 0"):
        AdaptiveKLController(0.2, target=0.0)


def test_entropy_by_hand_and_stable():
    """[0, 0] -> ln 2 = 0.6931; [ln 3, 0] -> p = [0.75, 0.25] -> 0.75 * 0.2877 + 0.25 * 1.3863 = 0.5623;
    mean 0.6277 (the third, masked position is ignored). [0, -inf] -> 0 with a finite gradient;
    logits 1e4 apart in bf16 -> 0, returned in fp32."""
    logits = t([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    close(entropy_from_logits(logits, t([[1, 1, 0]])), 0.6277)
    x = t([[[0.0, -math.inf]]], requires_grad=True)
    ent = entropy_from_logits(x, torch.ones(1, 1))
    ent.backward()
    assert ent.item() == 0.0 and torch.isfinite(x.grad).all()
    ent = entropy_from_logits(t([[[1e4, 0.0, -1e4]]], dtype=torch.bfloat16), torch.ones(1, 1))
    assert ent.dtype == torch.float32 and ent.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- tiny optimization


def test_grpo_updates_learn_the_rewarded_token():
    """A categorical policy over 4 tokens (a logits vector, start uniform: p(rewarded) = 0.25). Each step
    samples 4 prompts x G = 8 single-token completions, rewards the token 2, takes group advantages and
    two clipped policy-loss SGD updates (lr 1) on the rollout (the second has ratio != 1) plus beta 0.04 * k3
    to the start (DeepSeekMath's GRPO). After 50 steps p(rewarded) > 0.9 (about 0.99)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.zeros(4, requires_grad=True)
    ref_logp = torch.log_softmax(torch.zeros(4), -1)
    mask, clipped = torch.ones(32, 1), 0.0
    for _ in range(50):
        with torch.no_grad():
            tokens = torch.multinomial(torch.softmax(logits, -1), 32, replacement=True, generator=g)
            old_logp = torch.log_softmax(logits, -1)[tokens].view(32, 1)
        adv = group_advantages((tokens == 2).float(), group_size=8)
        for _ in range(2):
            logp = torch.log_softmax(logits, -1)[tokens].view(32, 1)
            loss, d = policy_loss(logp, old_logp, adv, mask)
            loss = loss + 0.04 * aggregate(kl_penalty(logp, ref_logp[tokens].view(32, 1)), mask)
            (grad,) = torch.autograd.grad(loss, logits)
            with torch.no_grad():
                logits -= 1.0 * grad  # plain SGD, lr 1
            clipped = max(clipped, d["clip_fraction"].item())
    assert torch.softmax(logits.detach(), -1)[2].item() > 0.9
    assert clipped > 0  # the second update of a rollout did hit the clip range


def test_policy_loss_empty_old_logp_is_the_detached_current_one():
    """One update per rollout batch: an empty old_logp means old = logp.detach(), same loss and gradient."""
    base = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -3.0, -1.2]])
    adv, mask = t([1.5, -0.5]), t([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    out = []
    for old in (base.clone(), torch.zeros(0)):
        logp = base.clone().requires_grad_(True)
        loss, d = policy_loss(logp, old, adv, mask, clip_high=0.28)
        out.append((loss.item(), torch.autograd.grad(loss, logp)[0], d["ratio_mean"].item()))
    assert out[0][0] == pytest.approx(out[1][0]) and torch.equal(out[0][1], out[1][1])
    assert out[1][2] == 1.0
