"""Evaluation tasks and `lmforge eval`: extractors, prompts, scoring, toyworld suites, errors, an end-to-end run.

Data: the self-written files under tests/fixtures/eval (same formats as the real releases).
"""

import argparse
import json
from pathlib import Path

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.eval.cli import add_parser, run_eval
from lmforge.eval.runner import LM, evaluate_checkpoint
from lmforge.eval.tasks import TASKS, get_task, list_tasks
from lmforge.eval.tasks.base import Prompt, TaskOptions, mean_stderr
from lmforge.eval.tasks.bbh import extract_answer, extract_direct
from lmforge.eval.tasks.choice import score_choices
from lmforge.eval.tasks.math import extract_flexible, extract_strict, numbers_match
from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer

FIX = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 32-wide model gains nothing from intra-op threads, and on a busy shared CPU their spin-waiting
    makes each decode step ~50x slower; restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny(toy_data, tmp_path_factory):
    """(checkpoint dir, model, tokenizer): a randomly initialised 1-layer model with the toy tokenizer."""
    _, tok = toy_data
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=128))
    ckpt = tmp_path_factory.mktemp("eval") / "ckpt"
    save_model(model, ckpt, toy_data[0].parent / "tok")
    return ckpt, model.eval(), tok


def run_cli(argv) -> int:
    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    add_parser(sub)
    return run_eval(sub._name_parser_map["eval"].parse_args(argv))


# --- extraction ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, strict, flexible", [
    ("She has 4 + 6 = 10 pens.\n#### 10", "10", "10"),
    ("It sells 250 * 5 = 1250 rolls.\n#### 1,250", "1,250", "1,250"),      # thousands comma
    ("3 - 7 = -4\n#### -4", "-4", "-4"),                                   # negative
    ("Each gets 2.5 liters. #### 2.5", "2.5", "2.5"),                      # decimal
    ("#### $18.00 per day", "$18.00", "$18.00"),
    ("####42", "42", "42"),
    ("#### 5 and later #### 6", "5", "6"),                                 # strict: first; flexible: last
    ("The total is 1,000,000 people.", None, "1,000,000"),
    ("I think 7-3 makes it", None, "3"),                                   # subtraction, not "-3"
    ("It is -5 degrees outside", None, "-5"),
    ("9 (apples)", None, "9"),                                             # ASDiv units
    ("about .5 of it", None, ".5"),
    ("no number here", None, None),
])
def test_strict_and_flexible_extractors(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible


def test_numbers_compare_as_values():
    assert numbers_match("1,250", 1250.0) and numbers_match("$18.00", 18) and numbers_match("51", 51.0)
    assert numbers_match("-4", -4.0) and numbers_match("5.25", 5.25)
    assert not numbers_match("18.5", 18.0) and not numbers_match(None, 3.0) and not numbers_match("4", -4.0)


def test_bbh_answer_after_the_marker():
    assert extract_answer("A: ... So the answer is (B).") == "(B)"
    assert extract_answer("so The Answer Is valid.\n\nQ: next") == "valid"
    assert extract_answer("the answer is Monsters, Inc.") == "Monsters, Inc"
    assert extract_answer("True and False = False.") is None
    assert extract_direct("\n  invalid.\nbecause ...") == "invalid"
    task = get_task("bbh_boolean_expressions")
    assert task.is_correct("true", {"target": "True"}) and not task.is_correct(None, {"target": "True"})


def test_mean_stderr_is_the_binomial_one():
    mean, se = mean_stderr([1.0, 0.0, 1.0, 1.0])
    assert mean == 0.75 and se == pytest.approx((0.75 * 0.25 / 3) ** 0.5)
    assert mean_stderr([1.0])[1] is None


# --- loading the released formats ------------------------------------------------------------------------

def test_math_loaders_read_each_format():
    def load(name, **kw):
        return get_task(name).load(TaskOptions(path=str(FIX), num_fewshot=0, **kw))

    gsm = load("gsm8k")
    assert [d.answer for d in gsm.docs] == [1250, -4, 2.5, 180]
    assert gsm.docs[0].solution == "It sells 250 * 5 = 1250 rolls."  # calculator annotations dropped
    svamp = load("svamp")
    assert svamp.docs[0].question == "A farmer has 14 cows and buys 9 more How many cows does the farmer have now?"
    assert svamp.docs[0].solution == "(14 + 9) = 23"
    asdiv = load("asdiv")
    assert [d.answer for d in asdiv.docs] == [9, 5.25, 50]
    assert asdiv.info["rows"] == 5 and asdiv.info["non_numeric_skipped"] == 2  # "Yes", "3:15 p.m."
    arith = load("multiarith", limit=2)
    assert [d.answer for d in arith.docs] == [15, 9] and arith.docs[0].question.startswith("Nina baked")
    assert arith.docs[0].solution == "((12+8)-5) = 15"


def test_fewshot_comes_from_train_or_leaves_the_evaluated_file():
    gsm = get_task("gsm8k").load(TaskOptions(path=str(FIX / "gsm8k" / "test.jsonl"), num_fewshot=2))
    assert len(gsm.docs) == 4 and {s.answer for s in gsm.shots} == {10, 24}  # from the sibling train.jsonl
    svamp = get_task("svamp").load(TaskOptions(path=str(FIX), num_fewshot=1, seed=3))
    assert len(svamp.docs) == 2 and svamp.shots[0] not in svamp.docs
    again = get_task("svamp").load(TaskOptions(path=str(FIX), num_fewshot=1, seed=3))
    assert again.shots[0].question == svamp.shots[0].question  # seeded


def test_hub_datasets_go_through_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None):  # nothing can be downloaded here: serve invented rows
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"question": f"q{i}", "answer": f"step\n#### {i},000"} for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr("lmforge.data.sources.hub_unreachable", lambda: None)  # as if online
    data = get_task("gsm8k").load(TaskOptions(num_fewshot=2, limit=2))
    assert calls == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    assert [d.answer for d in data.docs] == [0, 1000] and data.source == "openai/gsm8k[test]"
    assert data.info["fewshot_source"] == "openai/gsm8k[train]"
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    with pytest.raises(LmforgeError) as e:
        get_task("arc_easy").load(TaskOptions())
    assert str(e.value) == "allenai/ai2_arc: cannot load dataset (offline)"


