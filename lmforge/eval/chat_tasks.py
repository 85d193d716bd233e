"""Chat-format evaluation on toyworld instruction tasks: generate an answer to each example's
conversation (greedy, through the engine) and score it with the task's own rule."""

from __future__ import annotations

from collections import defaultdict

import torch


@torch.no_grad()
def evaluate_examples(model, tok, examples, *, max_new_tokens: int = 64, batch_size: int = 64,
                      tools: dict | None = None) -> dict:
    """Returns {"acc": float, "per_task": {task: acc}, "records": [...]} for `examples`."""
    from lmforge.chat import render_prompt
    from lmforge.engine import Engine, SamplingParams
    from lmforge.tokenizer import END_OF_TURN
    from lmforge.toyworld.tasks import score

    if not examples:
        return {"acc": 0.0, "per_task": {}, "records": []}
    engine = Engine(model, tok, tools=tools, batch_size=batch_size)
    prompts = [render_prompt(ex.messages[:-1], tok) for ex in examples]  # drop the reference answer
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                            stop_ids=(tok.special[END_OF_TURN], tok.eos_id))
    outs = engine.generate(prompts, params)
    records, by_task = [], defaultdict(list)
    for ex, samples in zip(examples, outs, strict=True):
        text = tok.decode(samples[0].ids, skip_special=True).strip()
        ok = bool(score(ex, text))
        by_task[ex.task].append(ok)
        records.append({"task": ex.task, "split": ex.split, "prompt": ex.messages[-2]["content"],
                        "answer": ex.answer, "completion": text, "correct": ok})
    acc = sum(r["correct"] for r in records) / len(records)
    return {"acc": acc, "per_task": {t: sum(v) / len(v) for t, v in sorted(by_task.items())}, "records": records}
