"""Preference training end to end on small models: every DPO-family loss raises the policy's
preference accuracy on its training pairs; the reward model starts at exactly ln 2 and learns
to rank; the pairs -> rm -> bon -> dpo -> eval_dpo stages run and report their metrics."""

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lmforge.losses.preference import PREFERENCE_LOSSES
from lmforge.model.config import ModelConfig
from lmforge.model.reward import RewardModel, load_reward_model, save_reward_model
from lmforge.model.transformer import Transformer
from lmforge.preference import (
    PreferenceBatches,
    PreferenceModule,
    RewardModule,
    reference_logps,
    tokenize_pairs,
    tokenize_unpaired,
)
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer
from tests import tiny_recipe

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("Kamdu", "Velora", "Zali", "Finisdor", "Mosol", "Rarnoli", "Kuzol", "Gilo")


@dataclass
class Pair:
    prompt: list
    chosen: str
    rejected: str


@dataclass
class Unpaired:
    prompt: list
    completion: str
    label: bool


def pairs():
    """Chosen: echo the word politely; rejected: a curt refusal. Easy to separate, not yet separated."""
    return [Pair([{"role": "user", "content": f"Say {w}."}], f"{w}, of course!", "No.") for w in WORDS]


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64))


def train(model, module, data, tok, tmp_path, steps=12, lr=2e-3):
    tc = TrainConfig(steps=steps, micro_batch_size=4, lr=lr, warmup_steps=0, schedule="constant", progress=False,
                     tensorboard=False, ckpt_every=10_000, log_every=4, dtype="fp32", weight_decay=0.0)
    trainer = Trainer(cfg=tc, model=model, module=module, batches=PreferenceBatches(data, tok.pad_id, 4, 1, seed=0),
                      out_dir=tmp_path, device=torch.device("cpu"), lr=tc.lr)
    trainer.run()
    return trainer


@torch.no_grad()
def policy_accuracy(model, data, tok, reference: bool) -> float:
    """Share of pairs where the policy prefers chosen: by log-ratio to the reference, or by mean log-prob."""
    from lmforge.preference import sequence_logps

    b = PreferenceBatches(data, tok.pad_id, len(data), 1, seed=0)
    ids, targets, _, ref, _ = b.get(list(range(len(data))))
    sums, counts = sequence_logps(model(ids[:, :-1]), targets)
    n = len(data)
    score = sums - ref if reference else sums / counts
    return float((score[:n] > score[n:]).float().mean())


@pytest.mark.parametrize("loss", sorted(PREFERENCE_LOSSES))
def test_each_preference_loss_raises_preference_accuracy(loss, toy_data, tmp_path):
    _, tok = toy_data
    model = tiny_model(tok)
    if loss == "kto":
        # KTO trains unpaired: chosen desirable, rejected undesirable; accuracy is still measured on pairs
        items = [Unpaired(p.prompt, c, lab) for p in pairs() for c, lab in ((p.chosen, True), (p.rejected, False))]
        data = tokenize_unpaired(items, tok, 63, seed=0)
    else:
        data = tokenize_pairs(pairs(), tok, 63)
    measure = tokenize_pairs(pairs(), tok, 63)
    spec = PREFERENCE_LOSSES[loss]
    model.eval()
    data.ref = reference_logps(model, data, tok.pad_id, 8, "cpu", bf16=False)
    measure.ref = reference_logps(model, measure, tok.pad_id, 8, "cpu", bf16=False)
    uses_ref = spec.needs_reference
    before = policy_accuracy(model, measure, tok, reference=uses_ref)
    trainer = train(model, PreferenceModule(loss), data, tok, tmp_path)
    after = policy_accuracy(model, measure, tok, reference=uses_ref)
    assert all(math.isfinite(x) for x in trainer.history)
    assert trainer.history[-1] < trainer.history[0], f"{loss}: loss did not fall ({trainer.history})"
    assert after >= 0.875 and after > before, f"{loss}: preference accuracy {before} -> {after}"


def test_reward_model_starts_at_ln2_and_learns_to_rank(toy_data, tmp_path):
    _, tok = toy_data
    rm = RewardModel.from_lm(tiny_model(tok))
    data = tokenize_pairs(pairs(), tok, 63)
    trainer = train(rm, RewardModule(), data, tok, tmp_path, steps=20)
    assert trainer.history[0] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every reward is 0
    assert trainer.history[-1] < 0.2
    from lmforge.stages.rm import pairwise_accuracy

    acc, margin = pairwise_accuracy(rm, data, tok.pad_id, "cpu")
    assert acc == 1.0 and margin > 0
    save_reward_model(rm, tmp_path / "rm", tok.path if hasattr(tok, "path") else None)
    again = load_reward_model(tmp_path / "rm")
    x = torch.tensor([[1, 5, 9, 11]])
    assert torch.allclose(again(x, torch.tensor([3])), rm.eval()(x, torch.tensor([3])))


