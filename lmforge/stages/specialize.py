"""Stage `specialize`: continue from the instruction-tuned model on one domain without losing the rest.

    lmforge specialize RECIPE [specialize.init=dpo] [specialize.general_fraction=0] [specialize.lora.enabled=true]

Supervised fine-tuning again, on many demonstrations of one domain: by default `n_examples` toyworld
word problems solved step by step ("#### n" last; through the calculator tool when `sft.calculator`
is on, the format the SFT model learned), or `specialize.sources` (chat records in any format SFT
reads, e.g. math chain-of-thought). Training only on the domain pulls the whole model toward it, and
what no batch shows any more fades (catastrophic forgetting). Two shares of each epoch work against it:
- `general_fraction`: this share of the conversations is rehearsal, drawn from the SFT mixture itself
  (sft.sources, or the toyworld instruction tasks) -- what the model must keep doing;
- `replay_fraction`: this share of all training items are pretraining documents, the only place where
  facts about entities no conversation names are stated.
LoRA (`specialize.lora`) is the third lever: a low-rank update changes less of what the model knows,
and learns less. `eval_specialize` measures the domain and everything else, before and after.
Output: `specialize/model/` (and `specialize/adapter/` for LoRA), as the sft stage writes them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import FieldError, fraction, non_negative, positive
from lmforge.model.lora import LoRAConfig
from lmforge.pipeline import Stage
from lmforge.train.config import TrainConfig


def _train_defaults() -> TrainConfig:
    return TrainConfig(steps=300, micro_batch_size=16, seq_len=256, lr=3e-4, warmup_steps=20, schedule="cosine",
                       eval_every=100, ckpt_every=100, log_every=10)


@dataclass
class SpecializeConfig:
    init: str = "sft"                 # the model to specialize: a stage of this run or a checkpoint dir
    task: str = "word_problem"        # toyworld: the domain, one task type (training entities only)
    n_examples: int = 2000            # toyworld: domain demonstrations (new ones, not the SFT stage's)
    sources: list[ChatSourceConfig] = field(default_factory=list)  # domain data instead of toyworld
    general_fraction: float = 0.25    # share of the conversations drawn from the SFT mixture (rehearsal)
    replay_fraction: float = 0.25     # share of all training items that are pretraining documents
    val_examples: int = 100           # held-out domain conversations for validation loss
    freeze_embeddings: bool = True    # as sft.freeze_embeddings (full fine-tuning only)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=_train_defaults)

    def __post_init__(self):
        from lmforge.data.chat_sources import need_replies
        from lmforge.toyworld.tasks import TASKS

        need_replies(self.sources)

        if self.task not in TASKS:
            raise FieldError("task", f"not a toyworld task (tasks: {', '.join(TASKS)}), got {self.task!r}")
        positive(self, "n_examples")
        non_negative(self, "val_examples")
        fraction(self, "general_fraction", closed_top=False)
        fraction(self, "replay_fraction", closed_top=False)


def domain_conversations(ctx) -> tuple[list, list, dict]:
    """(train, validation, stats) for the domain: specialize.sources, or toyworld examples."""
    sp = ctx.cfg.specialize
    if sp.sources:
        from lmforge.data.chat_sources import mix
        from lmforge.stages.sft import hold_out, log_skipped

        convs, stats = mix(sp.sources, seed=ctx.cfg.seed)
        log_skipped(ctx, "specialize", stats)
        train, val = hold_out(convs, sp.val_examples, "specialize")
        return train, val, {"domain": "specialize.sources",
                            "skipped_records": sum(row["skipped"] for row in stats["sources"])}
    from lmforge.stages.common import load_world
    from lmforge.toyworld.tasks import sft_examples
    from lmforge.toyworld.tool_use import with_calculator

    world = load_world(ctx)
    tool = with_calculator if ctx.cfg.sft.calculator else (lambda e: e)
    # seeds apart from the sft stage's (cfg.seed, cfg.seed + 10_000): new problems, not the SFT ones
    train = sft_examples(world, sp.n_examples, seed=ctx.cfg.seed + 30_000, tasks=[sp.task])
    val = sft_examples(world, max(sp.val_examples, 1), seed=ctx.cfg.seed + 40_000, tasks=[sp.task])
    return ([tool(e).messages for e in train], [tool(e).messages for e in val][: sp.val_examples],
            {"domain": f"toyworld {sp.task}"})


def general_conversations(ctx, n: int) -> list:
    """n conversations drawn (seeded, without replacement while there are enough) from the SFT mixture."""
    from lmforge.stages.sft import conversations

    if n == 0:
        return []
    pool, _, _ = conversations(ctx)
    rng = random.Random(f"specialize:general:{ctx.cfg.seed}")
    picks = []
    while len(picks) < n:  # a small SFT mixture is repeated rather than under-weighted
        picks += rng.sample(pool, min(len(pool), n - len(picks)))
    return picks


def mixture(ctx) -> tuple[list, list, dict]:
    """(train conversations, validation conversations, counts): domain + general, shuffled together."""
    sp = ctx.cfg.specialize
    domain, val, stats = domain_conversations(ctx)
    n_general = round(len(domain) * sp.general_fraction / (1 - sp.general_fraction))
    train = domain + general_conversations(ctx, n_general)
    random.Random(f"specialize:mix:{ctx.cfg.seed}").shuffle(train)
    return train, val, {"domain_conversations": len(domain), "general_conversations": n_general, **stats}


def run(ctx) -> dict:
    from lmforge.stages.common import model_dir
    from lmforge.stages.sft import fine_tune

    sp = ctx.cfg.specialize
    src = model_dir(ctx, sp.init, "specialize.init")
    train, val, counts = mixture(ctx)
    ctx.log(f"[specialize] {counts['domain_conversations']} domain conversations ({counts['domain']}) + "
            f"{counts['general_conversations']} from the SFT mixture")
    metrics = fine_tune(ctx, "specialize", src, train, val, sp.train, sp.lora, sp.freeze_embeddings,
                        sp.replay_fraction)
    return {**metrics, **{k: v for k, v in counts.items() if k != "domain"}}


STAGE = Stage("specialize", run, distributed=True,
              description="continue the instruction-tuned model on one domain, with rehearsal against forgetting",
              inputs=("seed", "toyworld", "data", "tokenizer", "model", "train", "sft", "specialize"))
