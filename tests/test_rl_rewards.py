"""Reward parts for RL from a recipe (`grpo.rewards`, `ppo.rewards`), what PPO logs about its rollouts
(entropy, the engine-vs-trainer log-prob check, KL estimator), and GRPO at beta 0 without a reference."""

import json
import math
from pathlib import Path

import pytest
import torch

from lmforge.rewards import RewardRequest, Rule, RuleSafety, VerifiableMath, WeightedSum
from lmforge.rewards.config import reward_columns
from tests import tiny_recipe
from tests.test_grpo import StartsWithVowel

ROOT = Path(__file__).resolve().parent.parent


def test_reward_columns_give_each_part_and_each_rule_per_row():
    """Two requests: the first right (math 1) and shouting (rule "loud", penalty 2), the second wrong and
    quiet. Sum with weights 1 and 0.5: [1 - 0.5 * 2, 0] = [0, 0]; the columns say why."""
    loud = Rule("loud", "Do not shout.", lambda r: r.completion.isupper(), 2.0)
    calm = Rule("calm", "Never say 'panic'.", lambda r: "panic" in r.completion, 1.0)
    reward = WeightedSum([(VerifiableMath(), 1.0), (RuleSafety([loud, calm]), 0.5)])
    reqs = [RewardRequest([{"role": "user", "content": "2+2?"}], "IT IS 4", {"answer": 4}),
            RewardRequest([{"role": "user", "content": "2+3?"}], "it is 6", {"answer": 5})]
    assert reward.score(reqs) == [0.0, 0.0]
    assert reward_columns(reward) == {"reward_math": [1.0, 0.0], "reward_rules": [-2.0, 0.0],
                                      "violations_loud": [1.0, 0.0], "violations_calm": [0.0, 0.0]}
    rules = RuleSafety([loud])
    rules.score(reqs)
    assert reward_columns(rules) == {"violations_loud": [1.0, 0.0]}  # the rules alone, not in a sum
    assert reward_columns(VerifiableMath()) == {}


@pytest.mark.parametrize("overrides, message", [
    (["ppo.rewards=[{kind: math}]"], "ppo.rewards.0.kind: 'math' cannot score this stage's prompts (allowed: "
                                     "rm, rules, judge)"),
    (["grpo.rewards=[{kind: math}, {kind: rules}, {kind: math, weight: 2}]"],
     "grpo.rewards.2.kind: 'math' is already part 0; give each kind once"),
    (["grpo.rewards=[{kind: rm, weight: 0}]"], "grpo.rewards.0.weight: a part with weight 0 changes nothing"),
    (["grpo.rewards=[{kind: regex}]"], "grpo.rewards.0.kind: expected one of math, rules, rm, judge"),
    (["grpo.rewards=[{kind: math, weight: .nan}]"], "grpo.rewards.0.weight: expected a finite number, got nan"),
    (["grpo.rewards=[{kind: rules, model: sft}]"], "grpo.rewards.0.model: only an rm part reads a model (this "
                                                   "part is 'rules')"),
    (["ppo.rewards=[{kind: rm, judge: {backend: http, base_url: x, model: m}}]"],
     "ppo.rewards.0.judge: only a judge part reads judge settings (this part is 'rm')"),
])
def test_bad_reward_parts_are_one_line_errors(overrides, message):
    from lmforge.config import load_run_config
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError) as e:
        load_run_config(ROOT / "recipes/demo.yaml", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_ppo_rollouts_log_entropy_logprob_check_and_the_chosen_kl(toy_data, kind):
    """One PPO rollout batch in fp32 against a reference that differs from the policy: the logged KL is the
    batch mean of each row's summed `kind` estimate, the entropy is the mean over sampled tokens of the full
    forward's next-token entropy, and the engine's sampling log-probs match the trainer's to < 1e-4."""
    from dataclasses import replace

    from lmforge.losses.rl import entropy_from_logits, kl_penalty
    from lmforge.rl import token_logps
    from lmforge.stages.ppo import make_rollouts
    from tests.test_grpo import tiny
    from tests.test_rl_distributed import ppo_parts

    _, tok = toy_data
    pc, policy, value, _, prompts, kl_ctl = ppo_parts(tok)
    pc = replace(pc, kl_estimator=kind)
    ref = tiny(tok, seed=5).eval()
    b = make_rollouts(pc, policy, value, ref, StartsWithVowel(), tok, prompts, 0, torch.device("cpu"), False,
                      kl_ctl)(0)
    ids, targets, s = b["ids"], b["targets"], b["stats"]
    mask = (targets != -100).float()
    with torch.no_grad():
        want_kl = (kl_penalty(token_logps(policy, ids, targets), token_logps(ref, ids, targets), kind) * mask).sum(1)
        logits = policy(ids).float()
    assert s["kl"] == pytest.approx(float(want_kl.mean()), abs=1e-5)
    assert s["entropy"] == pytest.approx(float(entropy_from_logits(logits, mask)), abs=1e-5)
    assert 0 < s["entropy"] < math.log(tok.vocab_size)
    assert s["logp_max_diff"] < 1e-4
    assert 0 < s["generate_s"] < s["rollout_s"]
    if kind == "k3":
        assert (want_kl >= 0).all()  # k3 is >= 0 per token


def tiny_grpo(tmp_path, *extra):
    from lmforge.cli import main

    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=g",
            "stages=[toyworld,tokenizer,pretrain,sft,grpo]", *tiny_recipe.BASE, *tiny_recipe.GRPO,
            "grpo.n_prompts=16", "grpo.eval_examples=4", *extra]
    return main(args)


