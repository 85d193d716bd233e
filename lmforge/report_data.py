"""What a run directory holds, read for the report card: config, hardware, per-stage metrics and
training curves, and the evaluation metrics attributed to the model each one measures.

Evaluation metrics are attributed to models by name (`model_and_metric`): in a stage named
`eval_<model>`, a metric `<known model>_<metric>` belongs to that model and any other metric to
`<model>` itself. `eval_base`'s `cloze_heldout_acc` is the base model's; `eval_sft`'s
`base_qa_heldout_acc` and `sft_qa_heldout_acc` are the base and SFT models' `qa_heldout_acc`; a
later `eval_dpo` reporting `dpo_`/`sft_` metrics adds a `dpo` column with no change here. The known
models are `base` and every training stage's and eval stage's model name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lmforge.errors import LmforgeError

BASE_MODEL = "base"
# A training stage's output model, where the eval metric prefix differs from the stage name.
MODEL_OF_STAGE = {"pretrain": BASE_MODEL}
EVAL_PREFIX = "eval_"


@dataclass
class TrainingCurves:
    stage: str
    train: list[dict]
    evals: list[dict]
    finished: bool


@dataclass
class RunRecord:
    run_dir: Path
    name: str
    config: dict
    hardware: dict
    stages: list[str]                     # recipe order, then any extra stage the summary lists
    metrics: dict[str, dict]              # finished stage -> its metrics (seconds excluded)
    seconds: dict[str, float]             # finished stage -> wall time
    curves: list[TrainingCurves]
    notes: list[str] = field(default_factory=list)


def _read_object(path: Path, run_dir: Path, notes: list[str]) -> dict | None:
    """A JSON or YAML mapping, or None with a note: one damaged file must not cost the whole report."""
    label = path.relative_to(run_dir)
    if not path.is_file():
        notes.append(f"no {label}; not shown")
        return None
    try:
        text = path.read_text(encoding="utf-8")
        obj = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError) as e:
        notes.append(f"{label} unreadable ({type(e).__name__}); skipped")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{label} is not a mapping; skipped")
        return None
    return obj


def read_metrics_lines(path: Path) -> tuple[list[dict], int]:
    """metrics.jsonl rows and the number of unparseable lines.

    Not `lmforge.train.metrics.read_metrics`: a running or killed stage can leave a torn last line,
    which must not stop the report, and that module imports torch, which a report does not need.
    """
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def _read_summary(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise LmforgeError(f"{run_dir}: no such run directory (expected runs/<name>/ containing summary.json)")
    path = run_dir / "summary.json"
    if not path.is_file():
        raise LmforgeError(f"{path}: missing (expected the summary.json that `lmforge run` writes)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise LmforgeError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict):
        raise LmforgeError(f"{path}: expected a JSON object of stage -> metrics")
    return summary


def _stage_result(run_dir: Path, stage: str, summary: dict, notes: list[str]) -> dict | None:
    """The finished stage's {"metrics", "seconds"}, or None (with a note) when it did not finish."""
    stage_dir = run_dir / stage
    if (stage_dir / "stage.json").is_file():
        return _read_object(stage_dir / "stage.json", run_dir, notes)
    if not stage_dir.exists() and isinstance(summary.get(stage), dict):
        # A run directory copied without its stage folders: summary.json still has the results.
        # (With a folder but no stage.json the stage was restarted, and the summary is stale.)
        return {"metrics": summary[stage], "seconds": summary[stage].get("seconds")}
    state = "started but not finished" if stage_dir.is_dir() else "not run"
    notes.append(f"stage {stage}: {state} (no stage.json); its results are missing")
    return None


