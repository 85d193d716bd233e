"""Multiple choice, scored from the model's log-likelihoods (no generation).

Three metrics per document, from one batch of forwards:
- acc:        the option whose continuation (" <option text>") has the highest total log-probability
              after "Question: <q>\\nAnswer:" (for sentence completion, HellaSwag: after the context);
- acc_norm:   the same divided by the continuation's length in characters, so long options are not
              penalised for having more tokens (lm-evaluation-harness's acc_norm);
- acc_letter: the options listed as "A. ...", "B. ...", and the letter (" A", " B", ...) with the
              highest probability after "Answer:" -- the MMLU-style format that suits chat models,
              which get the question as a user turn and are scored on their reply's first token(s).

Data (a local JSONL/JSON file, or the hub): each record is one of
    {"question", "choices": [str, ...], "answer": index | letter | the option's text}   (generic, MMLU)
    {"question", "choices": {"text": [...], "label": [...]}, "answerKey"}               (ARC)
    {"ctx" | "ctx_a" + "ctx_b", "endings": [...], "label", "activity_label"}            (HellaSwag)
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import (
    Loaded,
    Prompt,
    Task,
    TaskOptions,
    TaskOutput,
    apply_limit,
    get_field,
    pick_shots,
    read_hf,
    read_local,
    resolve_local,
)

LETTERS = string.ascii_uppercase
LETTER_INSTRUCTION = "Answer with the letter of the correct option."


@dataclass
class ChoiceDoc:
    question: str
    choices: list[str]
    gold: int


def _hellaswag_clean(text: str) -> str:
    """WikiHow artefacts out, as lm-evaluation-harness preprocesses HellaSwag."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def _gold_index(answer, choices: list[str], labels: list[str], where: str, name: str) -> int:
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str):
        text = answer.strip()
        for candidates in (labels, list(LETTERS[:len(choices)]), choices):
            if text in candidates:
                return candidates.index(text)
        if text.isdigit() and 0 <= int(text) < len(choices):
            return int(text)
    raise LmforgeError(f"{where}: field '{name}' must be the index (0-{len(choices) - 1}), letter or text of the "
                       f"correct choice, got {answer!r}")


def to_choice_doc(where: str, rec: dict) -> ChoiceDoc:
    """One record in any of the accepted layouts (see the module docstring) -> ChoiceDoc."""
    if "endings" in rec:  # HellaSwag
        ctx = rec.get("ctx") or f"{rec.get('ctx_a', '')} {str(rec.get('ctx_b', '')).capitalize()}"
        label = rec.get("activity_label")
        question = _hellaswag_clean(f"{label}: {ctx}" if label else ctx)
        choices = [_hellaswag_clean(str(e)) for e in get_field(rec, where, ["endings"], "a list of strings", (list,))]
        return ChoiceDoc(question, choices, _gold_index(rec.get("label"), choices, [], where, "label"))
    question = get_field(rec, where, ["question"], "a string (the question)")
    raw = get_field(rec, where, ["choices"], "a list of option strings", (list, dict))
    labels: list[str] = []
    if isinstance(raw, dict):  # ARC: {"text": [...], "label": [...]}
        if not isinstance(raw.get("text"), list):
            raise LmforgeError(f"{where}: field 'choices' must be a list of strings or {{'text': [...], "
                               f"'label': [...]}}")
        labels, raw = [str(x) for x in raw.get("label") or []], raw["text"]
    if len(raw) < 2 or not all(isinstance(c, str) for c in raw):
        raise LmforgeError(f"{where}: field 'choices' must hold at least two option strings, got {raw!r}")
    if len(raw) > len(LETTERS):
        raise LmforgeError(f"{where}: field 'choices' has {len(raw)} options; at most {len(LETTERS)} are supported")
    name = "answerKey" if "answerKey" in rec else "answer"
    if name not in rec:
        raise LmforgeError(f"{where}: missing field 'answer' (expected the index, letter or text of the correct "
                           f"choice; fields: {', '.join(rec)})")
    return ChoiceDoc(question.strip(), [c.strip() for c in raw], _gold_index(rec[name], raw, labels, where, name))