def test_task_specs_carry_per_task_options():
    from lmforge.eval.tasks import parse_task_spec, split_specs

    assert split_specs(["gsm8k,svamp", "bbh:limit=3,cot=false"]) == ["gsm8k", "svamp", "bbh:limit=3,cot=false"]
    assert parse_task_spec("bbh:limit=3,cot=false") == ("bbh", {"limit": 3, "cot": False})
    with pytest.raises(LmforgeError, match=r"^--tasks gsm8k:limit=many: option 'limit' must be an integer"):
        parse_task_spec("gsm8k:limit=many")


# --- prompts -------------------------------------------------------------------------------------------

def test_math_prompts_zero_shot_k_shot_cot_and_direct():
    task = get_task("gsm8k")
    path = str(FIX / "gsm8k" / "test.jsonl")
    zero = task.load(TaskOptions(path=path, num_fewshot=0))
    q = "A bakery sells 250 rolls a day for 5 days. How many rolls does it sell?"
    assert task.prompt(zero.docs[0], zero, TaskOptions()).text() == (
        "Solve the math word problem step by step. End with the final answer as '#### <number>'.\n\n"
        f"Question: {q}\nAnswer: Let's think step by step.")
    assert task.prompt(zero.docs[0], zero, TaskOptions(cot=False)).text() == (
        f"Solve the math word problem. Give only the final answer as '#### <number>'.\n\nQuestion: {q}\nAnswer:")
    one = task.load(TaskOptions(path=path, num_fewshot=1))
    shot = one.shots[0]
    cot = task.prompt(one.docs[0], one, TaskOptions()).text()
    shown = f"Question: {shot.question}\nAnswer: {shot.solution}\n#### {int(shot.answer)}"
    assert cot == f"{shown}\n\nQuestion: {q}\nAnswer:"
    direct = task.prompt(one.docs[0], one, TaskOptions(cot=False)).text()
    assert direct == f"Question: {shot.question}\nAnswer: #### {int(shot.answer)}\n\nQuestion: {q}\nAnswer:"
    chat = task.prompt(one.docs[0], one, TaskOptions(chat=True)).messages()
    assert [m["role"] for m in chat] == ["system", "user", "assistant", "user"]
    assert chat[2]["content"] == f"{shot.solution}\n#### {int(shot.answer)}" and chat[3]["content"] == q


