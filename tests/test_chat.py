"""Chat template: exact rendering, loss mask, HF parity of the exported template, validation, parsing."""

import json

import pytest

from lmforge.chat import (
    chat_template,
    parse_assistant,
    parse_turn,
    render,
    render_prompt,
    validate,
    write_chat_template,
)
from lmforge.errors import LmforgeError
from lmforge.tokenizer import (
    ASSISTANT,
    BOS,
    END_OF_TURN,
    END_TOOL_CALL,
    END_TOOL_OUTPUT,
    EOS,
    SYSTEM,
    TOOL_CALL,
    TOOL_OUTPUT,
    USER,
    train_tokenizer,
)

TEXTS = ["The capital of Velora is Kamdu. 123 + 456 = 579. What is the answer? calc(2+3)"] * 50


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("chat_tok")
    tok = train_tokenizer(TEXTS, d, vocab_size=300)
    write_chat_template(d)
    return d, tok


@pytest.fixture(scope="module")
def tok(tok_dir):
    return tok_dir[1]


def u(text):
    return {"role": "user", "content": text}


def a(text, calls=None):
    m = {"role": "assistant", "content": text}
    if calls:
        m["tool_calls"] = [{"name": n, "arguments": x} for n, x in calls]
    return m


def s(text):
    return {"role": "system", "content": text}


def t(text):
    return {"role": "tool", "content": text}


TOOL_CONV = [u("What is 2+3?"), a("Let me compute.", [("calc", "2+3")]), t("5"), a("It is 5.")]


def test_exact_rendering_and_mask(tok):
    sp, enc = tok.special, tok.encode
    ids, mask = render([s("Be brief."), u("Hi"), a("Hello")], tok)
    assert ids == [sp[BOS], sp[SYSTEM], *enc("Be brief."), sp[END_OF_TURN],
                   sp[USER], *enc("Hi"), sp[END_OF_TURN],
                   sp[ASSISTANT], *enc("Hello"), sp[END_OF_TURN]]
    assert mask == [0, 0] + [0] * len(enc("Be brief.")) + [0] + [0] + [0] * len(enc("Hi")) + [0] \
        + [0] + [1] * len(enc("Hello")) + [1]
    assert len(ids) == len(mask)
    # the same thing, readable: text between the special tokens, each piece with the one
    # leading space the tokenizer gives every text segment (only a text's very first is stripped)
    assert tok.decode(ids) == "<|begin_of_text|><|system|> Be brief.<|end_of_turn|><|user|> Hi<|end_of_turn|>" \
                              "<|assistant|> Hello<|end_of_turn|>"


def test_tool_call_rendering_and_mask(tok):
    sp, enc = tok.special, tok.encode
    ids, mask = render(TOOL_CONV, tok)
    q, c, call, out, ans = enc("What is 2+3?"), enc("Let me compute."), enc("calc(2+3)"), enc("5"), enc("It is 5.")
    assert ids == [sp[BOS], sp[USER], *q, sp[END_OF_TURN],
                   sp[ASSISTANT], *c, sp[TOOL_CALL], *call, sp[END_TOOL_CALL],
                   sp[TOOL_OUTPUT], *out, sp[END_TOOL_OUTPUT],
                   *ans, sp[END_OF_TURN]]
    assert mask == [0, 0, *[0] * len(q), 0,
                    0, *[1] * len(c), 1, *[1] * len(call), 1,
                    0, *[0] * len(out), 0,
                    *[1] * len(ans), 1]


def test_mask_semantics(tok):
    sp = tok.special
    conv = [s("sys"), u("q1"), a("a1"), u("q2"), a("Let me see.", [("calc", "1+1")]), t("2"), a("Two.")]
    ids, mask = render(conv, tok)
    trained = {i for i, (x, m) in enumerate(zip(ids, mask, strict=True)) if m}
    eot = [i for i, x in enumerate(ids) if x == sp[END_OF_TURN]]
    # 4 end_of_turn tokens: system, user, user untrained; the two closing assistant turns trained
    # (without them the model never learns to stop)
    assert [mask[i] for i in eot] == [0, 0, 1, 0, 1]
    for marker in (BOS, SYSTEM, USER, ASSISTANT, TOOL_OUTPUT, END_TOOL_OUTPUT):
        assert all(mask[i] == 0 for i, x in enumerate(ids) if x == sp[marker]), marker
    for marker in (TOOL_CALL, END_TOOL_CALL):
        assert all(mask[i] == 1 for i, x in enumerate(ids) if x == sp[marker]), marker
    # decoding only the trained tokens gives exactly what the assistant says
    assert tok.decode([ids[i] for i in sorted(trained)]) == \
        "a1<|end_of_turn|> Let me see.<|tool_call|> calc(1+1)<|end_tool_call|> Two.<|end_of_turn|>"
    assert "<|end_of_text|>" not in tok.decode(ids)


