"""The toyworld suites: what a model knows about the synthetic world every fact of which we know.

Base-model probes (plain text, greedy, `lmforge.toyworld.score_completion`):
    toyworld_cloze_train     "The capital of Velora is" -> "Kamdu", facts of train entities
    toyworld_cloze_heldout   the same for held-out entities (facts only pretraining text states)
    toyworld_arithmetic      "37 + 48 =" -> "85", operand pairs the corpus never writes (300)
Chat suites (the chat template, `lmforge.eval.chat_tasks.evaluate_examples`), as the eval_sft stage:
    toyworld_qa_heldout      questions about held-out entities (200)
    toyworld_qa_train        questions about training entities (200)
    toyworld_word_problems   word problems, worked steps then "#### n" (100)
    toyworld_refusals        forbidden requests and allowed look-alikes (100)
    toyworld_heldout_tasks   task types never in SFT data (30 per type)
    toyworld_trained_tasks   the SFT task types, on new examples (30 per type)

The world is `--world PATH` (a world.json, e.g. runs/<name>/toyworld/world.json) or, by default,
`generate_world(0)`, the world of the shipped recipes. `--limit N` keeps N examples per suite
(spread over the task types of a chat suite); `--seed` draws other examples.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict

from lmforge.eval.tasks.base import Loaded, Prompt, Task, TaskOptions, TaskOutput, apply_limit


@functools.lru_cache(maxsize=4)
def load_world(path: str | None):
    from lmforge.toyworld import World, generate_world

    return generate_world(0) if path is None else World.load(path)


def _world_source(opts: TaskOptions) -> str:
    return opts.world or "generate_world(0)"


class ToyworldProbeTask(Task):
    kind = "toyworld"

    def __init__(self, name: str, description: str, suite: str):
        self.name, self.description, self.suite = name, description, suite

    def load(self, opts: TaskOptions) -> Loaded:
        from lmforge.toyworld import arithmetic_probes, cloze_probes

        if self.suite == "arithmetic":
            probes = arithmetic_probes(opts.seed, 300 if opts.limit is None else opts.limit)
        else:
            probes = cloze_probes(load_world(opts.world), self.suite)
        return Loaded(apply_limit(probes, opts.limit), [], _world_source(opts), {"world": _world_source(opts)})

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        from lmforge.toyworld import score_completion

        outs = lm.generate([Prompt(p.prompt) for p in data.docs], max_new_tokens=opts.max_new_tokens or 8, stop=(),
                           chat=False, desc=self.name)
        scores, samples = [], []
        for i, (probe, out) in enumerate(zip(data.docs, outs, strict=True)):
            ok = score_completion(probe, out.text)
            scores.append(float(ok))
            samples.append({"doc_id": i, "prompt": probe.prompt, "output": out.text, "target": probe.answer,
                            "relation": probe.relation, "split": probe.split, "correct": ok})
        return TaskOutput({"acc": scores}, samples)


class ToyworldChatTask(Task):
    kind = "toyworld"

    def __init__(self, name: str, description: str, tasks: str | tuple[str, ...], split: str, per_task: int):
        self.name, self.description = name, description
        self.tasks, self.split, self.per_task = tasks, split, per_task

    def task_names(self) -> list[str]:
        from lmforge.toyworld.tasks import HELDOUT_TASKS, TASKS

        if isinstance(self.tasks, tuple):  # explicit task types
            return list(self.tasks)
        return list(HELDOUT_TASKS) if self.tasks == "heldout" else [t for t in TASKS if t not in HELDOUT_TASKS]

    def load(self, opts: TaskOptions) -> Loaded:
        from lmforge.toyworld.tasks import eval_examples

        world, names = load_world(opts.world), self.task_names()
        n = self.per_task if opts.limit is None else min(self.per_task, math.ceil(opts.limit / len(names)))
        per_task = [eval_examples(world, t, self.split, n, opts.seed) for t in names]
        # interleave the task types so that --limit keeps every type represented
        examples = [e for group in itertools.zip_longest(*per_task) for e in group if e is not None]
        return Loaded(apply_limit(examples, opts.limit), [], _world_source(opts), {"world": _world_source(opts)})

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        from lmforge.eval.chat_tasks import evaluate_examples

        records = []
        chunk = max(lm.batch_size, 1)
        with lm.progress(len(data.docs), self.name) as bar:  # evaluate_examples has no progress of its own
            for start in range(0, len(data.docs), chunk):
                part = data.docs[start:start + chunk]
                # the run's --tools, --temperature and --seed, as the other generation tasks get them
                res = evaluate_examples(lm.model, lm.tok, part, max_new_tokens=opts.max_new_tokens or 64,
                                        batch_size=lm.batch_size, tools=lm.engine.tools or None,
                                        temperature=lm.temperature, seed=lm.seed + start)
                records += res["records"]
                bar.update(len(part))
        by_task = defaultdict(list)
        for r in records:
            by_task[r["task"]].append(r["correct"])
        breakdown = {t: {"acc": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_task.items())}
        samples = [{"doc_id": i, **r} for i, r in enumerate(records)]
        return TaskOutput({"acc": [float(r["correct"]) for r in records]}, samples, breakdown=breakdown)


TOYWORLD_TASKS = [
    ToyworldProbeTask("toyworld_cloze_train", "toyworld cloze probes on train entities (base model)", "train"),
    ToyworldProbeTask("toyworld_cloze_heldout", "toyworld cloze probes on held-out entities (base model)", "heldout"),
    ToyworldProbeTask("toyworld_arithmetic", "'a + b =' probes with operand pairs never in the corpus", "arithmetic"),
    ToyworldChatTask("toyworld_qa_heldout", "chat QA about held-out entities", ("qa",), "heldout", 200),
    ToyworldChatTask("toyworld_qa_train", "chat QA about training entities (facts SFT may not have shown)", ("qa",),
                     "train", 200),
    ToyworldChatTask("toyworld_word_problems", "chat word problems, steps then '#### n'", ("word_problem",), "train",
                     100),
    ToyworldChatTask("toyworld_refusals", "chat requests the world's rules forbid, and allowed look-alikes",
                     ("refusal",), "train", 100),
    ToyworldChatTask("toyworld_heldout_tasks", "chat task types never in SFT data (zero-shot instructions)",
                     "heldout", "train", 30),
    ToyworldChatTask("toyworld_trained_tasks", "chat SFT task types on new examples", "trained", "train", 30),
]
