"""Generation throughput: lmforge's engine vs transformers' `generate`, same weights, greedy.

One lmforge checkpoint (a random Llama-compatible model, or --checkpoint DIR) is exported with
`lmforge.model.export.export_hf` and loaded back with `AutoModelForCausalLM`, so both sides run
identical fp32 weights. Both complete the same batch of prompts of different lengths (left
padded) greedily for exactly --new-tokens tokens (stop tokens off on both sides), timed side by
side in one process. Prints new tokens/s of each, the ratio, and whether the greedy outputs are
identical (the sanity check: same model, same text). A benchmark, not a test: nothing asserts speed.

--fastest compares each side in its fastest CPU precision instead: transformers in fp32 and in bf16
(weights cast to bf16), lmforge in fp32 and with `Engine(bf16=True)` (bf16 matmuls, fp32 residual,
KV cache and attention), all four timed side by side (fp32 only on a CPU without native bf16);
the ratio's denominator is the faster transformers run. Greedy agreement is reported against
transformers fp32 for each (identical rows, and identical tokens up to each row's first difference,
of all new tokens): bf16 drifts from fp32.

    python bench/generate_throughput.py                        # d_model 256 x 4 layers, vocab 2048, 8 x 128
    python bench/generate_throughput.py --checkpoint runs/demo/pretrain/model --batch 16
    python bench/generate_throughput.py --fastest                 # each side in its fastest precision
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lmforge.engine import Engine, SamplingParams
from lmforge.model.config import ModelConfig
from lmforge.model.export import export_hf
from lmforge.model.io import load_model, save_model
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.train.config import native_bf16

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there was a small model.",
         "12 + 30 = 42", "Generation is prefill, then one token at a time through the KV cache."] * 20


def make_checkpoint(args, root: Path) -> Path:
    """A random Llama-compatible model with a small tokenizer, saved as an lmforge checkpoint."""
    train_tokenizer(TEXTS, root / "tok", vocab_size=300)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, d_model=args.d_model, n_head=args.heads,
                      n_kv_head=args.kv_heads, max_seq_len=args.max_seq_len, init_std=args.init_std)
    save_model(Transformer(cfg), root / "ckpt", tokenizer_dir=root / "tok")
    return root / "ckpt"


def timed(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds per call and the last output of each function, runs interleaved so that a
    change in machine load (a shared CPU) hits every contender alike."""
    outs = {name: fn() for name, fn in fns.items()}  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, outs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="an lmforge model directory (Llama-compatible)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--init-std", type=float, default=0.05,
                    help="random weights: at lmforge's 0.02 a random model mostly repeats one token, which makes "
                         "the identical-output check weak; 0.05 gives ~100 distinct tokens in 128")
    ap.add_argument("--batch", type=int, default=8, help="prompts per batch")
    ap.add_argument("--prompt-len", type=int, default=48, help="longest prompt; the others are shorter")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time Engine(compile=True)")
    ap.add_argument("--fastest", action="store_true",
                    help="fp32 and bf16 of each side; the ratio to the faster transformers run")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.checkpoint) if args.checkpoint else make_checkpoint(args, Path(tmp))
        export_hf(ckpt, Path(tmp) / "hf")
        ours = load_model(ckpt, device).eval()
        theirs = AutoModelForCausalLM.from_pretrained(Path(tmp) / "hf", attn_implementation="sdpa")
        theirs = theirs.float().to(device).eval()
        tok = Tokenizer.load(ckpt)
    theirs.generation_config.eos_token_id = None  # exactly --new-tokens tokens on both sides
    cfg = ours.cfg

    g = torch.Generator().manual_seed(args.seed)
    B, N = args.batch, args.new_tokens
    lengths = [max(1, args.prompt_len - (i * args.prompt_len) // (2 * B)) for i in range(B)]  # L down to ~L/2
    prompts = [torch.randint(0, min(tok.vocab_size, cfg.vocab_size), (n,), generator=g).tolist() for n in lengths]
    L = max(lengths)
    input_ids = torch.tensor([[tok.pad_id] * (L - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts], device=device)

    params = SamplingParams(max_new_tokens=N, temperature=0.0)
    engine = Engine(ours, batch_size=B)
    reference = Engine(ours, batch_size=B, fast=False)

    def run_ours(e=engine):
        return [c[0].ids for c in e.generate(prompts, params)]

    @torch.inference_mode()
    def run_theirs(m=theirs):
        out = m.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=N,
                         do_sample=False, use_cache=True, pad_token_id=tok.pad_id)
        return out[:, L:].tolist()

    if args.fastest:
        fastest(args, ours, theirs, run_ours, run_theirs, B, N)
        return

    print(f"device {device} ({torch.get_num_threads()} threads), {ours.num_params() / 1e6:.2f}M params "
          f"(d_model {cfg.d_model} x {cfg.n_layer} layers, vocab {cfg.vocab_size}), fp32, greedy, "
          f"{B} prompts of {min(lengths)}-{L} tokens, {N} new tokens each")
    fns = {"transformers": run_theirs, "lmforge": run_ours, "lmforge fast=False": lambda: run_ours(reference)}
    if args.compile:
        compiled = Engine(ours, batch_size=B, compile=True)
        t0 = time.perf_counter()
        run_ours(compiled)
        print(f"compile=True: first generate (compiles the decode step) {time.perf_counter() - t0:.1f} s")
        fns["lmforge compile=True"] = lambda: run_ours(compiled)
    secs, outs = timed(fns, args.repeats)
    results = {name: B * N / dt for name, dt in secs.items()}
    for name, dt in secs.items():
        print(f"{name:>20}: {B * N / dt:9.0f} new tokens/s   ({dt * 1e3:7.1f} ms per batch, median of {args.repeats})")
    for name in fns:
        if name != "transformers":
            print(f"ratio {name} / transformers: {results[name] / results['transformers']:.2f}x")
    if args.compile:
        print(f"compile=True outputs identical to lmforge eager: {outs['lmforge compile=True'] == outs['lmforge']}")
    same = [a == b for a, b in zip(outs["lmforge"], outs["transformers"], strict=True)]
    print(f"greedy outputs identical: {all(same)} ({sum(same)}/{B} rows)")
    if not all(same):
        first = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)
                 for a, b in zip(outs["lmforge"], outs["transformers"], strict=True)]
        print(f"  first differing position per row: {first}")
    print(f"  row 0, first new ids: lmforge {outs['lmforge'][0][:8]}, transformers {outs['transformers'][0][:8]}; "
          f"distinct tokens per row: {[len(set(o)) for o in outs['lmforge']]}")


