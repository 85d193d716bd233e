"""The pipeline runner: a recipe lists stages; each writes into runs/<name>/<stage>/.

A stage is complete when its `stage.json` exists (written last, atomically); complete
stages are skipped, so running the same recipe again resumes where it stopped. Every
stage's metrics are gathered into runs/<name>/summary.json (stage -> metric -> value).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.train.config import native_bf16
from lmforge.train.distributed import DistInfo, barrier, resolve_device
from lmforge.utils import atomic_write_text, read_json, upstream_reruns, write_json


@dataclass
class Stage:
    name: str
    run: Callable[[RunContext], dict]     # returns the stage's metrics (flat: name -> number/string)
    requires: tuple[str, ...] | Callable = ()  # stages whose outputs it reads (or cfg -> those stages)
    distributed: bool = False             # runs on every rank (training); else on rank 0 only
    description: str = ""
    inputs: tuple[str, ...] = ()          # config sections its outputs depend on (to detect stale results)
    measures_only: bool = False           # writes metrics no later stage reads (evaluations): redoing it
                                          # leaves the later stages current

    def needs(self, cfg) -> tuple[str, ...]:
        """The stages this one reads, for this config."""
        return tuple(self.requires(cfg)) if callable(self.requires) else self.requires


@dataclass
class RunContext:
    cfg: object                            # RunConfig
    info: DistInfo = field(default_factory=DistInfo)
    resume: bool = True                    # continue a stage from its latest checkpoint

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.out_dir) / self.cfg.name

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def is_complete(self, name: str) -> bool:
        return (self.stage_dir(name) / "stage.json").exists()

    def metrics(self, name: str) -> dict:
        p = self.stage_dir(name) / "stage.json"
        if not p.exists():
            raise LmforgeError(f"{p.parent}: stage '{name}' has not been run (no stage.json)")
        return self.record(name)["metrics"]

    def record(self, name: str) -> dict:
        """A complete stage's stage.json, checked: a damaged one is a one-line error naming it."""
        p = self.stage_dir(name) / "stage.json"
        try:
            rec = read_json(p)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise LmforgeError(f"{p}: damaged ({e}); delete the stage directory (or use --fresh) to redo it") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("metrics"), dict):
            raise LmforgeError(f"{p}: damaged (expected an object with 'metrics'); delete the stage directory (or "
                               f"use --fresh) to redo it")
        return rec

    def finished(self, name: str) -> float:
        """When a complete stage finished (stage.json's `finished`; runs made before it was recorded: its mtime)."""
        return self.record(name).get("finished") or (self.stage_dir(name) / "stage.json").stat().st_mtime

    def log(self, msg: str) -> None:
        if self.info.is_main:
            print(msg, flush=True)


def upstream_times(ctx: RunContext, name: str) -> dict[str, float]:
    """When each earlier complete stage whose outputs later stages may read finished: recorded in a stage's
    stage.json, so that a later run can tell one of them ran again since."""
    from lmforge.stages import STAGES

    before = ctx.cfg.stages[:ctx.cfg.stages.index(name)]
    return {e: ctx.finished(e) for e in before if ctx.is_complete(e) and not STAGES[e].measures_only}


def stages_up_to(cfg, until: str | None) -> list[str]:
    names = list(cfg.stages)
    if not names:
        raise LmforgeError("stages: the recipe lists no stages")
    if until is None:
        return names
    if until not in names:
        raise LmforgeError(f"stage '{until}' is not in this recipe's stages ({', '.join(names)}); add it with "
                           f"stages=[{','.join(names)},{until}] or use a recipe that lists it")
    return names[: names.index(until) + 1]


def check_requirements(ctx: RunContext, names: list[str]) -> None:
    """Before any work: each stage's inputs come from complete stages or earlier ones of `names`."""
    from lmforge.stages import STAGES

    for i, name in enumerate(names):
        missing = [r for r in STAGES[name].needs(ctx.cfg) if not ctx.is_complete(r) and r not in names[:i]]
        if missing:
            raise LmforgeError(f"stage '{name}' needs {', '.join(missing)} first; add it to stages, before '{name}'")


