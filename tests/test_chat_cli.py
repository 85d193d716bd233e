"""The chat REPL: streaming replies, history trimmed to the context window and kept renderable (empty
replies, tool turns, Ctrl-C), /system and /reset, -p, and one rule for tool names in engine and template."""

import io

import pytest
import torch

from lmforge.chat import render_prompt
from lmforge.chat_cli import ChatSession
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import END_OF_TURN, END_TOOL_CALL, END_TOOL_OUTPUT, TOOL_CALL, TOOL_OUTPUT


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


# -------------------------------------------------------------- the REPL and -p on a saved checkpoint


class Replies:
    """Stands in for `sample_next`: emits `tokens` one per step across turns (end of turn once they run
    out); the item INTERRUPT raises KeyboardInterrupt there, as Ctrl-C during a reply does."""

    INTERRUPT = object()

    def __init__(self, tokens, eot):
        self.tokens, self.eot = list(tokens), eot

    def __call__(self, logits, temperature, top_k, top_p, generator):
        t = self.tokens.pop(0) if self.tokens else self.eot
        if t is Replies.INTERRUPT:
            raise KeyboardInterrupt
        return torch.tensor([t] * logits.shape[0])


@pytest.fixture
def repl(toy_data, tmp_path, monkeypatch):
    """run(lines, tokens, *flags) -> (exit code, stdout, stderr, prompts the engine was given): `lmforge chat`
    on a tiny saved checkpoint, `lines` typed at the prompt (an exception instance is raised there)."""
    import lmforge.engine as engine_mod
    from lmforge.cli import main
    from lmforge.engine import Engine
    from lmforge.model.io import save_model

    _, tok = toy_data
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=96)
    save_model(Transformer(cfg), tmp_path / "ckpt", toy_data[0].parent / "tok")
    prompts = []
    stream = Engine.stream
    monkeypatch.setattr(Engine, "stream", lambda self, ids, params: (prompts.append(ids), stream(self, ids, params))[1])

    def run(capsys, lines, tokens, *flags):
        lines = list(lines)

        def fake_input(prompt=""):
            line = lines.pop(0) if lines else EOFError()
            if isinstance(line, BaseException):
                raise line
            return line

        monkeypatch.setattr("builtins.input", fake_input)
        monkeypatch.setattr(engine_mod, "sample_next", Replies(tokens, tok.special[END_OF_TURN]))
        code = main(["chat", str(tmp_path / "ckpt"), "--device", "cpu", *flags])
        out, err = capsys.readouterr()
        return code, out, err, prompts

    return run


def user(text):
    return {"role": "user", "content": text}


def test_repl_system_prompt_reset_and_streaming(toy_data, repl, capsys):
    _, tok = toy_data
    eot = tok.special[END_OF_TURN]
    hello, again = tok.encode("Hello there."), tok.encode("Kamdu is far.")
    code, out, err, prompts = repl(capsys, ["/system Be brief.", "hi", "/reset", "where?", "/quit"],
                                   [*hello, eot, *again, eot])
    assert code == 0 and err == ""
    system = {"role": "system", "content": "Be brief."}
    assert prompts == [render_prompt([system, user("hi")], tok),
                       render_prompt([system, user("where?")], tok)]  # /reset forgot "hi" and its answer
    assert "(system prompt set)" in out and "(conversation cleared)" in out
    assert "model> Hello there.\n" in out and "model> Kamdu is far.\n" in out  # the replies were streamed


def test_repl_keeps_the_conversation_between_turns(toy_data, repl, capsys):
    _, tok = toy_data
    eot = tok.special[END_OF_TURN]
    code, _, _, prompts = repl(capsys, ["hi", "and then?"], [*tok.encode("Hello there."), eot, eot])
    assert code == 0
    answer = {"role": "assistant", "content": "Hello there."}
    assert prompts[1] == render_prompt([user("hi"), answer, user("and then?")], tok)


