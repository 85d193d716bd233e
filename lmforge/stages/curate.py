"""Stage `curate`: clean, filter, deduplicate, scrub and decontaminate the pretraining text (datatrove).

Input: `curate.sources`, else `data.sources`, else the toyworld corpus; with `curate.noisy_web.enabled`
the toyworld corpus mixed with labelled junk (lmforge/toyworld/noisy_web.py), and every step is
scored against the labels. Output in `curate/`: documents.jsonl (what `pretrain` tokenizes when the
recipe lists this stage), stats.json, report.md, plots/curate.png, removed_samples/<step>.jsonl,
work/logs/ (datatrove's logs and stats per executor stage). See docs/curation.md.
"""

from __future__ import annotations

import json
import random
import sys

from lmforge.errors import LmforgeError
from lmforge.pipeline import Stage
from lmforge.utils import atomic_write_text


def _toyworld_corpus(ctx) -> list[str]:
    path = ctx.stage_dir("toyworld") / "corpus.jsonl"
    if not path.exists():
        raise LmforgeError(f"{path}: missing; add the 'toyworld' stage before 'curate' or set curate.sources")
    from lmforge.stages.common import read_texts

    return list(read_texts(path))


def eval_items(ctx) -> list[tuple[str, str]]:
    """(set, question) of the configured evaluation sets and, when the run has a world, toyworld's."""
    from lmforge.curate.decontam import load_eval_items, toyworld_items

    d = ctx.cfg.curate.decontam
    items = load_eval_items(d.sets) if d.enabled else []
    if d.enabled and d.toyworld and ctx.is_complete("toyworld"):
        from lmforge.stages.common import load_world

        # the seeds evaluations use: eval_sft (seed + 20000) and `lmforge eval` (0)
        items += toyworld_items(load_world(ctx), d.toyworld_tasks, d.toyworld_per_task,
                                sorted({ctx.cfg.seed + 20_000, 0}))
    return items


def build_input(ctx, items: list[tuple[str, str]]):
    """(CurateInput, labels or None)."""
    from lmforge.curate.pipeline import CurateInput
    from lmforge.curate.steps import read_blocklist
    from lmforge.toyworld.noisy_web import BLOCKLIST, noisy_web_corpus

    cfg, cc = ctx.cfg, ctx.cfg.curate
    sources = cc.sources or cfg.data.sources
    if cc.noisy_web.enabled:
        if sources:
            raise LmforgeError("curate.noisy_web.enabled: mixes junk into the toyworld corpus; it cannot be combined "
                               "with curate.sources or data.sources")
        from lmforge.stages.common import load_world

        world = load_world(ctx)
        planted = [q for _, q in items]
        random.Random(f"plant:{cc.noisy_web.seed}").shuffle(planted)
        words = read_blocklist(cc.blocklist.path, cc.blocklist.words) or list(BLOCKLIST)
        docs = noisy_web_corpus(_toyworld_corpus(ctx), cc.noisy_web, planted, words, [e.name for e in world.entities],
                                ngram=cc.decontam.ngram, min_overlap=cc.decontam.min_overlap)
        atomic_write_text(ctx.stage_dir("curate") / "noisy_web.jsonl",
                          "".join(json.dumps({"id": d.id, "label": d.label, "text": d.text, **d.meta}) + "\n"
                                  for d in docs))
        records = [{"id": d.id, "text": d.text, "metadata": {"label": d.label}} for d in docs]
        return CurateInput(records=records, name="toyworld noisy web"), {d.id: d for d in docs}
    if sources:
        return CurateInput(sources=sources), None
    records = [{"id": f"toyworld-{i:06d}", "text": t, "metadata": {}} for i, t in enumerate(_toyworld_corpus(ctx))]
    return CurateInput(records=records, name=str(ctx.stage_dir("toyworld") / "corpus.jsonl")), None


def run(ctx) -> dict:
    from lmforge.curate.pipeline import run_curation

    out = ctx.stage_dir("curate")
    items = eval_items(ctx)
    inp, labels = build_input(ctx, items)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if "WARNING" in msg else sys.stdout, flush=True)

    stats = run_curation(ctx.cfg.curate, out, inp, items, labels, log=log)
    metrics = {"documents_in": stats["input"]["documents"], "documents_out": stats["output"]["documents"],
               "characters_out": stats["output"]["characters"],
               "kept_documents": stats["kept_fraction"]["documents"],
               "kept_characters": stats["kept_fraction"]["characters"],
               "documents_per_s": stats["documents_per_second"], "warnings": len(stats["warnings"])}
    metrics.update({f"removed_{s['step']}": s["removed_documents"] for s in stats["steps"] if s["step"] != "pii"})
    if "noisy_web" in stats:
        for step, r in stats["noisy_web"]["steps"].items():
            metrics[f"precision_{step}"] = r["precision"] if r["precision"] is not None else float("nan")
            metrics[f"recall_{step}"] = r["recall"] if r["recall"] is not None else float("nan")
    ctx.log(f"[curate] kept {metrics['documents_out']:,} of {metrics['documents_in']:,} documents; "
            f"report: {out / 'report.md'}")
    return metrics


STAGE = Stage("curate", run, description="curate the pretraining text: quality filters, dedup, PII, decontamination",
              inputs=("seed", "toyworld", "data", "curate"))