def decide(ctx: RunContext, name: str, default, redo: bool, redo_changed: bool,
           will_run: list[str] = ()) -> tuple[str, str]:
    """What a run does with stage `name`: ("run", ""), ("skip", "" or what changed, which is kept), or
    ("redo", why). default: RunConfig() (an option added since the stage ran is no change at its default);
    redo: an earlier stage ran with --redo-changed, so every later one is redone; will_run: the earlier
    stages a dry run expects to run first (a real run sees their new finish times instead)."""
    from lmforge.stages import STAGES

    if not ctx.is_complete(name):
        return "run", ""
    stage = STAGES[name]
    rec = ctx.record(name)
    edits = config_changes(rec.get("config", {}), stage_config(ctx.cfg, stage), stage_config(default, stage))
    # an earlier stage that ran again since this one did (`lmforge <earlier> --redo-changed`, or --fresh):
    # this one was built on outputs that are gone
    newer = upstream_reruns(rec, lambda e: ctx.finished(e) if ctx.is_complete(e) else None)
    built_on = rec.get("upstream") if isinstance(rec.get("upstream"), dict) else {}
    first = [e for e in will_run if e in built_on and e not in newer]
    why = "; ".join(([f"the recipe changed since this stage ran ({'; '.join(edits[:3])})"] if edits else [])
                    + ([f"{', '.join(newer)} ran again after it"] if newer else [])
                    + ([f"{', '.join(first)} runs again before it"] if first else []))
    if not (redo or (redo_changed and why)):
        return "skip", why
    return "redo", why or "an earlier stage was redone"


def redoes_later(name: str, redo_changed: bool) -> bool:
    """After stage `name` ran with --redo-changed, every later stage is redone: it was built on outputs
    that are gone. Not after an evaluation: no later stage reads what it measured."""
    from lmforge.stages import STAGES

    return redo_changed and not STAGES[name].measures_only


def check_run_dir(cfg) -> None:
    """out_dir and the run's directory are directories (or do not exist yet)."""
    if Path(cfg.out_dir).exists() and not Path(cfg.out_dir).is_dir():
        raise LmforgeError(f"out_dir: {cfg.out_dir} is a file, not a directory")
    if (Path(cfg.out_dir) / cfg.name).exists() and not (Path(cfg.out_dir) / cfg.name).is_dir():
        raise LmforgeError(f"name: {Path(cfg.out_dir) / cfg.name} is a file, not a run directory")


def fresh_targets(cfg, until: str | None) -> list[str]:
    """The stages --fresh deletes: the whole run, or `until` and every later stage (whose results were
    built on it); an evaluation stage: itself only."""
    from lmforge.stages import STAGES

    if until is None:
        return list(cfg.stages)
    return [until] if STAGES[until].measures_only else [until, *cfg.stages[cfg.stages.index(until) + 1:]]


