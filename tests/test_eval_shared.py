"""The evaluation loaders and extractors on the real released files in ../shared/data.

Every gold solution must come back through the extractors as its own answer (100%, on every row
with a numeric answer); the counts asserted here were measured on those files. Skipped with the
reason when ../shared is absent.
"""

import ast
import operator

import pytest

from lmforge.eval.tasks import get_task
from lmforge.eval.tasks.base import TaskOptions, read_json_array, read_local
from lmforge.eval.tasks.bbh import BBH_SUBTASKS, extract_answer, normalize, parse_cot_prompts
from lmforge.eval.tasks.math import ASDIV_ANSWER, extract_flexible, extract_strict, numbers_match
from tests.conftest import shared_data

pytestmark = pytest.mark.shared

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic(expr: str) -> float:
    """Value of an equation string such as "( 76.0 - 25.0 )" (numbers and + - * / only)."""
    def ev(node):
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        raise ValueError(f"not arithmetic: {expr}")

    return ev(ast.parse(expr.strip(), mode="eval").body)


def gold_check(task_name: str, path, docs) -> None:
    """Strict and flexible extraction of each numeric row's rendered gold solution gives its answer."""
    task = get_task(task_name)
    numeric = [d for d in docs if d.answer is not None]
    for cot in (True, False):
        solutions = [task.shot_answer(d, cot) for d in numeric]
        strict = sum(numbers_match(extract_strict(s), d.answer) for s, d in zip(solutions, numeric, strict=True))
        flexible = sum(numbers_match(extract_flexible(s), d.answer) for s, d in zip(solutions, numeric, strict=True))
        print(f"{path.name} cot={cot}: {len(docs)} rows, {len(numeric)} numeric, strict {strict}, flexible {flexible}")
        assert strict == flexible == len(numeric)


@pytest.mark.parametrize("split, rows, with_commas, negative", [("test", 1319, 14, 2), ("train", 7473, 79, 3)])
def test_gsm8k_gold_solutions(split, rows, with_commas, negative):
    path = shared_data("gsm8k", f"{split}.jsonl")
    task = get_task("gsm8k")
    docs = task.load(TaskOptions(path=str(path), num_fewshot=0)).docs
    assert len(docs) == rows and all(d.answer is not None for d in docs)
    assert sum("," in d.answer_text for d in docs) == with_commas and sum(d.answer < 0 for d in docs) == negative
    # the released solutions themselves, calculator annotations and all
    released = [rec["answer"] for _, rec in read_local(path)]
    assert all(numbers_match(extract_strict(a), d.answer) for a, d in zip(released, docs, strict=True))
    assert all(numbers_match(extract_flexible(a), d.answer) for a, d in zip(released, docs, strict=True))
    gold_check("gsm8k", path, docs)


def test_svamp_gold_answers_and_equations():
    path = shared_data("svamp", "SVAMP.json")
    docs = get_task("svamp").load(TaskOptions(path=str(path), num_fewshot=0)).docs
    assert len(docs) == 1000
    gold_check("svamp", path, docs)
    records = read_local(path)
    wrong = [rec["ID"] for _, rec in records if abs(arithmetic(rec["Equation"]) - rec["Answer"]) > 1e-6]
    print(f"SVAMP rows whose Equation does not give their Answer: {wrong}")
    assert wrong == ["chal-680"]  # "( ( 4.0 - 2.0 ) + 3.0 )" labelled 1.0: an error in the release


def test_asdiv_gold_answers_and_non_numeric_rows():
    path = shared_data("asdiv", "ASDiv.xml")
    data = get_task("asdiv").load(TaskOptions(path=str(path), num_fewshot=0))
    docs = get_task("asdiv")._docs(get_task("asdiv")._read(path))
    skipped = [d.answer_text for d in docs if d.answer is None]
    # several numbers ("6 (cm); 15 (cm)", "11; 12; 13") answer one question: no single number can match them
    several = [a for a in skipped if all(ASDIV_ANSWER.fullmatch(part) for part in a.split(";"))]
    with_units = [a for a in several if "(" in a]
    print(f"ASDiv: {len(docs)} rows, {len(docs) - len(skipped)} with one numeric answer, {len(skipped)} skipped: "
          f"{len(several)} with several numbers ({len(with_units)} of them with units, which a leading-number rule "
          f"would misread as one answer), {len(skipped) - len(several)} not numbers (e.g. {skipped[:3]})")
    assert (len(docs), len(skipped), len(several), len(with_units)) == (2305, 221, 90, 75)
    assert data.info["non_numeric_skipped"] == 221 and len(data.docs) == 2084
    gold_check("asdiv", path, docs)
    # the released answer text ("9 (apples)") itself reads back as the number
    assert all(numbers_match(extract_flexible(d.answer_text), d.answer) for d in data.docs)


def test_multiarith_gold_answers_and_equations():
    path = shared_data("multiarith", "MultiArith.json")
    docs = get_task("multiarith").load(TaskOptions(path=str(path), num_fewshot=0)).docs
    assert len(docs) == 600
    gold_check("multiarith", path, docs)
    for (_, rec), doc in zip(read_local(path), docs, strict=True):
        assert arithmetic(rec["lEquations"][0].split("=", 1)[1]) == pytest.approx(doc.answer)


def test_bbh_targets_and_cot_prompts():
    total = 0
    for name in BBH_SUBTASKS:
        records = read_json_array(shared_data("bbh", "bbh", f"{name}.json"), key="examples")
        total += len(records)
        for _, rec in records:
            found = extract_answer(f"Let's think step by step. ... So the answer is {rec['target']}.")
            assert normalize(found) == normalize(rec["target"]), (name, rec["target"])
        prompts = parse_cot_prompts(shared_data("bbh", "cot-prompts", f"{name}.txt"))
        assert len(prompts.exemplars) == 3 and prompts.description
    assert total == 6511


def test_bbh_prompt_is_the_release_prompt_file_plus_the_question():
    root = shared_data("bbh")
    task = get_task("bbh_date_understanding")
    data = task.load(TaskOptions(path=str(root), limit=2))  # bbh/bbh/*.json, prompts from bbh/cot-prompts/
    body = (root / "cot-prompts" / "date_understanding.txt").read_text().split("-----\n", 1)[1].strip()
    doc = data.docs[0]
    assert task.prompt(doc, data, TaskOptions()).text() == f"{body}\n\nQ: {doc['input']}\nA: Let's think step by step."


def test_math_tasks_find_their_files_under_the_shared_tree():
    root = shared_data()
    for name, rows in (("gsm8k", 1319), ("svamp", 1000), ("asdiv", 2305), ("multiarith", 600)):
        data = get_task(name).load(TaskOptions(path=str(root), num_fewshot=0))
        assert data.info["rows"] == rows, name
    gsm = get_task("gsm8k").load(TaskOptions(path=str(root), num_fewshot=5))
    assert gsm.info["fewshot_source"].endswith("gsm8k/train.jsonl") and len(gsm.docs) == 1319
