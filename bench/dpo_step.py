"""DPO training steps/s: lmforge's trainer vs trl's `DPOTrainer`, same weights, same batches.

One lmforge checkpoint (a random Llama-compatible model, or --checkpoint DIR) is exported with
`lmforge.model.export.export_hf` and loaded back with `AutoModelForCausalLM`, so both sides start
from identical fp32 weights. Both train DPO (sigmoid loss, beta 0.1) on the same synthetic
preference pairs: lmforge renders them with its chat template (`lmforge.chat`); trl gets them in
conversational form and renders them with the `chat_template` the export wrote, which gives the
same token ids (checked). Reference log-probs are precomputed once on both sides
(`lmforge.preference.reference_logps`; trl's `precompute_ref_log_probs=True`), untimed. trl is fed
the pairs in the order lmforge's `PreferenceBatches` visits them, through a sequential sampler, so
step s trains on the same batch on both sides. Same optimizer on both sides (fused AdamW, betas
0.9/0.999, no weight decay, constant lr, grad clip 1.0); trl's gradient checkpointing (on by
default in trl) is off like lmforge's; no evaluation, logging or saving. lmforge's Trainer flushes
denormals to zero process-wide, so trl runs with that too.

Each precision is one trl training run in which a `TrainerCallback` runs one lmforge
`Trainer.train_step` right after each trl step, so a change in load on a shared CPU hits both
alike. trl's step time runs from the end of the previous lmforge step to trl's `on_step_end`: its
data loading and collation are in it, as lmforge's are in `train_step`; the forward, backward and
optimizer part alone (`on_step_begin` -> `on_step_end`) is printed too. The first --warmup steps
are not timed. fp32, then bf16 autocast (what lmforge's `train.dtype` auto picks on a CPU with
native bf16; trl's `bf16=True`, which is also trl's own default); fp32 only on a CPU without native
bf16. Prints steps/s of each (median step), the ratios, the mean sequence length each side trained
on and the sanity checks: identical token ids, reference log-probs equal in fp32, first-step loss ln
2 = 0.6931 on both sides (the policy is the reference), both losses on one identical batch with
reference log-probs 0 within 1e-3 in fp32, and the per-step losses of the two runs side by side. A
benchmark, not a test: nothing asserts speed.

    python bench/dpo_step.py                          # d_model 256 x 4 layers, vocab 2048, 8 pairs x ~110 tokens
    python bench/dpo_step.py --checkpoint runs/demo/sft/model --batch 16 --steps 20
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # reference log-prob and dataset progress bars

import numpy as np  # noqa: E402
import torch  # noqa: E402
from trl_common import add_model_args, checkpointing_field, make_checkpoint, text_of  # noqa: E402

from lmforge.model.export import export_hf  # noqa: E402
from lmforge.model.io import load_model  # noqa: E402
from lmforge.preference import PreferenceBatches, PreferenceModule, reference_logps, tokenize_pairs  # noqa: E402
from lmforge.tokenizer import Tokenizer  # noqa: E402
from lmforge.train.config import TrainConfig, native_bf16  # noqa: E402
from lmforge.train.trainer import Trainer  # noqa: E402

BETA = 0.1


@dataclass
class Pair:
    prompt: list   # messages
    chosen: str
    rejected: str






def make_pairs(tok, n: int, prompt_len: int, reply_len: int, seed: int) -> list[Pair]:
    """n pairs; prompts of 80-100% of prompt_len tokens, answers of 80-100% of reply_len tokens."""
    rng = random.Random(seed)
    return [Pair([{"role": "user", "content": text_of(tok, rng.randint(prompt_len * 4 // 5, prompt_len), rng)}],
                 text_of(tok, rng.randint(reply_len * 4 // 5, reply_len), rng),
                 text_of(tok, rng.randint(reply_len * 4 // 5, reply_len), rng)) for _ in range(n)]


def make_ours(args, ckpt: Path, pairs, tok, order, bf16: bool, out_dir: Path):
    """lmforge's side as the `dpo` stage wires it: rows, reference log-probs once, then the shared Trainer."""
    device = torch.device("cpu")
    torch.manual_seed(args.seed)
    model = load_model(ckpt, device)
    data = tokenize_pairs(pairs, tok, args.max_len)
    assert data.dropped == 0, f"{data.dropped} pairs longer than {args.max_len} tokens"
    data.ref = reference_logps(model, data, tok.pad_id, 2 * args.batch, device, bf16)
    batches = PreferenceBatches(data, tok.pad_id, args.batch, 1, args.seed)
    assert [batches._item(p) for p in range(len(order))] == order
    cfg = TrainConfig(steps=args.warmup + args.steps, micro_batch_size=args.batch, seq_len=args.max_len, lr=args.lr,
                      warmup_steps=0, schedule="constant", weight_decay=0.0, beta2=0.999, grad_clip=1.0,
                      dtype="bf16" if bf16 else "fp32", device="cpu", log_every=10**9, eval_every=10**9,
                      ckpt_every=10**9, tensorboard=False, progress=False, compile=args.compile)
    module = PreferenceModule("dpo", beta=BETA)
    trainer = Trainer(cfg=cfg, model=model, module=module, batches=batches, out_dir=out_dir, device=device,
                      lr=cfg.lr)
    return trainer, data, batches, module