def agreement(outs: list[list[int]], ref: list[list[int]]) -> tuple[float, float]:
    """(share of identical rows, share of new tokens generated before each row's first difference)."""
    rows = sum(a == b for a, b in zip(outs, ref, strict=True)) / len(ref)
    same = sum(next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(b))
               for a, b in zip(outs, ref, strict=True))
    return rows, same / sum(len(b) for b in ref)


def fastest(args, ours, theirs, run_ours, run_theirs, B: int, N: int):
    """Each side in fp32 and bf16, interleaved; ratios to the faster transformers run."""
    native = args.device != "cpu" or native_bf16("cpu")
    if not native:  # emulated bf16 runs ~70x slower than fp32 here: it cannot be either side's fastest
        print(f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16: fp32 only")
    fns = {"transformers fp32": run_theirs}
    if native:
        theirs_bf16 = copy.deepcopy(theirs).to(torch.bfloat16)
        fns["transformers bf16"] = lambda: run_theirs(theirs_bf16)
    variants = [("lmforge fp32", False, False)] + ([("lmforge bf16", True, False)] if native else [])
    if args.compile:
        variants += [("lmforge fp32 compile", False, True)] + ([("lmforge bf16 compile", True, True)] if native else [])
    for name, bf16, compile_ in variants:
        e = Engine(ours, batch_size=B, bf16=bf16, compile=compile_)
        if compile_:
            run_ours(e)  # compiles the decode step, untimed
        fns[name] = lambda e=e: run_ours(e)
    print(f"{torch.get_num_threads()} threads, {ours.num_params() / 1e6:.2f}M params, greedy, {B} prompts, "
          f"{N} new tokens each; each side in {'fp32 and bf16' if native else 'fp32'}")
    secs, outs = timed(fns, args.repeats)
    ref = outs["transformers fp32"]
    best = min(dt for name, dt in secs.items() if name.startswith("transformers"))
    for name, dt in secs.items():
        rows, toks = agreement(outs[name], ref)
        print(f"{name:>22}: {B * N / dt:8.0f} new tokens/s ({dt * 1e3:7.1f} ms/batch)   {best / dt:5.2f}x the faster "
              f"transformers   agrees with transformers fp32: {rows:.0%} rows, {toks:.1%} tokens")
    print(f"fastest lmforge / fastest transformers: "
          f"{best / min(dt for n, dt in secs.items() if n.startswith('lmforge')):.2f}x")


if __name__ == "__main__":
    main()
