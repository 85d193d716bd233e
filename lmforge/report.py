"""The report card of a run: `lmforge report RUN_DIR` writes RUN_DIR/report.md, a self-contained
RUN_DIR/report.html and the PNGs under RUN_DIR/plots/.

It reads only what the pipeline already wrote (config.yaml, hardware.json, summary.json, each
stage's stage.json and metrics.jsonl; see `report_data`), so it works on a finished run, on one
that stopped half-way, and on a copy of a run directory from another machine. Anything missing is
skipped with a note in the report; only a missing run directory or summary.json is an error.
The document is built once (`report_doc.Doc`) and rendered as Markdown and HTML; the plots are
drawn by `report_plots`.
"""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

from lmforge.report_data import RunRecord, TrainingCurves, eval_table, load_run
from lmforge.report_doc import EMPTY, Doc, config_rows, fmt, render_html, render_markdown
from lmforge.utils import atomic_write_bytes, atomic_write_text

# Stage metrics that count the tokens a stage processed, in order of preference, for the time table.
TOKEN_METRICS = ("tokens", "trained_tokens", "assistant_tokens")
PLOT_FILES = ("loss.png", "lr.png", "throughput.png", "eval_scores.png")


def tokens_of(metrics: dict) -> str:
    for key in TOKEN_METRICS:
        if isinstance(metrics.get(key), (int, float)):
            return fmt(metrics[key]) if key == "tokens" else f"{fmt(metrics[key])} ({key})"
    return EMPTY


def last(rows: list[dict], key: str):
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return values[-1] if values else None


def training_row(curve: TrainingCurves) -> list[str]:
    # The median, not the mean: the first logged steps include warm-up (allocation, compilation).
    throughput = [r["tokens_per_s"] for r in curve.train if isinstance(r.get("tokens_per_s"), (int, float))]
    return [curve.stage + ("" if curve.finished else " (unfinished)"), fmt(last(curve.train + curve.evals, "step")),
            fmt(last(curve.train, "loss")), fmt(last(curve.evals, "val_loss")), fmt(last(curve.evals, "val_bpb")),
            fmt(statistics.median(throughput)) if throughput else EMPTY]


# ---------------------------------------------------------------- the document


def _time_table(record: RunRecord) -> list[list[str]]:
    total = sum(record.seconds.values())
    rows = []
    for stage in record.stages:
        if stage in record.metrics:
            secs = record.seconds.get(stage)
            share = f"{100 * secs / total:.1f}%" if secs is not None and total > 0 else EMPTY
            rows.append([stage, "done", fmt(secs), share, tokens_of(record.metrics[stage])])
        else:
            rows.append([stage, "not finished", EMPTY, EMPTY, EMPTY])
    rows.append(["total", "", fmt(round(total, 2)), "100%" if total > 0 else EMPTY, ""])
    return rows


def _training_section(doc: Doc, record: RunRecord, notes: list[str], plots: bool) -> None:
    from lmforge.report_plots import plot_losses, plot_train_series

    doc.heading("Training")
    if not record.curves:
        doc.para("No training curves (see notes).")
        notes.append("no stage logged metrics.jsonl; loss, learning-rate and throughput plots skipped")
        return
    doc.table(["stage", "last step", "last train loss", "last val loss", "last val bpb", "median tokens/s"],
              [training_row(c) for c in record.curves])
    if not plots:
        return
    losses = plot_losses(record.curves)
    if losses:
        doc.image("loss.png", "Training and validation loss",
                  "Per training stage: training loss at each logged step (blue) and validation loss at each "
                  "evaluation (orange); log scale when all values are positive.", losses)
    lr = plot_train_series(record.curves, "lr", "learning rate")
    if lr:
        doc.image("lr.png", "Learning rate", "The learning rate each training stage used at each logged step.", lr)
    else:
        notes.append("no learning rate logged; learning-rate plot skipped")
    throughput = plot_train_series(record.curves, "tokens_per_s", "tokens/s")
    if throughput:
        doc.image("throughput.png", "Throughput", "Training tokens processed per second at each logged step.",
                  throughput)
    silent = [c.stage for c in record.curves if not any("tokens_per_s" in r for r in c.train)]
    if silent:
        notes.append(f"tokens/s not logged by {', '.join(silent)}; no throughput curve for "
                     f"{'it' if len(silent) == 1 else 'them'}")