def test_bbh_prompt_follows_the_release_files():
    task = get_task("bbh_boolean_expressions")
    data = task.load(TaskOptions(path=str(FIX / "bbh")))
    text = task.prompt(data.docs[0], data, TaskOptions()).text()
    body = (FIX / "bbh" / "cot-prompts" / "boolean_expressions.txt").read_text().split("-----\n", 1)[1].strip()
    assert text == body + "\n\nQ: not ( False ) is\nA: Let's think step by step."
    direct = task.prompt(data.docs[0], data, TaskOptions(cot=False)).text()
    assert direct.endswith("Q: not ( True ) is\nA: False\n\nQ: True or False is\nA: True\n\n"
                           "Q: not ( True and False ) is\nA: True\n\nQ: not ( False ) is\nA:")


def test_prompt_renders_for_base_and_chat_models(tiny):
    _, model, tok = tiny
    lm = LM(model, tok, progress=False)
    prompt = Prompt("Why?", [("Who?", "Me.")], "Be brief.", "Q: ", "A:", "Because")
    assert prompt.text() == "Be brief.\n\nQ: Who?\nA: Me.\n\nQ: Why?\nA: Because"
    assert lm.render(prompt, chat=False) == [tok.bos_id] + tok.encode(prompt.text())
    from lmforge.chat import render_prompt

    assert lm.render(prompt, chat=True) == render_prompt(prompt.messages(), tok) + tok.encode("Because")


# --- log-likelihoods and multiple choice ---------------------------------------------------------------

def test_choice_scores_hand_checked():
    # option 0 is likelier in total, option 1 per character: acc and acc_norm disagree
    assert score_choices([-5.0, -6.0], [" ab", " a much longer one"], gold=1) == {"acc": 0.0, "acc_norm": 1.0}
    assert score_choices([-2.0, -2.0], [" x", " y"], gold=0) == {"acc": 1.0, "acc_norm": 1.0}  # ties: first


def test_batched_loglikelihood_equals_one_forward_per_request(tiny):
    _, model, tok = tiny
    lm = LM(model, tok, batch_size=3, progress=False)
    requests = [([tok.bos_id] + tok.encode("The capital of Zali is"), tok.encode("Kamdu")),
                ([tok.bos_id], tok.encode("a b c d e f")),
                ([tok.bos_id] + tok.encode("x " * 200), tok.encode("yes"))]   # longer than the context: cut
    got = lm.loglikelihood(requests)
    for (ctx, cont), (logprob, greedy) in zip(requests, got, strict=True):
        full = (ctx + cont)[-129:]
        with torch.no_grad():
            logp = model(torch.tensor([full[:-1]]))[0, -len(cont):].log_softmax(-1)
        want = logp.gather(-1, torch.tensor(cont)[:, None]).sum().item()
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == bool((logp.argmax(-1) == torch.tensor(cont)).all())


def test_multiple_choice_task_on_a_tiny_model(tiny):
    _, model, tok = tiny
    task = get_task("multiple_choice")
    data = task.load(TaskOptions(path=str(FIX / "choice.jsonl")))
    assert [d.gold for d in data.docs] == [0, 1, 0, 1]  # index, ARC answerKey, letter, option text
    lm = LM(model, tok, progress=False)
    out = task.evaluate(lm, data, TaskOptions())
    for doc, sample, acc in zip(data.docs, out.samples, out.scores["acc"], strict=True):
        # hand check: recompute each option's log-likelihood alone and pick the best
        ctx = [tok.bos_id] + tok.encode(f"Question: {doc.question}\nAnswer:")
        lls = [lm.loglikelihood([(ctx, tok.encode(c))])[0][0] for c in doc.choices]
        assert sample["loglikelihoods"] == pytest.approx(lls, abs=1e-4)
        assert acc == float(max(range(len(lls)), key=lambda i: lls[i]) == doc.gold)
    assert set(out.scores) == {"acc", "acc_norm", "acc_letter"}


def test_perplexity_scores_every_token_once(tiny):
    _, model, tok = tiny
    lm = LM(model, tok, progress=False)
    text = "word " * 300  # several context windows
    (logprob, count), = lm.rolling_loglikelihood([text])
    assert count == len(tok.encode(text))
    short = "The little boat drifted."
    ids = [tok.bos_id] + tok.encode(short)
    with torch.no_grad():
        want = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None]).sum()
    assert lm.rolling_loglikelihood([short])[0][0] == pytest.approx(want.item(), abs=1e-4)
    task = get_task("perplexity")
    data = task.load(TaskOptions(path=str(FIX / "text.txt")))
    out = task.evaluate(lm, data, TaskOptions())
    assert len(data.docs) == 3
    import math

    assert out.aggregate["bits_per_byte"] == pytest.approx(math.log2(out.aggregate["byte_perplexity"]))
    assert out.stderr["bits_per_byte"] > 0


