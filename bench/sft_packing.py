"""Is packing SFT conversations worth it? Training throughput of padded vs packed rows, side by side.

SFT pads each micro-batch to its longest conversation (length-bucketed, so little padding). Packing
would fill rows of `--seq-len` with several conversations instead, but then attention needs the
document mask: an explicit (B, T, T) bias in place of the causal kernel. This times one training step
(forward, backward, AdamW; bf16 autocast where the CPU has native bf16) of the demo's model shape on
random ids, for padded micro-batches of several lengths and for packed rows with and without the
mask, interleaved, and prints input slots per second. Packing saves at most the padded share of slots
(the sft stage logs it as `pad_fraction`; 0.099 in the demo), and only if its slots cost no more.

    python bench/sft_packing.py                                   # the demo's shape, random weights
    python bench/sft_packing.py --checkpoint runs/demo/pretrain/model
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lmforge.losses import cross_entropy_sum
from lmforge.model.config import ModelConfig
from lmforge.model.io import load_model
from lmforge.model.transformer import Transformer
from lmforge.train.config import native_bf16


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="an lmforge model directory (default: random, demo shape)")
    ap.add_argument("--micro-batch", type=int, default=16, help="conversations per padded micro-batch")
    ap.add_argument("--padded-lengths", default="96,128,160", help="padded micro-batch lengths to time")
    ap.add_argument("--seq-len", type=int, default=256, help="packed row length")
    ap.add_argument("--docs-per-row", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()

    torch.manual_seed(0)
    if args.checkpoint:
        model = load_model(args.checkpoint, "cpu")
    else:
        model = Transformer(ModelConfig(vocab_size=2048, n_layer=4, d_model=192, n_head=3, max_seq_len=256))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    bf16 = native_bf16("cpu")
    V = model.cfg.vocab_size

    def step(B: int, T: int, segments=None):
        x, y = torch.randint(0, V, (B, T)), torch.randint(0, V, (B, T))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = cross_entropy_sum(model(x, segments=segments), y)[0] / (B * T)
        loss.backward()
        opt.step()
        opt.zero_grad()

    L, k = args.seq_len, args.docs_per_row
    rows = args.micro_batch * max(int(t) for t in args.padded_lengths.split(",")) // L or 1
    bounds = [L * i // k for i in range(k + 1)]
    segs = torch.tensor([[d for d in range(k) for _ in range(bounds[d + 1] - bounds[d])]] * rows)
    cases = {f"padded {args.micro_batch} x {t}": (lambda t=int(t): step(args.micro_batch, t), args.micro_batch * int(t))
             for t in args.padded_lengths.split(",")}
    cases[f"packed {rows} x {L}, document mask"] = (lambda: step(rows, L, segs), rows * L)
    cases[f"packed {rows} x {L}, causal (no mask: leaks)"] = (lambda: step(rows, L), rows * L)
    for fn, _ in cases.values():  # warm-up: kernels for each shape
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: a change in machine load hits every case alike
        for name, (fn, _) in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    print(f"{model.num_params() / 1e6:.2f}M params, {'bf16 autocast' if bf16 else 'fp32'}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    for name, (_, slots) in cases.items():
        dt = statistics.median(times[name])
        print(f"{name:>40}: {dt * 1e3:7.1f} ms/step  {slots / dt:8.0f} slots/s")


if __name__ == "__main__":
    main()