def _stage_curves(run_dir: Path, stage: str, finished: bool, metrics: dict,
                  notes: list[str]) -> TrainingCurves | None:
    path = run_dir / stage / "metrics.jsonl"
    if not path.is_file():
        if finished and ("steps" in metrics or (run_dir / stage / "checkpoints").is_dir()):
            notes.append(f"stage {stage}: training stage without metrics.jsonl; no training curves")
        return None
    rows, bad = read_metrics_lines(path)
    if bad:
        notes.append(f"stage {stage}: skipped {bad} unreadable line(s) of metrics.jsonl")
    train = [r for r in rows if r.get("kind") == "train"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    if not (train or evals):
        notes.append(f"stage {stage}: metrics.jsonl has no train or eval rows; no curves")
        return None
    return TrainingCurves(stage, train, evals, finished)


def load_run(run_dir: str | Path) -> RunRecord:
    """Everything the report shows, read from `run_dir`; LmforgeError only without summary.json."""
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    notes: list[str] = []
    config = _read_object(run_dir / "config.yaml", run_dir, notes) or {}
    hardware = _read_object(run_dir / "hardware.json", run_dir, notes) or {}
    stages = [s for s in config.get("stages") or [] if isinstance(s, str)]
    stages += [s for s in summary if s not in stages]  # stages run by an earlier version of the recipe
    metrics: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    curves: list[TrainingCurves] = []
    records: dict[str, dict] = {}
    for stage in stages:
        result = _stage_result(run_dir, stage, summary, notes)
        if result is not None:
            records[stage] = result
            stage_metrics = result.get("metrics")
            metrics[stage] = {k: v for k, v in stage_metrics.items() if k != "seconds"} \
                if isinstance(stage_metrics, dict) else {}
            if isinstance(result.get("seconds"), (int, float)):
                seconds[stage] = float(result["seconds"])
        curve = _stage_curves(run_dir, stage, stage in metrics, metrics.get(stage, {}), notes)
        if curve is not None:
            curves.append(curve)
    notes += stale_notes(records)
    name = str(config.get("name") or run_dir.resolve().name)
    return RunRecord(run_dir, name, config, hardware, stages, metrics, seconds, curves, notes)


def stale_notes(records: dict[str, dict]) -> list[str]:
    """A stage whose upstream stage ran again after it (its stage.json's `upstream` finish times no longer
    match) shows results of models that are gone: the pipeline says so on the console, the report here.

    >>> stale_notes({"sft": {"finished": 20.0}, "eval_sft": {"finished": 15.0, "upstream": {"sft": 10.0}}})
    ['stage eval_sft: sft ran again after it; its results are for the earlier outputs (redo it: --redo-changed)']
    """
    from lmforge.utils import upstream_reruns

    out = []
    for stage, rec in records.items():
        newer = upstream_reruns(rec, lambda u: records[u].get("finished") if u in records else None)
        if newer:
            out.append(f"stage {stage}: {', '.join(newer)} ran again after it; its results are for the earlier "
                       f"outputs (redo it: --redo-changed)")
    return out


# ---------------------------------------------------------------- evaluation table


def eval_stages(record: RunRecord) -> list[str]:
    return [s for s in record.stages if s.startswith(EVAL_PREFIX) and s in record.metrics]


def known_models(record: RunRecord) -> list[str]:
    """Model names an eval metric may be prefixed with, in pipeline order (base first)."""
    models = [BASE_MODEL]
    for stage in record.stages:
        model = stage[len(EVAL_PREFIX):] if stage.startswith(EVAL_PREFIX) else MODEL_OF_STAGE.get(stage, stage)
        is_model = stage.startswith(EVAL_PREFIX) or any(c.stage == stage for c in record.curves) \
            or "steps" in record.metrics.get(stage, {})
        if is_model and model and model not in models:
            models.append(model)
    return models


def model_and_metric(eval_stage: str, metric: str, models: list[str]) -> tuple[str, str]:
    """(model, metric) of an eval stage's metric: a known model's prefix wins, else the stage's own model."""
    for model in sorted(models, key=len, reverse=True):  # longest first: `sft_lora_` before `sft_`
        if metric.startswith(model + "_") and len(metric) > len(model) + 1:
            return model, metric[len(model) + 1:]
    return MODEL_OF_STAGE.get(eval_stage[len(EVAL_PREFIX):], eval_stage[len(EVAL_PREFIX):]), metric


def eval_table(record: RunRecord) -> tuple[list[str], list[tuple[str, dict[str, float], list[str]]]]:
    """(model columns, rows of (metric, {model: value}, source stages)), in the order first reported.

    When two eval stages report the same model's metric, the stage dedicated to that model
    (eval_<model>) wins, else the later one: a later stage may re-measure an earlier model on a
    different sample, but the dedicated stage is where that model's numbers are defined.
    """
    models = known_models(record)
    cells: dict[str, dict[str, float]] = {}
    source: dict[tuple[str, str], str] = {}
    for stage in eval_stages(record):
        for raw, value in record.metrics[stage].items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            model, metric = model_and_metric(stage, raw, models)
            if source.get((metric, model)) == EVAL_PREFIX + model:
                continue
            cells.setdefault(metric, {})[model] = value
            source[(metric, model)] = stage
    for stage, metric, start in before_after(record, models):  # e.g. GRPO's held-out accuracy
        row, end = f"{stage}_{metric}", MODEL_OF_STAGE.get(stage, stage)
        cells[row] = {start: record.metrics[stage][f"{metric}_before"], end: record.metrics[stage][f"{metric}_after"]}
        source[(row, start)] = source[(row, end)] = stage
    used = [m for m in models if any(m in values for values in cells.values())]
    used += sorted({m for values in cells.values() for m in values} - set(used))
    rows = [(metric, values, sorted({source[(metric, m)] for m in values}, key=record.stages.index))
            for metric, values in cells.items()]
    return used, rows


def before_after(record: RunRecord, models: list[str]) -> list[tuple[str, str, str]]:
    """(stage, metric, model it started from) for each training stage's `<metric>_before` measured on the
    model it starts from (`<stage>.init` in the config, a model of this run) with `<metric>_after` on its
    own: GRPO's `heldout_acc_before/after` become a `grpo_heldout_acc` row with DPO's and GRPO's cells."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    rows = []
    for stage in record.stages:
        section = record.config.get(stage)
        init = section.get("init") if isinstance(section, dict) else None
        start = MODEL_OF_STAGE.get(init, init)
        if stage.startswith(EVAL_PREFIX) or start not in models:
            continue
        metrics = record.metrics.get(stage, {})
        rows += [(stage, key[:-len("_before")], start) for key, value in metrics.items()
                 if key.endswith("_before") and number(value) and number(metrics.get(key[:-len("_before")] + "_after"))]
    return rows
