"""Helpers several stages share: where the corpus and the tokenizer of a run live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError


def pretraining_documents(ctx) -> Iterator[str]:
    """The recipe's pretraining text: its data sources, or else the toyworld corpus."""
    from lmforge.data import iter_many

    if ctx.cfg.data.sources:
        yield from iter_many(ctx.cfg.data.sources)
        return
    path = ctx.stage_dir("toyworld") / "corpus.jsonl"
    if not path.exists():
        raise LmforgeError(f"{path}: missing; add the 'toyworld' stage or set data.sources")
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)["text"]


def tokenizer_dir(ctx) -> Path:
    """The run's tokenizer: trained (or copied from tokenizer.path) by the `tokenizer` stage."""
    return ctx.stage_dir("tokenizer")


def resume_step(ctx, trainer, name: str) -> int:
    """Continue from the stage's latest checkpoint when asked to; refuse to overwrite one silently."""
    out = ctx.stage_dir(name)
    if not (out / "checkpoints" / "latest").exists():
        return 0
    if not ctx.resume:
        raise LmforgeError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it "
                           f"or --fresh to start over")
    start = trainer.resume()
    ctx.log(f"[{name}] resuming from step {start}")
    return start


def load_world(ctx):
    from lmforge.toyworld import World

    path = ctx.stage_dir("toyworld") / "world.json"
    if not path.exists():
        raise LmforgeError(f"{path}: missing; the toyworld stage has not run")
    return World.load(path)