def run_pipeline(cfg, until: str | None = None, info: DistInfo | None = None, resume: bool = True,
                 redo_changed: bool = False) -> dict:
    """Run the recipe's stages in order (up to `until`), skipping complete ones.

    redo_changed: a complete stage whose recipe section (or an input's) changed since it ran is
    redone, and so is every later stage, since their results were built on it; otherwise the change
    is only noted.
    """
    from lmforge.config import dump_yaml
    from lmforge.stages import STAGES

    check_run_dir(cfg)
    ctx = RunContext(cfg=cfg, info=info or DistInfo(), resume=resume)
    names = stages_up_to(cfg, until)
    check_requirements(ctx, names)
    redo = False  # a stage was redone: every later one is too
    ran: list[str] = []
    if ctx.info.is_main:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ctx.run_dir / "config.yaml", dump_yaml(cfg))
        _write_hardware(ctx.run_dir)
        _precision_notes(ctx, [n for n in names if not ctx.is_complete(n)])
    from lmforge.config import RunConfig

    default = RunConfig()  # options added since a stage ran are no change at their defaults (config_changes)
    for name in names:
        stage = STAGES[name]
        action, why = decide(ctx, name, default, redo, redo_changed)
        if action == "skip":
            ctx.log(f"[{name}] complete, skipping ({ctx.stage_dir(name)})")
            if why:
                ctx.log(f"[{name}] note: {why}; its results are kept; use --redo-changed (or --fresh) to redo it")
            continue
        if action == "redo":
            ctx.log(f"[{name}] redoing: {why}")
            if ctx.info.is_main:
                shutil.rmtree(ctx.stage_dir(name))
            barrier(ctx.info)
        ctx.log(f"[{name}] {stage.description}")
        t0 = time.time()
        metrics = None
        if stage.distributed or ctx.info.is_main:
            ctx.stage_dir(name).mkdir(parents=True, exist_ok=True)
            metrics = stage.run(ctx)
        barrier(ctx.info)
        if ctx.info.is_main:
            seconds = time.time() - t0
            write_json(ctx.stage_dir(name) / "stage.json",
                       {"stage": name, "seconds": round(seconds, 2), "metrics": metrics or {},
                        "config": stage_config(cfg, stage), "finished": time.time(),
                        "upstream": upstream_times(ctx, name)})
            ctx.log(f"[{name}] done in {seconds:.1f}s")
        ran.append(name)
        barrier(ctx.info)
        redo = redo or redoes_later(name, redo_changed)
    summary = write_summary(ctx)
    if ctx.info.is_main:
        if ran and len(ran) < len(summary):  # a run that added stages to complete ones: what is new
            print(format_summary({k: v for k, v in summary.items() if k in ran}))
            print(f"(the stages run now; every stage's metrics: {ctx.run_dir / 'summary.json'})")
        else:
            print(format_summary(summary))
        if ran:  # what the stages run now took (the demo has a budget: README)
            total = sum(summary[name].get("seconds", 0) for name in ran if name in summary)
            ctx.log(f"[run] {len(ran)} stage(s) ran in {total / 60:.1f} min ({total:.0f} s of stage time)")
        if until is None:  # a whole run: its report card (`lmforge report` makes one at any time)
            from lmforge.report import write_report

            ctx.log(f"[report] {write_report(ctx.run_dir)}")
    return summary


def stage_config(cfg, stage: Stage) -> dict:
    """The parts of the config a stage's outputs depend on, flattened to dotted keys."""
    from lmforge.config import to_dict

    full = to_dict(cfg)
    flat: dict = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix.rstrip(".")] = node

    for section in stage.inputs:
        walk(f"{section}.", full[section])
    return flat