def pick(values: list[float]) -> int:
    """Index of the largest value; the first one on ties."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def score_choices(loglikelihoods: list[float], continuations: list[str], gold: int) -> dict[str, float]:
    """acc and acc_norm (log-likelihood per character of the continuation) of one document."""
    normed = [ll / max(len(c), 1) for ll, c in zip(loglikelihoods, continuations, strict=True)]
    return {"acc": float(pick(loglikelihoods) == gold), "acc_norm": float(pick(normed) == gold)}


class ChoiceTask(Task):
    kind = "choice"

    def __init__(self, name: str, description: str, hf: str | None, hf_config: str | None, split: str,
                 fewshot_split: str | None, completion: bool = False):
        self.name, self.description = name, description
        self.hf, self.hf_config, self.split, self.fewshot_split = hf, hf_config, split, fewshot_split
        self.completion = completion  # sentence completion: the option continues the context directly

    def _docs(self, records) -> list[ChoiceDoc]:
        return [to_choice_doc(where, rec) for where, rec in records]

    def load(self, opts: TaskOptions) -> Loaded:
        local = resolve_local(opts.path, ())
        if local is not None:
            source, docs = str(local), self._docs(read_local(local))
        elif opts.hf or self.hf:
            split = opts.split or self.split
            source = f"{opts.hf or self.hf}[{split}]"
            docs = self._docs(read_hf(opts.hf or self.hf, opts.config or self.hf_config, split))
        else:
            raise LmforgeError(f"{self.name}: no default dataset; give a file with --data FILE or "
                               f"{self.name}:path=FILE")
        k, rows = opts.num_fewshot or 0, len(docs)
        pool_source = None
        if k and opts.fewshot:
            pool_source = opts.fewshot
            shots = pick_shots(self._docs(read_local(Path(opts.fewshot))), k, opts.seed, self.name, opts.fewshot)
        elif k and local is None and not opts.hf and self.fewshot_split:
            pool_source = f"{self.hf}[{self.fewshot_split}]"
            pool = self._docs(read_hf(self.hf, self.hf_config, self.fewshot_split))
            shots = pick_shots(pool, k, opts.seed, self.name, pool_source)
        else:  # from the evaluated documents, which then leave the evaluation
            shots = pick_shots(docs, k, opts.seed, self.name, source)
            docs = [d for d in docs if not any(d is s for s in shots)]
            pool_source = f"{source} (left out of the evaluation)" if k else None
        info = {"num_fewshot": k, "fewshot_source": pool_source, "rows": rows}
        return Loaded(apply_limit(docs, opts.limit), shots, source, info)

    def option_prompt(self, doc: ChoiceDoc, shots: list[ChoiceDoc]) -> Prompt:
        if self.completion:
            return Prompt(doc.question, [(s.question, s.choices[s.gold]) for s in shots])
        return Prompt(doc.question, [(s.question, s.choices[s.gold]) for s in shots], "", "Question: ", "Answer:")

    def letter_prompt(self, doc: ChoiceDoc, shots: list[ChoiceDoc], chat: bool) -> Prompt:
        def listed(d: ChoiceDoc) -> str:
            return d.question + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(d.choices))

        return Prompt(listed(doc), [(listed(s), LETTERS[s.gold]) for s in shots], LETTER_INSTRUCTION if chat else "",
                      "Question: " if not chat else "", "Answer:")

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        requests, spans = [], []
        for doc in data.docs:
            options = [" " + c for c in doc.choices]
            letters = [" " + LETTERS[i] for i in range(len(doc.choices))]
            start = len(requests)
            requests += lm.choice_requests(self.option_prompt(doc, data.shots), options, chat=opts.chat)
            requests += lm.choice_requests(self.letter_prompt(doc, data.shots, opts.chat), letters, chat=opts.chat)
            spans.append((start, options, letters))
        results = lm.loglikelihood(requests, desc=self.name)
        scores: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_letter": []}
        samples = []
        for i, (doc, (start, options, letters)) in enumerate(zip(data.docs, spans, strict=True)):
            lls = [r[0] for r in results[start:start + len(options)]]
            letter_lls = [r[0] for r in results[start + len(options):start + len(options) + len(letters)]]
            doc_scores = score_choices(lls, options, doc.gold)
            doc_scores["acc_letter"] = float(pick(letter_lls) == doc.gold)
            for name, value in doc_scores.items():
                scores[name].append(value)
            samples.append({"doc_id": i, "prompt": self.option_prompt(doc, data.shots).text(), "choices": doc.choices,
                            "target": doc.gold, "loglikelihoods": lls, "letter_loglikelihoods": letter_lls,
                            "prediction": pick(lls), "correct": doc_scores})
        return TaskOutput(scores, samples)


CHOICE_TASKS = [
    ChoiceTask("multiple_choice", "any multiple-choice file (question, choices, answer): acc, acc_norm, acc_letter",
               None, None, "test", None),
    ChoiceTask("arc_easy", "AI2 ARC-Easy science questions (allenai/ai2_arc)", "allenai/ai2_arc", "ARC-Easy",
               "test", "train"),
    ChoiceTask("arc_challenge", "AI2 ARC-Challenge science questions (allenai/ai2_arc)", "allenai/ai2_arc",
               "ARC-Challenge", "test", "train"),
    ChoiceTask("hellaswag", "HellaSwag sentence completion (Rowan/hellaswag)", "Rowan/hellaswag", None,
               "validation", "train", completion=True),
    ChoiceTask("mmlu", "MMLU, 57 subjects (cais/mmlu, config all)", "cais/mmlu", "all", "test", "dev"),
]
