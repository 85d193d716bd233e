"""RL on real data. GRPO: chat records whose last reply ends in a number (GSM8K's format, read through
`fields`) become verifiable problems; held-out problems come from eval_sources or out of the sources.
PPO: chat records, each up to its last reply, become prompts for the reward model."""

import json
from pathlib import Path

import pytest

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import LmforgeError
from lmforge.stages.grpo import GRPOConfig, source_problems
from tests import tiny_recipe
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
                           extra=[{"question": "Say hi.", "answer": "Hi there!"},
                                  {"question": "Give 3 tips.", "answer": "Here are 3 tips: sleep, eat, walk."},
                                  {"question": "Half of 3/2?", "answer": "It is 3/4."}])
    test = write_problems(tmp_path / "test.jsonl", 5, start=7)
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(train), fields=GSM8K_FIELDS)],
                    eval_sources=[ChatSourceConfig(path=str(test), fields=GSM8K_FIELDS)], eval_examples=3)
    problems, heldout, stats = source_problems(gc, seed=0)
    # replies that do not end in a number are skipped: free text, a number inside the text, a fraction
    assert stats == {"train_problems": 30, "heldout_problems": 3, "skipped_records": 3, "dropped_heldout_copies": 0}
    messages, meta = next(p for p in problems if "1000 pens" in p[0][0]["content"])
    assert messages == [{"role": "user", "content": "Ann has 1000 pens and buys 2 more. How many pens does she have?"}]
    assert meta == {"answer": "1,002", "task": "source"}
    assert {m["answer"] for _, m in heldout} <= {"9", "10", "11", "12", "13"}


def test_without_eval_sources_a_tenth_is_held_out_and_never_trained_on(tmp_path):
    path = write_problems(tmp_path / "train.jsonl", 40)
    source = ChatSourceConfig(path=str(path), fields=GSM8K_FIELDS, weight=2.0)  # every problem twice
    problems, heldout, stats = source_problems(GRPOConfig(sources=[source], eval_examples=200), seed=0)
    prompts = [repr(m) for m, _ in heldout]
    assert stats["heldout_problems"] == len(heldout) == len(set(prompts)) and 4 <= len(heldout) <= 8  # of 80 drawn
    assert not set(prompts) & {repr(m) for m, _ in problems}  # the copies of held-out problems are dropped
    # a held-out prompt drawn once among the first 8 has its other copy in the rest: dropped
    assert stats["dropped_heldout_copies"] == 2 * len(heldout) - 8
    assert stats["train_problems"] == len(problems) == 80 - 8 - stats["dropped_heldout_copies"]


def test_a_question_in_both_sources_and_eval_sources_is_not_trained_on(tmp_path):
    train = write_problems(tmp_path / "train.jsonl", 20)
    test = write_problems(tmp_path / "test.jsonl", 5, start=18)  # 18 and 19 are in train too
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(train), fields=GSM8K_FIELDS)],
                    eval_sources=[ChatSourceConfig(path=str(test), fields=GSM8K_FIELDS)], eval_examples=5)
    problems, heldout, stats = source_problems(gc, seed=0)
    assert (stats["train_problems"], stats["heldout_problems"], stats["dropped_heldout_copies"]) == (18, 5, 2)
    same = GRPOConfig(sources=gc.sources, eval_sources=gc.sources, eval_examples=50)
    with pytest.raises(LmforgeError, match="^grpo.sources: every problem's prompt is also a held-out one; nothing "
                                           "is left to train on$"):
        source_problems(same, seed=0)


def test_sources_without_a_verifiable_answer_are_a_one_line_error(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi!"}) + "\n")
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(path))])
    msg = (r"^grpo.sources: none of 1 conversations ends with an assistant reply whose last line is '#### "
           r"<number>' or ends in a number \(the verifiable answer\); for GSM8K-style records set fields: "
           r"\{instruction: question, output: answer\}$")
    with pytest.raises(LmforgeError, match=msg):
        source_problems(gc, seed=0)
    few = write_problems(tmp_path / "few.jsonl", 5)
    with pytest.raises(LmforgeError, match=r"^grpo.sources: 5 problems; holding 10% out for evaluation needs at "
                                           r"least 10 \(add problems, or give held-out ones in grpo.eval_sources\)$"):
        source_problems(GRPOConfig(sources=[ChatSourceConfig(path=str(few), fields=GSM8K_FIELDS)]), seed=0)


