"""Online RL plumbing: engine log-probs match the trainer's recomputation, rollout rows mask exactly
the sampled tokens, GRPO raises the reward of a tiny policy, and the stage runs end to end."""

import json
from pathlib import Path

import pytest
import torch

from lmforge.losses import IGNORE_INDEX
from lmforge.losses.rl import group_advantages
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.rl import RolloutBatches, RolloutSource, token_logps
from lmforge.stages.grpo import GRPOConfig, GRPOModule
from lmforge.train.config import TrainConfig
from lmforge.train.trainer import Trainer
from tests import tiny_recipe

ROOT = Path(__file__).resolve().parent.parent


class StartsWithVowel:
    """Reward 1 when the reply starts with a vowel: common enough that a random model earns it sometimes."""

    name = "vowel"

    def score(self, requests):
        return [float(r.completion[:1].lower() in "aeiou") for r in requests]


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64))


def source(model, tok, temperature=1.0, P=4, G=4, max_new=6):
    prompts = [([{"role": "user", "content": f"Say {w}."}], {"answer": w})
               for w in ("Zali", "Kamdu", "Velora", "Mosol")]
    return RolloutSource(model, tok, prompts, StartsWithVowel(), lambda r, g: group_advantages(r, g),
                         prompts_per_step=P, group_size=G, max_new_tokens=max_new, temperature=temperature, seed=0,
                         bf16=False)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_match_the_trainers_recomputation(toy_data, temperature):
    _, tok = toy_data
    batch = source(tiny(tok), tok, temperature).make(0)
    assert batch.stats["logp_max_diff"] < 1e-4
    assert batch.ids.shape[0] == 16 and batch.advantages.shape == (16,)
    assert 0 < batch.stats["generate_s"] < batch.stats["rollout_s"]  # sampling is part of the batch's time


def test_rollout_rows_train_only_sampled_completion_tokens(toy_data):
    from lmforge.engine import Completion
    from lmforge.rl import rows_from_rollouts

    prompts = [[1, 7, 8], [1, 9]]
    comps = [Completion([20, 21, 22], [1, 0, 1], "stop", [-0.5, 0.0, -0.25]), Completion([30], [1], "length", [-1.0])]
    ids, targets, eng = rows_from_rollouts(prompts, comps, pad_id=0)
    assert ids.tolist() == [[1, 7, 8, 20, 21], [1, 9, 0, 0, 0]]
    # targets at position t predict token t+1: the forced token 21 (mask 0) is not trained on
    assert targets.tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 20, IGNORE_INDEX, 22],
                                [IGNORE_INDEX, 30, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]]
    # engine log-probs sit where the targets do; 0 elsewhere, the forced token's included
    assert eng.tolist() == [[0.0, 0.0, -0.5, 0.0, -0.25], [0.0, -1.0, 0.0, 0.0, 0.0]]


def test_grpo_raises_the_reward_of_a_tiny_policy(toy_data, tmp_path):
    _, tok = toy_data
    torch.set_num_threads(1)
    model = tiny(tok)
    gc = GRPOConfig(prompts_per_step=4, group_size=8, max_new_tokens=4, clip_high=0.28)
    src = source(model, tok, P=4, G=8, max_new=4)
    batches = RolloutBatches(src, micro_batch_size=32)
    tc = TrainConfig(steps=40, micro_batch_size=32, lr=3e-3, warmup_steps=0, schedule="constant", progress=False,
                     tensorboard=False, ckpt_every=10_000, log_every=5, dtype="fp32", weight_decay=0.0)
    rewards = []
    trainer = Trainer(cfg=tc, model=model, module=GRPOModule(gc, 1.0), batches=batches, out_dir=tmp_path,
                      device=torch.device("cpu"), lr=tc.lr, step_stats=lambda: batches.last_stats)
    for step in range(tc.steps):
        rewards.append(trainer.train_step(step)["reward"])
    early, late = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert late > early + 0.3, f"reward {early:.2f} -> {late:.2f}"


def test_grpo_config_errors():
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="^baseline: expected one of mean, rloo, got 'median'$"):
        GRPOConfig(baseline="median")
    with pytest.raises(LmforgeError, match="^group_size: a group needs at least 2 samples, got 1$"):
        GRPOConfig(group_size=1)