def make_theirs(args, hf_dir: Path, pairs, order, bf16: bool, out_dir: Path, on_step):
    """trl's side: DPOTrainer on the exported model, the same pairs in lmforge's order, a sequential sampler."""
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, ProgressCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Trl(DPOTrainer):
        losses: list
        shapes: list

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                self.losses.append(float(loss.detach()))
                mask = inputs["attention_mask"]
                self.shapes.append((float(mask.sum(1).float().mean()), mask.shape[1]))
            return loss

    class Interleave(TrainerCallback):
        def __init__(self):
            self.full, self.inner, self.t_begin, self.t_mark = [], [], 0.0, 0.0

        def on_train_begin(self, *_, **__):
            self.t_mark = time.perf_counter()

        def on_step_begin(self, *_, **__):
            self.t_begin = time.perf_counter()

        def on_step_end(self, args_, state, *_, **__):
            t = time.perf_counter()
            self.full.append(t - self.t_mark)
            self.inner.append(t - self.t_begin)
            on_step(state.global_step - 1)
            self.t_mark = time.perf_counter()

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    rows = [pairs[i] for i in order]
    dataset = Dataset.from_list([{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
                                  "rejected": [{"role": "assistant", "content": p.rejected}]} for p in rows])
    cfg = DPOConfig(output_dir=str(out_dir), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                    max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
                    beta=BETA, loss_type=["sigmoid"], max_length=args.max_len + 1, precompute_ref_log_probs=True,
                    precompute_ref_batch_size=args.batch,
                    bf16=bf16, use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
                    logging_steps=10**9, disable_tqdm=True, seed=args.seed, data_seed=args.seed,
                    dataloader_num_workers=0,
                    # trl defaults `gradient_checkpointing` to True; transformers 5 calls it `activation_checkpointing`
                    **{checkpointing_field(DPOConfig): args.trl_gradient_checkpointing})
    callback = Interleave()
    trainer = Trl(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer, callbacks=[callback])
    trainer.losses, trainer.shapes = [], []
    for cb in (PrinterCallback, ProgressCallback):  # no end-of-training summary on stdout
        trainer.remove_callback(cb)
    return trainer, callback




def batch_loss_ours(module, trainer, batches, items, ref_c, ref_r) -> float:
    inputs, targets, last, _, labels = batches.get(items)
    ref = torch.cat([torch.as_tensor(ref_c), torch.as_tensor(ref_r)]).float()
    with torch.no_grad():
        loss_sum, _ = module.loss(trainer.model, (inputs, targets, last, ref, labels))
    return float(loss_sum) / len(items)