def test_grpo_sums_weighted_reward_parts_and_logs_each_rule(tmp_path, monkeypatch):
    """grpo.rewards = math + 0.5 x rules (no length or format penalties): every logged batch's reward is
    reward_math + 0.5 x reward_rules, each rule's violation rate is logged, and at beta 0 the rollouts run
    without a reference model; the final KL report loads the start again (at lr 0 the policy is the start:
    KL exactly 0)."""
    import lmforge.rl

    refs = []
    init = lmforge.rl.RolloutSource.__init__

    def spy(self, *a, **kw):
        refs.append(kw.get("ref_model"))
        init(self, *a, **kw)

    monkeypatch.setattr(lmforge.rl.RolloutSource, "__init__", spy)
    assert tiny_grpo(tmp_path, "grpo.rewards=[{kind: math}, {kind: rules, weight: 0.5}]", "grpo.beta=0",
                     "grpo.malformed_penalty=0", "grpo.length_penalty=0", "grpo.train.lr=0") == 0
    assert refs == [None]
    logs = [json.loads(x) for x in (tmp_path / "g/grpo/metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if "reward" in r]
    assert len(train) == 3
    for r in train:
        assert r["reward"] == pytest.approx(r["reward_math"] + 0.5 * r["reward_rules"], abs=1e-6)
        assert {"violations_no_forbidden_help", "violations_no_human_claims"} <= set(r)
    summary = json.loads((tmp_path / "g/summary.json").read_text())["grpo"]
    assert summary["kl_to_reference"] == 0.0  # lr 0: the reference the report loads is the policy's start


def test_reward_parts_keep_the_default_reward_when_empty():
    """No parts: GRPO keeps the verifier and PPO the reward model (the demo's numbers depend on it)."""
    from lmforge.config import load_run_config

    cfg = load_run_config(ROOT / "recipes/demo.yaml")
    assert cfg.grpo.rewards == [] and cfg.ppo.rewards == [] and cfg.ppo.kl_estimator == "k1"


def test_grpo_rewards_with_a_local_ai_judge(tmp_path):
    """kind judge, local backend, no checkpoint: the judge is the starting policy (grpo.init) reading the
    constitution; its P("Yes") per reply is the whole reward (no penalties), in [0, 1]."""
    assert tiny_grpo(tmp_path, "grpo.rewards=[{kind: judge}]", "grpo.malformed_penalty=0",
                     "grpo.length_penalty=0") == 0
    train = [json.loads(x) for x in (tmp_path / "g/grpo/metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if "reward" in r]
    assert len(train) == 3
    for r in train:
        assert 0 <= r["reward_judge"] <= 1 and r["reward"] == pytest.approx(r["reward_judge"], abs=1e-6)


def test_an_unreachable_http_judge_fails_before_any_sampling(tmp_path, capsys):
    """An HTTP judge part answers a probe request when the stage builds it: a closed port is a one-line
    error (exit 2) before the held-out evaluation and the first rollout, and GRPO leaves no metrics."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = f"{{backend: http, base_url: 'http://127.0.0.1:{port}', model: m, tries: 1, timeout: 2}}"
    assert tiny_grpo(tmp_path, f"grpo.rewards=[{{kind: math}}, {{kind: judge, judge: {judge}}}]") == 2
    out = capsys.readouterr()
    err = out.err.strip().splitlines()[-1]
    assert err == f"error: AI judge at http://127.0.0.1:{port}: connection refused after 1 try (timeout 2 s)"
    assert "held-out accuracy before" not in out.out + out.err  # failed before evaluating, let alone training
    assert not (tmp_path / "g/grpo/metrics.jsonl").exists()
