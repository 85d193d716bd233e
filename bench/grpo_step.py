"""One GRPO step (rollouts + update): lmforge's trainer vs trl's `GRPOTrainer`, same weights, same prompts.

One lmforge checkpoint (a random Llama-compatible model, or --checkpoint DIR) is exported with
`lmforge.model.export.export_hf` and loaded back with `AutoModelForCausalLM`, so both sides start
from identical fp32 weights. A step is one rollout round of --prompts prompts x --group samples
(temperature 1, at most --max-new tokens, each sample stopping at its first end-of-turn or
end-of-text token on both sides: lmforge's engine stop ids, the export's `generation_config`
eos ids for trl) and then one optimizer step on all of them. lmforge's side is wired as the
`grpo` stage wires it (`RolloutSource` -> `RolloutBatches` -> the shared `Trainer` with
`GRPOModule`), timed through `Trainer.train_step`; trl gets the same prompts in conversational
form, rendered by the `chat_template` the export wrote (same prompt token ids: checked), in
lmforge's visiting order without shuffling, with `per_device_train_batch_size` = prompts x group
and `steps_per_generation` 1, so one trl optimizer step is one generation round too. The same
settings on both sides: beta 0 (no reference model, lmforge's default), group-mean baseline with
group-std scaling, token-mean loss (trl's "dapo"), clip 0.2 / 0.28 (clip-higher), fused AdamW
with betas 0.9/0.999, no weight decay, constant lr, grad clip 1.0; trl's gradient checkpointing
(on by default in trl) is off like lmforge's, no vLLM, no logging, evaluation or saving. One
deterministic Python reward scores both sides' decoded completions: the share of the
completion's characters that are ASCII letters or spaces (a random model's output is mostly
stray bytes, so it varies within a group). lmforge's Trainer flushes denormals to zero
process-wide, so trl runs with that too.

Each precision is one trl training run in which a `TrainerCallback` runs one lmforge
`Trainer.train_step` right after each trl step, so a change in load on a shared CPU hits both
alike. trl's step time runs from the end of the previous lmforge step to trl's `on_step_end`.
Each step is split into rollouts (lmforge: `RolloutSource.make`: generation, decoding, rewards,
advantages and a no-grad forward over the first prompt's group that checks the engine's log-probs;
trl: `_generate_and_score_completions`). Neither side recomputes the old log-probs: with one update
per rollout batch both use the update's own, detached (lmforge's `RolloutBatches` with
updates_per_batch 1; trl when generation and update are aligned, as here); trl also computes
entropies in its update) and the update (the rest: forward, backward, optimizer); generation
alone is printed too (lmforge: `Engine.generate`; trl: `_generate_single_turn`, i.e.
`model.generate`). Generation cost grows with the completions' length, and the two sides sample
differently (different random streams), so the mean completion length each side generated is
printed with the times, and the prompt token lengths of both. The first --warmup steps are not
timed. bf16 autocast by default where the CPU has native bf16, else fp32 (what lmforge's `train.dtype`
auto picks; trl's `bf16` default is on regardless); bf16
applies to lmforge's training and log-prob forwards, and its engine then decodes with bf16 matmuls
(`Engine(bf16=True)`; KV cache and attention in fp32), and to all of trl's forwards, `generate`
included: accelerate's autocast wrapper stays on the model trl unwraps for generation); --dtypes
fp32,bf16 runs both. Prints seconds per step (median step)
and steps/s of each, the split, the ratio lmforge / trl, and the sanity checks: identical
prompt ids, both sides' mean reward on the first step's rollouts (similar, not identical:
sampling differs) and lmforge's `logp_max_diff` (engine log-probs vs the trainer-side
forward, over the first prompt's G samples: ~1e-6 in fp32; under bf16 both sides' rounding, ~1e-2
on the random model).
A benchmark, not a test: nothing asserts speed.

    python bench/grpo_step.py                         # d_model 256 x 4 layers, vocab 2048, 8 prompts x 8, 64 new
    python bench/grpo_step.py --demo                  # the demo's GRPO shape and model (after `make demo`)
    python bench/grpo_step.py --threads 1             # a CPU other processes are busy on: 2 threads can stall 10x
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # dataset progress bars

import torch  # noqa: E402
from trl_common import add_model_args, checkpointing_field, make_checkpoint, text_of  # noqa: E402

from lmforge.engine import Engine  # noqa: E402
from lmforge.model.export import export_hf  # noqa: E402
from lmforge.model.io import load_model  # noqa: E402
from lmforge.rewards import RewardRequest  # noqa: E402
from lmforge.rl import RolloutBatches, RolloutSource  # noqa: E402
from lmforge.stages.grpo import GRPOConfig, GRPOModule, advantage_fn  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.train.config import TrainConfig, native_bf16  # noqa: E402
from lmforge.train.trainer import Trainer  # noqa: E402

CLIP_LOW, CLIP_HIGH = 0.2, 0.28






def make_prompts(tok, n: int, prompt_len: int, seed: int) -> list[tuple[list[dict], dict]]:
    """n (messages, meta) prompts: one user turn of 80-100% of prompt_len tokens."""
    rng = random.Random(seed)
    return [([{"role": "user", "content": text_of(tok, rng.randint(prompt_len * 4 // 5, prompt_len), rng)}], {})
            for _ in range(n)]


def score(text: str) -> float:
    """The reward both sides use: the share of the (stripped) completion's characters that are ASCII letters or
    spaces; 0 for an empty completion."""
    text = text.strip()
    return sum(c == " " or (c.isascii() and c.isalpha()) for c in text) / len(text) if text else 0.0


class Reward:
    """`score` as an lmforge RewardSource; keeps each call's scores."""

    name = "letters"

    def __init__(self):
        self.calls: list[list[float]] = []

    def score(self, requests: list[RewardRequest]) -> list[float]:
        self.calls.append([score(r.completion) for r in requests])
        return self.calls[-1]