def test_reward_model_from_lm_keeps_the_backbone(toy_data):
    _, tok = toy_data
    lm = tiny_model(tok)
    rm = RewardModel.from_lm(lm)
    x = torch.tensor([[1, 5, 9, 11]])
    assert torch.equal(rm.hidden(x), lm.hidden(x))
    assert not hasattr(rm, "lm_head") and rm.score.weight.shape == (1, 64)


def test_reward_model_checkpoint_is_checked(tmp_path, toy_data):
    from lmforge.errors import LmforgeError
    from lmforge.model.io import save_model

    _, tok = toy_data
    save_model(tiny_model(tok), tmp_path / "lm")
    with pytest.raises(LmforgeError, match="not a reward model checkpoint"):
        load_reward_model(tmp_path / "lm")


def test_kto_mismatched_completions_are_a_derangement(toy_data):
    _, tok = toy_data
    items = [Unpaired([{"role": "user", "content": f"Say {w}."}], f"{w}!", i % 2 == 0) for i, w in enumerate(WORDS)]
    data = tokenize_unpaired(items, tok, 63, seed=3)
    own = [tok.decode(data.rows[2 * i][0].tolist()) for i in range(len(items))]
    other = [tok.decode(data.rows[2 * i + 1][0].tolist()) for i in range(len(items))]
    assert all(o != m for o, m in zip(own, other, strict=True))
    assert sorted(data.labels.tolist()) == [0] * 4 + [1] * 4


def tiny_alignment_run(tmp_path, *extra):
    from lmforge.cli import main

    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=a",
            "stages=[toyworld,tokenizer,pretrain,sft,pairs,rm,bon,dpo,eval_dpo,rlaif]",
            *tiny_recipe.BASE, *tiny_recipe.PAIRS_RM,
            "bon.n=4", "bon.n_prompts=6", "bon.max_new_tokens=12",
            "dpo.train.steps=4", "dpo.train.micro_batch_size=4", "dpo.train.progress=false",
            "dpo.train.tensorboard=false",
            "eval_dpo.n_prompts=8", "eval_dpo.qa_examples=4", "eval_dpo.max_new_tokens=12",
            "rlaif.n_prompts=12", "rlaif.max_new_tokens=8", "rlaif.temperature=1.0", *extra]
    return main(args)


def test_alignment_stages_run_and_report(tmp_path):
    assert tiny_alignment_run(tmp_path) == 0
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    p = summary["pairs"]
    assert p["prompts"] == 40 and p["prompts_with_pairs"] + p["ties"] <= 40 <= p["prompts_with_pairs"] + p["ties"] + \
        p["empty_answer_pairs"] + p["close_pairs"] and p["pairs"] >= p["prompts_with_pairs"] > 0
    train_p = {json.loads(x)["prompt_index"] for x in (tmp_path / "a/pairs/train.jsonl").read_text().splitlines()}
    val_p = {json.loads(x)["prompt_index"] for x in (tmp_path / "a/pairs/val.jsonl").read_text().splitlines()}
    assert train_p and val_p and not train_p & val_p  # validation holds whole prompts
    assert 0.0 <= summary["rm"]["val_accuracy"] <= 1.0
    assert {"judge_score_best_of_1", "judge_score_best_of_4", "win_rate_best_of_n_vs_1"} <= set(summary["bon"])
    assert summary["dpo"]["loss"] == "ipo" and summary["dpo"]["steps"] == 4  # the demo recipe's loss
    assert {"dpo_win_rate_vs_sft", "dpo_alignment_tax_qa_train", "sft_qa_train_acc"} <= set(summary["eval_dpo"])
    assert all(0.0 <= summary["eval_dpo"][f"{m}_impolite_rate"] <= 1.0 for m in ("sft", "dpo"))
    assert json.loads((tmp_path / "a/rm/model/model_config.json").read_text())["head"] == "reward"
    first = json.loads((tmp_path / "a/pairs/train.jsonl").read_text().splitlines()[0])
    assert first["chosen_score"] > first["rejected_score"] and first["prompt"][-1]["role"] == "user"
    r = summary["rlaif"]
    assert r["pairs"] == r["train_pairs"] + r["val_pairs"] > 0 and 0 <= r["mean_confidence"] <= 1
    judged = [json.loads(x) for x in (tmp_path / "a/rlaif/train.jsonl").read_text().splitlines()]
    assert all(0 <= p["judge_prob"] <= 1 and p["chosen"] != p["rejected"] for p in judged)
    rft = (tmp_path / "a/bon/sft_data.jsonl").read_text().splitlines()
    assert len(rft) == 6 and json.loads(rft[0])["messages"][-1]["role"] == "assistant"