def test_grpo_stage_trains_on_sources_without_toyworld_prompts(tmp_path, monkeypatch):
    import lmforge.stages.grpo as grpo
    from lmforge.cli import main

    def no_toyworld(*a, **k):
        raise AssertionError("the stage drew toyworld prompts")

    monkeypatch.setattr(grpo, "rl_prompts", no_toyworld)

    train = write_problems(tmp_path / "train.jsonl", 24)
    test = write_problems(tmp_path / "test.jsonl", 6, start=50)
    src = lambda p: f"{{path: {p}, fields: {{instruction: question, output: answer}}}}"  # noqa: E731
    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=g",
            "stages=[toyworld,tokenizer,pretrain,sft,grpo]", *tiny_recipe.BASE, *tiny_recipe.GRPO,
            f"grpo.sources=[{src(train)}]", f"grpo.eval_sources=[{src(test)}]", "grpo.eval_examples=6",
            "grpo.eval_samples=1"]
    assert main(args) == 0
    s = json.loads((tmp_path / "g/summary.json").read_text())["grpo"]
    assert (s["train_problems"], s["heldout_problems"], s["skipped_records"]) == (24, 6, 0)
    # without toyworld in the recipe's stages, grpo with sources does not ask for it (before, it did)
    from lmforge.config import load_run_config
    from lmforge.stages import STAGES

    cfg = load_run_config(ROOT / "recipes/demo.yaml", ["stages=[grpo]", f"grpo.sources=[{src(train)}]"])
    assert STAGES["grpo"].needs(cfg) == () and STAGES["grpo"].needs(load_run_config(ROOT / "recipes/demo.yaml")) \
        == ("toyworld",)
    assert 0.0 <= s["heldout_acc_before"] <= 1.0 and s["steps"] == 3


def test_gsm8k_train_reads_as_grpo_problems():
    """The real GSM8K train split: every one of its 7,473 records has a "#### n" answer the verifier parses;
    its test split is the held-out set (never trained on)."""
    train, test = shared_data("gsm8k", "train.jsonl"), shared_data("gsm8k", "test.jsonl")
    gc = GRPOConfig(sources=[ChatSourceConfig(path=str(train), fields=GSM8K_FIELDS)],
                    eval_sources=[ChatSourceConfig(path=str(test), fields=GSM8K_FIELDS)], eval_examples=1319)
    problems, heldout, stats = source_problems(gc, seed=0)
    assert stats == {"train_problems": 7473, "heldout_problems": 1319, "skipped_records": 0,
                     "dropped_heldout_copies": 0}
    records = [json.loads(line) for line in train.read_text().splitlines()]
    by_question = {r["question"]: r["answer"].rsplit("####", 1)[1].strip() for r in records}
    assert all(meta["answer"] == by_question[m[0]["content"]] for m, meta in problems)  # the "####" number


# ---- PPO -----------------------------------------------------------------------------------------
def write_instructions(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"instruction": f"Name a color, number {i}.", "output": "Blue."}) + "\n"
                            for i in range(n)))
    return path