def test_grpo_stage_runs_and_reports(tmp_path):
    from lmforge.cli import main

    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=g",
            "stages=[toyworld,tokenizer,pretrain,sft,grpo]", *tiny_recipe.BASE, *tiny_recipe.GRPO,
            "grpo.n_prompts=16", "grpo.eval_examples=4", "grpo.beta=0.04"]
    assert main(args) == 0
    s = json.loads((tmp_path / "g/summary.json").read_text())["grpo"]
    assert {"heldout_acc_before", "heldout_acc_after", "kl_to_reference", "reward_last"} <= set(s)
    logs = [json.loads(line) for line in (tmp_path / "g/grpo/metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r.get("kind", r.get("split")) == "train" or "reward" in r]
    assert train and "kl" in train[-1] and "logp_max_diff" in train[-1]
    # 3 logged steps: the first and last rewards are those of one step each (windows of up to 5, apart)
    rewards = [r["reward"] for r in logs if "reward" in r]
    assert len(rewards) == 3
    assert (s["reward_first"], s["reward_last"]) == (round(rewards[0], 4), round(rewards[-1], 4))


def test_init_from_a_stage_that_has_not_run_is_a_one_line_error(tmp_path, capsys):
    from lmforge.cli import main

    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=g",
            "stages=[toyworld,tokenizer,pretrain,grpo,sft]", "grpo.init=sft",
            "model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=400",
            "train.steps=2", "train.micro_batch_size=4", "train.seq_len=64", "train.progress=false",
            "train.tensorboard=false", "toyworld.corpus.n_stories=10", "toyworld.corpus.n_arithmetic_docs=5",
            "toyworld.corpus.n_word_problems=5"]
    assert main(args) == 2
    want = f"grpo.init: stage 'sft' has no model yet ({tmp_path}/g/sft/model); run it first (lmforge sft RECIPE)"
    assert want in capsys.readouterr().err


def test_token_logps_slices_the_head_like_the_full_forward(toy_data):
    """token_logps runs the head only on target positions of a plain Transformer, also through a DDP-style
    wrapper (`.module`: the forward's `keep`); any other wrapped model gets full logits: same numbers,
    same gradient."""
    _, tok = toy_data
    model = tiny(tok)
    batch = source(model, tok).make(0)

    class Wrapped(torch.nn.Module):  # an unknown wrapper: only its forward(ids) can be called
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(ids)

    class DDPLike(torch.nn.Module):  # what DDP looks like to token_logps: `.module`, kwargs passed on
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, ids, **kw):
            return self.module(ids, **kw)

    head_rows = []
    model.lm_head.register_forward_hook(lambda mod, args, out: head_rows.append(args[0].shape[:-1].numel()))
    n_targets = int((batch.targets != IGNORE_INDEX).sum())
    sliced = token_logps(model, batch.ids, batch.targets, 0.7)
    full = token_logps(Wrapped(model), batch.ids, batch.targets, 0.7)
    ddp = token_logps(DDPLike(model), batch.ids, batch.targets, 0.7)
    assert head_rows[1:] == [batch.ids.numel(), n_targets]  # the DDP-style call ran the head on targets only
    assert torch.allclose(sliced, full, atol=1e-5) and (sliced[batch.targets == IGNORE_INDEX] == 0).all()
    assert torch.allclose(sliced, ddp, atol=1e-5) and (ddp[batch.targets == IGNORE_INDEX] == 0).all()
    grads = [torch.autograd.grad(x.sum(), model.lm_head.weight)[0] for x in (sliced, full, ddp)]
    assert torch.allclose(grads[0], grads[1], atol=1e-5) and torch.allclose(grads[0], grads[2], atol=1e-5)


