"""The report card's plots, drawn off-screen with matplotlib.

Each function returns PNG bytes (or None when there is nothing to draw), so the caller can both
write the file and embed the same bytes in the HTML. Figures are built with
`matplotlib.figure.Figure` rather than pyplot: no global figure state and no GUI backend, so this
works on a headless machine and inside a training process without touching its matplotlib setup.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.report import TrainingCurves

PANEL_SIZE = (4.4, 3.1)   # inches per panel; 3 panels side by side fit a laptop screen
MAX_COLUMNS = 3
DPI = 100


def is_accuracy(metric: str) -> bool:
    """Accuracy-like metrics (0..1) go on the evaluation bar chart; losses and bpb do not."""
    return metric.endswith("_acc") or metric == "acc" or metric.endswith("accuracy")


def _log_y_axis(ax) -> None:
    """Log scale with plain tick labels (0.6, 2, 3) instead of matplotlib's 6x10^-1 notation."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        # LogFormatter decides which ticks get a label (so minor ticks don't crowd); we only restyle them.
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PlainLogFormatter(labelOnlyBase=False))
    ax.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _panels(n_panels: int):
    from matplotlib.figure import Figure

    cols = min(n_panels, MAX_COLUMNS)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    # No "Software" metadata: the same run then gives byte-identical PNGs across matplotlib versions.
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged `key` as a number."""
    points = [(r["step"], float(r[key])) for r in rows
              if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and "step" in r]
    return [s for s, _ in points], [v for _, v in points]


def _title(curve: TrainingCurves) -> str:
    return curve.stage if curve.finished else f"{curve.stage} (unfinished)"


def plot_losses(curves: Sequence[TrainingCurves]) -> bytes | None:
    """One panel per training stage: training loss per logged step and validation loss per evaluation."""
    drawable = [c for c in curves if series(c.train, "loss")[0] or series(c.evals, "val_loss")[0]]
    if not drawable:
        return None
    fig, axes = _panels(len(drawable))
    for ax, curve in zip(axes, drawable, strict=True):
        steps, losses = series(curve.train, "loss")
        val_steps, val_losses = series(curve.evals, "val_loss")
        if steps:
            ax.plot(steps, losses, color="tab:blue", linewidth=1.2, label="train loss")
        if val_steps:
            ax.plot(val_steps, val_losses, "o-", color="tab:orange", markersize=4, label="val loss")
        # Loss falls by an order of magnitude early on; a log axis keeps the late, small gains visible.
        # Some objectives (e.g. policy-gradient losses) go negative, and then only a linear axis works.
        if all(v > 0 for v in losses + val_losses):
            _log_y_axis(ax)
        ax.set_title(_title(curve))
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return _png(fig)


def plot_train_series(curves: Sequence[TrainingCurves], key: str, ylabel: str) -> bytes | None:
    """One panel per training stage that logged `key` (e.g. lr, tokens_per_s) on its train rows."""
    drawable = [c for c in curves if series(c.train, key)[0]]
    if not drawable:
        return None
    fig, axes = _panels(len(drawable))
    for ax, curve in zip(axes, drawable, strict=True):
        steps, values = series(curve.train, key)
        ax.plot(steps, values, color="tab:green", linewidth=1.2)
        ax.set_title(_title(curve))
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    return _png(fig)


def plot_eval_scores(models: Sequence[str], rows: Sequence[tuple[str, dict[str, float]]]) -> bytes | None:
    """Grouped bars: one group per accuracy metric, one bar per model stage that reported it."""
    rows = [(metric, values) for metric, values in rows if is_accuracy(metric) and values]
    if not rows:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j, (_, values) in enumerate(rows) if model in values]
        heights = [values[model] for _, values in rows if model in values]
        if xs:
            bars = ax.bar(xs, heights, width, label=model, color=f"C{i}")
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(rows)), [metric for metric, _ in rows], rotation=25, ha="right")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title("evaluation accuracy by model stage")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="model", fontsize=8)
    return _png(fig)
