"""Training throughput: lmforge vs transformers' LlamaForCausalLM of identical shape.

Both models: same shape, same batch, AdamW, weights fp32, timed side by side in one process, under
bf16 autocast where the device has native bf16 (lmforge's `train.dtype` auto), else fp32 (`--dtype`
forces either). Prints tokens/s of each, the ratio, and lmforge's MFU against a matmul peak of the
same precision measured in the same run. This is a benchmark, not a test: nothing here asserts speed.

    python bench/train_throughput.py                      # d_model 512, 8 layers, batch 8 x 512
    python bench/train_throughput.py --d-model 256 --layers 4 --compile
"""

from __future__ import annotations

import argparse
import time

import torch

from lmforge.losses import cross_entropy_sum
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.train.config import TrainConfig
from lmforge.train.metrics import measure_peak_flops


def time_steps(step_fn, warmup: int, steps: int, device) -> float:
    for _ in range(warmup):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def make_step(model, forward, x, y, device, bf16: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss, n = cross_entropy_sum(forward(x), y)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"),
                    help="autocast: auto = bf16 where native (emulated bf16 on a CPU is ~70x slower)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time lmforge under torch.compile")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, d_model=args.d_model, n_head=args.heads,
                      n_kv_head=args.kv_heads, max_seq_len=args.seq)
    ours = Transformer(cfg).to(device)
    hf_cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
                         num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
                         num_key_value_heads=cfg.n_kv_head, max_position_embeddings=args.seq,
                         rms_norm_eps=cfg.norm_eps, tie_word_embeddings=False, attn_implementation="sdpa")
    theirs = LlamaForCausalLM(hf_cfg).to(device)
    theirs.load_state_dict(ours.state_dict())  # identical weights, names match one to one
    x = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    y = torch.randint(0, args.vocab, (args.batch, args.seq), device=device)
    tokens = args.batch * args.seq

    bf16 = TrainConfig(dtype=args.dtype).use_bf16(device)
    peak = measure_peak_flops(device, torch.bfloat16 if bf16 else torch.float32, seconds=1.0)
    flops_tok = ours.flops_per_token(args.seq)
    print(f"device {device} ({torch.get_num_threads()} threads), {ours.num_params() / 1e6:.1f}M params, "
          f"batch {args.batch}x{args.seq}, {'bf16 autocast' if bf16 else 'fp32'}, measured matmul peak "
          f"{peak / 1e12:.3f} TFLOP/s")

    results = {}
    runs = [("transformers", theirs, lambda inp: theirs(input_ids=inp).logits),
            ("lmforge", ours, ours)]
    if args.compile:
        compiled = torch.compile(ours)
        runs.append(("lmforge+compile", ours, compiled))
    for name, model, fwd in runs:
        dt = time_steps(make_step(model, fwd, x, y, device, bf16), args.warmup + (3 if "compile" in name else 0),
                        args.steps, device)
        results[name] = tokens / dt
        print(f"{name:>16}: {tokens / dt:10.0f} tokens/s   MFU {flops_tok * tokens / dt / peak:6.1%}")
    for name in [n for n in results if n != "transformers"]:
        print(f"ratio {name} / transformers: {results[name] / results['transformers']:.2f}x")


if __name__ == "__main__":
    main()
