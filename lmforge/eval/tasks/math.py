"""Math word problems with a numeric answer: GSM8K, SVAMP, ASDiv, MultiArith.

Each data set is read in its released format (local file) or from the Hugging Face hub:

    gsm8k       jsonl `question`, `answer` = worked solution ending "#### 72" (commas: "#### 1,600")
                hub: openai/gsm8k (config main), test; few-shot examples from train
    svamp       JSON array, `Body` + " " + `Question`, float `Answer`, `Equation` "( 76.0 - 25.0 )"
                hub: ChilleD/SVAMP, test; few-shot from train
    asdiv       XML <Problem> with <Body>, <Question>, <Answer>"9 (apples)", <Formula>"7+2=9"; answers
                that are not one number ("Yes", "3:30 p.m.", "5/2", or several: "6 (cm); 15 (cm)")
                are skipped and counted
                hub: EleutherAI/asdiv (lower-case fields), validation
    multiarith  JSON array, `sQuestion` (padded with spaces), `lSolutions` [39.0], `lEquations`
                hub: ChilleD/MultiArith (`question`, `final_ans`), test; few-shot from train

Prompt (base model), k-shot:  "Question: ...\\nAnswer: <solution>\\n#### <n>" per shot, blank lines
between, then "Question: <q>\\nAnswer:". Chain of thought (default) shows the worked solution (GSM8K's
text without its <<calculator>> annotations, or the data set's equation); direct answer shows only
"#### <n>". Zero-shot prompts open with an instruction (and CoT adds "Let's think step by step.").
Chat models get the instruction as the system message and the shots as earlier turns.

Two extractors, as lm-evaluation-harness defines them for GSM8K: `strict` takes the number after
the first "####", `flexible` the last number anywhere in the output. Numbers are compared as
values ("1,000" = "1000", "51" = "51.0", "$18" = "18").
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import (
    Loaded,
    Prompt,
    TaskOptions,
    apply_limit,
    get_field,
    pick_shots,
    read_hf,
    read_local,
    resolve_local,
)
from lmforge.eval.tasks.generation import GenerationTask

# A number: 1,234,567 (thousands groups) or 1234, optional decimals, or .5; a leading minus only when
# it does not follow a word, digit or closing bracket, so "7-3" reads as 7 and 3, not 7 and -3.
_BODY = r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
_SIGN = r"(?:(?<![\w)\]])-)?"
NUMBER = re.compile(_SIGN + r"\$?" + _BODY)
STRICT = re.compile(r"####\s*(-?\$?" + _BODY + ")")
# one number with an optional unit: "9 (apples)", "1.25 (m)", "12"; not "6 (cm); 15 (cm)" (two answers)
ASDIV_ANSWER = re.compile(r"\s*(-?[\d,]*\.?\d+)\s*(?:\([^()]*\))?\s*")

INSTRUCTION_COT = "Solve the math word problem step by step. End with the final answer as '#### <number>'."
INSTRUCTION_DIRECT = "Solve the math word problem. Give only the final answer as '#### <number>'."
ZERO_SHOT_COT_LEAD = "Let's think step by step."


def extract_strict(text: str) -> str | None:
    """The number after the first '####' (lm-eval's strict-match), or None."""
    m = STRICT.search(text)
    return m.group(1) if m else None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (lm-eval's flexible-extract), or None."""
    found = NUMBER.findall(text)
    return found[-1] if found else None


def parse_number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None


def numbers_match(prediction: str | None, gold: float) -> bool:
    value = parse_number(prediction)
    return value is not None and abs(value - gold) <= 1e-6 * max(1.0, abs(gold))


def format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.10g}"


def _plain_numbers(expr: str) -> str:
    """"( 76.0 - 25.0 )" -> "(76 - 25)": equations written as a person would."""
    expr = re.sub(r"(\d)\.0+\b", r"\1", expr)
    return re.sub(r"\s+\)", ")", re.sub(r"\(\s+", "(", expr)).strip()


@dataclass
class MathDoc:
    question: str
    answer: float | None     # None: the gold answer is not a number (some ASDiv rows)
    answer_text: str         # the gold answer as released ("1,600", "9 (apples)")
    solution: str            # worked solution or equation for chain-of-thought shots ("" if none)


# --- parsers: (where, record) -> MathDoc ------------------------------------------------------------

def parse_gsm8k(where: str, rec: dict) -> MathDoc:
    question = get_field(rec, where, ["question"], "a string (the problem)")
    answer = get_field(rec, where, ["answer"], "a string (a worked solution ending in '#### <number>')")
    if "####" not in answer:
        raise LmforgeError(f"{where}: field 'answer' has no '#### <number>' final answer")
    steps, final = answer.rsplit("####", 1)
    value = parse_number(final)
    if value is None:
        raise LmforgeError(f"{where}: field 'answer': expected a number after '####', got {final.strip()!r}")
    return MathDoc(question, value, final.strip(), re.sub(r"<<[^<>]*>>", "", steps).strip())


def _numeric(value, where: str, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and parse_number(value) is not None:
        return parse_number(value)
    raise LmforgeError(f"{where}: field '{name}' must be a number, got {value!r}")


def parse_svamp(where: str, rec: dict) -> MathDoc:
    body = get_field(rec, where, ["Body"], "a string (the problem's setting)")
    question = get_field(rec, where, ["Question"], "a string (the question)")
    answer = _numeric(get_field(rec, where, ["Answer"], "a number", (int, float, str)), where, "Answer")
    equation = rec.get("Equation")
    solution = f"{_plain_numbers(equation)} = {format_number(answer)}" if isinstance(equation, str) else ""
    return MathDoc(f"{body.strip()} {question.strip()}", answer, format_number(answer), solution)


def parse_asdiv(where: str, rec: dict) -> MathDoc:
    body = get_field(rec, where, ["Body", "body"], "a string (the problem's setting)")
    question = get_field(rec, where, ["Question", "question"], "a string (the question)")
    answer_text = get_field(rec, where, ["Answer", "answer"], "a string such as '9 (apples)'").strip()
    m = ASDIV_ANSWER.fullmatch(answer_text)
    formula = rec.get("Formula") or rec.get("formula") or ""
    return MathDoc(f"{body.strip()} {question.strip()}", parse_number(m.group(1)) if m else None, answer_text,
                   formula.strip() if isinstance(formula, str) else "")


def parse_multiarith(where: str, rec: dict) -> MathDoc:
    question = get_field(rec, where, ["sQuestion", "question"], "a string (the problem)")
    if "lSolutions" in rec:
        solutions = get_field(rec, where, ["lSolutions"], "a list with the numeric answer", (list,))
        if not solutions:
            raise LmforgeError(f"{where}: field 'lSolutions' is empty (expected the numeric answer)")
        answer = _numeric(solutions[0], where, "lSolutions")
    else:
        answer = _numeric(get_field(rec, where, ["final_ans", "lSolutions"], "a number", (int, float, str)),
                          where, "final_ans")
    equations = rec.get("lEquations") or []
    solution = ""
    if equations and isinstance(equations[0], str):
        solution = f"{_plain_numbers(equations[0].split('=', 1)[-1])} = {format_number(answer)}"
    return MathDoc(question.strip(), answer, format_number(answer), solution)


def read_asdiv_xml(path: Path) -> list[tuple[str, dict]]:
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except ET.ParseError as e:
        raise LmforgeError(f"{path}: not valid XML ({e})") from None
    problems = list(root.iter("Problem"))
    if not problems:
        raise LmforgeError(f"{path}: no <Problem> elements (expected ASDiv's XML layout)")
    out = []
    for i, p in enumerate(problems, 1):
        rec = {child.tag: child.text or "" for child in p}
        out.append((f"{path}: problem {i} (ID {p.get('ID', '?')})", rec))
    return out


# --- the task ------------------------------------------------------------------------------------------

class MathTask(GenerationTask):
    stop = ("Question:", "\n\n")
    extractors = {"strict": extract_strict, "flexible": extract_flexible}
    default_fewshot = 5

    def __init__(self, name: str, description: str, parse, hf: str, hf_config: str | None, split: str,
                 fewshot_split: str | None, local_files: tuple[str, ...], fewshot_file: str | None = None):
        self.name, self.description, self.parse = name, description, parse
        self.hf, self.hf_config, self.split, self.fewshot_split = hf, hf_config, split, fewshot_split
        self.local_files, self.fewshot_file = local_files, fewshot_file

    def _read(self, path: Path) -> list[tuple[str, dict]]:
        return read_asdiv_xml(path) if path.suffix == ".xml" else read_local(path)

    def _docs(self, records) -> list[MathDoc]:
        return [self.parse(where, rec) for where, rec in records]

    def load(self, opts: TaskOptions) -> Loaded:
        local = resolve_local(opts.path, self.local_files)
        if local is not None:
            source, docs = str(local), self._docs(self._read(local))
        else:
            split = opts.split or self.split
            source = f"{opts.hf or self.hf}[{split}]"
            docs = self._docs(read_hf(opts.hf or self.hf, opts.config or self.hf_config, split))
        numeric = [d for d in docs if d.answer is not None]
        k = self.default_fewshot if opts.num_fewshot is None else opts.num_fewshot
        pool, pool_source = self._fewshot_pool(opts, local, k)
        if pool is None:  # shots come from the evaluated file itself and are then left out of it
            shots = pick_shots(numeric, k, opts.seed, self.name, source)
            numeric = [d for d in numeric if not any(d is s for s in shots)]
            pool_source = f"{source} (left out of the evaluation)"
        else:
            shots = pick_shots([d for d in pool if d.answer is not None], k, opts.seed, self.name, pool_source)
        info = {"num_fewshot": k, "cot": self.uses_cot(opts), "fewshot_source": pool_source if k else None,
                "rows": len(docs), "non_numeric_skipped": len(docs) - len([d for d in docs if d.answer is not None])}
        return Loaded(apply_limit(numeric, opts.limit), shots, source, info)

    def _fewshot_pool(self, opts: TaskOptions, local: Path | None, k: int):
        if k == 0:
            return [], None
        if opts.fewshot:
            path = Path(opts.fewshot)
            return self._docs(self._read(path)), str(path)
        if local is not None:
            sibling = local.parent / self.fewshot_file if self.fewshot_file else None
            if sibling is not None and sibling.exists() and sibling.resolve() != local.resolve():
                return self._docs(self._read(sibling)), str(sibling)
            return None, None
        if opts.hf is None and self.fewshot_split:
            return self._docs(read_hf(self.hf, self.hf_config, self.fewshot_split)), f"{self.hf}[{self.fewshot_split}]"
        return None, None

    def shot_answer(self, doc: MathDoc, cot: bool) -> str:
        final = f"#### {format_number(doc.answer)}"
        return f"{doc.solution}\n{final}" if cot and doc.solution else final

    def prompt(self, doc: MathDoc, data: Loaded, opts: TaskOptions) -> Prompt:
        cot, shots = self.uses_cot(opts), data.shots
        pairs = [(s.question, self.shot_answer(s, cot)) for s in shots]
        instruction = INSTRUCTION_COT if cot else INSTRUCTION_DIRECT
        lead = ZERO_SHOT_COT_LEAD if cot and not shots and not opts.chat else ""
        return Prompt(doc.question, pairs, instruction if opts.chat or not shots else "",
                      "Question: ", "Answer:", lead)

    def target(self, doc: MathDoc) -> str:
        return format_number(doc.answer)

    def is_correct(self, prediction: str | None, doc: MathDoc) -> bool:
        return numbers_match(prediction, doc.answer)


MATH_TASKS = [
    MathTask("gsm8k", "GSM8K grade-school math, numeric answer after '####'", parse_gsm8k,
             "openai/gsm8k", "main", "test", "train", ("test.jsonl", "gsm8k/test.jsonl"), "train.jsonl"),
    MathTask("svamp", "SVAMP arithmetic word problems (Body + Question, float Answer)", parse_svamp,
             "ChilleD/SVAMP", None, "test", "train", ("SVAMP.json", "svamp/SVAMP.json")),
    MathTask("asdiv", "ASDiv word problems (XML; non-numeric answers skipped)", parse_asdiv,
             "EleutherAI/asdiv", None, "validation", None, ("ASDiv.xml", "asdiv/ASDiv.xml")),
    MathTask("multiarith", "MultiArith multi-step arithmetic word problems", parse_multiarith,
             "ChilleD/MultiArith", None, "test", "train", ("MultiArith.json", "multiarith/MultiArith.json")),
]
