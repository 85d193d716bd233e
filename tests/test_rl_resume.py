"""Online RL resumes exactly: a killed run, resumed from its last checkpoint, logs what the
uninterrupted run logged (rollouts are drawn and seeded by batch index, from restored weights)."""

from dataclasses import replace

import pytest
import torch

from lmforge.rl import RolloutBatches
from lmforge.stages.grpo import GRPOConfig, GRPOModule
from lmforge.train.config import TrainConfig
from lmforge.train.metrics import read_metrics
from lmforge.train.trainer import Trainer
from tests.test_grpo import source, tiny


@pytest.mark.parametrize("updates", [1, 2])
def test_killed_and_resumed_grpo_run_matches_uninterrupted(toy_data, tmp_path, updates):
    """Rollout batch s is drawn and seeded by its index and sampled from the weights the checkpoint
    restores: a run killed after step 3 and resumed from its step-2 checkpoint repeats step 3 and
    logs the uninterrupted run's losses and rewards. With 2 updates per batch the checkpoint falls
    between batches, as GRPOConfig requires (mid-batch, the resumed run would sample new rollouts)."""
    _, tok = toy_data
    gc = GRPOConfig(prompts_per_step=4, group_size=4, max_new_tokens=6, updates_per_batch=updates)

    def trainer(out):
        model = tiny(tok)
        batches = RolloutBatches(source(model, tok), micro_batch_size=4, updates_per_batch=updates, skip_idle=True)
        tc = TrainConfig(steps=5, micro_batch_size=4, lr=3e-3, warmup_steps=0, schedule="constant", progress=False,
                         tensorboard=False, ckpt_every=2, log_every=1, dtype="fp32")
        return Trainer(cfg=tc, model=model, module=GRPOModule(gc, 1.0), batches=batches, out_dir=out,
                       device=torch.device("cpu"), lr=tc.lr, step_stats=lambda: batches.last_stats)

    full = trainer(tmp_path / "full")
    full.run()
    part = trainer(tmp_path / "part")
    part.run(stop_at=3)
    resumed = trainer(tmp_path / "part")
    start = resumed.resume()
    assert start == 2
    resumed.run(start_step=start)
    assert part.history[:2] + resumed.history == full.history
    rewards = [[r["reward"] for r in read_metrics(tmp_path / d, "train")] for d in ("full", "part")]
    assert rewards[0] == rewards[1] and len(rewards[0]) == 5 and len(set(rewards[0])) > 1


def test_killed_and_resumed_ppo_run_matches_uninterrupted(toy_data, tmp_path):
    """PPO with a fixed KL coefficient (the adaptive controller's state is not checkpointed): 1 epoch x
    2 minibatches per rollout batch, killed after step 6, resumed from its step-4 checkpoint."""
    import copy

    from lmforge.stages.ppo import PPOBatches, make_rollouts
    from tests.test_grpo import StartsWithVowel
    from tests.test_rl_distributed import ppo_parts, ppo_trainer, train_config

    _, tok = toy_data

    def trainer(out):
        pc, policy, value, both, prompts, kl_ctl = ppo_parts(tok)
        make = make_rollouts(pc, policy, value, copy.deepcopy(policy).eval(), StartsWithVowel(), tok, prompts, 0,
                             torch.device("cpu"), False, kl_ctl)
        batches = PPOBatches(make, 2, pc.ppo_epochs * pc.minibatches, pc.minibatches)
        return ppo_trainer(pc, both, batches, out, cfg=replace(train_config(), steps=8, ckpt_every=4, log_every=1))

    full = trainer(tmp_path / "full")
    full.run()
    part = trainer(tmp_path / "part")
    part.run(stop_at=6)
    resumed = trainer(tmp_path / "part")
    assert resumed.resume() == 4
    resumed.run(start_step=4)
    assert part.history[:4] + resumed.history == full.history
    scores = [[r["score"] for r in read_metrics(tmp_path / d, "train")] for d in ("full", "part")]
    assert scores[0] == scores[1] and len(scores[0]) == 8
