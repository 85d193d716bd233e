"""Chat-format evaluation on toyworld instruction tasks: generate an answer to each example's
conversation (greedy, or `samples` answers at a temperature, through the engine) and score it
with the task's own rule."""

from __future__ import annotations

from collections import defaultdict

import torch


@torch.no_grad()
def evaluate_examples(model, tok, examples, *, max_new_tokens: int = 64, batch_size: int = 64,
                      tools: dict | None = None, temperature: float = 0.0, samples: int = 1,
                      seed: int = 0) -> dict:
    """Returns {"acc": float, "per_task": {task: acc}, "records": [...]} for `examples`.

    temperature > 0: `samples` answers per example, each scored; acc is their mean (pass@1 of
    the sampling distribution), and records keep the first answer of each example.
    """
    from lmforge.chat import render_prompt
    from lmforge.engine import Engine, SamplingParams
    from lmforge.tokenizer import END_OF_TURN
    from lmforge.toyworld.tasks import score

    if not examples:
        return {"acc": 0.0, "per_task": {}, "records": []}
    engine = Engine(model, tok, tools=tools, batch_size=batch_size)
    prompts = [render_prompt(ex.messages[:-1], tok) for ex in examples]  # drop the reference answer
    if temperature <= 0 and samples != 1:
        raise ValueError(f"samples={samples} needs a temperature > 0 (greedy answers are all the same)")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                            stop_ids=(tok.special[END_OF_TURN], tok.eos_id))
    outs = engine.generate(prompts, params, n=samples)
    records, by_task = [], defaultdict(list)
    for ex, answers in zip(examples, outs, strict=True):
        texts = [tok.decode(a.ids, skip_special=True).strip() for a in answers]
        oks = [bool(score(ex, t)) for t in texts]
        by_task[ex.task] += oks
        records.append({"task": ex.task, "split": ex.split, "prompt": ex.messages[-2]["content"],
                        "answer": ex.answer, "completion": texts[0], "correct": oks[0]})
    acc = sum(sum(v) for v in by_task.values()) / sum(len(v) for v in by_task.values())
    return {"acc": acc, "per_task": {t: sum(v) / len(v) for t, v in sorted(by_task.items())}, "records": records}
