"""`lmforge <command>`: the command line.

    lmforge run RECIPE [key=value ...] [--dry-run] [--fresh] [--redo-changed]   run a recipe's stages
    lmforge demo [key=value ...]                                run recipes/demo.yaml
    lmforge <stage> RECIPE [key=value ...] [--resume] [--fresh] run a recipe up to that stage
    lmforge tokenizer train --input FILE... --out DIR           train a BPE tokenizer on any corpus
    lmforge export CHECKPOINT OUT_DIR                           write a transformers-loadable directory
    lmforge merge ADAPTER BASE OUT                              fold a LoRA adapter into its base model
    lmforge chat CHECKPOINT [-p PROMPT]                         talk to a model
    lmforge eval CHECKPOINT --tasks T1,T2 [--limit N]           benchmarks (`lmforge eval --list`)
    lmforge report RUN_DIR                                      the run's report card (md, html, plots)

User errors print one line (`error: ...`) and exit with code 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from lmforge.errors import LmforgeError


def find_recipe(name: str) -> Path:
    """A recipe path as given, or a shipped recipe by name (demo -> recipes/demo.yaml)."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml"):
        return p
    for root in (Path.cwd() / "recipes", Path(__file__).resolve().parent.parent / "recipes"):
        cand = root / f"{name}.yaml"
        if cand.exists():
            return cand
    return p


def _pipeline_command(args, until: str | None) -> int:
    from lmforge.config import load_run_config
    from lmforge.pipeline import run_pipeline
    from lmforge.train.distributed import cleanup, init_distributed

    cfg = load_run_config(find_recipe(args.recipe), args.overrides)
    if args.dry_run:
        from lmforge.dry_run import dry_run

        return dry_run(cfg, until, redo_changed=args.redo_changed, fresh=args.fresh,
                       resume=args.resume or args.command in ("run", "demo"))
    from lmforge.pipeline import stages_up_to

    stages_up_to(cfg, until)  # a stage the recipe does not list is an error before anything is deleted
    # RunConfig allows only a plain name; checked again here, on every rank, because --fresh deletes
    if Path(cfg.name).name != cfg.name or cfg.name in (".", ".."):
        raise LmforgeError(f"name: {cfg.name!r} is not a plain directory name; not deleting anything")
    info = init_distributed("cuda" if cfg.train.device != "cpu" and _cuda() else "cpu")
    try:
        if args.fresh and info.is_main:
            run_dir = Path(cfg.out_dir) / cfg.name
            if until is None:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                from lmforge.pipeline import fresh_targets

                for name in fresh_targets(cfg, until):
                    shutil.rmtree(run_dir / name, ignore_errors=True)
        from lmforge.train.distributed import barrier

        barrier(info)
        run_pipeline(cfg, until=until, info=info, resume=args.resume or args.command in ("run", "demo"),
                     redo_changed=args.redo_changed)
        if args.command == "demo" and info.is_main:
            print(next_steps(Path(cfg.out_dir) / cfg.name, cfg.stages, args.overrides))
    finally:
        cleanup(info)
    return 0


