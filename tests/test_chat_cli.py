"""The chat REPL's session: streaming replies, history trimmed to the context window, /reset."""

import io

import pytest
import torch

from lmforge.chat import render_prompt
from lmforge.chat_cli import ChatSession
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer


def session(tok, **kw):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=96))
    return ChatSession(model.eval(), tok, max_new_tokens=kw.pop("max_new_tokens", 16), **kw)


def test_long_chat_is_trimmed_and_never_overflows(toy_data):
    _, tok = toy_data
    s = session(tok, system="Be brief.", temperature=0.0)
    out, prompts = io.StringIO(), []
    stream = s.engine.stream
    s.engine.stream = lambda ids, params: (prompts.append(ids), stream(ids, params))[1]
    for i in range(12):  # far more text than a 96-token window holds
        s.reply(f"Tell me about Zali and Kamdu, question number {i}.", out=out)
    system = render_prompt([{"role": "system", "content": "Be brief."}], tok)[:2]
    for ids in prompts:
        assert len(ids) <= 96 - 16
        assert ids[:2] == system  # the system prompt survives trimming
    assert s.history[0]["role"] == "user" and len(s.history) < 24  # oldest turns were dropped
    assert out.getvalue().count("\n") == 12  # one streamed line per reply


def test_prompt_keeps_the_conversation_when_answers_may_be_long(toy_data):
    _, tok = toy_data
    s = session(tok, max_new_tokens=500)  # longer than the whole window
    s.history.append({"role": "user", "content": "Who are you?"})
    assert s.prompt_ids() == render_prompt(s.history, tok)


def test_one_message_longer_than_the_window_is_cut_from_the_left(toy_data):
    _, tok = toy_data
    s = session(tok)
    s.history.append({"role": "user", "content": "word " * 300})
    ids = s.prompt_ids()
    assert len(ids) == 96 - 16 and ids[0] == tok.bos_id


@pytest.mark.parametrize("flags,message", [
    (["--temperature", "-1"], "--temperature: expected a number >= 0 (0: greedy), got -1.0"),
    (["--temperature", "nan"], "--temperature: expected a number >= 0 (0: greedy), got nan"),
    (["--top-p", "0"], "--top-p: expected a number > 0 and <= 1 (1: off), got 0.0"),
    (["--top-k", "-1"], "--top-k: expected an integer >= 0 (0: off), got -1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens: expected a positive integer, got -5"),
    (["-p", "  "], "-p: the prompt is empty"),
])
def test_bad_chat_flags_are_one_line_errors_before_loading(tmp_path, capsys, flags, message):
    from lmforge.cli import main

    # the checkpoint does not exist: the flags are checked first
    assert main(["chat", str(tmp_path / "no-such-checkpoint"), *flags]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_a_blank_system_prompt_is_no_system_prompt(toy_data):
    _, tok = toy_data
    assert session(tok, system="   ").messages() == []