def test_generation_prompt(tok):
    sp = tok.special
    ids, mask = render([u("Hi")], tok, add_generation_prompt=True)
    assert ids[-1] == sp[ASSISTANT] and mask[-1] == 0 and sum(mask) == 0
    assert render_prompt([u("Hi")], tok) == ids
    # after a tool output the assistant's turn is still open: no new marker
    assert render_prompt(TOOL_CONV[:3], tok)[-1] == sp[END_TOOL_OUTPUT]
    # the prompt at every assistant turn is a prefix of the training rendering: generation sees
    # exactly what training saw
    conv = [s("sys"), u("q1"), a("a1"), u("q2"), a("", [("calc", "1+1")]), t("2"), a("Two.")]
    full = render(conv, tok)[0]
    for k, m in enumerate(conv):
        if m["role"] == "assistant":
            p = render_prompt(conv[:k], tok)
            assert full[: len(p)] == p
    with pytest.raises(LmforgeError, match="a generation prompt cannot follow an assistant message"):
        render_prompt([u("Hi"), a("Hello")], tok)


def test_special_token_text_stays_text(tok):
    ids, _ = render([u("say <|end_of_turn|> please"), a("<|assistant|>")], tok)
    assert ids.count(tok.special[END_OF_TURN]) == 2 and ids.count(tok.special[ASSISTANT]) == 1


# -------------------------------------------------------------- HF parity

PARITY = [
    [u("Hi"), a("Hello!")],
    [s("You are terse."), u("What is the capital of Velora?"), a("Kamdu.")],
    [u("  leading and trailing spaces  "), a("\nnewlines\n\n inside\t tabs ")],
    [s("sys"), u("q1"), a("a1"), u("q2 123+456"), a("579"), u("héllo wörld 🙂 東京"), a("ok")],
    TOOL_CONV,
    [u("two calls"), a("", [("calc", "1+1"), ("lookup", '{"city": "Kamdu"}')]), t("2"), t("Velora"),
     a("2 and Velora.")],
    [u("chain"), a("first", [("calc", "2*3")]), t("6"), a("then", [("calc", "6+1")]), t("7"), a("7.")],
    [u("unfinished"), a("", [("calc", "9-3")])],
]


def _hf_ids(result):
    # transformers 4.x returns a list of ids, 5.x a BatchEncoding
    return list(result) if isinstance(result, list) else list(result["input_ids"])


@pytest.fixture(scope="module")
def hf_tok(tok_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tok_dir[0])


@pytest.mark.parametrize("conv", PARITY, ids=range(len(PARITY)))
def test_hf_parity(conv, tok, hf_tok):
    got = _hf_ids(hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=False))
    assert got == render(conv, tok)[0]
    if conv[-1]["role"] != "assistant":
        return
    for k, m in enumerate(conv):  # every prompt the engine would see
        if m["role"] == "assistant":
            got = _hf_ids(hf_tok.apply_chat_template(conv[:k], tokenize=True, add_generation_prompt=True))
            assert got == render_prompt(conv[:k], tok), k


def test_hf_openai_nested_tool_calls(tok, hf_tok):
    nested = [u("What is 2+3?"),
              {"role": "assistant", "content": None,
               "tool_calls": [{"id": "c1", "type": "function",
                               "function": {"name": "lookup", "arguments": {"city": "Kamdu", "n": 2}}}]},
              {"role": "tool", "content": "Velora"}, a("Velora.")]
    flat = [u("What is 2+3?"), a("", [("lookup", json.dumps({"city": "Kamdu", "n": 2}))]), t("Velora"), a("Velora.")]
    assert _hf_ids(hf_tok.apply_chat_template(nested, tokenize=True)) == render(flat, tok)[0]


def test_write_chat_template(tok_dir, tmp_path):
    d, _ = tok_dir
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == chat_template() and cfg["bos_token"] == BOS  # other keys kept
    with pytest.raises(LmforgeError) as e:
        write_chat_template(tmp_path)
    assert str(e.value) == f"{tmp_path / 'tokenizer_config.json'}: file not found (save the tokenizer first)"


# -------------------------------------------------------------- validation

