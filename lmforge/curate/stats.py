"""Gather what every step removed and why; score the steps against planted labels (noisy web).

Counts come from the tasks' own files (work/tally, work/removed, work/edited), summed over tasks:
a step's `in_documents` is the count after the previous step, `kept_documents` the count after it,
and `in_documents - removed_documents == kept_documents` for every step (checked; a mismatch is
reported as a warning, it would be a bug).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from lmforge.utils import atomic_write_text, write_json

CONFIG_KEY = {"near_dedup": "minhash"}  # step -> its curate.* section, where the names differ


def _read_jsonl(folder: Path) -> list[dict]:
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.glob("*.jsonl")):
        with open(f, encoding="utf-8") as fh:
            out += [json.loads(line) for line in fh]
    return out


def _tally(folder: Path) -> dict:
    total = {"documents": 0, "characters": 0, "words": 0}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        for k, v in json.loads(f.read_text()).items():
            total[k] += v
    return total


def _write_samples(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def collect_stats(work: Path, out: Path, enabled: list[str], cfg, seconds: dict, item_counts: dict,
                  labels: dict | None) -> dict:
    tallies = {step: _tally(work / "tally" / step) for step in enabled}
    steps, removed_ids, warnings = [], {}, []
    samples_dir = out / "removed_samples"
    for prev, step in zip(enabled, enabled[1:], strict=False):
        recs = _read_jsonl(work / ("edited" if step == "pii" else "removed") / step)
        before, after = tallies[prev], tallies[step]
        row = {"step": step, "in_documents": before["documents"], "kept_documents": after["documents"],
               "removed_documents": 0 if step == "pii" else len(recs), "in_characters": before["characters"],
               "kept_characters": after["characters"], "kept_words": after["words"],
               "reasons": dict(Counter(r["reason"] for r in recs).most_common())}
        if step == "pii":
            row["changed_documents"] = len(recs)
            row["replaced"] = dict(sum((Counter(r.get("pii_replaced", {})) for r in recs), Counter()))
            removed_ids["pii"] = [r["id"] for r in recs]  # changed, not removed
        else:
            removed_ids[step] = [r["id"] for r in recs]
            if before["documents"] - row["removed_documents"] != after["documents"]:
                warnings.append(f"step '{step}': {before['documents']} in - {row['removed_documents']} removed != "
                                f"{after['documents']} kept (a bug: please report it)")
            if before["documents"] > 0 and after["documents"] == 0:
                warnings.append(f"step '{step}' removed ALL {before['documents']} documents it received; its "
                                f"thresholds (curate.{CONFIG_KEY.get(step, step)}) do not fit this corpus")
        steps.append(row)
        sample = [r for r in recs if "text" in r][:cfg.samples_per_filter]
        if sample:
            _write_samples(samples_dir / f"{step}.jsonl", sample)
    read, final = tallies["read"], tallies[enabled[-1]]
    total_s = seconds.get("total", 0.0)
    stats = {"input": read, "output": final,
             "kept_fraction": {k: round(final[k] / read[k], 4) if read[k] else 0.0 for k in read},
             "steps": steps, "warnings": warnings,
             "executor": {"tasks": cfg.executor.tasks, "workers": cfg.executor.workers},
             "seconds": seconds, "documents_per_second": round(read["documents"] / total_s, 1) if total_s else 0.0}
    if item_counts:
        stats["decontam_sets"] = item_counts
    if labels:
        stats["noisy_web"] = score_labels(labels, removed_ids, out / "documents.jsonl")
    write_json(out / "stats.json", stats)
    return stats


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def score_labels(labels: dict, removed: dict[str, list[str]], documents: Path) -> dict:
    """Each step against the label it targets (noisy_web.TARGETS), on the documents that reached it:
    precision = removed documents carrying the label / removed; recall = labelled documents it removed /
    labelled documents that reached it. Dedup steps count per duplicate group: removing all but one
    member is right, whichever member stays."""
    from lmforge.toyworld.noisy_web import TARGETS

    def has(i: str, label: str) -> bool:
        return label in labels[i].meta.get("labels", [labels[i].label])

    by_label = Counter(x for d in labels.values() for x in d.meta.get("labels", [d.label]))
    target_of = {step: label for label, step in TARGETS.items()}
    alive, per_step = set(labels), {}
    for step, ids in removed.items():       # pipeline order
        if step == "pii":
            continue
        gone = {i for i in ids if i in labels}
        label = target_of.get(step)
        if label in ("exact_dup", "near_dup"):
            key = "exact_group" if label == "exact_dup" else "near_group"
            groups: dict[str, set[str]] = {}
            for i, d in labels.items():
                if key in d.meta:
                    groups.setdefault(d.meta[key], set()).add(i)
            tp = expected = 0
            for members in groups.values():
                need = max(0, len(members & alive) - 1)
                expected += need
                tp += min(len(members & gone), need)
            reached = sum(has(i, label) for i in alive)
            in_group = set().union(*groups.values()) if groups else set()
            wrong = Counter(labels[i].label for i in gone if i not in in_group)
        elif label is not None:
            reached = sum(has(i, label) for i in alive)
            tp = expected = sum(has(i, label) for i in gone)
            expected = reached
            wrong = Counter(labels[i].label for i in gone if not has(i, label))
        if label is not None:
            per_step[step] = {"target": label, "labelled": by_label[label], "reached": reached, "removed": len(ids),
                              "correct": tp, "precision": _ratio(tp, len(ids)), "recall": _ratio(tp, expected),
                              "wrongly_removed": dict(wrong)}
        alive -= gone
    kept = {}
    with open(documents, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            kept[rec["id"]] = rec["text"]
    pii_docs = [d for d in labels.values() if d.label == "pii"]
    planted = [(d.id, s) for d in pii_docs for s in d.meta["pii"] if d.id in kept]
    scrubbed = sum(s not in kept[i] for i, s in planted)
    changed = removed.get("pii", [])
    changed_pii = sum(i in labels and labels[i].label == "pii" for i in changed)
    clean = [d.id for d in labels.values() if d.label == "clean"]
    per_step["pii"] = {"target": "pii", "labelled": len(pii_docs), "kept": sum(d.id in kept for d in pii_docs),
                       "changed": len(changed), "precision": _ratio(changed_pii, len(changed)),
                       "strings": len(planted), "scrubbed": scrubbed, "recall": _ratio(scrubbed, len(planted)),
                       "clean_changed": sum(i in kept and kept[i] != labels[i].text for i in clean)}
    # a clean document survives if it, or a near duplicate of it, is in the output
    group_kept = {d.meta["near_group"] for i, d in labels.items() if i in kept and "near_group" in d.meta}
    survived = sum(i in kept or labels[i].meta.get("near_group") in group_kept for i in clean)
    junk = [d.id for d in labels.values() if d.label not in ("clean", "pii", "exact_dup", "near_dup")]
    return {"labels": dict(by_label), "steps": per_step, "clean_kept": _ratio(survived, len(clean)),
            "junk_removed": _ratio(sum(i not in kept for i in junk), len(junk))}
