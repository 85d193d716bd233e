"""`--dry-run`: what a command would do, without doing it.

It prints the resolved config, then, on stderr, what the run would do with each stage given the run
directory as it is (`plan`), and checks that what the stages it would run read is there:
local data paths, the models they start from or score with, a judge's constitution. Each problem is
one `error:` line naming its key, and the exit code is 2.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.pipeline import (
    RunContext,
    check_requirements,
    check_run_dir,
    decide,
    fresh_targets,
    redoes_later,
    stages_up_to,
)


def dry_run(cfg, until: str | None, *, redo_changed: bool, fresh: bool, resume: bool) -> int:
    """--dry-run: the resolved config (stdout), then on stderr what the run would do with each stage and
    whether what the stages it would run read is there: local data paths, models, the run directory."""
    from lmforge.config import dump_yaml

    print(dump_yaml(cfg), end="")
    names = stages_up_to(cfg, until)
    try:  # given the run directory as it is now
        steps = plan(cfg, until, redo_changed=redo_changed, fresh=fresh, resume=resume)
    except LmforgeError as e:  # an unusable run directory, or an input stage neither complete nor run first
        blocked = [str(e)]
    else:
        blocked = [line for _, action, line in steps if action == "stop"]
        print("\n".join(line for _, action, line in steps if action != "stop"), file=sys.stderr)
        names = [name for name, action, _ in steps if action in ("run", "resume", "redo")]  # kept ones read nothing
    problems, checked, hub = check_paths(cfg, names)
    for problem in problems + blocked:
        print(f"error: {problem}", file=sys.stderr)
    print(f"dry run: {checked} local path(s) checked, {len(problems)} missing"
          + (f"; {hub} Hub dataset id(s) not checked (they need the network)" if hub else ""), file=sys.stderr)
    return 2 if problems or blocked else 0


def plan(cfg, until: str | None = None, redo_changed: bool = False, fresh: bool = False,
         resume: bool = True) -> list[tuple[str, str, str]]:
    """What `lmforge run` (or `lmforge <until>`) would do with each stage, doing nothing: for --dry-run.
    (stage, action, line): action "run", "resume", "redo", "skip", "delete" (--fresh on a stage command
    deletes the later stages too) or "stop" (the run would stop there: checkpoints of an earlier run and
    no --resume). An unusable run directory or a missing input stage raises, as the run would."""
    from lmforge.config import RunConfig

    check_run_dir(cfg)
    gone = fresh_targets(cfg, until) if fresh else []
    ctx = _AfterFresh(cfg=cfg, gone=frozenset(gone), resume=resume)
    names = stages_up_to(cfg, until)
    check_requirements(ctx, names)
    default, redo, will_run, steps = RunConfig(), False, [], []
    for name in names:
        action, why = decide(ctx, name, default, redo, redo_changed, will_run)
        if action == "skip":
            steps.append((name, "skip", f"[{name}] complete, kept"
                          + (f" (note: {why}; --redo-changed redoes it)" if why else "")))
            continue
        if action == "redo":
            steps.append((name, "redo", f"[{name}] would be redone: {why}"))
        else:
            steps.append((name, *_start(ctx, name)))
        will_run.append(name)
        redo = redo or redoes_later(name, redo_changed)
    steps += [(name, "delete", f"[{name}] would be deleted (--fresh: it was built on {until})")
              for name in gone if name not in names and ctx.stage_dir(name).exists()]
    return steps


def _start(ctx: RunContext, name: str) -> tuple[str, str]:
    """How a stage that is not complete would start: afresh, from its latest checkpoint, or not at all
    (`resume_step`'s rules: checkpoints without --resume, or without a `latest` pointer)."""
    from lmforge.stages.common import latest_checkpoint

    try:
        latest = None if name in ctx.gone else latest_checkpoint(ctx.stage_dir(name), ctx.resume)
    except LmforgeError as e:
        return "stop", str(e)
    return ("run", f"[{name}] would run") if latest is None else ("resume", f"[{name}] would resume from {latest}")


@dataclass
class _AfterFresh(RunContext):
    """A run directory as --fresh would leave it: the stages in `gone` deleted."""
    gone: frozenset = frozenset()

    def is_complete(self, name: str) -> bool:
        return name not in self.gone and super().is_complete(name)


def _json_field(path: Path, key: str):
    """One field of a JSON object file, or None when it cannot be read as one."""
    import json

    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj.get(key) if isinstance(obj, dict) else None


# Fields of a stage's section that name the model it reads: a stage of the recipe or a checkpoint directory.
_MODEL_REFS = ("init", "policy", "reward")


def check_paths(cfg, stages: list[str] | None = None) -> tuple[list[str], int, int]:
    """The local files and directories that `stages` (default: the recipe's) would read: every `path` of a
    data source, decontamination set or word list in the sections they use, and every model a stage starts
    from or scores with (`init`, `policy`, `reward`, a reward part's `model`, a local judge's `checkpoint`;
    and the judge's `constitution` file): a stage of the recipe that can serve (see `model_ref`) or a
    checkpoint directory. Returns (problems, one line each naming the key; how many local paths were
    checked; how many are Hub ids, which need the network to check).
    A source of weight 0 and a part switched off (`enabled: false`) are not read, so not checked.
    For `--dry-run`: a missing file is found before anything trains."""
    import glob

    from lmforge.model.reward import HEAD_KEY
    from lmforge.rewards.ai_judge import AIJudgeConfig
    from lmforge.rewards.config import RewardPartConfig
    from lmforge.stages import STAGES

    run = set(cfg.stages if stages is None else stages)
    sections = set(run) | ({"sft"} if "specialize" in run else set())   # specialize rehearses sft's mixture
    if ("curate" in run and not cfg.curate.sources) or ("pretrain" in run and "curate" not in run):
        sections.add("data")
    problems: list[str] = []
    counts = [0, 0]

    def model_ref(ref: str, key: str, reader: str, reward: bool = False) -> None:
        """`ref`, read by stage `reader`: a stage of the recipe listed before it (or one that already has a
        model), or a checkpoint directory; a reward model where `reward`."""
        if ref in cfg.stages:
            made = (Path(cfg.out_dir) / cfg.name / ref / "model" / "model_config.json").is_file()
            if STAGES[ref].measures_only:
                problems.append(f"{key}: {ref!r} is an evaluation stage; it makes no model")
            elif reward and ref != "rm":
                problems.append(f"{key}: stage {ref!r} makes no reward model (the rm stage does)")
            elif reader in cfg.stages and cfg.stages.index(ref) > cfg.stages.index(reader) and not made:
                problems.append(f"{key}: stage {ref!r} comes after {reader!r} in stages, and has no model yet")
            return  # the run checks that it ran, or runs first
        counts[0] += 1
        config_file = Path(ref) / "model_config.json"
        if not config_file.is_file():
            problems.append(f"{key}: {ref!r} is neither a stage of this recipe nor a checkpoint directory "
                            f"(no {config_file})")
        elif reward and _json_field(config_file, HEAD_KEY) != "reward":
            problems.append(f"{key}: {ref!r} is not a reward-model checkpoint (its model_config.json has no "
                            f"\"{HEAD_KEY}\": \"reward\")")

    def visit(obj, key: str) -> None:
        if dataclasses.is_dataclass(obj):
            if getattr(obj, "enabled", True) is False or getattr(obj, "weight", 1) == 0:
                return
            stage = key.split(".")[0]
            if key in run:  # a stage's section (a section read only for its data names no model)
                for name in _MODEL_REFS:
                    if isinstance(getattr(obj, name, None), str):
                        model_ref(getattr(obj, name), f"{key}.{name}", stage, reward=name == "reward")
            if isinstance(obj, RewardPartConfig) and obj.kind == "rm":
                model_ref(obj.model, f"{key}.model", stage, reward=True)
            if isinstance(obj, AIJudgeConfig):
                if obj.backend == "local" and obj.checkpoint:  # "": the stage's own starting model
                    model_ref(obj.checkpoint, f"{key}.checkpoint", stage)
                if obj.constitution:
                    counts[0] += 1
                    if not Path(obj.constitution).is_file():
                        problems.append(f"{key}.constitution: {obj.constitution}: file not found")
            path = getattr(obj, "path", None)
            if isinstance(path, str) and path:
                hub = "hf" in (getattr(obj, "format", ""), getattr(obj, "file_format", ""))
                if hub and not Path(path).exists():
                    counts[1] += 1
                else:
                    counts[0] += 1
                    if glob.has_magic(path) and not Path(path).exists():
                        if not any(Path(m).is_file() for m in glob.glob(path, recursive=True)):
                            problems.append(f"{key}.path: {path}: no files match")
                    elif not Path(path).exists():
                        problems.append(f"{key}.path: {path}: file not found")
            for f in dataclasses.fields(obj):
                visit(getattr(obj, f.name), f"{key}.{f.name}")
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                visit(item, f"{key}.{i}")

    for f in dataclasses.fields(cfg):
        if f.name in sections:
            visit(getattr(cfg, f.name), f.name)
    return problems, counts[0], counts[1]
