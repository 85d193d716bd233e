"""GRPO and PPO under torchrun (DDP and FSDP2, 2 CPU processes): each rank samples its share
of the prompts, and the update is the one a single process makes from every rank's rollouts together."""

import json
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lmforge.losses.rl import group_advantages
from lmforge.rl import RolloutBatch, RolloutBatches, RolloutSource
from lmforge.stages.grpo import GRPOConfig, GRPOModule
from lmforge.tokenizer import Tokenizer
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistInfo
from lmforge.train.trainer import Trainer
from tests import tiny_recipe
from tests.test_grpo import StartsWithVowel, tiny

STEPS, P, G = 2, 4, 4
GC = GRPOConfig(prompts_per_step=P, group_size=G, max_new_tokens=6)
PROMPTS = [([{"role": "user", "content": f"Say {w}."}], {"answer": w})
           for w in ("Zali", "Kamdu", "Velora", "Mosol", "Ibbet", "Oru")]


def batch_advantages(rewards, g):  # scaled by the std of the whole batch: needs every rank's rewards
    return group_advantages(rewards, g, scale="batch")


def train_config() -> TrainConfig:
    return TrainConfig(steps=STEPS, micro_batch_size=2, lr=3e-3, warmup_steps=0, schedule="constant",
                       progress=False, tensorboard=False, ckpt_every=10_000, dtype="fp32", weight_decay=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from lmforge.train.distributed import init_distributed

    return init_distributed("cpu")


def _spawn(worker, tok_dir, out, timeout: float = 300.0):
    """Two processes of `worker`; a hang (a collective one rank never reaches) fails after `timeout`."""
    import time

    threads = torch.get_num_threads()
    ctx = mp.spawn(worker, args=(2, _free_port(), tok_dir, out), nprocs=2, join=False)
    try:
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for proc in ctx.processes:
                    proc.kill()
                pytest.fail(f"the 2-process run did not finish in {timeout:.0f} s (a deadlock?)")
    finally:
        torch.set_num_threads(threads)


def _worker(rank, world, port, tok_dir, out, parallel="ddp"):
    import copy

    from lmforge.train.distributed import cleanup

    info = _join(rank, world, port)
    tok = Tokenizer.load(tok_dir)
    model = tiny(tok)
    replica = copy.deepcopy(model) if parallel == "fsdp2" else None  # as the grpo stage makes it
    src = RolloutSource(model, tok, PROMPTS, StartsWithVowel(), batch_advantages, prompts_per_step=P, group_size=G,
                        max_new_tokens=GC.max_new_tokens, temperature=1.0, seed=0, bf16=False, info=info,
                        rollout_model=replica)
    batches = RolloutBatches(src, micro_batch_size=2, skip_idle=True, same_count_on_ranks=replica is not None)
    ran, make_micro = [], batches.batches

    def counted(step):  # micro-batches this rank runs (skip_idle makes it differ between ranks), and fillers
        micro = make_micro(step)
        ran.append((len(micro), sum(bool((m[1] == -100).all()) for m in micro)))
        return micro

    batches.batches = counted
    trainer = Trainer(cfg=replace(train_config(), parallel=parallel), model=model, module=GRPOModule(GC, 1.0),
                      batches=batches, out_dir=out / f"rank{rank}", device=torch.device("cpu"), lr=3e-3, info=info,
                      step_stats=lambda: batches.last_stats)
    records, tensors = [], {}
    for step in range(STEPS):
        records.append({**trainer.train_step(step), "micro_batches": ran[-1][0], "fillers": ran[-1][1]})
        b = batches._batch
        tensors.update({f"{step}.ids": b.ids, f"{step}.targets": b.targets, f"{step}.advantages": b.advantages,
                        f"{step}.rewards": b.rewards})
    weights = model.state_dict()
    if replica is not None:  # FSDP2: each rank holds a shard of every weight
        from torch.distributed.tensor import DTensor

        weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in weights.items()}
        src.make(STEPS)  # the next rollouts sample from the trained weights: they were gathered into the replica
        assert all(torch.equal(v, weights[k]) for k, v in replica.state_dict().items())
    tensors.update({f"w.{k}": v.detach().contiguous() for k, v in weights.items()})
    save_file(tensors, str(out / f"{parallel}{rank}.safetensors"))
    (out / f"{parallel}{rank}.json").write_text(json.dumps(records))
    cleanup(info)