def next_steps(run_dir: Path, stages: list[str], overrides: list[str]) -> str:
    """What to try after the demo: talk to its last chat model, read the report, run the stages it leaves
    out (with the demo's own overrides, so they land in the same run directory)."""
    chat = [s for s in stages if s != "rm" and (run_dir / s / "model" / "model_config.json").exists()]
    lines = ["next:"]
    if chat:
        lines.append(f"  lmforge chat {run_dir / chat[-1] / 'model'}   # talk to the last model")
    lines.append(f"  the report card: {run_dir / 'report.html'}")
    if "specialize" not in stages:
        keep = [o for o in overrides if not o.startswith("stages=")]  # the recipe's own stage list adds the stage
        lines.append(f"  lmforge run recipes/specialize.yaml {shlex.join(keep)}".rstrip()
                     + "   # specialization on word problems, in this run (~1 min)")
    rlhf = run_dir.parent / "rlhf"
    if not overrides:  # recipes/rlhf.yaml has its own run name: a copy of the demo's run starts it at PPO
        copy = "" if rlhf.exists() else f"cp -al {run_dir} {rlhf} && "
        lines.append(f"  {copy}lmforge run recipes/rlhf.yaml   # RLHF with PPO")
        rlaif = run_dir.parent / "rlaif"
        copy = "" if rlaif.exists() else f"cp -al {run_dir} {rlaif} && "
        lines.append(f"  {copy}lmforge run recipes/rlaif.yaml --redo-changed   # AI-judge pairs, then DPO on them")
    return "\n".join(lines)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _tokenizer_train(args) -> int:
    from lmforge.data import SourceConfig, iter_many
    from lmforge.stages.tokenizer import split_heldout
    from lmforge.tokenizer import check_training_args, train_tokenizer

    # before reading any input, named as the flags they are
    check_training_args(args.vocab_size, args.min_frequency, 1,
                        lambda name, what: LmforgeError(f"--{name.replace('_', '-')}: {what}"))
    sources = [SourceConfig(path=p, format=args.format, text_field=args.text_field) for p in args.input]
    heldout: list[str] = []
    tok = train_tokenizer(split_heldout(iter_many(sources), heldout), args.out, vocab_size=args.vocab_size,
                          min_frequency=args.min_frequency)
    print(f"wrote {Path(args.out) / 'tokenizer.json'} (vocab {tok.vocab_size})")
    if heldout:
        print(f"compression on {len(heldout)} held-out documents: {tok.bytes_per_token(heldout):.3f} bytes/token")
    return 0


def _export(args) -> int:
    from lmforge.model.export import export_hf
    from lmforge.model.reward import is_reward_checkpoint

    out = export_hf(args.checkpoint, args.out)
    auto = "AutoModelForSequenceClassification" if is_reward_checkpoint(args.checkpoint) else "AutoModelForCausalLM"
    print(f"wrote {out} (loads with transformers.{auto}.from_pretrained)")
    return 0


def _merge(args) -> int:
    from lmforge.model.io import check_output_dir, load_model, save_model, staged_dir
    from lmforge.model.lora import load_adapter, merge_lora

    check_output_dir(args.out, args.base, args.adapter)
    model = merge_lora(load_adapter(load_model(args.base), args.adapter))
    with staged_dir(args.out, "model_config.json") as out:
        save_model(model, out, args.base)
    print(f"wrote {args.out} (base {args.base} + adapter {args.adapter}, merged)")
    return 0


def _check_model_flags(args) -> None:
    """--device (chat, serve, eval) and --port (serve), named as the flags they are."""
    from lmforge.train.distributed import resolve_device

    if args.command == "eval" and (args.list or not args.checkpoint):
        return
    resolve_device(args.device, flag="--device")
    if args.command == "serve" and not 0 <= args.port <= 65535:
        raise LmforgeError(f"--port {args.port}: expected a port number from 0 to 65535")


