"""`lmforge eval CHECKPOINT --tasks ...`: run evaluation tasks on a checkpoint.

    lmforge eval --list
    lmforge eval runs/demo/pretrain/model --tasks toyworld_cloze_heldout toyworld_arithmetic
    lmforge eval runs/demo/sft/model --tasks gsm8k --data ../shared/data/gsm8k/test.jsonl --chat --limit 50
    lmforge eval CKPT --tasks bbh --data ../shared/data/bbh --limit 20 --log-samples
    lmforge eval CKPT --tasks "gsm8k:path=gsm.jsonl,num_fewshot=8" "svamp:path=SVAMP.json,cot=false"

Results go to CHECKPOINT/eval/results.json (or --out DIR), samples to samples/<task>.jsonl.
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse

from lmforge.errors import LmforgeError


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the `eval` subcommand to an argparse subparsers object."""
    p = sub.add_parser("eval", help="evaluate a checkpoint on benchmark and toyworld tasks",
                       description="Evaluate a checkpoint. Tasks: `lmforge eval --list`; per-task options: "
                                   "NAME:key=value,... with keys path, fewshot, hf, config, split, num_fewshot, "
                                   "cot, limit, max_new_tokens.")
    p.add_argument("checkpoint", nargs="?", help="lmforge checkpoint directory (model_config.json, weights, tokenizer)")
    p.add_argument("--tasks", nargs="+", default=[], metavar="TASK",
                   help="task or group names (comma- or space-separated), each optionally NAME:key=value,...")
    p.add_argument("--list", action="store_true", help="list the tasks and groups, then exit")
    p.add_argument("--data", help="local data for the tasks: a file (one task) or a directory laid out like "
                                  "../shared/data; default: the Hugging Face dataset of each task")
    p.add_argument("--world", help="toyworld world.json (default: generate_world(0))")
    p.add_argument("--num-fewshot", type=int, help="examples shown before each question (default: per task)")
    p.add_argument("--cot", action=argparse.BooleanOptionalAction, default=None,
                   help="chain-of-thought (--cot) or direct-answer (--no-cot) prompts (default: per task, CoT)")
    p.add_argument("--chat", action="store_true", help="render prompts with the chat template (chat/SFT models)")
    p.add_argument("--limit", type=int, help="evaluate only the first N documents of each task")
    p.add_argument("--seed", type=int, default=0, help="few-shot choice, toyworld examples, sampling")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (default: per task)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per generation run / log-likelihood forward")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--out", help="output directory (default: CHECKPOINT/eval)")
    p.add_argument("--tools", action="store_true", help="let chat models call tools (the calculator) while answering")
    p.add_argument("--log-samples", action="store_true", help="write every prompt, output and extracted answer")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def run_eval(args) -> int:
    from lmforge.eval.runner import evaluate_checkpoint
    from lmforge.eval.tasks import list_tasks

    if args.list:
        for name, kind, description in list_tasks():
            print(f"{name:<44} {kind:<10} {description}")
        return 0
    if not args.checkpoint:
        raise LmforgeError("eval: give a CHECKPOINT directory (or --list to see the tasks)")
    if not args.tasks:
        raise LmforgeError("eval: give --tasks NAME [NAME ...] (`lmforge eval --list` shows them)")
    report = evaluate_checkpoint(
        args.checkpoint, args.tasks, data=args.data, world=args.world, num_fewshot=args.num_fewshot, cot=args.cot,
        chat=args.chat, limit=args.limit, seed=args.seed, max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size, temperature=args.temperature, device=args.device, dtype=args.dtype,
        out_dir=args.out, log_samples=args.log_samples, progress=args.progress, tools=args.tools)
    print(format_table(report))
    for note in truncation_notes(report):
        print(note)
    print(f"wrote {report['path']}")
    return 0


def truncation_notes(report: dict) -> list[str]:
    """One line per task whose prompts were cut to fit the model's context (results.json has the count).

    The prompt gets the context less the answer's budget: the hint is fewer shots, or where there are
    none, a smaller --max-new-tokens.

    >>> truncation_notes({"results": {"gsm8k": {"n": 50, "truncated_prompts": 50, "num_fewshot": 8}, "arc": {"n": 9},
    ...                               "svamp": {"n": 20, "truncated_prompts": 3, "num_fewshot": 0}}})[0]
    'note: gsm8k: 50 of 50 prompts were cut from the left to fit the context (fewer shots: gsm8k:num_fewshot=N)'
    >>> truncation_notes({"results": {"svamp": {"n": 20, "truncated_prompts": 3, "num_fewshot": 0}}})[0][-62:]
    'to fit the context (a smaller --max-new-tokens leaves it room)'
    """
    def hint(name: str, e: dict) -> str:
        return ("a smaller --max-new-tokens leaves it room" if e.get("num_fewshot") == 0
                else f"fewer shots: {name}:num_fewshot=N")

    return [f"note: {name}: {e['truncated_prompts']} of {e['n']} prompts were cut from the left to fit the context "
            f"({hint(name, e)})" for name, e in report["results"].items() if e.get("truncated_prompts")]


def _cell(x: float) -> str:
    """4 decimals, or 4 significant digits when that would not fit a column (a perplexity of 1e18).

    >>> _cell(0.12345), _cell(1578895737512271360.0), _cell(123456.7)
    ('0.1235', '1.579e+18', '1.235e+05')
    """
    return f"{x:.4f}" if abs(x) < 1e5 else f"{x:.4g}"


def format_table(report: dict) -> str:
    """One line per task (or group) and metric: value ± stderr (n)."""
    lines = [f"{'task':<44} {'metric':<22} {'value':>10} {'stderr':>9} {'n':>6}"]
    for section in ("results", "groups"):
        for name, entry in report[section].items():
            label = name if section == "results" else f"{name} (group)"
            for metric, value in entry["metrics"].items():
                se = entry["stderr"].get(metric)
                lines.append(f"{label:<44} {metric:<22} {_cell(value):>10} {'' if se is None else _cell(se):>9} "
                             f"{entry['n']:>6}")
                label = ""
    return "\n".join(lines)