@pytest.mark.parametrize("pass_cost", [256, 0])
@pytest.mark.parametrize("kw", [{}, {"position": "learned", "n_kv_head": 2}])
def test_token_logps_of_a_group_packed_equal_each_row_alone(kw, pass_cost, toy_data, monkeypatch):
    """A group's samples (consecutive rows, same prompt) run as one packed row, the prompt once: each
    row's log-probs and the gradient equal those of the row run by itself (rows of different lengths,
    a forced token inside a completion, two groups side by side, a group of one reply, a pair).
    pass_cost 0: every reply length runs in a bucket of its own (`length_buckets`)."""
    import lmforge.model.shared_prefix as sp
    from lmforge.rl import prompt_packs

    monkeypatch.setattr(sp, "PASS_COST", pass_cost)
    buckets = []
    monkeypatch.setattr(sp, "length_buckets", lambda n, c, f=sp.length_buckets: buckets.append(f(n, c)) or buckets[-1])
    _, tok = toy_data
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64,
                                    **kw))
    batch = source(model, tok, P=2, G=4, max_new=6).make(0)
    ids, targets = batch.ids, batch.targets.clone()
    targets[1, targets[1].ne(IGNORE_INDEX).nonzero()[1, 0]] = IGNORE_INDEX  # a forced (untrained) token
    for r, cut in ((2, 3), (5, 2), (6, 4)):  # shorter replies: own parts of different lengths
        targets[r, targets[r].ne(IGNORE_INDEX).nonzero()[-cut:, 0]] = IGNORE_INDEX
    assert prompt_packs(ids, targets != IGNORE_INDEX) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    weights = torch.randn(targets.shape)
    packed = token_logps(model, ids, targets, 0.7)
    g_packed = torch.autograd.grad((packed * weights).sum(), list(model.parameters()))
    alone = torch.cat([token_logps(model, ids[r:r + 1], targets[r:r + 1], 0.7) for r in range(len(ids))])
    g_alone = torch.autograd.grad((alone * weights).sum(), list(model.parameters()))
    assert (targets != IGNORE_INDEX).sum() > 20 and packed.abs().max() > 1
    assert (len(buckets[-1]) > 2) == (pass_cost == 0)  # several buckets, or one where a pass costs more
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_alone, g_packed, strict=True):  # atol: summation order (test_preference_train)
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    # a group whose samples are one reply (nothing of their own past the shared part), and a pair
    # (packs of two run as one masked row)
    same, same_targets = ids.clone(), targets.clone()
    same[4:], same_targets[4:] = ids[4], targets[4]
    for x, t in ((same, same_targets), (ids[:2], targets[:2])):
        rows = torch.cat([token_logps(model, x[r:r + 1], t[r:r + 1], 0.7) for r in range(len(x))])
        torch.testing.assert_close(token_logps(model, x, t, 0.7), rows, atol=1e-5, rtol=1e-5)


def test_one_update_per_batch_skips_the_old_logp_forward(toy_data):
    """updates_per_batch 1: old_logp is left empty (the loss uses the update's own, detached) and the engine's
    log-probs are still checked on one group; several updates recompute old_logp for every row."""
    _, tok = toy_data
    model = tiny(tok)
    one = RolloutBatches(source(model, tok), micro_batch_size=16)
    (micro,) = one.batches(0)
    assert micro[2].numel() == 0 and one.last_stats["logp_max_diff"] < 1e-4
    two = RolloutBatches(source(model, tok), micro_batch_size=8, updates_per_batch=2)
    assert all(m[2].shape == m[1].shape for m in two.batches(0))


def test_bf16_rollout_logprobs_agree_with_the_autocast_recomputation(toy_data):
    """bf16 rollouts (bf16 engine matmuls, bf16 autocast trainer): engine vs trainer log-probs within 0.05."""
    _, tok = toy_data
    src = source(tiny(tok), tok)
    src.bf16 = True
    batch = src.make(0)
    assert batch.old_logp.shape == batch.ids.shape
    assert batch.stats["logp_max_diff"] < 0.05


