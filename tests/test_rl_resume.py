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
from tests.test_grpo import StartsWithVowel, source, tiny


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


def ppo_run(tok, out, adaptive: bool, steps: int = 8, save_state: bool = True):
    """A tiny PPO trainer: 1 epoch x 2 minibatches per rollout batch, a checkpoint every 4 steps. The adaptive
    KL controller aims at a target far below the measured KL with a short horizon, so its coefficient
    moves every batch (by 20% x 4 / 10 = 8%)."""
    import copy

    from lmforge.losses.rl import AdaptiveKLController
    from lmforge.stages.ppo import PPOBatches, make_rollouts
    from tests.test_rl_distributed import ppo_parts, ppo_trainer, train_config

    pc, policy, value, both, prompts, kl_ctl = ppo_parts(tok)
    if adaptive:
        kl_ctl = AdaptiveKLController(pc.kl_coef, target=1e-6, horizon=10)
    make = make_rollouts(pc, policy, value, copy.deepcopy(policy).eval(), StartsWithVowel(), tok, prompts, 0,
                         torch.device("cpu"), False, kl_ctl)
    batches = PPOBatches(make, 2, pc.ppo_epochs * pc.minibatches, pc.minibatches)
    return ppo_trainer(pc, both, batches, out, cfg=replace(train_config(), steps=steps, ckpt_every=4, log_every=1),
                       stage_state=kl_ctl if save_state else None)


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed_kl", "adaptive_kl"])
def test_killed_and_resumed_ppo_run_matches_uninterrupted(toy_data, tmp_path, adaptive):
    """PPO killed after step 6 and resumed from its step-4 checkpoint logs the uninterrupted run's losses,
    reward-model scores and KL coefficients. With the adaptive controller the coefficient at the
    checkpoint is restored from trainer_state.json ("stage_state"); restarted from its initial value, the
    resumed run's rewards, and so its losses, would differ."""
    _, tok = toy_data
    full = ppo_run(tok, tmp_path / "full", adaptive)
    full.run()
    part = ppo_run(tok, tmp_path / "part", adaptive)
    part.run(stop_at=6)
    resumed = ppo_run(tok, tmp_path / "part", adaptive)
    assert resumed.resume() == 4
    resumed.run(start_step=4)
    assert part.history[:4] + resumed.history == full.history
    logged = [read_metrics(tmp_path / d, "train") for d in ("full", "part")]
    for key in ("score", "kl_coef"):
        assert [r[key] for r in logged[0]] == [r[key] for r in logged[1]] and len(logged[0]) == 8
    coefs = [r["kl_coef"] for r in logged[0]]
    assert (len(set(coefs)) > 1) == adaptive  # the adaptive coefficient really moves, so restoring it matters


def test_resuming_adaptive_kl_from_a_checkpoint_without_its_state_is_refused(toy_data, tmp_path):
    """A checkpoint written without the controller's state (an older lmforge) cannot resume an adaptive
    run exactly: a one-line error naming the file, not a silent restart of the coefficient."""
    from lmforge.errors import LmforgeError

    _, tok = toy_data
    ppo_run(tok, tmp_path / "run", adaptive=True, steps=4, save_state=False).run()
    resumed = ppo_run(tok, tmp_path / "run", adaptive=True, steps=8)
    with pytest.raises(LmforgeError, match=r"step_00000004/trainer_state.json: \"stage_state\" has no 'kl_coef'"):
        resumed.resume()


def _fsdp2_resume_worker(rank, world, port, tok_dir, out):
    """Under FSDP2 (2 processes): GRPO for 4 steps, and the same run killed after step 3 and resumed
    from its step-2 checkpoint (saved from the sharded model, loaded back into a new sharded one)."""
    import copy
    import json

    import torch.distributed as dist

    from lmforge.rl import RolloutSource
    from lmforge.tokenizer import Tokenizer
    from lmforge.train.distributed import cleanup
    from tests.test_rl_distributed import GC, PROMPTS, _join, batch_advantages, train_config

    info = _join(rank, world, port)
    tok = Tokenizer.load(tok_dir)

    def trainer(name):
        model = tiny(tok)
        src = RolloutSource(model, tok, PROMPTS, StartsWithVowel(), batch_advantages, prompts_per_step=4,
                            group_size=4, max_new_tokens=GC.max_new_tokens, temperature=1.0, seed=0, bf16=False,
                            info=info, rollout_model=copy.deepcopy(model))
        batches = RolloutBatches(src, micro_batch_size=2, skip_idle=True, same_count_on_ranks=True)
        cfg = replace(train_config(), parallel="fsdp2", steps=4, ckpt_every=2, log_every=1)
        return Trainer(cfg=cfg, model=model, module=GRPOModule(GC, 1.0), batches=batches, out_dir=out / name,
                       device=torch.device("cpu"), lr=3e-3, info=info, step_stats=lambda: batches.last_stats)

    full = trainer("full")
    full.run()
    part = trainer("part")
    part.run(stop_at=3)
    dist.barrier()  # rank 0 has finished writing the step-2 checkpoint that both ranks read
    resumed = trainer("part")
    start = resumed.resume()
    resumed.run(start_step=start)
    (out / f"resume{rank}.json").write_text(json.dumps(
        {"start": start, "full": full.history, "resumed": part.history[:2] + resumed.history}))
    cleanup(info)


def test_killed_and_resumed_fsdp2_grpo_run_matches_uninterrupted(toy_data, tmp_path):
    """The checkpoint of a sharded policy (gathered whole by rank 0) resumes into a new sharded one whose
    whole copy samples the uninterrupted run's rollouts: same losses on both ranks."""
    import json

    from tests.test_rl_distributed import _spawn

    data_dir, _ = toy_data
    _spawn(_fsdp2_resume_worker, data_dir.parent / "tok", tmp_path)
    logs = [json.loads((tmp_path / f"resume{r}.json").read_text()) for r in range(2)]
    for log in logs:
        assert log["start"] == 2 and len(log["full"]) == 4
        assert log["resumed"] == log["full"]
    assert logs[0]["full"] == logs[1]["full"] and len(set(logs[0]["full"])) > 1