def _fsdp2_worker(rank, world, port, tok_dir, out):
    _worker(rank, world, port, tok_dir, out, parallel="fsdp2")


def _results(out, prefix: str) -> tuple[list[dict], list[list[dict]]]:
    """Each rank's saved tensors and step records; DDP must have kept the replicas' weights identical."""
    ranks = [load_file(str(out / f"{prefix}{r}.safetensors")) for r in range(2)]
    logs = [json.loads((out / f"{prefix}{r}.json").read_text()) for r in range(2)]
    for k in ranks[0]:
        if k.startswith("w."):
            assert torch.equal(ranks[0][k], ranks[1][k]), k
    return ranks, logs


def assert_same_update(ddp_logs: list[dict], single: list[dict], ddp_tensors: dict, model) -> None:
    """The DDP run's steps (rank 0's records and weights) against one process's on the same rollouts."""
    for a, b in zip(ddp_logs, single, strict=True):
        assert a["count"] == b["count"]
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5, abs=1e-7)
    for k, v in model.state_dict().items():
        # Adam divides by sqrt(v): float-order differences in near-zero gradients move weights by ~1e-6
        # (a wrong gradient scale leaves Adam's step alike: the grad_norm check catches that)
        assert torch.allclose(ddp_tensors[f"w.{k}"], v, atol=2e-5), k