def test_an_empty_reply_is_not_kept_and_the_chat_goes_on(toy_data, repl, capsys):
    _, tok = toy_data
    eot = tok.special[END_OF_TURN]
    # the model ends its turn at once, then answers the next message
    code, out, err, prompts = repl(capsys, ["hi", "hello?"], [eot, *tok.encode("Yes."), eot])
    assert code == 0 and err == ""
    assert "error" not in out and "model> Yes.\n" in out
    # the unanswered "hi" went with its empty reply (the template has no empty assistant turn)
    assert prompts[1] == render_prompt([user("hello?")], tok)


def test_an_error_in_one_turn_is_one_line_and_the_chat_goes_on(toy_data, repl, capsys, monkeypatch):
    _, tok = toy_data
    real = ChatSession.prompt_ids
    calls = []

    def fail_once(self):
        calls.append(1)
        if len(calls) == 1:
            raise LmforgeError("messages: something wrong")
        return real(self)

    monkeypatch.setattr(ChatSession, "prompt_ids", fail_once)
    code, out, err, prompts = repl(capsys, ["hi", "again"], [*tok.encode("Yes."), tok.special[END_OF_TURN]])
    assert code == 0 and err == ""
    assert "error: messages: something wrong\n" in out and "model> Yes.\n" in out
    assert prompts == [render_prompt([user("again")], tok)]  # the failed turn left nothing behind


def test_ctrl_c_during_a_reply_keeps_the_part_shown_and_returns_to_the_prompt(toy_data, repl, capsys):
    _, tok = toy_data
    eot = tok.special[END_OF_TURN]
    part = tok.encode("Kamdu is")
    code, out, err, prompts = repl(capsys, ["hi", "go on"], [*part, Replies.INTERRUPT, *tok.encode("far."), eot])
    assert code == 0 and err == ""  # no "--resume" training hint from cli.py
    assert "model> Kamdu is\n(interrupted)\n" in out
    assert prompts[1] == render_prompt([user("hi"), {"role": "assistant", "content": "Kamdu is"}, user("go on")], tok)


@pytest.mark.parametrize("key", [EOFError(), KeyboardInterrupt()], ids=["ctrl-d", "ctrl-c"])
def test_ctrl_d_or_ctrl_c_at_the_prompt_quits_cleanly(repl, capsys, key):
    code, out, err, prompts = repl(capsys, [key], [])
    assert (code, err, prompts) == (0, "", [])
    assert out.endswith("/quit\n\n")  # the banner, then a newline: the shell prompt starts on its own line


def test_one_shot_prints_the_reply_and_exits(toy_data, repl, capsys):
    _, tok = toy_data
    code, out, err, prompts = repl(capsys, [AssertionError("-p must not read input")],
                                   [*tok.encode("Hello there."), tok.special[END_OF_TURN]],
                                   "-p", "hi", "--system", "Be brief.")
    assert (code, out, err) == (0, "Hello there.\n", "")
    assert prompts == [render_prompt([{"role": "system", "content": "Be brief."}, user("hi")], tok)]


# -------------------------------------------------------------- tool calls in the history


def scripted(s, tok, tokens, monkeypatch):
    import lmforge.engine as engine_mod

    prompts = []
    stream = s.engine.stream
    s.engine.stream = lambda ids, params: (prompts.append(ids), stream(ids, params))[1]
    monkeypatch.setattr(engine_mod, "sample_next", Replies(tokens, tok.special[END_OF_TURN]))
    return prompts


def test_a_tool_turn_is_kept_structured_and_renders_as_generated(toy_data, monkeypatch):
    from lmforge.chat import render

    _, tok = toy_data
    sp = tok.special
    eot = sp[END_OF_TURN]
    call = [sp[TOOL_CALL], *tok.encode("calculator(2+3)"), sp[END_TOOL_CALL]]
    forced = [sp[TOOL_OUTPUT], *tok.encode("5"), sp[END_TOOL_OUTPUT]]
    text, after = tok.encode("Let me see."), tok.encode("It is 5.")
    s = session(tok, max_new_tokens=40)
    # what the model samples while the output is forced is ignored: filler
    prompts = scripted(s, tok, [*text, *call, *[text[0]] * len(forced), *after, eot], monkeypatch)
    chunks = []
    out = io.StringIO()
    out.write = chunks.append
    s.reply("What is 2+3?", out=out)
    assert "".join(chunks) == "Let me see. [tool call: calculator(2+3)] [= 5] It is 5.\n"
    assert len(chunks) > 5  # streamed piece by piece, not printed at the end
    assert s.history == [user("What is 2+3?"),
                         {"role": "assistant", "content": "Let me see.",
                          "tool_calls": [{"name": "calculator", "arguments": "2+3"}]},
                         {"role": "tool", "content": "5"},
                         {"role": "assistant", "content": "It is 5."}]
    # the history renders to exactly the prompt plus the tokens generated (and forced), end of turn included
    assert render(s.history, tok)[0] == prompts[0] + text + call + forced + after + [eot]