@contextlib.contextmanager
def timing(owner, name: str, times: list):
    """Time every call of owner.name (a method) into `times` while inside the block."""
    orig = getattr(owner, name)

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = orig(*a, **k)
        times.append(time.perf_counter() - t0)
        return out

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, orig)


class TimedSource(RolloutSource):
    """RolloutSource whose rollouts (make) and generation (Engine.generate inside make) are timed."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.make_times: list[float] = []
        self.gen_times: list[float] = []

    def make(self, batch_index: int, recompute_old: bool = True):
        t0 = time.perf_counter()
        with timing(Engine, "generate", self.gen_times):
            out = super().make(batch_index, recompute_old)
        self.make_times.append(time.perf_counter() - t0)
        return out


def make_ours(args, ckpt: Path, tok, prompts, reward: Reward, bf16: bool, out_dir: Path):
    """lmforge's side as the `grpo` stage wires it: RolloutSource -> RolloutBatches -> the shared Trainer."""
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    model = load_model(ckpt, device)
    gc = GRPOConfig(prompts_per_step=args.prompts, group_size=args.group, max_new_tokens=args.max_new,
                    temperature=1.0, clip_low=CLIP_LOW, clip_high=CLIP_HIGH, beta=0.0)
    source = TimedSource(model, tok, prompts, reward, advantage_fn(gc), prompts_per_step=args.prompts,
                         group_size=args.group, max_new_tokens=args.max_new, temperature=1.0, seed=args.seed,
                         bf16=bf16, device=device)
    batches = RolloutBatches(source, micro_batch_size=args.prompts * args.group, skip_idle=True)  # as the stage
    cfg = TrainConfig(steps=args.warmup + args.steps, micro_batch_size=args.prompts * args.group,
                      seq_len=args.prompt_len + args.max_new + 8, lr=args.lr, warmup_steps=0, schedule="constant",
                      weight_decay=0.0, beta2=0.999, grad_clip=1.0, dtype="bf16" if bf16 else "fp32", device="cpu",
                      log_every=10**9, eval_every=10**9, ckpt_every=10**9, tensorboard=False, progress=False,
                      compile=args.compile)
    trainer = Trainer(cfg=cfg, model=model, module=GRPOModule(gc, 1.0), batches=batches, out_dir=out_dir,
                      device=device, lr=cfg.lr, step_stats=lambda: batches.last_stats)
    return trainer, source, batches


