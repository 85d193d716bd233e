"""GRPO on real data: chat records whose last reply ends in a number (GSM8K's format, read through
`fields`) become verifiable problems; held-out problems come from eval_sources or out of the sources."""

import json
from pathlib import Path

import pytest

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import LmforgeError
from lmforge.stages.grpo import GRPOConfig, source_problems
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parent.parent
GSM8K_FIELDS = {"instruction": "question", "output": "answer"}


def write_problems(path: Path, n: int, start: int = 0, extra: list[dict] = ()) -> Path:
    rows = [{"question": f"Ann has {i} pens and buys 2 more. How many pens does she have?",
             "answer": f"She has {i} + 2 = <<{i}+2={i + 2}>>{i + 2} pens.\n#### {i + 2:,}"}
            for i in range(start, start + n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return path


def test_records_become_problems_with_their_final_number(tmp_path):
    """Each record: the question as the prompt, the reference's "#### n" as the answer (as written:
    "1,002"); a reply without any number is skipped and counted; eval_sources give the held-out set."""
    train = write_problems(tmp_path / "train.jsonl", 30, start=1000,
                           extra=[{"question": "Say hi.", "answer": "Hi there!"}])
    test = write_problems(tmp_path / "test.jsonl", 5, start=7)
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(train), fields=GSM8K_FIELDS)],
                    eval_sources=[ChatSourceConfig(path=str(test), fields=GSM8K_FIELDS)], eval_examples=3)
    problems, heldout, stats = source_problems(gc, seed=0)
    assert stats == {"train_problems": 30, "heldout_problems": 3, "skipped_records": 1}
    messages, meta = next(p for p in problems if "1000 pens" in p[0][0]["content"])
    assert messages == [{"role": "user", "content": "Ann has 1000 pens and buys 2 more. How many pens does she have?"}]
    assert meta == {"answer": "1,002", "task": "source"}
    assert {m["answer"] for _, m in heldout} <= {"9", "10", "11", "12", "13"}


def test_without_eval_sources_a_tenth_is_held_out_and_never_trained_on(tmp_path):
    path = write_problems(tmp_path / "train.jsonl", 40)
    source = ChatSourceConfig(path=str(path), fields=GSM8K_FIELDS, weight=2.0)  # every problem twice
    problems, heldout, stats = source_problems(GRPOConfig(sources=[source], eval_examples=200), seed=0)
    assert stats["heldout_problems"] == len(heldout) == 8  # 10% of the 80 drawn
    assert not {repr(p) for p in heldout} & {repr(p) for p in problems}
    assert stats["train_problems"] == len(problems) and len(problems) >= 80 - 2 * 8


def test_sources_without_a_verifiable_answer_are_a_one_line_error(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n")
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(path))])
    msg = (r"^grpo.sources: none of 1 conversations ends with an assistant reply holding a number \(the "
           r"verifiable answer, e.g. '#### 72'\); for GSM8K-style records set fields: \{instruction: question, "
           r"output: answer\}$")
    with pytest.raises(LmforgeError, match=msg):
        source_problems(gc, seed=0)
    few = write_problems(tmp_path / "few.jsonl", 5)
    with pytest.raises(LmforgeError, match=r"^grpo.sources: 5 problems are too few to hold 200 out for evaluation"):
        source_problems(GRPOConfig(sources=[ChatSourceConfig(path=str(few), fields=GSM8K_FIELDS)]), seed=0)


def test_grpo_stage_trains_on_sources_without_toyworld_prompts(tmp_path):
    from lmforge.cli import main

    train = write_problems(tmp_path / "train.jsonl", 24)
    test = write_problems(tmp_path / "test.jsonl", 6, start=50)
    src = lambda p: f"{{path: {p}, fields: {{instruction: question, output: answer}}}}"  # noqa: E731
    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=g",
            "stages=[toyworld,tokenizer,pretrain,sft,grpo]",
            "model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=400",
            "train.steps=4", "train.micro_batch_size=4", "train.seq_len=64", "train.progress=false",
            "train.tensorboard=false", "train.eval_every=2", "train.eval_batches=1",
            "toyworld.corpus.n_stories=10", "toyworld.corpus.n_arithmetic_docs=5", "toyworld.corpus.n_word_problems=5",
            "sft.n_per_task=4", "sft.val_examples=20", "sft.train.steps=4", "sft.train.micro_batch_size=4",
            "sft.train.progress=false", "sft.train.tensorboard=false",
            "grpo.init=sft", f"grpo.sources=[{src(train)}]", f"grpo.eval_sources=[{src(test)}]",
            "grpo.prompts_per_step=2", "grpo.group_size=4", "grpo.max_new_tokens=8", "grpo.eval_examples=6",
            "grpo.eval_samples=1", "grpo.train.steps=3", "grpo.train.progress=false", "grpo.train.tensorboard=false"]
    assert main(args) == 0
    s = json.loads((tmp_path / "g/summary.json").read_text())["grpo"]
    assert (s["train_problems"], s["heldout_problems"], s["skipped_records"]) == (24, 6, 0)
    assert 0.0 <= s["heldout_acc_before"] <= 1.0 and s["steps"] == 3


def test_gsm8k_train_reads_as_grpo_problems():
    """The real GSM8K train split: every one of its 7,473 records has a "#### n" answer the verifier parses;
    its test split is the held-out set (never trained on)."""
    from lmforge.eval.tasks.math import parse_number

    train, test = shared_data("gsm8k", "train.jsonl"), shared_data("gsm8k", "test.jsonl")
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(train), fields=GSM8K_FIELDS)],
                    eval_sources=[ChatSourceConfig(path=str(test), fields=GSM8K_FIELDS)], eval_examples=1319)
    problems, heldout, stats = source_problems(gc, seed=0)
    assert stats == {"train_problems": 7473, "heldout_problems": 1319, "skipped_records": 0}
    assert all(parse_number(meta["answer"]) is not None for _, meta in problems + heldout)
