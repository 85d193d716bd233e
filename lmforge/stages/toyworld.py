"""Stage `toyworld`: generate the synthetic world and its pretraining corpus."""

from __future__ import annotations

import json

from lmforge.pipeline import Stage
from lmforge.utils import atomic_write_text


def run(ctx) -> dict:
    from lmforge.toyworld import generate_world, pretraining_corpus

    cfg = ctx.cfg
    world = generate_world(cfg.seed, cfg.toyworld.world)
    out = ctx.stage_dir("toyworld")
    world.save(out / "world.json")
    docs = pretraining_corpus(world, cfg.toyworld.corpus)
    atomic_write_text(out / "corpus.jsonl", "".join(json.dumps({"text": d}) + "\n" for d in docs))
    heldout = sum(1 for s in world.split.values() if s == "heldout")
    return {"entities": len(world.entities), "facts": len(world.facts), "heldout_entities": heldout,
            "documents": len(docs), "characters": sum(len(d) for d in docs)}


STAGE = Stage("toyworld", run, description="generate the synthetic world and its pretraining corpus",
              inputs=("seed", "toyworld"))