def test_malformed_replies_lose_malformed_penalty(toy_data):
    """A reply that does not end its turn (a random tiny model with 6 new tokens almost never does)
    loses `malformed_penalty`; the stats count them. Same rollouts (same seed), rewards shifted by
    exactly the penalty where malformed."""
    from lmforge.rl import malformed
    from lmforge.tokenizer import END_OF_TURN, END_TOOL_CALL, TOOL_CALL

    _, tok = toy_data
    sp = tok.special
    eot, call, end_call = sp[END_OF_TURN], sp[TOOL_CALL], sp[END_TOOL_CALL]
    assert not malformed([5, call, 6, end_call, 9, eot], eot, call, end_call)
    assert malformed([5, call, 6, eot], eot, call, end_call)       # a tool call left open
    assert malformed([5, 6, tok.eos_id], eot, call, end_call)      # stopped at end-of-text, not end-of-turn
    assert malformed([], eot, call, end_call)
    model = tiny(tok)
    plain = source(model, tok).make(0)
    src = source(model, tok)
    src.malformed_penalty = 0.5
    penalized = src.make(0)
    frac = penalized.stats["malformed_fraction"]
    assert frac == plain.stats["malformed_fraction"] > 0
    diff = plain.rewards - penalized.rewards
    assert torch.all((diff == 0) | (diff == 0.5))
    assert float(diff.sum()) == pytest.approx(0.5 * frac * len(diff))


def test_skipping_idle_rows_gives_the_same_updates(toy_data, tmp_path):
    """Rows whose group rewards were all equal have advantage exactly 0 and, with beta 0, no gradient:
    skip_idle runs only the others (cut to their longest row) but still counts their tokens, so the
    same 4 steps give the same losses and weights (to float summation order) from fewer rows."""
    _, tok = toy_data
    gc = GRPOConfig(prompts_per_step=4, group_size=4, max_new_tokens=6)
    runs = {}
    for skip in (False, True):
        model = tiny(tok)
        batches = RolloutBatches(source(model, tok), micro_batch_size=4, skip_idle=skip)
        tc = TrainConfig(steps=4, micro_batch_size=4, lr=3e-3, warmup_steps=0, schedule="constant", progress=False,
                         tensorboard=False, ckpt_every=10_000, dtype="fp32")
        trainer = Trainer(cfg=tc, model=model, module=GRPOModule(gc, 1.0), batches=batches,
                          out_dir=tmp_path / str(skip), device=torch.device("cpu"), lr=tc.lr,
                          step_stats=lambda batches=batches: batches.last_stats)
        recs, ran = [], 0
        for step in range(tc.steps):
            ran += sum(m[0].shape[0] for m in batches.batches(step))
            recs.append(trainer.train_step(step))
        runs[skip] = recs, ran, torch.cat([p.detach().flatten() for p in model.parameters()])
    (plain, ran_plain, w_plain), (skipped, ran_skip, w_skip) = runs[False], runs[True]
    idle = [r["idle_fraction"] for r in plain]
    assert idle == [r["idle_fraction"] for r in skipped] and any(0 < f < 1 for f in idle)
    assert ran_plain == 4 * 16 and ran_skip < ran_plain
    assert [r["count"] for r in plain] == [r["count"] for r in skipped]
    for a, b in zip(plain, skipped, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5
    assert torch.allclose(w_plain, w_skip, atol=1e-6)


def test_constant_groups_get_exactly_zero_advantage():
    """8 x 0.1 summed in floats is not 0.8, so r - mean leaves a residue; a group of equal rewards must
    still give exactly 0 (the rows skip_idle may skip), and a mixed group is untouched."""
    r = torch.tensor([0.1] * 8 + [1.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    for scale in ("group", "batch", "none"):
        adv = group_advantages(r, 8, scale=scale)
        assert adv[:8].eq(0).all() and adv[8] > 0 and adv[9] < 0


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "fixed_length"])
def test_a_filler_micro_batch_counts_nothing_and_gives_no_gradient(toy_data, aggregation):
    """Under FSDP2 a rank with fewer busy rows runs fillers so that every rank makes the same collectives
    (RolloutBatches(same_count_on_ranks=True)): each must add no count, no loss and no gradient."""
    _, tok = toy_data
    model = tiny(tok)
    batch = source(model, tok).make(0)
    filler = RolloutBatches._filler(batch, 3)
    module = GRPOModule(GRPOConfig(prompts_per_step=4, group_size=4, max_new_tokens=6, aggregation=aggregation), 1.0)
    assert module.count(filler) == 0
    empty = batch.targets.clone()
    empty[0] = -100  # a rollout of a prompt that filled the context: no target, still a sequence of the batch
    assert module.count((batch.ids, empty)) == (int((empty != -100).sum()) if aggregation == "token_mean" else 16)
    loss, stats = module.loss(model, filler)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(stats["clip_fraction"]) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