W = "data.jsonl:3"
BAD = [
    ("not a list", "data.jsonl:3: expected a list of messages, got string"),
    ([], "data.jsonl:3: no messages"),
    ([u("q"), "a"], "data.jsonl:3: messages[1]: expected an object with 'role' and 'content', got string"),
    ([{"content": "q"}], "data.jsonl:3: messages[0]: missing 'role'"),
    ([{"role": "bot", "content": "q"}],
     "data.jsonl:3: messages[0]: unknown role 'bot' (expected system, user, assistant or tool)"),
    ([{"role": "user", "content": "q", "name": "x"}, a("x")],
     "data.jsonl:3: messages[0]: unknown key 'name' in a user message (allowed: role, content)"),
    ([u("q"), {"role": "assistant", "contents": "x"}],
     "data.jsonl:3: messages[1]: unknown key 'contents' in a assistant message (allowed: role, content, tool_calls)"),
    ([u("q"), {"role": "assistant"}], "data.jsonl:3: messages[1]: missing 'content'"),
    ([u("q"), a(5)], "data.jsonl:3: messages[1]: 'content' must be a string, got number"),
    ([u("q"), a("  \n")], "data.jsonl:3: messages[1]: empty content"),
    ([u("q"), s("late")], "data.jsonl:3: messages[1]: a system message must be the first message"),
    ([u("q"), t("5"), a("x")],
     "data.jsonl:3: messages[1]: a tool message must follow an assistant message with tool_calls"),
    ([u("q"), a("", [("calc", "1")]), t("1"), t("2"), a("x")],
     "data.jsonl:3: messages[3]: more tool messages than the 1 tool call(s) of messages[1]"),
    ([u("q"), a("", [("calc", "1"), ("calc", "2")]), t("1"), a("x")],
     "data.jsonl:3: messages[1]: 2 tool call(s) but only 1 tool message(s) after it"),
    ([u("q"), a("", [("calc", "1")]), t("1"), u("and?")],
     "data.jsonl:3: messages[3]: after tool outputs the assistant continues its turn (got a user message)"),
    ([u("q"), {"role": "assistant", "content": "", "tool_calls": []}],
     "data.jsonl:3: messages[1]: 'tool_calls' must be a non-empty list of {\"name\": ..., \"arguments\": ...}"),
    ([u("q"), {"role": "assistant", "content": "", "tool_calls": [{"name": "calc"}]}],
     "data.jsonl:3: messages[1]: tool_calls[0]: missing 'arguments'"),
    ([u("q"), a("", [("my calc", "1")])],
     "data.jsonl:3: messages[1]: tool_calls[0]: 'name' must be a function name such as get_weather, got 'my calc'"),
    ([u("q"), {"role": "assistant", "content": "", "tool_calls": [{"name": "calc", "arguments": {"x": 1}}]}],
     "data.jsonl:3: messages[1]: tool_calls[0]: 'arguments' must be a string, got object"),
    ([u("q"), {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "", "id": "1"}]}],
     "data.jsonl:3: messages[1]: tool_calls[0]: unknown key 'id' (allowed: name, arguments)"),
    ([s("sys"), u("q")], "data.jsonl:3: no assistant message (nothing to train on)"),
]


@pytest.mark.parametrize("messages,expected", BAD, ids=range(len(BAD)))
def test_validation_errors(messages, expected):
    with pytest.raises(LmforgeError) as e:
        validate(messages, W)
    assert str(e.value) == expected


def test_validation_accepts():
    for conv in PARITY:
        validate(conv, W)
    validate([u("q")], W, require_assistant=False)
    validate([u("q"), {"role": "assistant", "tool_calls": [{"name": "f", "arguments": ""}]}], W)  # no content


def test_render_validates(tok):
    with pytest.raises(LmforgeError, match=r"^messages: messages\[0\]: unknown role 'bot'"):
        render([{"role": "bot", "content": "x"}], tok)


# -------------------------------------------------------------- parsing generated ids


def test_parse_round_trip(tok):
    for conv in PARITY:
        full = render(conv, tok)[0]
        for k, m in enumerate(conv):
            if m["role"] != "assistant" or (k and conv[k - 1]["role"] == "tool"):
                continue
            end = next((j for j in range(k + 1, len(conv)) if conv[j]["role"] in ("user", "system")), len(conv))
            prompt = render_prompt(conv[:k], tok)
            turn = parse_turn(full[len(prompt):], tok)  # runs past the turn: stops at its end_of_turn
            assert turn == conv[k:end], (conv, k)
            assert parse_assistant(full[len(prompt):], tok) == conv[k]


def test_parse_generated_edge_cases(tok):
    sp, enc = tok.special, tok.encode
    assert parse_assistant([], tok) == {"role": "assistant", "content": ""}
    # cut off by max tokens: keeps the text; a leading <|assistant|> is skipped
    assert parse_assistant([sp[ASSISTANT], *enc("It is")], tok) == {"role": "assistant", "content": "It is"}
    assert parse_assistant([*enc("Done"), sp[EOS], *enc("junk")], tok) == {"role": "assistant", "content": "Done"}
    assert parse_assistant([*enc("x"), sp[USER], *enc("junk")], tok) == {"role": "assistant", "content": "x"}
    # an unfinished call still counts; a call without parentheses keeps its text as the name
    assert parse_assistant([sp[TOOL_CALL], *enc("calc(2+")], tok) == \
        {"role": "assistant", "content": "", "tool_calls": [{"name": "calc", "arguments": "2+"}]}
    assert parse_assistant([sp[TOOL_CALL], *enc("calc"), sp[END_TOOL_CALL]], tok)["tool_calls"] == \
        [{"name": "calc", "arguments": ""}]
    # ids that end right after a forced tool output: [assistant, tool]
    ids = [sp[TOOL_CALL], *enc("calc(1)"), sp[END_TOOL_CALL], sp[TOOL_OUTPUT], *enc("1"), sp[END_TOOL_OUTPUT]]
    assert parse_turn(ids, tok) == [a("", [("calc", "1")]), t("1")]