class Replay:
    """A rollout source that hands back recorded batches (the two ranks' rows, concatenated)."""

    def __init__(self, batches: list[RolloutBatch]):
        self.recorded, self.P, self.G = batches, P, G
        self.info, self.device = DistInfo(), torch.device("cpu")

    def make(self, index: int, recompute_old: bool = True) -> RolloutBatch:
        return self.recorded[index]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_two_processes_share_the_prompts_and_make_the_single_process_update(toy_data, tmp_path, parallel):
    """FSDP2: the policy is sharded; rollouts run on a replica its weights are gathered into each step."""
    data_dir, _ = toy_data
    tok_dir = data_dir.parent / "tok"
    _spawn(_worker if parallel == "ddp" else _fsdp2_worker, tok_dir, tmp_path)
    ranks, logs = _results(tmp_path, parallel)

    recorded = []
    for step in range(STEPS):
        # each rank sampled whole groups of its own 2 prompts: the prompts differ between ranks
        first_prompt = [r[f"{step}.ids"][0, :5].tolist() for r in ranks]
        assert first_prompt[0] != first_prompt[1]
        assert all(r[f"{step}.ids"].shape[0] == P // 2 * G for r in ranks)
        rewards = torch.cat([r[f"{step}.rewards"] for r in ranks])
        # batch-scaled advantages from every rank's rewards, and every rank logs the whole batch
        adv = torch.cat([r[f"{step}.advantages"] for r in ranks])
        assert torch.allclose(adv, batch_advantages(rewards, G))
        assert logs[0][step]["reward"] == pytest.approx(float(rewards.mean()))
        assert logs[0][step]["reward"] == logs[1][step]["reward"]
        # the engine's log-probs (FSDP2: the whole copy's) against the trainer's forward (the sharded model's)
        assert logs[0][step]["logp_max_diff"] < 1e-4
        assert logs[0][step]["idle_fraction"] == pytest.approx(float((adv == 0).float().mean()))
        width = max(r[f"{step}.ids"].shape[1] for r in ranks)

        def pad(t, value, width=width):
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        recorded.append(RolloutBatch(torch.cat([pad(r[f"{step}.ids"], 0) for r in ranks]),
                                     torch.cat([pad(r[f"{step}.targets"], -100) for r in ranks]),
                                     torch.zeros(0), None, adv, rewards, {}))

    runs, fillers = ([[logs[r][t][k] for t in range(STEPS)] for r in range(2)] for k in ("micro_batches", "fillers"))
    if parallel == "ddp":  # skip_idle left the ranks different numbers of micro-batches (2 and 4 at step 0 here)
        assert runs[0] != runs[1] and fillers == [[0] * STEPS] * 2
    else:  # every FSDP2 forward is a collective: the rank with fewer busy rows runs empty micro-batches too
        assert runs[0] == runs[1] and sum(map(sum, fillers)) > 0
    # one process, from the same start, on the same rollouts: the same losses and weights
    model = tiny(Tokenizer.load(tok_dir))
    batches = RolloutBatches(Replay(recorded), micro_batch_size=2, skip_idle=True)
    trainer = Trainer(cfg=train_config(), model=model, module=GRPOModule(GC, 1.0), batches=batches,
                      out_dir=tmp_path / "single", device=torch.device("cpu"), lr=3e-3)
    assert_same_update(logs[0], [trainer.train_step(step) for step in range(STEPS)], ranks[0], model)


def test_prompts_per_step_must_split_across_processes(toy_data):
    _, tok = toy_data
    info = replace(DistInfo(), rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"^prompts_per_step \(4\) must be a multiple of the number of processes "
                                         r"\(3\): each process samples whole groups of its share$"):
        RolloutSource(tiny(tok), tok, PROMPTS, StartsWithVowel(), batch_advantages, prompts_per_step=4,
                      group_size=G, max_new_tokens=4, temperature=1.0, seed=0, info=info)


# ---- PPO -----------------------------------------------------------------------------------------
PPO = dict(prompts_per_step=4, max_new_tokens=6, ppo_epochs=1, minibatches=2, kl_coef=0.05)
PPO_KEYS = ("ids", "targets", "old_logp", "old_values", "adv", "returns")


def ppo_parts(tok):
    from lmforge.chat import render_prompt
    from lmforge.losses.rl import FixedKLController
    from lmforge.model.reward import RewardModel
    from lmforge.stages.ppo import PolicyAndValue, PPOConfig

    pc = PPOConfig(**PPO)
    policy = tiny(tok)
    value = RewardModel.from_lm(tiny(tok, seed=1))
    torch.manual_seed(2)
    torch.nn.init.normal_(value.score.weight, std=0.1)  # values that differ by position
    prompts = [(m, render_prompt(m, tok)) for m, _ in PROMPTS]
    return pc, policy, value, PolicyAndValue(policy, value), prompts, FixedKLController(pc.kl_coef)


def ppo_trainer(pc, both, batches, out, info=None, parallel="ddp", cfg=None, stage_state=None):
    from lmforge.stages.ppo import PPOModule

    return Trainer(cfg=cfg or replace(train_config(), parallel=parallel), model=both,
                   module=PPOModule(pc, pc.temperature), batches=batches, out_dir=out, device=torch.device("cpu"),
                   lr=3e-3, info=info or DistInfo(), step_stats=lambda: batches.last_stats, stage_state=stage_state)


def _ppo_worker(rank, world, port, tok_dir, out, parallel="ddp"):
    import copy

    from lmforge.stages.ppo import PPOBatches, make_rollouts
    from lmforge.train.distributed import cleanup

    info = _join(rank, world, port)
    tok = Tokenizer.load(tok_dir)
    pc, policy, value, both, prompts, kl_ctl = ppo_parts(tok)
    replicas = (copy.deepcopy(policy), copy.deepcopy(value)) if parallel == "fsdp2" else None  # as the stage does
    from lmforge.rewards import RuleSafety, WeightedSum

    reward = WeightedSum([(StartsWithVowel(), 1.0), (RuleSafety(), 0.5)])  # per-part and per-rule columns too
    make = make_rollouts(pc, policy, value, copy.deepcopy(policy).eval(), reward, tok, prompts, 0,
                         torch.device("cpu"), False, kl_ctl, info, replicas)
    batches = PPOBatches(make, 2, pc.ppo_epochs * pc.minibatches, pc.minibatches)
    trainer = ppo_trainer(pc, both, batches, out / f"ppo{rank}", info, parallel)
    records = [trainer.train_step(step) for step in range(STEPS)]
    tensors = {k: batches._batch[k] for k in PPO_KEYS}
    weights = both.state_dict()
    if replicas is not None:  # FSDP2: each rank holds a shard of every weight
        from torch.distributed.tensor import DTensor

        weights = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in weights.items()}
        make(STEPS)  # the next rollouts run the trained policy and value model: gathered into the copies
        for name, copied in zip(("policy", "value"), replicas, strict=True):
            assert all(torch.equal(v, weights[f"{name}.{k}"]) for k, v in copied.state_dict().items())
    tensors.update({f"w.{k}": v.detach().contiguous() for k, v in weights.items()})
    save_file(tensors, str(out / f"ppo{rank}.safetensors"))
    (out / f"ppo{rank}.json").write_text(json.dumps(records))
    cleanup(info)