def config_changes(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """The keys whose value differs between a stage's recorded config and the current one, as "k: a -> b".

    An option added to lmforge after the stage ran is absent from its record; at its default it changes
    nothing (new options default to the old behaviour), so it is not a change: a key missing from `old`
    whose new value equals `defaults`' (the stage_config of a default RunConfig), and a key missing from
    an old list item (a data source) whose new value is False, None, 0 or empty. A recorded key the stage
    no longer reads (an option removed, or a section it stopped depending on) cannot change its result.

    >>> config_changes({"a": 1, "s": [{"path": "x"}]}, {"a": 1, "b": 0, "s": [{"path": "x", "prompts": False}]},
    ...                {"b": 0})
    []
    >>> config_changes({"a": 1, "gone": 3}, {"a": 2, "b": 5, "c": "x" * 200}, {"b": 0})[:2]
    ['a: 1 -> 2', 'b: 0 -> 5']
    >>> len(config_changes({}, {"c": "x" * 200})[0])  # a long value is cut after 80 characters
    94

    Settings of how often a stage validates and checkpoints (`sft.train.ckpt_every`, ...) are no change.

    >>> config_changes({"sft.train.ckpt_every": 100, "train.progress": True}, {"sft.train.ckpt_every": 400,
    ...                "train.progress": False, "sft.train.lr": 2})
    ['sft.train.lr: None -> 2']
    """
    defaults = defaults or {}

    def shown(d: dict, k: str) -> str:  # a key the record lacks had its default; long values cut
        text = repr(d[k]) if k in d else repr(defaults.get(k))
        return text if len(text) <= 80 else text[:80] + "..."

    def added_defaults_dropped(o, n):
        if isinstance(o, list) and isinstance(n, list) and len(o) == len(n):
            return [added_defaults_dropped(a, b) for a, b in zip(o, n, strict=True)]
        if isinstance(o, dict) and isinstance(n, dict):
            return {k: v for k, v in n.items() if k in o or v not in (False, None, 0, "", [], {})}
        return n

    keys = [k for k in sorted(new) if not _BOOKKEEPING.search(k)]
    return [f"{k}: {shown(old, k)} -> {shown(new, k)}" for k in keys
            if not (k not in old and k in defaults and new.get(k) == defaults[k])
            and old.get(k) != added_defaults_dropped(old.get(k), new.get(k))]


# Training settings that change how a stage reports and checkpoints, never its model or metrics (the last
# validation, sample and checkpoint run at the end whatever their interval): no reason to redo it. Not
# log_every: a stage's train_loss (and GRPO's reward_first/last) are read from the logged steps.
_BOOKKEEPING = re.compile(r"(^|\.)train\.(eval_every|sample_every|ckpt_every|keep_checkpoints|tensorboard|progress)$")


def _precision_notes(ctx: RunContext, pending: list[str]) -> None:
    """Say up front when a pending training stage will run on a CPU without native bf16: in fp32
    (dtype auto: 2-4x the time of a CPU with AVX512-BF16 or AMX), or in emulated bf16 (dtype bf16
    forced: ~30x slower than fp32). A stage trains when its section has a `train` TrainConfig
    (pretrain: the top-level `train`)."""
    from lmforge.train.config import TrainConfig

    if native_bf16("cpu"):
        return
    on_cpu: dict[str, list[str]] = {"auto": [], "bf16": []}
    for name in pending:
        tc = ctx.cfg.train if name == "pretrain" else getattr(getattr(ctx.cfg, name, None), "train", None)
        if isinstance(tc, TrainConfig) and tc.dtype in on_cpu and resolve_device(tc.device, ctx.info).type == "cpu":
            on_cpu[tc.dtype].append(name)
    cpu = f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native bf16"
    if on_cpu["auto"]:
        ctx.log(f"[run] {cpu}: {', '.join(on_cpu['auto'])} train in fp32 (train.dtype auto), 2-4x the "
                f"time of a CPU with AVX512-BF16 or AMX")
    if on_cpu["bf16"]:
        ctx.log(f"[run] warning: {cpu}, and {', '.join(on_cpu['bf16'])} force train.dtype bf16: emulated, "
                f"~30x slower than fp32; set their train.dtype to auto or fp32")


def _write_hardware(run_dir: Path) -> None:
    hw = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
          "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
          # what train.dtype auto decides from: stage times differ 2-4x between these two kinds of CPU
          "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": native_bf16("cpu"),
          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    write_json(run_dir / "hardware.json", hw)


def write_summary(ctx: RunContext) -> dict:
    summary = {}
    for name in ctx.cfg.stages:
        if ctx.is_complete(name):
            rec = ctx.record(name)
            summary[name] = {**rec["metrics"], "seconds": rec.get("seconds", float("nan"))}
    if ctx.info.is_main:
        write_json(ctx.run_dir / "summary.json", summary)
    return summary


def format_summary(summary: dict) -> str:
    rows = [(stage, k, v) for stage, m in summary.items() for k, v in m.items()]
    if not rows:
        return "(no completed stages)"
    w1 = max(len(r[0]) for r in rows + [("stage", "", "")])
    w2 = max(len(r[1]) for r in rows + [("", "metric", "")])

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return json.dumps(v) if not isinstance(v, str) else v

    lines = [f"{'stage':<{w1}}  {'metric':<{w2}}  value", f"{'-' * w1}  {'-' * w2}  -----"]
    prev = None
    for stage, k, v in rows:
        lines.append(f"{stage if stage != prev else '':<{w1}}  {k:<{w2}}  {fmt(v)}")
        prev = stage
    return "\n".join(lines)
