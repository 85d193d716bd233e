"""Build the curation pipeline from a `CurateConfig` and run it with datatrove's LocalPipelineExecutor.

Deduplication needs every document's signature before any can be dropped, so the pipeline runs as
up to six executor stages, each reading the previous one's shards (`work/`):

    1 filter     read -> cleanup -> [language] -> gopher_quality -> gopher_repetition -> c4 -> fineweb
                 -> shards + exact-dedup signatures                                 (tasks)
    2 exact      ExactFindDedups: hashes sorted and compared                        (1 task)
    3 exact-rm   ExactDedupFilter -> shards + MinHash signatures                    (tasks)
    4 buckets    MinhashDedupBuckets: documents sharing a band                       (one task per band)
    5 cluster    MinhashDedupCluster: union-find, one document kept per cluster     (1 task)
    6 finish     MinhashDedupFilter -> pii -> blocklist -> decontam -> output shards (tasks)

Disabled steps are left out (no dedup: one stage). On a cluster the same stages run under
datatrove's SlurmPipelineExecutor or RayPipelineExecutor (docs/curation.md).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lmforge.curate.config import CurateConfig
from lmforge.curate.steps import (
    TOKENIZER,
    BlocklistFilter,
    Cleanup,
    PIIScrubber,
    RemovalLog,
    ShardReader,
    ShardWriter,
    SourceReader,
    Tally,
    read_blocklist,
    write_shards,
)
from lmforge.errors import LmforgeError

# Every step in pipeline order; a step's kept documents are counted right after it ("read": the input).
STEPS = ("read", "cleanup", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb", "exact_dedup",
         "near_dedup", "pii", "blocklist", "decontam")


PRELOAD = ("lmforge.curate.steps", "lmforge.curate.decontam", "lmforge.curate.config", "datatrove.pipeline.filters",
           "datatrove.pipeline.dedup", "datatrove.pipeline.formatters", "datatrove.executor")


@dataclass
class CurateInput:
    """What to curate: lmforge sources (read in parallel by the tasks), or ready records
    {"id", "text", "metadata"} (toyworld, noisy web), dealt into one shard per task first."""

    sources: list | None = None
    records: list[dict] | None = None
    name: str = ""                   # what the records are, for messages

    def describe(self) -> str:
        return ", ".join(s.path for s in self.sources) if self.sources is not None else self.name


def exact_key(doc) -> bytes:
    """Exact duplicates: the same words in the same order, ignoring case and spacing."""
    return " ".join(doc.text.lower().split()).encode("utf-8")


def _need(module: str, package: str, what: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise LmforgeError(f"{what}: needs the '{module}' package (pip install {package}); "
                           f"set it to false to run without it")


class Builder:
    """Turns the config into executor stages: lists of datatrove steps with their task counts."""

    def __init__(self, cfg: CurateConfig, work: Path, inp: CurateInput, items_file: Path | None):
        self.cfg, self.work, self.inp, self.items_file = cfg, work, inp, items_file
        self.enabled: list[str] = ["read"]

    def log(self, step: str) -> RemovalLog:
        return RemovalLog(str(self.work / "removed"), step, self.cfg.samples_per_filter)

    def tally(self, step: str) -> Tally:
        if step not in self.enabled:
            self.enabled.append(step)
        return Tally(str(self.work / "tally"), step)

    def reader(self):
        if self.inp.records is not None:
            write_shards(self.work / "input", self.inp.records, self.cfg.executor.tasks)
            return ShardReader(str(self.work / "input"))
        from lmforge.data.sources import _resolve

        files = [[(str(p), fmt) for p, fmt in _resolve(s)] for s in self.inp.sources]
        return SourceReader(self.inp.sources, files)

    def quality_steps(self) -> list:
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )

        c = self.cfg
        steps = []
        if c.cleanup.enabled:
            if c.cleanup.ftfy:
                _need("ftfy", "ftfy", "curate.cleanup.ftfy")
            steps += [Cleanup(c.cleanup, self.log("cleanup")), self.tally("cleanup")]
        if c.language.enabled:
            _need("fasttext", "fasttext-numpy2-wheel fasteners", "curate.language.enabled (it also downloads the "
                  "lid.176 model on first use, so it needs the network once)")
            from datatrove.pipeline.filters import LanguageFilter

            steps += [LanguageFilter(c.language.languages, c.language.min_score, exclusion_writer=self.log("language")),
                      self.tally("language")]
        g = c.gopher_quality
        if g.enabled:
            steps += [GopherQualityFilter(
                g.min_doc_words, g.max_doc_words, g.min_avg_word_length, g.max_avg_word_length,
                g.max_symbol_word_ratio, g.max_bullet_lines_ratio, g.max_ellipsis_lines_ratio,
                g.min_alpha_words_ratio, g.min_stop_words, exclusion_writer=self.log("gopher_quality"),
                language=TOKENIZER), self.tally("gopher_quality")]
        r = c.gopher_repetition
        if r.enabled:
            steps += [GopherRepetitionFilter(
                r.dup_line_frac, r.dup_para_frac, r.dup_line_char_frac, r.dup_para_char_frac,
                tuple((int(n), f) for n, f in r.top_n_grams), tuple((int(n), f) for n, f in r.dup_n_grams),
                exclusion_writer=self.log("gopher_repetition"), language=TOKENIZER), self.tally("gopher_repetition")]
        k = c.c4
        if k.enabled:
            steps += [C4QualityFilter(
                self.log("c4"), k.split_paragraph, k.remove_citations, k.filter_no_terminal_punct, k.min_num_sentences,
                k.min_words_per_line, k.max_word_length, k.filter_lorem_ipsum, k.filter_javascript,
                k.filter_curly_bracket, k.filter_policy, language=TOKENIZER), self.tally("c4")]
        f = c.fineweb
        if f.enabled:
            steps += [FineWebQualityFilter(
                self.log("fineweb"), f.line_punct_thr, f.line_punct_exclude_zero, None, f.short_line_thr,
                f.short_line_length, f.char_duplicates_ratio, f.new_line_ratio, language=TOKENIZER),
                self.tally("fineweb")]
        return steps

    def final_steps(self) -> list:
        c = self.cfg
        steps = []
        if c.pii.enabled:
            steps += [PIIScrubber(c.pii, RemovalLog(str(self.work / "edited"), "pii", c.samples_per_filter)),
                      self.tally("pii")]
        words = read_blocklist(c.blocklist.path, c.blocklist.words)
        if words:
            steps += [BlocklistFilter(words, c.blocklist.min_hits, self.log("blocklist")), self.tally("blocklist")]
        if c.decontam.enabled and self.items_file is not None:
            from lmforge.curate.decontam import NGramDecontFilter

            d = c.decontam
            steps += [NGramDecontFilter(str(self.items_file), d.ngram, d.min_overlap, d.normalize_numbers,
                                        self.log("decontam")), self.tally("decontam")]
        return steps

    def stages(self) -> list[tuple[str, list, int]]:
        """(name, steps, tasks) in run order."""
        from datatrove.pipeline.dedup import (
            MinhashDedupBuckets,
            MinhashDedupCluster,
            MinhashDedupFilter,
            MinhashDedupSignature,
        )
        from datatrove.pipeline.dedup.exact_dedup import (
            ExactDedupConfig,
            ExactDedupFilter,
            ExactDedupSignature,
            ExactFindDedups,
        )
        from datatrove.pipeline.dedup.minhash import MinhashConfig
        from datatrove.utils.hashing import HashConfig
        from datatrove.utils.text import TextNormConfig

        c, w, tasks = self.cfg, self.work, self.cfg.executor.tasks
        segment = [self.reader(), self.tally("read"), *self.quality_steps()]
        stages = []
        if c.exact_dedup.enabled:
            ec = ExactDedupConfig(content_getter=exact_key)
            stages.append(("filter", [*segment, ShardWriter(str(w / "s1")), ExactDedupSignature(str(w / "exact_sigs"),
                                                                                                 ec)], tasks))
            stages.append(("exact", [ExactFindDedups(str(w / "exact_sigs"), str(w / "exact_dups"), ec)], 1))
            segment = [ShardReader(str(w / "s1")),
                       ExactDedupFilter(str(w / "exact_dups"), ec, exclusion_writer=self.log("exact_dedup")),
                       self.tally("exact_dedup")]
        if c.minhash.enabled:
            m = c.minhash
            # sha1: the installed xxhash (4.x) takes bytes only, and MinHash hashes str shingles
            mc = MinhashConfig(n_grams=m.shingle_size, num_buckets=m.bands, hashes_per_bucket=m.rows, seed=m.seed,
                               norm_config=TextNormConfig(norm_numbers=m.normalize_numbers),
                               hash_config=HashConfig(precision=64, hash_fc="sha1"))
            stages.append(("minhash_sigs" if stages else "filter",
                           [*segment, ShardWriter(str(w / "s2")),
                            MinhashDedupSignature(str(w / "mh_sigs"), mc, language=TOKENIZER)], tasks))
            stages.append(("buckets", [MinhashDedupBuckets(str(w / "mh_sigs"), str(w / "mh_buckets"), config=mc)],
                           m.bands))
            stages.append(("cluster", [MinhashDedupCluster(str(w / "mh_buckets"), str(w / "mh_remove"), config=mc)], 1))
            segment = [ShardReader(str(w / "s2")), MinhashDedupFilter(str(w / "mh_remove"),
                                                                      exclusion_writer=self.log("near_dedup")),
                       self.tally("near_dedup")]
        stages.append(("finish", [*segment, *self.final_steps(), ShardWriter(str(w / "output"))], tasks))
        return stages


def run_stages(stages, cfg: CurateConfig, work: Path) -> dict[str, float]:
    """Run each stage with LocalPipelineExecutor; seconds per stage."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.utils.logging import setup_default_logger

    from lmforge.curate.steps import quiet_console

    seconds = {}
    quiet_console()
    if cfg.executor.workers > 1 and cfg.executor.start_method == "forkserver":
        import multiprocess

        # workers fork from a server that has imported these once, instead of importing them per pool
        multiprocess.get_context("forkserver").set_forkserver_preload(list(PRELOAD))
    try:
        for i, (name, steps, tasks) in enumerate(stages):
            t0 = time.time()
            LocalPipelineExecutor(steps, tasks=tasks, workers=min(cfg.executor.workers, tasks),
                                  logging_dir=str(work / "logs" / f"{i + 1}_{name}"), skip_completed=False,
                                  start_method=cfg.executor.start_method).run()
            seconds[name] = round(time.time() - t0, 3)
    finally:
        setup_default_logger()
    return seconds