def build_parser() -> argparse.ArgumentParser:
    from lmforge.stages import STAGES

    parser = argparse.ArgumentParser(prog="lmforge", description="Build a chat LM through every stage.")
    sub = parser.add_subparsers(dest="command", required=True)

    def pipeline_args(p, recipe=True):
        if recipe:
            p.add_argument("recipe", help="recipe YAML (or the name of one in recipes/)")
        p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4 model.n_layer=6")
        p.add_argument("--dry-run", action="store_true",
                       help="print the resolved config, check that the local data files and models it names "
                            "exist, say what would run or be kept of each stage (with --fresh/--redo-changed "
                            "as given), and exit without changing anything")
        p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
        p.add_argument("--fresh", action="store_true",
                       help="delete this stage's and later stages' outputs first (an evaluation stage: its own "
                            "only; run/demo: the whole run)")
        p.add_argument("--redo-changed", action="store_true",
                       help="redo complete stages whose recipe section changed since they ran, and every "
                            "later stage (without it, a change is only noted)")

    pipeline_args(sub.add_parser("run", help="run every stage of a recipe"))
    demo = sub.add_parser("demo", help="run recipes/demo.yaml (the whole pipeline on toyworld)")
    pipeline_args(demo, recipe=False)
    demo.set_defaults(recipe="demo")
    for name, stage in STAGES.items():
        if name == "tokenizer":
            continue
        pipeline_args(sub.add_parser(name, help=f"{stage.description} (runs earlier stages if needed)"))

    tk = sub.add_parser("tokenizer", help="tokenizer tools")
    tks = tk.add_subparsers(dest="tok_command", required=True)
    tr = tks.add_parser("train", help="train a byte-level BPE tokenizer on text/JSONL/parquet/HF data")
    tr.add_argument("--input", nargs="+", required=True, help="files, directories or globs")
    tr.add_argument("--out", required=True, help="output directory for tokenizer.json")
    tr.add_argument("--vocab-size", type=int, default=8192)
    tr.add_argument("--min-frequency", type=int, default=2)
    tr.add_argument("--format", default="auto", help="auto|text|jsonl|parquet|hf")
    tr.add_argument("--text-field", default="text")

    ex = sub.add_parser("export", help="export a checkpoint as a Hugging Face Llama directory")
    ex.add_argument("checkpoint")
    ex.add_argument("out")

    mg = sub.add_parser("merge", help="fold a LoRA adapter (PEFT format) into its base checkpoint")
    mg.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    mg.add_argument("base", help="the lmforge checkpoint the adapter was trained on")
    mg.add_argument("out", help="output checkpoint directory")

    sv = sub.add_parser("serve", help="serve a checkpoint over an OpenAI-compatible HTTP API (/v1/chat/completions)")
    sv.add_argument("checkpoint")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--model-name", default=None, help="the model id clients send (default: the directory name; "
                         "<run>-<stage> for runs/<run>/<stage>/model)")
    sv.add_argument("--device", default="cpu")

    from lmforge.chat_cli import add_parser as add_chat
    from lmforge.eval.cli import add_parser as add_eval
    from lmforge.report import add_parser as add_report

    add_chat(sub)
    add_eval(sub)
    add_report(sub)
    return parser


def _out_of_memory(e: RuntimeError) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "can't allocate memory" in str(e)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides written after a flag (e.g. --fresh train.lr=1e-3) land here
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command in ("chat", "serve", "eval"):
            _check_model_flags(args)
        if args.command == "tokenizer":
            return _tokenizer_train(args)
        if args.command == "export":
            return _export(args)
        if args.command == "merge":
            return _merge(args)
        if args.command == "chat":
            from lmforge.chat_cli import run_chat

            return run_chat(args)
        if args.command == "serve":
            from lmforge.serve import serve

            serve(args.checkpoint, args.host, args.port, model_name=args.model_name, device=args.device)
            return 0
        if args.command == "eval":
            from lmforge.eval.cli import run_eval

            return run_eval(args)
        if args.command == "report":
            from lmforge.report import run_report

            return run_report(args)
        until = None if args.command in ("run", "demo") else args.command
        return _pipeline_command(args, until)
    except LmforgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (MemoryError, RuntimeError) as e:  # numpy's, Python's, torch's CPU allocator, CUDA's OutOfMemoryError
        if not isinstance(e, MemoryError) and not _out_of_memory(e):
            raise
        if os.environ.get("LMFORGE_TRACEBACK"):
            raise
        print(f"error: out of memory ({str(e).splitlines()[0] if str(e) else type(e).__name__}); a size in the "
              f"recipe or flags is too large for this machine (model.*, train.seq_len, *.micro_batch_size, "
              f"--batch-size); LMFORGE_TRACEBACK=1 shows where", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; add --resume to the same command to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