def batch_loss_theirs(trainer, items, ref_c, ref_r) -> float:
    examples = [dict(trainer.train_dataset[i], ref_chosen_logps=float(c), ref_rejected_logps=float(r))
                for i, c, r in zip(items, ref_c, ref_r, strict=True)]
    inputs = trainer.data_collator(examples)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    for mode in trainer._metrics.values():  # keep the check's diagnostics out of trl's logs
        mode.clear()
    return float(loss)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(ap)
    ap.add_argument("--batch", type=int, default=8, help="preference pairs per step (2x rows per forward)")
    ap.add_argument("--prompt-len", type=int, default=48, help="longest prompt in tokens; the others down to 80%%")
    ap.add_argument("--reply-len", type=int, default=72, help="longest answer in tokens; the others down to 80%%")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--dtypes", default="auto", help="comma-separated: fp32 and/or bf16 (autocast); auto: fp32,bf16 "
                    "where the CPU has native bf16, else fp32 (emulated bf16 is ~70x slower)")
    ap.add_argument("--trl-gradient-checkpointing", action="store_true",
                    help="keep trl's default gradient checkpointing on (lmforge's trainer has none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile", action="store_true", help="torch.compile lmforge's model (train.compile)")
    args = ap.parse_args()

    import datasets
    import transformers
    import trl

    warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6", category=FutureWarning)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if dtypes == ["auto"]:
        dtypes = ["fp32", "bf16"] if native_bf16("cpu") else ["fp32"]
    n_steps = args.warmup + args.steps
    args.max_len = args.prompt_len + args.reply_len + 8  # + BOS, role markers, end of turn; no pair is dropped
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(args, tmp)
        hf_dir = export_hf(ckpt, tmp / "hf")
        tok = Tokenizer.load(ckpt)
        pairs = make_pairs(tok, args.batch * n_steps, args.prompt_len, args.reply_len, args.seed)
        order_src = PreferenceBatches(tokenize_pairs(pairs, tok, args.max_len), tok.pad_id, args.batch, 1, args.seed)
        order = [order_src._item(p) for p in range(args.batch * n_steps)]  # lmforge's visiting order, one epoch
        results: dict = {}
        for dt in dtypes:
            bf16 = dt == "bf16"
            ours, data, batches, module = make_ours(args, ckpt, pairs, tok, order, bf16, tmp / f"ours-{dt}")
            ours_times, ours_losses = [], []

            def our_step(step, ours=ours, ours_times=ours_times, ours_losses=ours_losses):
                t0 = time.perf_counter()
                rec = ours.train_step(step)
                ours_times.append(time.perf_counter() - t0)
                ours_losses.append(rec["loss"])

            theirs, clock = make_theirs(args, hf_dir, pairs, order, bf16, tmp / f"trl-{dt}", our_step)
            ref_theirs = np.stack([np.asarray(theirs.train_dataset["ref_chosen_logps"], dtype=np.float64),
                                   np.asarray(theirs.train_dataset["ref_rejected_logps"], dtype=np.float64)], 1)
            ref_ours = data.ref[order]  # trl's dataset is in lmforge's visiting order
            checks = {"ref_diff": float(np.abs(ref_ours - ref_theirs).max())}
            if dt == "fp32":
                same = all(list(theirs.train_dataset[k]["prompt_ids"]) + list(theirs.train_dataset[k][side + "_ids"])
                           == data.rows[2 * i + j][0].tolist()
                           for k, i in enumerate(order) for j, side in enumerate(("chosen", "rejected")))
                # step 0's batch with reference log-probs 0 on both sides: the loss is then a function of the policy
                # log-probs alone, -log sigma(beta (log pi(chosen) - log pi(rejected))), not ln 2 whatever they are
                items = order[:args.batch]
                rc = rr = np.zeros(args.batch)
                checks.update(same_ids=same, batch_ours=batch_loss_ours(module, ours, batches, items, rc, rr),
                              batch_theirs=batch_loss_theirs(theirs, list(range(args.batch)), rc, rr))
            theirs.train()
            w = args.warmup
            results[dt] = {"lmforge": ours_times[w:], "trl": clock.full[w:], "trl_inner": clock.inner[w:],
                           "loss_ours": ours_losses, "loss_theirs": theirs.losses, "shapes": theirs.shapes,
                           "ours_shapes": [batches.batches(s)[0][0].shape[1] for s in range(n_steps)], **checks}
            cfg, n_params = ours.model.cfg, sum(p.numel() for p in ours.model.parameters())
            del ours, theirs

    lens = [len(r[0]) - 1 for r in data.rows]
    print(f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}, trl {trl.__version__}, "
          f"transformers {transformers.__version__}; "
          + f"{args.checkpoint or 'random model'}: {n_params / 1e6:.2f}M params (d_model {cfg.d_model} x "
          f"{cfg.n_layer} layers, vocab {cfg.vocab_size})"
          + f"; DPO beta {BETA}, {args.batch} pairs per step ({2 * args.batch} rows), "
          f"{args.steps} timed steps after {args.warmup} warm-up, reference log-probs precomputed")
    r0 = results[dtypes[0]]
    trl_tokens = statistics.fmean(s[0] for s in r0["shapes"])
    print(f"sequence length trained on, mean over rows: lmforge forwards {statistics.fmean(lens):.1f} tokens "
          f"(batches padded to {statistics.fmean(r0['ours_shapes']):.1f}), trl forwards {trl_tokens:.1f} "
          f"(padded to {statistics.fmean(s[1] for s in r0['shapes']):.1f}): the same rows; trl feeds the last "
          f"token too and drops its logit, lmforge does not feed it")
    print(f"{'':>14} {'steps/s':>9} {'ms/step':>9}   {'trl fwd+bwd+opt only':>22}")
    for dt in dtypes:
        r = results[dt]
        for name in ("lmforge", "trl"):
            med = statistics.median(r[name])
            extra = f"   {1e3 * statistics.median(r['trl_inner']):17.1f} ms" if name == "trl" else ""
            print(f"{name + ' ' + dt:>14} {1 / med:9.2f} {1e3 * med:9.1f}{extra}")
    print(f"(median step of {args.steps}; trl's step includes its data loading and per-step metrics, like "
          f"lmforge's train_step)")
    sps = {(name, dt): 1 / statistics.median(results[dt][name]) for dt in dtypes for name in ("lmforge", "trl")}
    for dt in dtypes:
        print(f"ratio lmforge / trl ({dt}): {sps['lmforge', dt] / sps['trl', dt]:.2f}x")
    if {"fp32", "bf16"} <= set(dtypes):
        print(f"ratio lmforge bf16 / trl fp32: {sps['lmforge', 'bf16'] / sps['trl', 'fp32']:.2f}x   "
              f"(lmforge bf16 / fp32: {sps['lmforge', 'bf16'] / sps['lmforge', 'fp32']:.2f}x, "
              f"trl bf16 / fp32: {sps['trl', 'bf16'] / sps['trl', 'fp32']:.2f}x)")
    print("sanity:")
    for dt in dtypes:
        r = results[dt]
        l0, t0 = r["loss_ours"][0], r["loss_theirs"][0]
        diffs = [abs(a - b) for a, b in zip(r["loss_ours"], r["loss_theirs"], strict=True)]
        print(f"  {dt}: first-step loss lmforge {l0:.4f}, trl {t0:.4f} (ln 2 = {math.log(2):.4f}); reference "
              f"log-probs max |diff| {r['ref_diff']:.2e}; per-step losses max |diff| {max(diffs):.2e}")
        if "same_ids" in r:
            ok = abs(r["batch_ours"] - r["batch_theirs"]) < 1e-3
            print(f"  fp32: token ids identical on both sides: {r['same_ids']}; step 0's batch with reference "
                  f"log-probs 0: loss lmforge {r['batch_ours']:.6f}, trl {r['batch_theirs']:.6f}, agree within 1e-3: "
                  f"{ok}")
        print(f"  {dt} losses, lmforge: {' '.join(f'{x:.4f}' for x in r['loss_ours'])}")
        print(f"  {dt} losses, trl:     {' '.join(f'{x:.4f}' for x in r['loss_theirs'])}")


if __name__ == "__main__":
    main()