def _ppo_fsdp2_worker(rank, world, port, tok_dir, out):
    _ppo_worker(rank, world, port, tok_dir, out, parallel="fsdp2")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_ppo_on_two_processes_whitens_over_both_and_makes_the_single_process_update(toy_data, tmp_path, parallel):
    from lmforge.stages.ppo import PPOBatches

    data_dir, _ = toy_data
    tok_dir = data_dir.parent / "tok"
    _spawn(_ppo_worker if parallel == "ddp" else _ppo_fsdp2_worker, tok_dir, tmp_path)
    ranks, logs = _results(tmp_path, "ppo")
    assert ranks[0]["ids"][0, :5].tolist() != ranks[1]["ids"][0, :5].tolist()  # different prompts
    # every rollout statistic is the whole batch's, the same on both ranks
    stats = [k for k in logs[0][0] if k in ("score", "kl", "entropy", "logp_max_diff", "response_length")
             or k.startswith(("reward_", "violations_"))]
    assert {"entropy", "logp_max_diff", "reward_vowel", "reward_rules", "violations_no_repetition"} <= set(stats)
    assert all(logs[0][0][k] == logs[1][0][k] for k in stats)

    # one batch in the order a single process slices its minibatches: [rank 0 mb 0, rank 1 mb 0, rank 0 mb 1, ...]
    width = max(r["ids"].shape[1] for r in ranks)
    fill = {"ids": 0, "targets": -100}
    half = P // 2 // 2
    batch = {}
    for k in PPO_KEYS:
        padded = [torch.nn.functional.pad(r[k], (0, width - r[k].shape[1]), value=fill.get(k, 0.0)) for r in ranks]
        batch[k] = torch.cat([p[i * half:(i + 1) * half] for i in range(2) for p in padded])
    mask = batch["targets"] != -100
    # the entropy is the mean over both ranks' sampled tokens, from the starting policy that sampled them
    from lmforge.losses.rl import entropy_from_logits

    with torch.no_grad():
        start = ppo_parts(Tokenizer.load(tok_dir))[1]
        want = float(entropy_from_logits(start(batch["ids"]).float(), mask.float()))
    assert logs[0][0]["entropy"] == pytest.approx(want, abs=1e-5)
    # advantages whitened over both ranks' tokens together: mean 0, variance 1 there
    assert float(batch["adv"][mask].mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(batch["adv"][mask].var()) == pytest.approx(1.0, abs=1e-4)
    for r in ranks:  # but not on either rank's tokens alone
        own = r["adv"][r["targets"] != -100]
        assert abs(float(own.mean())) > 1e-3 or abs(float(own.var()) - 1) > 1e-3

    pc, policy, value, both, prompts, _ = ppo_parts(Tokenizer.load(tok_dir))
    batches = PPOBatches(lambda index: {**batch, "stats": {}}, 2, pc.ppo_epochs * pc.minibatches, pc.minibatches)
    trainer = ppo_trainer(pc, both, batches, tmp_path / "single")
    assert_same_update(logs[0], [trainer.train_step(step) for step in range(STEPS)], ranks[0], both)


# ---- the command line under torchrun ------------------------------------------------------------
TINY = [*tiny_recipe.BASE, *tiny_recipe.PAIRS_RM, *tiny_recipe.GRPO,
        "ppo.prompts_per_step=8", "ppo.max_new_tokens=8", "ppo.n_prompts=20", "ppo.train.steps=4",
        "ppo.train.progress=false", "ppo.train.tensorboard=false", "ppo.train.micro_batch_size=4",
        "ppo.train.parallel=fsdp2",
        "grpo.n_prompts=16", "grpo.prompts_per_step=4", "grpo.eval_examples=4", "grpo.eval_samples=1",
        "grpo.train.parallel=fsdp2", "grpo.train.ckpt_every=2",  # GRPO sharded: the replica, checkpoints, the model
        "grpo.train.weight_decay=0.1"]  # the tiny policy's rewards are all equal: decay alone moves its weights


def test_torchrun_runs_the_training_stages_on_two_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m lmforge run ...` at tiny sizes: pretrain, sft, rm, ppo and grpo (both FSDP2)
    train on both processes (the log says world 2), rank 0 alone writes metrics and models."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "lmforge", "run", str(root / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=t",
           "stages=[toyworld,tokenizer,pretrain,sft,pairs,rm,ppo,grpo]", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 2" in done.stdout + done.stderr
    summary = json.loads((tmp_path / "t/summary.json").read_text())
    assert summary["grpo"]["steps"] == 3 and summary["ppo"]["steps"] == 4
    for stage, logged in (("grpo", [1, 2, 3]), ("ppo", [1, 2, 3, 4]), ("sft", [4])):  # sft logs every 10 steps
        logs = [json.loads(x) for x in (tmp_path / f"t/{stage}/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logs if r["kind"] == "train"] == logged, stage  # one writer, no duplicate lines
        assert (tmp_path / f"t/{stage}/model/model.safetensors").exists()
    # the saved models are the trained ones (FSDP2: gathered into the whole copy), not their starting SFT model
    start = load_file(str(tmp_path / "t/sft/model/model.safetensors"))
    for stage in ("grpo", "ppo"):
        trained = load_file(str(tmp_path / f"t/{stage}/model/model.safetensors"))
        assert any(not torch.equal(trained[k], start[k]) for k in start), stage


@pytest.mark.parametrize("stage", ["grpo", "ppo"])
def test_settings_that_do_not_split_across_processes_are_one_line_errors(stage):
    from lmforge.errors import LmforgeError
    from lmforge.stages import grpo, ppo

    two = replace(DistInfo(), world_size=2)
    if stage == "grpo":
        ok, check = GRPOConfig(prompts_per_step=4, group_size=4, updates_per_batch=4), grpo.check_processes
        with pytest.raises(LmforgeError, match=r"^grpo.prompts_per_step \(3\) must be a multiple of the number of "
                                               r"processes \(2\): each samples whole groups of its share$"):
            check(GRPOConfig(prompts_per_step=3), two)
        bad, cls = {"prompts_per_step": 4, "group_size": 3, "updates_per_batch": 4}, GRPOConfig  # 6 rows a process
        msg = (r"^grpo.updates_per_batch \(4\) must divide each process's 6 rollouts \(prompts_per_step / 2 "
               r"processes x group_size\)$")
    else:
        from lmforge.stages.ppo import PPOConfig

        ok, check = PPOConfig(prompts_per_step=8, minibatches=4), ppo.check_processes
        bad, cls = {"prompts_per_step": 12, "minibatches": 4}, PPOConfig
        msg = (r"^ppo.prompts_per_step \(12\) must be a multiple of the number of processes \(2\) x "
               r"ppo.minibatches \(4\): each process splits its share of the rollouts into the minibatches$")
    check(ok, two)
    check(cls(**bad), DistInfo())  # one process: fine
    with pytest.raises(LmforgeError, match=msg):
        check(cls(**bad), two)
    ok.train.parallel = "fsdp2"  # the sharded policy is gathered into a whole copy for the rollouts
    check(ok, two)