def _evaluation_section(doc: Doc, record: RunRecord, notes: list[str], plots: bool) -> None:
    from lmforge.report_plots import plot_eval_scores

    doc.heading("Evaluations")
    models, table = eval_table(record)
    if not table:
        doc.para("No evaluations (see notes).")
        notes.append("no finished evaluation stage (eval_*); evaluation table and chart skipped")
        return
    doc.para("Rows are metrics, columns the model they measure: a metric-name prefix such as `base_` or `sft_` "
             "names the model, and an unprefixed metric of `eval_<model>` belongs to `<model>`.")
    doc.table(["metric", *models, "from"],
              [[metric, *(fmt(values.get(m)) for m in models), ", ".join(stages)]
               for metric, values, stages in table])
    scores = plot_eval_scores(models, [(metric, values) for metric, values, _ in table]) if plots else None
    if scores:
        doc.image("eval_scores.png", "Evaluation accuracy",
                  "Accuracy metrics (0..1), one group per metric, one bar per model that reported it.", scores)


def build_doc(record: RunRecord) -> Doc:
    notes = list(record.notes)
    # matplotlib is a dependency, but a report with tables and no plots beats no report at all.
    plots = importlib.util.find_spec("matplotlib") is not None
    if not plots:
        notes.append("matplotlib is not installed; plots skipped (pip install matplotlib)")

    doc = Doc(f"Report card: {record.name}")
    doc.para(f"Run directory `{record.run_dir}`; stages: {', '.join(record.stages) or 'none'}.")
    doc.heading("Configuration")
    if record.config:
        doc.table(["section", "settings"], config_rows(record.config),
                  collapsible="config.yaml, one row per section (click to expand)")
    else:
        doc.para("Not recorded (see notes).")
    doc.heading("Hardware")
    if record.hardware:
        doc.table(["", "value"], [[k, "none" if v is None else str(v)] for k, v in record.hardware.items()])
    else:
        doc.para("Not recorded (see notes).")
    doc.heading("Time and tokens per stage")
    doc.table(["stage", "status", "seconds", "share", "tokens"], _time_table(record))
    _training_section(doc, record, notes, plots)
    _evaluation_section(doc, record, notes, plots)
    if notes:
        doc.heading("Notes")
        doc.bullets(notes)
    return doc


def build_report(run_dir: str | Path) -> list[Path]:
    """Write report.md, report.html and plots/*.png; return the paths written."""
    record = load_run(run_dir)
    doc = build_doc(record)
    run_dir = record.run_dir
    written = []
    for image in doc.images:
        path = run_dir / "plots" / image.filename
        atomic_write_bytes(path, image.png)
        written.append(path)
    for stale in PLOT_FILES:  # a plot from an earlier report whose data is gone would mislead
        path = run_dir / "plots" / stale
        if path.exists() and path not in written:
            path.unlink()
    atomic_write_text(run_dir / "report.md", render_markdown(doc, image_dir="plots"))
    atomic_write_text(run_dir / "report.html", render_html(doc))
    return [run_dir / "report.md", run_dir / "report.html", *written]


def write_report(run_dir: str | Path) -> Path:
    """Write the report card of `run_dir` (report.md, report.html, plots/); return report.md's path."""
    return build_report(run_dir)[0]


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write a run's report card (report.md, report.html, plots/)")
    p.add_argument("run_dir", help="a run directory, e.g. runs/demo")


def run_report(args) -> int:
    for path in build_report(args.run_dir):
        print(f"wrote {path}")
    return 0