@pytest.mark.parametrize("tail,kept", [
    ("output", "Let me see."),   # ends right after the tool output: the template has no such turn
    ("call", "Let me see."),     # cut off inside the call (max tokens, Ctrl-C)
    ("bad name", "Let me see."),  # a call name the template refuses
])
def test_an_unrenderable_tool_turn_keeps_its_renderable_start(toy_data, monkeypatch, tail, kept):
    _, tok = toy_data
    sp = tok.special
    eot = sp[END_OF_TURN]
    text = tok.encode("Let me see.")
    name = "2+3" if tail == "bad name" else "calculator(2+3)"
    call = [sp[TOOL_CALL], *tok.encode(name), sp[END_TOOL_CALL]]
    forced_len = 2 + len(tok.encode("error: malformed tool call (expected name(arguments))" if tail == "bad name"
                                    else "5"))
    tokens = {"output": [*text, *call, *[text[0]] * forced_len, eot],
              "call": [*text, sp[TOOL_CALL], *tok.encode("calculator(2+")],
              "bad name": [*text, *call, *[text[0]] * forced_len, *tok.encode("Oops."), eot]}[tail]
    s = session(tok, max_new_tokens=len(tokens) if tail == "call" else 80)
    prompts = scripted(s, tok, tokens + [*tok.encode("Fine."), eot], monkeypatch)
    s.reply("What is 2+3?", out=io.StringIO())
    assert s.history == [user("What is 2+3?"), {"role": "assistant", "content": kept}]
    s.reply("Thanks.", out=io.StringIO())  # the next turn renders: no "malformed history" error
    assert prompts[1] == render_prompt([*s.history[:2], user("Thanks.")], tok)


def test_a_tool_call_and_nothing_else_is_not_kept(toy_data, monkeypatch):
    _, tok = toy_data
    sp = tok.special
    eot = sp[END_OF_TURN]
    call = [sp[TOOL_CALL], *tok.encode("calculator(2+3)"), sp[END_TOOL_CALL]]
    s = session(tok, max_new_tokens=40)
    scripted(s, tok, [*call, *[call[1]] * 3, eot], monkeypatch)
    s.reply("What is 2+3?", out=io.StringIO())
    assert s.history == []


# -------------------------------------------------------------- tool names: one rule


@pytest.mark.parametrize("name,ok", [("calculator", True), ("math.add", True), ("get-weather_v2", True),
                                     ("2add", False), ("add me", False), ("", False)])
def test_the_engine_and_the_template_accept_the_same_tool_names(toy_data, name, ok):
    from lmforge.chat import validate
    from lmforge.engine import Engine

    _, tok = toy_data
    engine = Engine(session(tok).model, tok, tools={name or "x": lambda args: f"ran {args}"})
    result = engine._call_tool(f"{name}(1, 2)")
    assert (result == "ran 1, 2") == ok, result
    if not ok:
        assert result == "error: malformed tool call (expected name(arguments))"
    conv = [user("hi"), {"role": "assistant", "content": "", "tool_calls": [{"name": name, "arguments": "1, 2"}]},
            {"role": "tool", "content": "3"}, {"role": "assistant", "content": "Done."}]
    if ok:
        validate(conv, "messages")
    else:
        with pytest.raises(LmforgeError, match="'name' must be a function name"):
            validate(conv, "messages")
