"""The curation report: report.md (tables) and plots/curate.png (documents and characters kept per step)."""

from __future__ import annotations

import io
from pathlib import Path

from lmforge.utils import atomic_write_bytes, atomic_write_text


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _reasons(reasons: dict, k: int = 3) -> str:
    items = list(reasons.items())
    text = ", ".join(f"{r} {n}" for r, n in items[:k])
    return text + (f", +{len(items) - k} more" if len(items) > k else "")


def render_markdown(stats: dict) -> str:
    inp, out = stats["input"], stats["output"]
    lines = ["# Data curation report", ""]
    for w in stats["warnings"]:
        lines.append(f"> **WARNING**: {w}")
    if stats["warnings"]:
        lines.append("")
    lines += [f"Read {inp['documents']:,} documents ({inp['characters']:,} characters, {inp['words']:,} words); "
              f"kept {out['documents']:,} ({_pct(stats['kept_fraction']['documents'])}) with "
              f"{out['characters']:,} characters ({_pct(stats['kept_fraction']['characters'])}). "
              f"{stats['executor']['tasks']} tasks, {stats['executor']['workers']} workers, "
              f"{stats['seconds'].get('total', 0):.1f} s ({stats['documents_per_second']:,.0f} documents/s).", "",
              "| step | in | removed | kept docs | kept chars | kept words | why (top reasons) |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
              f"| read | | | {inp['documents']:,} | {inp['characters']:,} | {inp['words']:,} | |"]
    for s in stats["steps"]:
        removed = f"{s['removed_documents']:,}" if s["step"] != "pii" else f"({s['changed_documents']:,} changed)"
        why = _reasons(s["replaced"]) if s["step"] == "pii" else _reasons(s["reasons"])
        lines.append(f"| {s['step']} | {s['in_documents']:,} | {removed} | {s['kept_documents']:,} | "
                     f"{s['kept_characters']:,} | {s['kept_words']:,} | {why} |")
    lines += ["", "Samples of removed documents: `removed_samples/<step>.jsonl` (pii: changed documents, "
              "after replacement).", ""]
    if "decontam_sets" in stats:
        lines += ["## Decontamination sets", "", "| set | items | usable | too short |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {c['items']:,} | {c['usable']:,} | {c['too_short']:,} |"
                  for name, c in stats["decontam_sets"].items()]
        lines.append("")
    if "noisy_web" in stats:
        nw = stats["noisy_web"]
        lines += ["## Noisy web: each step against the junk it targets", "",
                  f"Labelled documents: {', '.join(f'{k} {v}' for k, v in nw['labels'].items())}. "
                  f"Clean documents kept (or a near duplicate of them): {_pct(nw['clean_kept'])}; other junk (not "
                  f"duplicates, not pii) removed: {_pct(nw['junk_removed'])}.", "",
                  "| step | target | labelled | reached the step | removed | correct | precision | recall | "
                  "wrongly removed |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for step, r in nw["steps"].items():
            if step == "pii":
                continue
            lines.append(f"| {step} | {r['target']} | {r['labelled']} | {r['reached']} | {r['removed']} | "
                         f"{r['correct']} | {_pct(r['precision'])} | {_pct(r['recall'])} | "
                         f"{_reasons(r['wrongly_removed'])} |")
        p = nw["steps"]["pii"]
        lines += ["", f"PII: {p['scrubbed']} of {p['strings']} planted strings replaced ({_pct(p['recall'])}) in "
                  f"{p['kept']} of {p['labelled']} kept documents; {p['changed']} documents changed "
                  f"(precision {_pct(p['precision'])}); clean documents changed: {p['clean_changed']}.", ""]
    lines += ["![documents and characters kept per step](plots/curate.png)", ""]
    return "\n".join(lines)


def plot_png(stats: dict) -> bytes:
    from matplotlib.figure import Figure

    names = ["read"] + [s["step"] for s in stats["steps"]]
    docs = [stats["input"]["documents"]] + [s["kept_documents"] for s in stats["steps"]]
    chars = [stats["input"]["characters"]] + [s["kept_characters"] for s in stats["steps"]]
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, values, title in ((fig.add_subplot(1, 2, 1), docs, "documents kept"),
                              (fig.add_subplot(1, 2, 2), chars, "characters kept")):
        ax.bar(range(len(names)), values, color="#4878a8")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylim(0, max(values + [1]) * 1.1)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,}" if v < 1e6 else f"{v / 1e6:.1f}M", ha="center", va="bottom", fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def write_report(stats: dict, out: Path) -> None:
    atomic_write_text(out / "report.md", render_markdown(stats))
    atomic_write_bytes(out / "plots" / "curate.png", plot_png(stats))