# --- toyworld ------------------------------------------------------------------------------------------

def test_toyworld_suites_run(tiny, tmp_path):
    from lmforge.toyworld import generate_world

    ckpt, _, _ = tiny
    generate_world(0).save(tmp_path / "world.json")
    report = evaluate_checkpoint(str(ckpt), ["toyworld"], world=str(tmp_path / "world.json"), limit=4,
                                 out_dir=str(tmp_path / "out"), progress=False)
    assert set(report["results"]) == {t.name for t in TASKS.values() if t.kind == "toyworld"}
    for entry in report["results"].values():
        assert entry["n"] == 4 and 0.0 <= entry["metrics"]["acc"] <= 1.0 and entry["source"].endswith("world.json")
    assert set(report["results"]["toyworld_heldout_tasks"]["breakdown"]) == {"verify", "classify_kind",
                                                                               "list_attributes"}
    assert report["groups"]["toyworld"]["n"] == 4 * 9  # 9 suites of 4 examples
    assert report["results"]["toyworld_refusals"]["breakdown"].keys() == {"refusal"}


def test_toyworld_chat_tasks_get_the_runs_tools_temperature_and_seed(tiny, tmp_path, monkeypatch):
    """--tools, --temperature and --seed reach the toyworld chat tasks as they reach gsm8k's: the word
    problems' calculator calls run (they did not, and the samples were the same with or without --tools)."""
    import lmforge.eval.chat_tasks as chat_tasks
    from lmforge.toyworld import generate_world

    ckpt, _, _ = tiny
    generate_world(0).save(tmp_path / "world.json")
    seen, real = [], chat_tasks.evaluate_examples

    def spy(*args, **kw):
        seen.append((sorted(kw["tools"] or ()), kw["temperature"], kw["seed"]))
        return real(*args, **kw)

    monkeypatch.setattr(chat_tasks, "evaluate_examples", spy)
    for flags in ({}, {"tools": True, "temperature": 0.7, "seed": 3}):
        evaluate_checkpoint(str(ckpt), ["toyworld_word_problems"], world=str(tmp_path / "world.json"), limit=2,
                            out_dir=str(tmp_path / "out"), progress=False, **flags)
    assert seen == [([], 0.0, 0), (["calculator"], 0.7, 3)]


# --- errors --------------------------------------------------------------------------------------------

def test_bad_input_names_the_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 3"}\n{"question": "q", "solution": "4"}\n')
    with pytest.raises(LmforgeError) as e:
        get_task("gsm8k").load(TaskOptions(path=str(bad), num_fewshot=0))
    assert str(e.value) == (f"{bad}:2: missing field 'answer' (expected a string (a worked solution ending "
                            f"in '#### <number>'); fields: question, solution)")
    bad.write_text('{"question": "q", "answer": "it is 3"}\n')
    with pytest.raises(LmforgeError) as e:
        get_task("gsm8k").load(TaskOptions(path=str(bad), num_fewshot=0))
    assert str(e.value) == f"{bad}:1: field 'answer' has no '#### <number>' final answer"
    bad.write_text('{"question": "q", "answer": "#### 3"\n')
    with pytest.raises(LmforgeError, match=r"bad.jsonl:1: invalid JSON"):
        get_task("gsm8k").load(TaskOptions(path=str(bad), num_fewshot=0))
    with pytest.raises(LmforgeError) as e:
        get_task("svamp").load(TaskOptions(path=str(tmp_path / "missing.json")))
    assert str(e.value) == f"{tmp_path / 'missing.json'}: file not found"
    xml = tmp_path / "ASDiv.xml"
    xml.write_text("<ProblemSet><Problem ID='a'><Body>b</Body></ProblemSet>")
    with pytest.raises(LmforgeError, match=r"ASDiv.xml: not valid XML \(mismatched tag: line 1, column \d+\)"):
        get_task("asdiv").load(TaskOptions(path=str(xml), num_fewshot=0))
    choice = tmp_path / "mc.jsonl"
    choice.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(LmforgeError) as e:
        get_task("multiple_choice").load(TaskOptions(path=str(choice)))
    assert str(e.value) == f"{choice}:1: field 'answer' must be the index (0-1), letter or text of the " \
                           f"correct choice, got 5"