def test_rlaif_with_nothing_to_judge_fails_and_writes_no_pairs(tmp_path, monkeypatch, capsys):
    """Every answer pair identical: a one-line error, no train.jsonl / stage.json that look complete."""
    import lmforge.stages.pairs as pairs_mod

    monkeypatch.setattr(pairs_mod, "sample_answers", lambda model, tok, prompts, n, **kw: [["ok"] * n for _ in prompts])
    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,rlaif]") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: rlaif: all 12 answer pairs are identical or empty: nothing to judge (raise rlaif.temperature or "
        "rlaif.max_new_tokens)")
    assert not (tmp_path / "a/rlaif/train.jsonl").exists() and not (tmp_path / "a/rlaif/stage.json").exists()


def test_pairs_with_no_pair_fails_and_writes_nothing_complete(tmp_path, monkeypatch, capsys):
    import lmforge.stages.pairs as pairs_mod

    monkeypatch.setattr(pairs_mod, "sample_answers", lambda model, tok, prompts, n, **kw: [["ok"] * n for _ in prompts])
    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,pairs]") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: pairs: none of 40 prompts gave two answers the judge tells apart by "
                          "pairs.min_margin (0.0) (40 ties") and err.endswith("or lower pairs.min_margin")
    assert not (tmp_path / "a/pairs/train.jsonl").exists() and not (tmp_path / "a/pairs/stage.json").exists()


def test_ppo_stage_runs_and_reports(tmp_path):
    """SFT -> pairs -> rm -> ppo -> eval_ppo at tiny sizes: PPO trains policy and value together, here on the
    reward model plus the written rules at half weight (k3 KL): each part and each rule logged per batch."""
    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,pairs,rm,ppo,eval_ppo]",
                              "ppo.prompts_per_step=8", "ppo.max_new_tokens=8", "ppo.n_prompts=20",
                              "ppo.train.steps=4", "ppo.train.progress=false", "ppo.train.tensorboard=false",
                              "ppo.train.micro_batch_size=4", "ppo.rewards=[{kind: rm}, {kind: rules, weight: 0.5}]",
                              "ppo.kl_estimator=k3", "ppo.length_penalty=0") == 0
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    s = summary["ppo"]
    assert s["rollout_batches"] == 1 and {"heldout_rm_score_before", "heldout_rm_score_after", "kl_last"} <= set(s)
    logs = [json.loads(x) for x in (tmp_path / "a/ppo/metrics.jsonl").read_text().splitlines()]
    rec = [r for r in logs if "score" in r][-1]
    assert {"kl", "kl_coef", "value_loss", "explained_variance", "clip_fraction", "response_length", "entropy",
            "logp_max_diff", "violations_no_forbidden_help"} <= set(rec)
    assert rec["score"] == pytest.approx(rec["reward_rm"] + 0.5 * rec["reward_rules"], abs=1e-5)
    assert rec["kl"] >= 0  # k3: no negative token terms
    assert "ppo_win_rate_vs_sft" in summary["eval_ppo"]
    assert (tmp_path / "a/ppo/model/model.safetensors").exists()