def make_theirs(args, hf_dir: Path, prompts, order, bf16: bool, out_dir: Path, on_step):
    """trl's side: GRPOTrainer on the exported model, the same prompts in lmforge's order, no shuffling."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig as TrlGRPOConfig
    from trl import GRPOTrainer

    rewards: list[list[float]] = []

    def letters(prompts, completions, **kwargs) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        rewards.append([score(t) for t in texts])
        return rewards[-1]

    class Trl(GRPOTrainer):
        rollout_times: list
        gen_times: list
        prompt_lens: list
        completion_lens: list

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.rollout_times.append(time.perf_counter() - t0)
            return out

        def _generate_single_turn(self, prompt_ids, *a, **k):
            t0 = time.perf_counter()
            completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *a, **k)
            self.gen_times.append(time.perf_counter() - t0)
            self.prompt_lens.append([len(p) for p in prompt_ids])
            self.completion_lens.append([len(c) for c in completion_ids])
            return completion_ids, logprobs

    class Interleave(TrainerCallback):
        def __init__(self):
            self.full, self.t_mark = [], 0.0

        def on_train_begin(self, *_, **__):
            self.t_mark = time.perf_counter()

        def on_step_end(self, args_, state, *_, **__):
            self.full.append(time.perf_counter() - self.t_mark)
            on_step(state.global_step - 1)
            self.t_mark = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    dataset = Dataset.from_list([{"prompt": prompts[i][0]} for i in order])
    rows = args.prompts * args.group
    cfg = TrlGRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=rows, gradient_accumulation_steps=1,
                        steps_per_generation=1, num_generations=args.group, max_completion_length=args.max_new,
                        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=CLIP_LOW, epsilon_high=CLIP_HIGH,
                        loss_type="dapo", scale_rewards="group", num_iterations=1, use_vllm=False,
                        shuffle_dataset=False, max_steps=args.warmup + args.steps, learning_rate=args.lr,
                        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
                        adam_beta2=0.999, max_grad_norm=1.0, bf16=bf16, use_cpu=True, report_to="none",
                        save_strategy="no", eval_strategy="no", logging_steps=10**9, log_completions=False,
                        disable_tqdm=True, seed=args.seed, data_seed=args.seed, dataloader_num_workers=0,
                        # trl defaults `gradient_checkpointing` to True; transformers 5 calls it
                        # `activation_checkpointing`
                        **{checkpointing_field(TrlGRPOConfig): args.trl_gradient_checkpointing})
    callback = Interleave()
    trainer = Trl(model=model, reward_funcs=[letters], args=cfg, train_dataset=dataset, processing_class=tokenizer,
                  callbacks=[callback])
    trainer.rollout_times, trainer.gen_times, trainer.prompt_lens, trainer.completion_lens = [], [], [], []
    for cb in (PrinterCallback, ProgressCallback):  # no end-of-training summary on stdout
        trainer.remove_callback(cb)
    return trainer, callback, rewards, tokenizer




def med(xs) -> float:
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step (P)")
    ap.add_argument("--group", type=int, default=None, help="samples per prompt (G); P x G rows per step "
                                                           "(default 8; 16 with --demo)")
    ap.add_argument("--max-new", type=int, default=64, help="max completion length in tokens (L)")
    ap.add_argument("--prompt-len", type=int, default=32, help="longest prompt text in tokens; others down to 80%%")
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--dtypes", default="auto",
                    help="comma-separated: fp32 and/or bf16 (autocast); auto: what train.dtype auto picks here "
                         "(bf16 on a CPU with native bf16, else fp32: emulated bf16 is ~70x slower)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="keep trl's default gradient checkpointing on (lmforge's trainer has none)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 suffers less from other busy processes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile lmforge's model (train.compile)")
    ap.add_argument("--demo", nargs="?", const="runs/demo", default=None, metavar="RUN",
                    help="the shape the demo's grpo stage trains at: RUN's (default runs/demo) DPO model, "
                         "8 prompts x 16 samples (= --checkpoint RUN/dpo/model --group 16)")
    args = ap.parse_args()
    if args.demo:
        if args.checkpoint:
            ap.error("--demo sets the checkpoint (RUN/dpo/model): give one of --demo and --checkpoint")
        args.checkpoint = str(Path(args.demo) / "dpo" / "model")
        if not (Path(args.checkpoint) / "model_config.json").exists():
            ap.error(f"--demo: {args.checkpoint} has no model; run `make demo` first")
    if args.group is None:
        args.group = 16 if args.demo else 8

    import datasets
    import transformers
    import trl

    warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6", category=FutureWarning)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    dtypes = [("bf16" if native_bf16("cpu") else "fp32") if d == "auto" else d for d in dtypes]
    n_steps = args.warmup + args.steps
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(args, tmp)
        hf_dir = export_hf(ckpt, tmp / "hf")
        tok = Tokenizer.load(ckpt)
        prompts = make_prompts(tok, args.prompts * n_steps, args.prompt_len, args.seed)
        for dt in dtypes:
            bf16 = dt == "bf16"
            reward = Reward()
            ours, source, batches = make_ours(args, ckpt, tok, prompts, reward, bf16, tmp / f"ours-{dt}")
            # lmforge's visiting order (seeded shuffle), P prompts per step, one epoch: trl gets its dataset in it
            order = [i for s in range(n_steps) for i in source._prompt_ids(s)]
            ours_times, ours_stats = [], []

            def our_step(step, ours=ours, ours_times=ours_times, ours_stats=ours_stats):
                t0 = time.perf_counter()
                rec = ours.train_step(step)
                ours_times.append(time.perf_counter() - t0)
                ours_stats.append(rec)

            theirs, clock, trl_rewards, hf_tok = make_theirs(args, hf_dir, prompts, order, bf16, tmp / f"trl-{dt}",
                                                             our_step)
            theirs.train()
            w = args.warmup
            hf_ids = [hf_tok.apply_chat_template(prompts[i][0], add_generation_prompt=True, tokenize=True,
                                                 return_dict=True)["input_ids"] for i in order]
            same_ids = all(list(h) == source.encoded[i] for h, i in zip(hf_ids, order, strict=True))
            # what trl generated from: each prompt's ids, G times per step, in lmforge's order
            trl_prompts_seen = [n for lens in theirs.prompt_lens for n in lens]
            results[dt] = {
                "lmforge": ours_times[w:], "lmforge_roll": source.make_times[w:], "lmforge_gen": source.gen_times[w:],
                "trl": clock.full[w:], "trl_roll": theirs.rollout_times[w:], "trl_gen": theirs.gen_times[w:],
                "ours_len": [r["response_length"] for r in ours_stats],
                "trl_len": [statistics.fmean(c) for c in theirs.completion_lens],
                "ours_trunc": [r["truncated_fraction"] for r in ours_stats],
                "trl_trunc": [statistics.fmean(n == args.max_new for n in c) for c in theirs.completion_lens],
                "ours_reward": [statistics.fmean(c) for c in reward.calls],
                "trl_reward": [statistics.fmean(c) for c in trl_rewards],
                "logp_diff": [r["logp_max_diff"] for r in ours_stats],
                "loss": [r["loss"] for r in ours_stats],
                "same_ids": same_ids,
                "prompt_lens": (statistics.fmean(len(source.encoded[i]) for i in order),
                                statistics.fmean(trl_prompts_seen)),
            }
            cfg, n_params = ours.model.cfg, sum(p.numel() for p in ours.model.parameters())
            del ours, theirs

    P, G, L = args.prompts, args.group, args.max_new
    load = os.getloadavg()
    print(f"cpu ({torch.get_num_threads()} threads, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the "
          f"end), torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}; "
          + f"{args.checkpoint or 'random model'}: {n_params / 1e6:.2f}M params (d_model {cfg.d_model} x "
          f"{cfg.n_layer} layers, vocab {cfg.vocab_size})"
          + f"; GRPO {P} prompts x {G} samples per step, at most {L} new tokens, temperature 1, beta 0, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    r0 = results[dtypes[0]]
    print(f"prompt length, mean: lmforge {r0['prompt_lens'][0]:.1f} tokens, trl {r0['prompt_lens'][1]:.1f} tokens")
    head = f"{'':>14} {'s/step':>8} {'steps/s':>8}   {'rollouts':>8} {'(generate)':>10} {'update':>8}"
    print(head + f"   {'completion tokens, mean':>23} {'hit max':>8}")
    for dt in dtypes:
        r = results[dt]
        for name, tag in (("lmforge", "ours"), ("trl", "trl")):
            step, roll, gen = med(r[name]), med(r[name + "_roll"]), med(r[name + "_gen"])
            lens = r[f"{tag}_len"][args.warmup:]
            trunc = r[f"{tag}_trunc"][args.warmup:]
            print(f"{name + ' ' + dt:>14} {step:8.2f} {1 / step:8.3f}   {roll:8.2f} {gen:10.2f} {step - roll:8.2f}"
                  f"   {statistics.fmean(lens):23.1f} {statistics.fmean(trunc):8.0%}")
    print(f"(seconds, median step of {args.steps}; update = step - rollouts. Neither side recomputes old log-probs "
          f"(one update per rollout batch); lmforge's rollouts include a no-grad forward over one group "
          f"(logp_max_diff), trl computes entropies in its update)")
    for dt in dtypes:
        r = results[dt]
        ratio = med(r["trl"]) / med(r["lmforge"])
        roll = med(r["trl_roll"]) / med(r["lmforge_roll"])
        gen = med(r["trl_gen"]) / med(r["lmforge_gen"])
        upd = (med(r["trl"]) - med(r["trl_roll"])) / (med(r["lmforge"]) - med(r["lmforge_roll"]))
        print(f"ratio lmforge / trl ({dt}), steps/s: {ratio:.2f}x   (rollouts {roll:.2f}x, generation {gen:.2f}x, "
              f"update {upd:.2f}x; project target >= 4x)")
    print("sanity:")
    for dt in dtypes:
        r = results[dt]
        print(f"  {dt}: prompt token ids identical on both sides: {r['same_ids']}; mean reward of the first step's "
              f"rollouts: lmforge {r['ours_reward'][0]:.4f}, trl {r['trl_reward'][0]:.4f} (sampling differs); "
              f"lmforge logp_max_diff (engine vs trainer, one group) max over steps {max(r['logp_diff']):.2e}")
        print(f"  {dt} per-step mean reward, lmforge: {' '.join(f'{x:.4f}' for x in r['ours_reward'])}; "
              f"trl: {' '.join(f'{x:.4f}' for x in r['trl_reward'])}")
        print(f"  {dt} per-step completion tokens, lmforge: {' '.join(f'{x:.1f}' for x in r['ours_len'])}; "
              f"trl: {' '.join(f'{x:.1f}' for x in r['trl_len'])}")


if __name__ == "__main__":
    main()
