"""BIG-Bench Hard: 27 tasks, 3-shot chain-of-thought prompts, exact match after "the answer is".

Data, in the layout of the BBH release (github.com/suzgun/BIG-Bench-Hard):

    bbh/<task>.json           {"canary": ..., "examples": [{"input": str, "target": str}, ...]}
    cot-prompts/<task>.txt    canary line, "-----", the task description, then three exemplars
                              "Q: <input>\\nA: Let's think step by step.\\n<reasoning> So the answer is <target>."

`path=` (or `--data`) may name a task's JSON file, the `bbh/` folder, or a folder holding `bbh/`
(or `bbh/bbh/`, as ../shared/data does); the prompts are looked up in the `cot-prompts/` folder
beside `bbh/`, or given with `fewshot=FILE`. Without a local path the examples come from the hub
(`lukaemon/bbh`, configuration = task, split test) and CoT shots need `fewshot=`.

Prompt (as lm-evaluation-harness's bbh_cot_fewshot): the description, the exemplars, then
"Q: <input>\\nA: Let's think step by step." With `--no-cot` the exemplars keep only their final
answer ("Q: ...\\nA: <target>") and the answer is the output's first line. Score: exact match of
the text after the first "the answer is" (to the end of its line, final period dropped) against
the target, ignoring case and surrounding spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import (
    Loaded,
    Prompt,
    TaskOptions,
    apply_limit,
    get_field,
    read_hf,
    read_json_array,
)
from lmforge.eval.tasks.generation import GenerationTask

BBH_SUBTASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)
COT_LEAD = "Let's think step by step."
_MARKER = re.compile(r"the answer is", re.IGNORECASE)


def extract_answer(text: str) -> str | None:
    """The text after the first "the answer is", to the end of its line, without the final period."""
    m = _MARKER.search(text)
    if not m:
        return None
    answer = text[m.end():].split("\n", 1)[0].strip()
    answer = answer[:-1].rstrip() if answer.endswith(".") else answer
    return answer or None


def extract_direct(text: str) -> str | None:
    """Direct answers: after "the answer is" if the model wrote it, else the first non-empty line."""
    found = extract_answer(text)
    if found is not None:
        return found
    for line in text.splitlines():
        if line.strip():
            line = line.strip()
            return line[:-1].rstrip() if line.endswith(".") else line
    return None


def normalize(answer: str) -> str:
    answer = answer.strip()
    return (answer[:-1] if answer.endswith(".") else answer).strip().lower()


@dataclass
class CotPrompts:
    description: str
    exemplars: list[tuple[str, str]]   # (input, answer starting "Let's think step by step.")


def parse_cot_prompts(path: Path) -> CotPrompts:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    _, sep, body = text.partition("-----\n")
    if not sep:
        raise LmforgeError(f"{path}: expected a canary line, '-----', the task description, then 'Q: ...' "
                           f"exemplars (BBH cot-prompts layout)")
    blocks = re.split(r"\n\n(?=Q: )", body.strip())
    description = "" if blocks[0].startswith("Q: ") else blocks.pop(0).strip()
    exemplars = []
    for i, block in enumerate(blocks, 1):
        question, sep, answer = block[len("Q: "):].partition("\nA: ")
        if not sep:
            raise LmforgeError(f"{path}: exemplar {i}: expected 'Q: <input>' then a line starting 'A: '")
        if extract_answer(answer) is None:
            raise LmforgeError(f"{path}: exemplar {i}: the answer does not end with 'So the answer is <target>.'")
        exemplars.append((question.strip(), answer.strip()))
    return CotPrompts(description, exemplars)


def _examples_file(root: Path, task: str) -> Path:
    for cand in (root / f"{task}.json", root / "bbh" / f"{task}.json", root / "bbh" / "bbh" / f"{task}.json"):
        if cand.exists():
            return cand
    raise LmforgeError(f"{root}: no {task}.json in it, in bbh/ or in bbh/bbh/ (expected the BBH release layout)")


class BBHTask(GenerationTask):
    stop = ("Q:", "\n\n")

    def __init__(self, subtask: str):
        self.subtask = subtask
        self.name = f"bbh_{subtask}"
        self.description = f"BIG-Bench Hard: {subtask.replace('_', ' ')} (3-shot CoT, exact match)"

    def get_extractors(self, opts: TaskOptions) -> dict:
        return {"answer": extract_answer if self.uses_cot(opts) else extract_direct}

    def load(self, opts: TaskOptions) -> Loaded:
        prompts_file = Path(opts.fewshot) if opts.fewshot else None
        if opts.path is not None:
            path = Path(opts.path)
            if not path.exists():
                raise LmforgeError(f"{path}: file not found")
            examples = path if path.is_file() else _examples_file(path, self.subtask)
            records = read_json_array(examples, key="examples")
            source = str(examples)
            if prompts_file is None:
                prompts_file = examples.parent.parent / "cot-prompts" / f"{self.subtask}.txt"
        else:
            records = read_hf(opts.hf or "lukaemon/bbh", opts.config or self.subtask, opts.split or "test")
            source = f"{opts.hf or 'lukaemon/bbh'}/{opts.config or self.subtask}[{opts.split or 'test'}]"
        if prompts_file is not None and prompts_file.is_dir():
            prompts_file = prompts_file / f"{self.subtask}.txt"
        docs = [{"input": get_field(r, w, ["input"], "a string (the question)"),
                 "target": get_field(r, w, ["target"], "a string (the answer)")} for w, r in records]
        k = 3 if opts.num_fewshot is None else opts.num_fewshot
        description, shots = "", []
        if k:
            if prompts_file is None or not prompts_file.exists():
                raise LmforgeError(f"{self.name}: {k}-shot prompts need the BBH file cot-prompts/{self.subtask}.txt "
                                   f"(not found{f' at {prompts_file}' if prompts_file else ''}); "
                                   f"give fewshot=PATH or num_fewshot=0")
            cot_prompts = parse_cot_prompts(prompts_file)
            if k > len(cot_prompts.exemplars):
                raise LmforgeError(f"{self.name}: num_fewshot {k} exceeds the {len(cot_prompts.exemplars)} "
                                   f"exemplars in {prompts_file}")
            description, shots = cot_prompts.description, cot_prompts.exemplars[:k]
        info = {"num_fewshot": k, "cot": self.uses_cot(opts), "fewshot_source": str(prompts_file) if k else None,
                "description": description, "rows": len(docs)}
        return Loaded(apply_limit(docs, opts.limit), shots, source, info)

    def prompt(self, doc: dict, data: Loaded, opts: TaskOptions) -> Prompt:
        cot = self.uses_cot(opts)
        pairs = [(q, a if cot else extract_answer(a)) for q, a in data.shots]
        return Prompt(doc["input"], pairs, data.info["description"], "Q: ", "A:", COT_LEAD if cot else "")

    def target(self, doc: dict) -> str:
        return doc["target"]

    def is_correct(self, prediction: str | None, doc: dict) -> bool:
        return prediction is not None and normalize(prediction) == normalize(doc["target"])


BBH_TASKS = [BBHTask(t) for t in BBH_SUBTASKS]