def test_ppo_prompts_are_conversations_up_to_their_last_reply(tmp_path):
    from lmforge.stages.ppo import PPOConfig, source_prompts

    fixtures = ROOT / "tests/fixtures/chat"
    many = write_instructions(tmp_path / "many.jsonl", 40)
    pc = PPOConfig(prompts_per_step=8, sources=[ChatSourceConfig(path=str(many)),
                                                 ChatSourceConfig(path=str(fixtures / "messages.jsonl"))])
    train, heldout, stats = source_prompts(pc, seed=0)
    assert stats == {"train_prompts": len(train), "heldout_prompts": len(heldout), "skipped_records": 0}
    assert len(heldout) == (len(train) + len(heldout)) // 10
    assert not {repr(p) for p in heldout} & {repr(p) for p in train}
    every = train + heldout
    assert all(p[-1]["role"] == "user" for p in every)  # the reference reply is dropped, the question kept
    assert [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Capital of Velora?"}] in every
    assert [{"role": "user", "content": "Name a color, number 7."}] in every
    few = PPOConfig(prompts_per_step=32, sources=[ChatSourceConfig(path=str(fixtures / "messages.jsonl"))])
    msg = r"^ppo.sources: 3 distinct prompts; with 1 held out for evaluation, fewer than ppo.prompts_per_step \(32\)"
    with pytest.raises(LmforgeError, match=msg):
        source_prompts(few, seed=0)


def test_prompt_only_records_read_as_prompts_where_asked(tmp_path):
    """`prompts: true`: Alpaca without output, messages or ShareGPT ending with the user's turn read as
    prompts (RL); without it they are errors as before, and SFT refuses such a source."""
    from lmforge.data.chat_sources import need_replies, read_conversations
    from lmforge.stages.ppo import PPOConfig, source_prompts

    path = tmp_path / "prompts.jsonl"
    rows = [{"instruction": f"Name a color, number {i}."} for i in range(18)]
    rows += [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]},
             {"conversations": [{"from": "human", "value": "Why?"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LmforgeError, match=r"prompts.jsonl:1: missing field 'output' \(fields: instruction\)$"):
        read_conversations(ChatSourceConfig(path=str(path)))
    convs, skipped = read_conversations(ChatSourceConfig(path=str(path), prompts=True))
    assert skipped == 0 and convs[0] == [{"role": "user", "content": "Name a color, number 0."}]
    assert convs[-2:] == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                          [{"role": "user", "content": "Why?"}]]
    train, heldout, stats = source_prompts(PPOConfig(prompts_per_step=8, sources=[
        ChatSourceConfig(path=str(path), prompts=True)]), seed=0)
    assert (stats["train_prompts"], stats["heldout_prompts"]) == (18, 2)
    # found when the recipe loads, not when SFT starts (hours of pretraining later): sft, specialize, grpo
    from lmforge.config import load_run_config

    for key in ("sft.sources", "specialize.sources", "grpo.sources", "grpo.eval_sources"):
        with pytest.raises(LmforgeError, match=rf"{key}.0.prompts: true reads records without replies \(RL prompts, "
                                               r"for ppo.sources\); this stage needs the replies: remove it$"):
            load_run_config(ROOT / "recipes/demo.yaml", [f"{key}=[{{path: {path}, prompts: true}}]"])
    need_replies([ChatSourceConfig(path=str(path))])  # replies are read: fine


def test_ppo_prompts_stop_at_the_last_user_turn_and_keep_weighted_copies(tmp_path):
    """A tool exchange after the question is dropped with the reply; a record without a user turn is
    skipped and counted; a source of weight 2 keeps both copies of its training prompts."""
    from lmforge.stages.ppo import PPOConfig, source_prompts

    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "calculator", "arguments": "2+2"}]}
    tool_chat = [{"role": "user", "content": "What is 2+2?"}, call, {"role": "tool", "content": "4"},
                 {"role": "assistant", "content": "4."}]
    path = tmp_path / "chats.jsonl"
    rows = [{"messages": tool_chat}, {"messages": [{"role": "assistant", "content": "Hello."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    many = write_instructions(tmp_path / "many.jsonl", 20)
    pc = PPOConfig(prompts_per_step=4, sources=[ChatSourceConfig(path=str(path), prompts=True),
                                                 ChatSourceConfig(path=str(many), weight=2.0)])
    train, heldout, stats = source_prompts(pc, seed=0)
    assert [{"role": "user", "content": "What is 2+2?"}] in train + heldout
    assert stats["skipped_records"] == 1 and stats["heldout_prompts"] == len(heldout) == 2  # 21 distinct
    assert len(train) == 41 - 2 * 2 + sum(p == [{"role": "user", "content": "What is 2+2?"}] for p in heldout)


def test_ppo_stage_trains_on_source_prompts(tmp_path):
    from lmforge.config import load_run_config
    from lmforge.stages import STAGES
    from tests.test_preference_train import tiny_alignment_run

    many = write_instructions(tmp_path / "many.jsonl", 30)
    assert tiny_alignment_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft,pairs,rm,ppo]",
                              f"ppo.sources=[{{path: {many}}}]", "ppo.prompts_per_step=8", "ppo.max_new_tokens=8",
                              "ppo.train.steps=4", "ppo.train.progress=false", "ppo.train.tensorboard=false",
                              "ppo.train.micro_batch_size=4") == 0
    s = json.loads((tmp_path / "a/summary.json").read_text())["ppo"]
    assert (s["train_prompts"], s["heldout_prompts"], s["steps"]) == (27, 3, 4)
    assert "heldout_rm_score_after" in s
    from lmforge.cli import main

    assert main(["eval_ppo", str(ROOT / "recipes/rlhf.yaml"), f"out_dir={tmp_path}", "name=a",
                 "stages=[toyworld,tokenizer,pretrain,sft,pairs,rm,ppo,eval_ppo]",
                 f"ppo.sources=[{{path: {many}}}]"]) == 2  # toyworld's judge: not for real prompts
    cfg = load_run_config(ROOT / "recipes/rlhf.yaml", [f"ppo.sources=[{{path: {many}}}]"])
    assert STAGES["ppo"].needs(cfg) == () and STAGES["ppo"].needs(load_run_config(ROOT / "recipes/rlhf.yaml")) \
        == ("toyworld",)
