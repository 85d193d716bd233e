"""Helpers several stages share: where the corpus and the tokenizer of a run live."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from lmforge.errors import LmforgeError


def pretraining_documents(ctx) -> Iterator[str]:
    """The recipe's pretraining text: the curated corpus when the recipe has the `curate` stage,
    else its data sources, or else the toyworld corpus."""
    from lmforge.data import iter_many

    if "curate" in ctx.cfg.stages:
        path = ctx.stage_dir("curate") / "documents.jsonl"
        if not path.exists():
            raise LmforgeError(f"{path}: missing; the curate stage has not run")
        yield from read_texts(path)
        return
    if ctx.cfg.data.sources:
        yield from iter_many(ctx.cfg.data.sources)
        return
    path = ctx.stage_dir("toyworld") / "corpus.jsonl"
    if not path.exists():
        raise LmforgeError(f"{path}: missing; add the 'toyworld' stage or set data.sources")
    yield from read_texts(path)


def documents_source(ctx) -> str:
    """What `pretraining_documents` reads, as a string that changes when the documents may have: the
    curated or toyworld file's size and modification time, or the data.sources settings (and the size
    and modification time of those that are local files)."""
    import dataclasses

    if "curate" in ctx.cfg.stages or not ctx.cfg.data.sources:
        path = ctx.stage_dir("curate") / "documents.jsonl" if "curate" in ctx.cfg.stages \
            else ctx.stage_dir("toyworld") / "corpus.jsonl"
        st = path.stat() if path.exists() else None
        return f"{path.name}:{st.st_size}:{st.st_mtime_ns}" if st else str(path)
    files = [Path(s.path) for s in ctx.cfg.data.sources if Path(s.path).is_file()]  # local files: their state too
    return json.dumps([[dataclasses.asdict(s) for s in ctx.cfg.data.sources],
                       [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]], sort_keys=True)


def read_texts(path: Path) -> Iterator[str]:
    """The "text" of each line of a JSONL file a stage wrote, as written (not stripped); a damaged line
    (an interrupted copy, a hand edit) is a one-line error naming the file and line."""
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            try:
                yield json.loads(line.decode("utf-8"))["text"]
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                raise LmforgeError(f"{path}:{lineno}: damaged (expected a JSON object with 'text'); redo the "
                                   f"stage that wrote it (--fresh)") from None


def tokenizer_dir(ctx) -> Path:
    """The run's tokenizer: trained (or copied from tokenizer.path) by the `tokenizer` stage."""
    return ctx.stage_dir("tokenizer")


def latest_checkpoint(out: Path, resume: bool) -> str | None:
    """The name of the stage's latest checkpoint (in `out`/checkpoints) to continue from, or None to start
    afresh; refuses to overwrite one silently (without `resume`, or without a `latest` pointer)."""
    if not (out / "checkpoints" / "latest").exists():
        steps = sorted((out / "checkpoints").glob("step_*"))
        if steps:  # `latest` is written after a checkpoint is complete: without it, none is known to be
            raise LmforgeError(f"{out / 'checkpoints'}: {steps[-1].name} but no 'latest' pointer (a run stopped "
                               f"while saving, or it was deleted); pass --fresh to start over")
        return None
    if not resume:
        raise LmforgeError(f"{out}: holds checkpoints of an earlier run; pass --resume to continue it "
                           f"or --fresh to start over")
    return (out / "checkpoints" / "latest").read_text(errors="replace").strip()


def resume_step(ctx, trainer, name: str) -> int:
    """Continue from the stage's latest checkpoint when asked to (`latest_checkpoint`'s rules)."""
    if latest_checkpoint(ctx.stage_dir(name), ctx.resume) is None:
        return 0
    start = trainer.resume()
    ctx.log(f"[{name}] resuming from step {start}")
    return start


def progress_bar(ctx, name: str) -> str | None:
    """The description of a stage's progress bar (shown on the main process when `train.progress` is on), or None."""
    return name if ctx.cfg.train.progress and ctx.info.is_main else None


def load_world(ctx):
    from lmforge.toyworld import World

    path = ctx.stage_dir("toyworld") / "world.json"
    if not path.exists():
        raise LmforgeError(f"{path}: missing; the toyworld stage has not run")
    return World.load(path)


def model_dir(ctx, init: str, key: str) -> Path:
    """`init` names a stage of this run (its model/ directory) or a checkpoint directory."""
    if init in ctx.cfg.stages:
        d = ctx.stage_dir(init) / "model"
        if not (d / "model_config.json").exists():  # e.g. listed after the stage that starts from it
            raise LmforgeError(f"{key}: stage {init!r} has no model yet ({d}); run it first (lmforge {init} RECIPE)")
        return d
    p = Path(init)
    if not (p / "model_config.json").exists():
        raise LmforgeError(f"{key}: {init!r} is neither a stage of this recipe nor a checkpoint directory")
    return p


def check_task_mix(obj, field: str) -> None:
    """A config field {task: weight} of toyworld task types with positive weights ({} means the default)."""
    from lmforge.errors import FieldError
    from lmforge.toyworld.tasks import TASKS

    for task, weight in getattr(obj, field).items():
        if task not in TASKS:
            raise FieldError(f"{field}.{task}", f"not a toyworld task (tasks: {', '.join(TASKS)})")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            raise FieldError(f"{field}.{task}", f"expected a weight > 0, got {weight!r}")