def write_documents(work: Path, tasks: int, path: Path) -> None:
    """Concatenate the output shards in task order into `path` ({"id", "text"} per line), atomically:
    written to a temp file in the same directory, then renamed over `path`."""
    from lmforge.utils import temp_file_beside

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for r in range(tasks):
                shard = work / "output" / f"{r:05d}.jsonl"
                if not shard.exists():
                    continue
                with open(shard, encoding="utf-8") as f:
                    for line in f:
                        rec = json.loads(line)
                        out.write(json.dumps({"id": rec["id"], "text": rec["text"]}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class Plan:
    """A prepared curation: its work directory, executor stages and the bookkeeping `finish_curation` needs."""

    out: Path
    work: Path
    stages: list
    enabled: list[str]
    item_counts: dict
    source: str


def prepare_curation(cfg: CurateConfig, out: Path, inp: CurateInput, eval_items: list[tuple[str, str]] = ()) -> Plan:
    """A fresh `out`/work with the decontamination items and the input shards; the executor stages to run."""
    from lmforge.curate.decontam import write_items

    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    items_file, item_counts = None, {}
    if cfg.decontam.enabled and eval_items:
        items_file = work / "decontam_items.json"
        item_counts = write_items(items_file, list(eval_items), cfg.decontam.ngram, cfg.decontam.normalize_numbers)
    builder = Builder(cfg, work, inp, items_file)
    stages = builder.stages()
    return Plan(out, work, stages, builder.enabled, item_counts, inp.describe())


def finish_curation(plan: Plan, cfg: CurateConfig, seconds: dict, labels: dict | None = None, log=print) -> dict:
    """After the stages ran: documents.jsonl, stats.json, report.md, plots/, removed_samples/; the stats."""
    from lmforge.curate.report import write_report
    from lmforge.curate.stats import collect_stats

    out, work = plan.out, plan.work
    write_documents(work, cfg.executor.tasks, out / "documents.jsonl")
    stats = collect_stats(work, out, plan.enabled, cfg, seconds, plan.item_counts, labels)
    write_report(stats, out)
    if not cfg.keep_work:
        for sub in work.iterdir():
            if sub.name != "logs":
                shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
    for warning in stats["warnings"]:
        log(f"[curate] WARNING: {warning}")
    if stats["output"]["documents"] == 0:  # no empty documents.jsonl that a later step could take for a corpus;
        (out / "documents.jsonl").unlink(missing_ok=True)  # the report stays, to show what removed everything
    if stats["input"]["documents"] == 0:
        raise LmforgeError(f"{plan.source}: empty corpus (no documents)")
    if stats["output"]["documents"] == 0:
        removed = ", ".join(f"{s['step']} {s['removed_documents']}" for s in stats["steps"] if s["removed_documents"])
        raise LmforgeError(f"{out}: no documents left after curation (read {stats['input']['documents']}; "
                           f"removed: {removed or 'none'}); loosen the curate.* thresholds (see {out / 'report.md'})")
    return stats


def run_curation(cfg: CurateConfig, out: Path, inp: CurateInput, eval_items: list[tuple[str, str]] = (),
                 labels: dict | None = None, log=print) -> dict:
    """Curate `inp` into `out`/documents.jsonl with LocalPipelineExecutor; write stats.json, report.md,
    plots/curate.png and removed_samples/; return the stats. `labels`: id -> WebDoc, to score the steps."""
    plan = prepare_curation(cfg, out, inp, eval_items)
    log(f"[curate] {len(plan.stages)} executor stages ({', '.join(s[0] for s in plan.stages)}), "
        f"{cfg.executor.tasks} tasks, {cfg.executor.workers} workers")
    t0 = time.time()
    seconds = run_stages(plan.stages, cfg, plan.work)
    seconds["total"] = round(time.time() - t0, 3)
    return finish_curation(plan, cfg, seconds, labels, log)
