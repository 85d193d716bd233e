"""Curation throughput: documents/s of the whole `lmforge curate` pipeline, 1 worker vs 2.

Builds a ~50 MB noisy-web corpus (toyworld corpora of many worlds, seeds 1..N, each mixed with the
noisy web's junk; planted questions from each world's evaluation items), writes it as 16 JSONL files
and curates it twice with the toyworld recipe's settings (recipes/curate_toyworld.yaml): 2 tasks run
by 1 worker process, then the same 2 tasks by 2 workers (datatrove LocalPipelineExecutor; the files
are split between the tasks). Same input, same work: the ratio is the parallel speedup. Prints
documents/s and MB/s of each (executor stages only, and end to end with the stats and report), the
seconds of each executor stage and the speedup. A benchmark, not a test: nothing asserts speed. On a
shared machine other processes compete for the cores: read the load average next to the numbers.

    python bench/curate_throughput.py                      # ~50 MB, in a temporary directory
    python bench/curate_throughput.py --mb 10 --dir /tmp/nw --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def build_corpus(folder: Path, mb: float, files: int = 16) -> tuple[int, int, list[tuple[str, str]]]:
    """Noisy-web documents of worlds 1, 2, ... until `mb` megabytes; (documents, bytes, evaluation items)."""
    from lmforge.curate.decontam import toyworld_items
    from lmforge.toyworld import generate_world, pretraining_corpus
    from lmforge.toyworld.noisy_web import BLOCKLIST, NoisyWebConfig, noisy_web_corpus

    folder.mkdir(parents=True, exist_ok=True)
    outs = [open(folder / f"part_{k:02d}.jsonl", "w", encoding="utf-8") for k in range(files)]
    n = size = 0
    items: list[tuple[str, str]] = []
    seed = 0
    try:
        while size < mb * 1e6:
            seed += 1
            world = generate_world(seed)
            world_items = toyworld_items(world, ["word_problem", "main_character"], 50, [0])
            items += world_items
            docs = noisy_web_corpus(pretraining_corpus(world), NoisyWebConfig(enabled=True, seed=seed),
                                    [q for _, q in world_items], list(BLOCKLIST), [e.name for e in world.entities],
                                    natural=False)
            for d in docs:
                line = json.dumps({"text": d.text, "label": d.label}) + "\n"
                outs[n % files].write(line)
                n += 1
                size += len(line.encode("utf-8"))
    finally:
        for f in outs:
            f.close()
    return n, size, items


def run_once(corpus: Path, out: Path, workers: int, items) -> dict:
    from lmforge.config import load_run_config
    from lmforge.curate.pipeline import CurateInput, run_curation
    from lmforge.data.sources import SourceConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "curate_toyworld.yaml"
    cfg = load_run_config(recipe, ["curate.executor.tasks=2", f"curate.executor.workers={workers}"]).curate
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.time()
    stats = run_curation(cfg, out, CurateInput(sources=[SourceConfig(path=str(corpus), format="jsonl")]), items,
                         log=lambda m: None)
    stats["wall"] = time.time() - t0
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB of JSONL")
    ap.add_argument("--dir", default="", help="working directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the corpus and outputs")
    args = ap.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="curate_bench_"))
    try:
        t0 = time.time()
        n, size, items = build_corpus(root / "corpus", args.mb)
        print(f"corpus: {n:,} documents, {size / 1e6:.1f} MB in 16 JSONL files, {len(items):,} evaluation items "
              f"({time.time() - t0:.0f} s to generate)")
        print(f"cpus: {os.cpu_count()} (shared with whatever else runs on this machine)")
        results = {}
        for workers in (1, 2):
            s = run_once(root / "corpus", root / f"out_w{workers}", workers, items)
            results[workers] = s
            pipe = s["seconds"]["total"]
            print(f"\nworkers={workers} tasks=2: {s['input']['documents']:,} -> {s['output']['documents']:,} documents")
            print(f"  executor stages {pipe:.1f} s: {s['input']['documents'] / pipe:,.0f} documents/s, "
                  f"{size / 1e6 / pipe:.2f} MB/s; end to end {s['wall']:.1f} s "
                  f"({s['input']['documents'] / s['wall']:,.0f} documents/s)")
            print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in s["seconds"].items() if k != "total"))
        a, b = results[1]["seconds"]["total"], results[2]["seconds"]["total"]
        same = results[1]["output"] == results[2]["output"]
        print(f"\nspeedup 1 -> 2 workers: {a / b:.2f}x (executor stages); outputs identical in size: {same}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
