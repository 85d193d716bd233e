"""Generation tasks (math word problems, BBH): the shared prompt -> generate -> extract -> compare loop."""

from __future__ import annotations

from collections.abc import Callable

from lmforge.eval.tasks.base import Loaded, Prompt, Task, TaskOptions, TaskOutput


class GenerationTask(Task):
    """A task answered by generating text: prompt, generate (greedy by default), extract, compare.

    Subclasses define `prompt`, `target` (the gold answer as text, for the logs), `extractors`
    (filter name -> function of the output returning the answer or None) and `is_correct`.
    Each extractor gives one metric, `exact_match_<filter>` (just `exact_match` when there is one).
    """

    kind = "generate"
    stop: tuple[str, ...] = ()       # base models: the output is cut at the first of these
    extractors: dict[str, Callable[[str], str | None]] = {}
    max_new_tokens_cot = 256
    max_new_tokens_direct = 32

    def prompt(self, doc, data: Loaded, opts: TaskOptions) -> Prompt:
        """The prompt for `doc`; few-shot documents are in `data.shots`."""
        raise NotImplementedError

    def target(self, doc) -> str:
        raise NotImplementedError

    def is_correct(self, prediction: str | None, doc) -> bool:
        raise NotImplementedError

    def get_extractors(self, opts: TaskOptions) -> dict[str, Callable[[str], str | None]]:
        return self.extractors

    def uses_cot(self, opts: TaskOptions) -> bool:
        return True if opts.cot is None else opts.cot

    def max_new_tokens(self, opts: TaskOptions) -> int:
        if opts.max_new_tokens is not None:
            return opts.max_new_tokens
        return self.max_new_tokens_cot if self.uses_cot(opts) else self.max_new_tokens_direct

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        prompts = [self.prompt(doc, data, opts) for doc in data.docs]
        outs = lm.generate(prompts, max_new_tokens=self.max_new_tokens(opts), stop=self.stop, chat=opts.chat,
                           desc=self.name)
        extractors = self.get_extractors(opts)
        metric = {name: f"exact_match_{name}" if len(extractors) > 1 else "exact_match" for name in extractors}
        scores: dict[str, list[float]] = {metric[name]: [] for name in extractors}
        samples = []
        for i, (doc, out) in enumerate(zip(data.docs, outs, strict=True)):
            extracted = {name: fn(out.text) for name, fn in extractors.items()}
            correct = {name: self.is_correct(pred, doc) for name, pred in extracted.items()}
            for name, ok in correct.items():
                scores[metric[name]].append(float(ok))
            samples.append({"doc_id": i, "prompt": out.prompt, "output": out.text, "target": self.target(doc),
                            "extracted": extracted, "correct": correct, "truncated": out.truncated})
        return TaskOutput(scores, samples)