@pytest.mark.parametrize("kw", [{}, {"position": "learned", "n_kv_head": 2}, {"position": "alibi"}])
def test_packed_pair_logps_equal_separate_rows(kw, toy_data):
    """pair_logps (each item as one packed row, the head on reply tokens only) gives the per-row summed
    log-probs and counts of two separate rows, pairs and KTO items alike (ALiBi: the separate rows)."""
    from lmforge.preference import collate_rows, pair_logps, sequence_logps

    _, tok = toy_data
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64,
                                    **kw))
    items = [Unpaired(p.prompt, c, True) for p in pairs() for c in (p.chosen, p.rejected)]
    for data in (tokenize_pairs(pairs(), tok, 63), tokenize_unpaired(items, tok, 63, seed=0)):
        n = len(data)
        rows = [data.rows[2 * i] for i in range(n)] + [data.rows[2 * i + 1] for i in range(n)]
        ids, targets, last = collate_rows(rows, tok.pad_id)
        with torch.no_grad():
            want_sums, want_counts = sequence_logps(model(ids[:, :-1]), targets)
            sums, counts = pair_logps(model, ids, targets, last)
        torch.testing.assert_close(sums, want_sums, atol=1e-5, rtol=1e-5)
        assert torch.equal(counts, want_counts)
        # the gradients agree too (the training path)
        grads = []
        for packed in (False, True):
            model.zero_grad()
            s = pair_logps(model, ids, targets, last)[0] if packed else sequence_logps(model(ids[:, :-1]), targets)[0]
            (s * torch.linspace(-1, 1, 2 * n)).sum().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads, strict=True):  # atol: see test_packed_pair_rewards_equal_separate_rows
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"position": "learned"}])
def test_packed_pair_rewards_equal_separate_rows(kw, toy_data):
    """pair_rewards (the prompt once, both replies in one packed row) scores each row as the reward
    model's own forward does, and gives the same gradients."""
    from lmforge.preference import collate_rows, pair_rewards

    _, tok = toy_data
    torch.manual_seed(0)
    rm = RewardModel(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64, **kw))
    torch.nn.init.normal_(rm.score.weight, std=0.5)  # zero init would make every score 0
    data = tokenize_pairs(pairs(), tok, 63)
    n = len(data)
    ids, _, last = collate_rows([data.rows[2 * i] for i in range(n)] + [data.rows[2 * i + 1] for i in range(n)],
                                tok.pad_id)
    grads = []
    for packed in (False, True):
        rm.zero_grad()
        r = pair_rewards(rm, ids, last) if packed else rm(ids, last)
        (r * torch.linspace(-1, 1, 2 * n)).sum().backward()
        grads.append((r.detach(), [p.grad.clone() for p in rm.parameters()]))
    (want, g0), (got, g1) = grads
    assert want.abs().max() > 0.1 and got.shape == (2 * n,)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # An embedding row's gradient sums signed contributions from every position that reads its token,
    # in another order when packed: on an AVX512 CPU one element in 32768 differed by 3e-5 (relative
    # 6e-4, after cancellation). A packing bug (a reply attending to the other) changes the scores
    # themselves, compared above to 1e-5.
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_reference_logps_equal_the_training_forward(toy_data):
    """A policy equal to the reference gets the reference log-probs, in bf16 too (the first DPO loss is
    then ln 2), whatever batch the reference computed them in: the same packed forward."""
    from lmforge.preference import collate_rows, pair_logps

    _, tok = toy_data
    model = tiny_model(tok)
    data = tokenize_pairs(pairs(), tok, 63)
    for bf16 in (False, True):
        ref = reference_logps(model, data, tok.pad_id, 6, "cpu", bf16=bf16)
        items = [5, 2, 7]
        ids, targets, last = collate_rows([data.rows[2 * i] for i in items] + [data.rows[2 * i + 1] for i in items],
                                          tok.pad_id)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            sums, _ = pair_logps(model, ids, targets, last)
        got = sums.detach().double().numpy().reshape(2, -1).T
        assert abs(got - ref[items]).max() < 1e-4  # (0 here: padding does not change a row's numbers)


def test_dpo_trains_on_the_ai_judges_pairs(tmp_path, capsys):
    """dpo.pairs=rlaif (recipes/rlaif.yaml): DPO reads the rlaif stage's train.jsonl and val.jsonl, not the
    hidden judge's `pairs`, which this run does not even have. rlaif listed after dpo is refused up front."""
    from lmforge.config import load_run_config
    from lmforge.errors import LmforgeError

    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,dpo,rlaif]", "dpo.pairs=rlaif") == 2
    assert capsys.readouterr().err == "error: stage 'dpo' needs rlaif first; add it to stages, before 'dpo'\n"
    assert not (tmp_path / "a").exists()

    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,rlaif,dpo]", "dpo.pairs=rlaif") == 0
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    count = lambda name: len((tmp_path / f"a/rlaif/{name}.jsonl").read_text().splitlines())
    assert summary["dpo"]["train_items"] == count("train") == summary["rlaif"]["train_pairs"]
    assert summary["dpo"]["val_pairs"] == count("val") > 0
    assert not (tmp_path / "a/pairs").exists()
    with pytest.raises(LmforgeError, match=r"dpo.pairs: expected one of pairs, rlaif, got 'rm'"):
        load_run_config(ROOT / "recipes/demo.yaml", ["dpo.pairs=rm"])