def test_bad_task_names_options_and_prompts(tiny, tmp_path):
    ckpt = str(tiny[0])
    with pytest.raises(LmforgeError) as e:
        evaluate_checkpoint(ckpt, ["gsm9k"], progress=False)
    assert str(e.value) == "unknown task 'gsm9k'; did you mean gsm8k? (`lmforge eval --list` shows the tasks)"
    with pytest.raises(LmforgeError) as e:
        evaluate_checkpoint(ckpt, ["gsm8k:shots=3"], progress=False)
    assert str(e.value) == ("--tasks gsm8k:shots=3: unknown option 'shots' (options: path, fewshot, hf, config, "
                            "split, num_fewshot, cot, limit, max_new_tokens)")
    with pytest.raises(LmforgeError) as e:
        evaluate_checkpoint(ckpt, ["gsm8k", "svamp"], data=str(FIX / "choice.jsonl"), progress=False)
    assert str(e.value).startswith(f"--data {FIX / 'choice.jsonl'}: a file serves one task, not 2")
    examples = tmp_path / "bbh" / "boolean_expressions.json"
    examples.parent.mkdir()
    examples.write_text((FIX / "bbh" / "bbh" / "boolean_expressions.json").read_text())
    with pytest.raises(LmforgeError) as e:
        get_task("bbh_boolean_expressions").load(TaskOptions(path=str(examples)))
    assert str(e.value) == (f"bbh_boolean_expressions: 3-shot prompts need the BBH file "
                            f"cot-prompts/boolean_expressions.txt (not found at "
                            f"{tmp_path / 'cot-prompts' / 'boolean_expressions.txt'}); "
                            f"give fewshot=PATH or num_fewshot=0")
    assert len(get_task("bbh_boolean_expressions").load(TaskOptions(path=str(examples), num_fewshot=0)).docs) == 4
    with pytest.raises(LmforgeError, match=r"^eval: give a CHECKPOINT directory"):
        run_cli(["--tasks", "gsm8k"])
    with pytest.raises(LmforgeError, match=r"not an lmforge checkpoint"):
        evaluate_checkpoint(str(tmp_path), ["gsm8k"], data=str(FIX), num_fewshot=0, progress=False)


# --- the command ---------------------------------------------------------------------------------------

def test_list_shows_every_task_and_group(capsys):
    assert run_cli(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(list_tasks())
    assert any(line.startswith("bbh ") for line in lines) and any(line.startswith("gsm8k ") for line in lines)


def test_run_eval_end_to_end_writes_results_and_samples(tiny, tmp_path, capsys):
    ckpt, _, _ = tiny

    def argv(out):
        return [str(ckpt), "--tasks", "gsm8k,bbh_boolean_expressions",
                "multiple_choice:path=" + str(FIX / "choice.jsonl"), "--data", str(FIX), "--num-fewshot", "1",
                "--limit", "2", "--max-new-tokens", "6", "--log-samples", "--out", str(out), "--no-progress",
                "--temperature", "0.9", "--seed", "7"]

    assert run_cli(argv(tmp_path / "a")) == 0
    assert "wrote" in capsys.readouterr().out
    report = json.loads((tmp_path / "a" / "results.json").read_text())
    assert report["checkpoint"] == str(ckpt.resolve()) and report["config"]["limit"] == 2
    gsm = report["results"]["gsm8k"]
    assert gsm["n"] == 2 and gsm["num_fewshot"] == 1 and gsm["cot"] is True
    assert set(gsm["metrics"]) == {"exact_match_strict", "exact_match_flexible"} == set(gsm["stderr"])
    assert set(report["results"]["multiple_choice"]["metrics"]) == {"acc", "acc_norm", "acc_letter"}
    samples = [json.loads(line) for line in (tmp_path / "a" / "samples" / "gsm8k.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and samples[0]["prompt"].endswith("Answer:")
    assert set(samples[0]["extracted"]) == {"strict", "flexible"} and samples[0]["target"] == "1250"
    # the same seed reproduces the sampled outputs
    assert run_cli(argv(tmp_path / "b")) == 0
    again = (tmp_path / "b" / "samples" / "gsm8k.jsonl").read_text().splitlines()
    assert [json.loads(line)["output"] for line in again] == [s["output"] for s in samples]
