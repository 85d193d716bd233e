"""Stage `pairs`: preference data from the model's own answers, labeled by toyworld's hidden judge.

For each prompt (toyworld tasks on *training* entities, see `toyworld.judge.preference_prompts`),
the policy (by default the SFT model) samples `samples` answers at temperature `temperature`; the
hidden judge scores them, and the best and the worst become a (chosen, rejected) pair. Prompts
whose answers all score the same teach nothing and are dropped (counted as ties), and so are pairs
whose scores differ by less than `min_margin` (label noise, `close_pairs`). This is the
"human labels two samples" step of RLHF with a rule-based labeler that the model never sees.

Output: `pairs/train.jsonl` and `pairs/val.jsonl`, one {"prompt": messages, "chosen", "rejected",
"chosen_score", "rejected_score", "task"} per line: the pairs format `lmforge rm`/`lmforge dpo` read.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError, above_zero, check_fields, fraction, non_negative, positive
from lmforge.pipeline import Stage
from lmforge.stages.common import check_task_mix
from lmforge.utils import atomic_write_text


@dataclass
class PairsConfig:
    init: str = "sft"                 # the policy that answers: a stage of this run or a checkpoint dir
    n_prompts: int = 1200
    samples: int = 2                  # answers per prompt; the judge's best and worst form the pair
    temperature: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 64
    tasks: dict[str, float] = field(default_factory=dict)  # task -> weight; empty: the judge's default mix
    all_pairs: bool = False           # every two answers that differ by min_margin make a pair (K(K-1)/2 per
                                      # prompt, as InstructGPT); false: only the best and the worst
    min_margin: float = 1.0           # judge-score gap below which a pair is dropped: answers that differ
                                      # only by a hair (two wrong answers, one a bit longer) are label noise
    val_fraction: float = 0.1         # pairs kept out of training to measure reward-model accuracy

    def __post_init__(self):
        positive(self, "n_prompts", "max_new_tokens")
        check_fields(self, ["samples"], lambda v: v >= 2, "at least 2 answers per prompt (a pair)")
        above_zero(self, "temperature", why="a prompt's answers must differ to make a pair")
        non_negative(self, "top_k", "min_margin")
        fraction(self, "val_fraction", closed_top=False)
        check_task_mix(self, "tasks")


def sample_answers(model, tok, prompts: list[list[dict]], n: int, *, temperature: float, top_k: int,
                   max_new_tokens: int, seed: int, batch_size: int = 64,
                   progress: str | None = None) -> list[list[str]]:
    """n sampled replies per prompt (plain text), through the batched engine; `progress` names a progress bar."""
    from lmforge.chat import render_prompt
    from lmforge.engine import Engine, SamplingParams
    from lmforge.tokenizer import END_OF_TURN

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                            stop_ids=(tok.special[END_OF_TURN], tok.eos_id), seed=seed)
    outs = Engine(model, tok, batch_size=batch_size).generate([render_prompt(p, tok) for p in prompts], params, n=n,
                                                              progress=progress)
    return [[tok.decode(c.ids, skip_special=True).strip() for c in samples] for samples in outs]


def write_jsonl(path, records) -> None:
    import json

    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run(ctx) -> dict:
    from lmforge.model.io import load_model
    from lmforge.stages.common import load_world, model_dir, progress_bar
    from lmforge.tokenizer import Tokenizer
    from lmforge.toyworld.judge import label_pairs, preference_prompts
    from lmforge.train.distributed import resolve_device

    pc = ctx.cfg.pairs
    out = ctx.stage_dir("pairs")
    world = load_world(ctx)
    src = model_dir(ctx, pc.init, "pairs.init")
    model = load_model(src, resolve_device(ctx.cfg.train.device, ctx.info)).eval()
    tok = Tokenizer.load(src)
    kw = {"tasks": pc.tasks} if pc.tasks else {}
    examples = preference_prompts(world, pc.n_prompts, seed=ctx.cfg.seed, split="train", **kw)
    ctx.log(f"[pairs] sampling {pc.samples} answers to {len(examples)} prompts from {src}")
    answers = sample_answers(model, tok, [e.messages[:-1] for e in examples], pc.samples,
                             temperature=pc.temperature, top_k=pc.top_k, max_new_tokens=pc.max_new_tokens,
                             seed=ctx.cfg.seed, progress=progress_bar(ctx, "pairs"))
    labeled = label_pairs(world, examples, answers, all_pairs=pc.all_pairs, min_margin=pc.min_margin)
    # an empty answer (the model stopped at once) is a real sample but no valid chat turn: drop those pairs
    pairs = [p for p in labeled if p["chosen"].strip() and p["rejected"].strip()]
    close = [p for p in pairs if p["chosen_score"] - p["rejected_score"] < pc.min_margin]
    pairs = [p for p in pairs if p["chosen_score"] - p["rejected_score"] >= pc.min_margin]
    # validation takes whole prompts: pairs of one prompt share answers, so splitting them would leak
    prompts_with_pairs = sorted({p.get("prompt_index", i) for i, p in enumerate(pairs)})
    random.Random(ctx.cfg.seed).shuffle(prompts_with_pairs)
    if not prompts_with_pairs:
        raise LmforgeError(f"pairs: none of {len(examples)} prompts gave two answers the judge tells apart by "
                           f"pairs.min_margin ({pc.min_margin}) ({labeled.ties} ties, {len(close)} closer, "
                           f"{len(labeled) - len(pairs) - len(close)} with an empty answer); raise pairs.temperature "
                           f"or pairs.samples, or lower pairs.min_margin")
    # at least one prompt's pairs stay for training
    n_val = min(int(round(len(prompts_with_pairs) * pc.val_fraction)), len(prompts_with_pairs) - 1)
    val_prompts = set(prompts_with_pairs[:n_val])
    for i, p in enumerate(pairs):
        p["prompt_index"] = p.get("prompt_index", i)
    val = [p for p in pairs if p["prompt_index"] in val_prompts]
    train = [p for p in pairs if p["prompt_index"] not in val_prompts]
    random.Random(ctx.cfg.seed + 1).shuffle(train)
    n_val = len(val)
    write_jsonl(out / "val.jsonl", val)
    write_jsonl(out / "train.jsonl", train)
    margins = [p["chosen_score"] - p["rejected_score"] for p in pairs]
    return {"prompts": len(examples), "pairs": len(pairs), "ties": labeled.ties,
            "prompts_with_pairs": len(prompts_with_pairs),
            "empty_answer_pairs": len(labeled) - len(pairs) - len(close), "close_pairs": len(close),
            "train_pairs": len(pairs) - n_val, "val_pairs": n_val,
            "mean_score_margin": round(statistics.fmean(margins), 4) if margins else 0.0}


STAGE = Stage("pairs", run, requires=("toyworld",),
              description="sample answer pairs from the SFT model and label them with toyworld's hidden judge",
              inputs=("seed", "toyworld", "tokenizer", "model", "sft", "pairs"))
