"""Chat data: OpenAI messages, ShareGPT and Alpaca records from JSONL/JSON/parquet/datasets; errors; mixtures."""

import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.chat_sources import ChatSourceConfig, mix, read_conversations
from lmforge.errors import LmforgeError

FIX = Path(__file__).parent / "fixtures" / "chat"


def u(text):
    return {"role": "user", "content": text}


def a(text, calls=None):
    m = {"role": "assistant", "content": text}
    if calls:
        m["tool_calls"] = [{"name": n, "arguments": x} for n, x in calls]
    return m


def read(path, **kw):
    return read_conversations(ChatSourceConfig(path=str(path), **kw))


def error(path, **kw) -> str:
    with pytest.raises(LmforgeError) as e:
        read(path, **kw)
    return str(e.value)


def test_messages_format():
    convs, skipped = read(FIX / "messages.jsonl")
    assert skipped == 0
    assert convs == [
        [{"role": "system", "content": "You are terse."}, u("Capital of Velora?"), a("Kamdu.")],
        # OpenAI's nested tool calls, null content and tool_call_id are normalized
        [u("What is 2+3?"), a("", [("calc", "2+3")]), {"role": "tool", "content": "5"}, a("It is 5.")],
        # arguments given as an object become its JSON text
        [u("hi"), a("hello"), u("weather in Kamdu?"), a("", [("weather", '{"city": "Kamdu"}')]),
         {"role": "tool", "content": "sunny"}, a("Sunny.")],
    ]


def test_sharegpt_format():
    convs, _ = read(FIX / "sharegpt.jsonl", format="sharegpt")
    assert convs == [
        [u("Capital of Velora?"), a("Kamdu.")],
        [{"role": "system", "content": "Be kind."}, u("What is 2+3?"), a("", [("calc", "2+3")]),
         {"role": "tool", "content": "5"}, a("It is 5.")],
        [{"role": "system", "content": "sys"}, u("q1"), a("a1"), u("q2"), a("a2")],
    ]


def test_alpaca_format_jsonl_and_json_array():
    expected = [[u("Name the capital of Velora."), a("Kamdu.")],
                [u("Add the numbers.\n\n2 and 3"), a("5")],
                [{"role": "system", "content": "You are terse."}, u("Answer briefly.\n\nCapital of Velora?"),
                 a("Kamdu.")]]
    assert read(FIX / "alpaca.jsonl")[0] == expected
    assert read(FIX / "alpaca.json")[0] == expected[:2]


def test_auto_detects_per_record_and_reads_directories(tmp_path):
    assert read(FIX / "mixed.jsonl")[0] == [[u("m"), a("M")], [u("s"), a("S")], [u("a"), a("A")]]
    d = tmp_path / "d"
    d.mkdir()
    (d / "README.md").write_text("not data")
    (d / "b.jsonl").write_text((FIX / "mixed.jsonl").read_text())
    import gzip

    with gzip.open(d / "a.jsonl.gz", "wt") as f:
        f.write((FIX / "alpaca.jsonl").read_text())
    convs, _ = read(d)
    assert len(convs) == 6 and convs[0] == [u("Name the capital of Velora."), a("Kamdu.")]  # sorted: a.jsonl.gz first
    assert len(read(str(FIX / "a*.json*"))[0]) == 5  # a glob


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"messages": [u("What is 2+3?"), a("", [("calc", "2+3")]), {"role": "tool", "content": "5"},
                          a("It is 5.")]},
            {"messages": [u("hi"), a("hello")]}]
    # parquet stores one struct type for all messages: absent fields come back as null
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    convs, _ = read(tmp_path / "m.parquet")
    assert convs == [r["messages"] for r in rows]
    pq.write_table(pa.Table.from_pylist([{"instruction": "x", "input": None, "output": "y"},
                                         {"instruction": "x", "input": None, "output": ""}]), tmp_path / "a.parquet")
    assert error(tmp_path / "a.parquet") == f"{tmp_path / 'a.parquet'}: record 1: output: empty content"
    convs, skipped = read(tmp_path / "a.parquet", skip_invalid=True)
    assert convs == [[u("x"), a("y")]] and skipped == 1
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    assert error(tmp_path / "junk.parquet").startswith(f"{tmp_path / 'junk.parquet'}: cannot read (")


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    recs = [json.loads(line) for line in (FIX / "sharegpt.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list([{"conversations": r["conversations"]} for r in recs]).save_to_disk(tmp_path / "ds")
    convs, _ = read(tmp_path / "ds")
    assert convs[0] == [u("Capital of Velora?"), a("Kamdu.")] and len(convs) == 3


def test_bad_records_fail_or_are_skipped():
    bad = FIX / "bad.jsonl"
    assert error(bad) == f"{bad}:2: invalid JSON (Expecting ',' delimiter)"
    convs, skipped = read(bad, skip_invalid=True)
    assert convs == [[u("ok 1"), a("fine")], [u("ok 2"), a("fine")]] and skipped == 7
    stats = mix([ChatSourceConfig(path=str(bad), skip_invalid=True)], seed=0)[1]
    assert stats["sources"][0]["skipped"] == 7
    assert stats["sources"][0]["first_skipped"] == f"{bad}:2: invalid JSON (Expecting ',' delimiter)"


BAD_RECORDS = [
    ('{"messages": [{"role": "bot", "content": "x"}]}',
     "messages[0]: unknown role 'bot' (expected system, user, assistant or tool)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}',
     "messages[1]: empty content"),
    ('{"messages": [{"role": "user", "content": "q", "lang": "en"}, {"role": "assistant", "content": "a"}]}',
     "messages[0]: unknown key 'lang' in a user message (allowed: role, content, name, weight)"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant message (nothing to train on)"),
    ('{"messages": "hi"}', "field 'messages' must be a list, got string"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}',
     "conversations[1]: unknown 'from' value 'bot' (expected one of: human, user, gpt, assistant, system, tool, "
     "observation, function_call)"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a", "lang": "en"}]}',
     "conversations[1]: unknown key 'lang' (allowed: from, value, weight)"),
    ('{"conversations": [{"from": "human"}]}', "conversations[0]: missing 'value'"),
    ('{"system": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}]}',
     "conversations[1]: empty content"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "calc 2"}]}',
     'conversations[1]: a function_call value must be JSON {"name": ..., "arguments": ...} or a list of them'),
    ('{"conversations": [{"from": "gpt", "value": 3}]}', "conversations[0]: 'value' must be a string, got number"),
    ('{"instruction": "q"}', "missing field 'output' (fields: instruction)"),
    ('{"instruction": "q", "output": 5}', "field 'output' must be a string, got number"),
    ('{"instruction": " ", "input": "", "output": "a"}', "instruction: empty content"),
    ('{"prompt": "q", "completion": "a"}',
     "cannot tell the record format: expected a 'messages', 'conversations' or 'instruction' field "
     "(fields: prompt, completion)"),
    ("[1, 2]", "expected a JSON object, got array"),
    # unknown fields: inside a message or turn, every key; at the top level, near misses of the format's fields
    ('{"messages": [{"role": "user", "contnet": "q"}, {"role": "assistant", "content": "a"}]}',
     "messages[0]: unknown key 'contnet' in a user message (did you mean 'content'? allowed: role, content, name, "
     "weight)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_call": []}]}',
     "messages[1]: unknown key 'tool_call' in an assistant message (did you mean 'tool_calls'? allowed: role, "
     "content, tool_calls, name, weight)"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}',
     "messages[1]: weight 0 is not supported: lmforge trains on every assistant message and on nothing else"),
    ('{"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}',
     "messages[0]: weight 1 is not supported: lmforge trains on every assistant message and on nothing else"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": "yes"}]}',
     "messages[1]: 'weight' must be 0 or 1, got 'yes'"),
    ('{"conversations": [{"from": "human", "valeu": "q"}, {"from": "gpt", "value": "a"}]}',
     "conversations[0]: unknown key 'valeu' (did you mean 'value'? allowed: from, value, weight)"),
    ('{"instruction": "q", "inptu": "ctx", "output": "a"}',
     "unknown field 'inptu' (did you mean 'input'? alpaca records read instruction, input, output, system, history; "
     "fields not close to these are metadata, as are ignore_fields)"),
    ('{"instruction": "q", "Output": "a"}',
     "unknown field 'Output' (did you mean 'output'? alpaca records read instruction, input, output, system, "
     "history; fields not close to these are metadata, as are ignore_fields)"),
    ('{"instrucion": "q", "output": "a"}',
     "cannot tell the record format: expected a 'messages', 'conversations' or 'instruction' field "
     "(fields: instrucion, output); did you mean 'instruction' for 'instrucion'?"),
    ('{"sytem": "s", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}',
     "unknown field 'sytem' (did you mean 'system'? messages records read messages, system; fields not close to "
     "these are metadata, as are ignore_fields)"),
    ('{"system_prompt": "Be kind.", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}',
     "field 'system_prompt' is not read: sharegpt records take it as 'system' (rename it with fields: "
     "{system: system_prompt})"),
    ('{"system": "A", "messages": [{"role": "system", "content": "B"}, {"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "a"}]}',
     "a top-level 'system' and a different system message (messages[0]): keep one"),
    ('{"instruction": "q", "output": "a", "history": [["q0"]]}',
     'history[0]: expected [instruction, output] (two strings), got ["q0"]'),
    ('{"instruction": "q", "output": "a", "history": [["q0", " "]]}', "history[0][1]: empty content"),
    ('{"a": 1', "invalid JSON (Expecting ',' delimiter)"),
]


@pytest.mark.parametrize("line,msg", BAD_RECORDS, ids=range(len(BAD_RECORDS)))
def test_exact_record_errors(tmp_path, line, msg):
    p = tmp_path / "x.jsonl"
    p.write_text('{"instruction": "fine", "output": "ok"}\n\n' + line + "\n")
    assert error(p) == f"{p}:3: {msg}"  # the blank line still counts


def test_metadata_fields_are_ignored_and_optional_keys_accepted(tmp_path):
    """Real dumps carry ids, sources, categories and per-message names/weights: none of them is an error,
    and none changes the conversation. Null or empty near misses lose nothing and pass too."""
    recs = [
        {"id": 7, "source": "x", "category": "qa", "conversation_id": "c1", "instruction_id": 3, "text": "t",
         "instruction": "q", "input": "", "output": "a", "inptu": None, "ouput": ""},
        # OpenAI fine-tuning: participant names and weights that match what lmforge trains on
        {"messages": [{"role": "user", "content": "q", "name": "ann", "weight": 0},
                      {"role": "assistant", "content": "a", "name": "bot", "weight": 1}], "tools": []},
        # OpenHermes-style ShareGPT: per-turn weights (null, or 0 on human turns and 1 on gpt turns)
        {"conversations": [{"from": "human", "value": "q", "weight": 0.0},
                           {"from": "gpt", "value": "a", "weight": 1.0}],
         "system_prompt": None, "skip_prompt_formatting": False, "hash": None},
        {"conversations": [{"from": "human", "value": "q", "weight": None}, {"from": "gpt", "value": "a"}]},
    ]
    p = tmp_path / "meta.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    convs, skipped = read(p)
    assert skipped == 0 and convs == [[u("q"), a("a")]] * 4


def test_top_level_system_and_alpaca_history(tmp_path):
    """A top-level "system" is read in every format (messages records used to drop it); alpaca's "history"
    (LLaMA-Factory) holds the turns before the instruction; `fields` renames a system_prompt column."""
    sys_ = {"role": "system", "content": "Be kind."}
    recs = [{"system": "Be kind.", "messages": [u("q"), a("a")]},
            {"system": "Be kind.", "messages": [sys_, u("q"), a("a")]},  # the same text twice: kept once
            {"instruction": "q2", "output": "a2", "system": "Be kind.", "history": [["q1", "a1"]]}]
    p = tmp_path / "sys.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert read(p)[0] == [[sys_, u("q"), a("a")], [sys_, u("q"), a("a")], [sys_, u("q1"), a("a1"), u("q2"), a("a2")]]
    p.write_text(json.dumps({"system_prompt": "Be kind.", "conversations": [{"from": "human", "value": "q"},
                                                                            {"from": "gpt", "value": "a"}]}) + "\n")
    assert read(p, fields={"system": "system_prompt"})[0] == [[sys_, u("q"), a("a")]]


def test_unknown_field_records_are_skipped_and_counted(tmp_path):
    """skip_invalid: typo'd records are skipped and counted; the first one's error (file:line, field) is reported."""
    p = tmp_path / "typos.jsonl"
    p.write_text("\n".join([
        json.dumps({"instruction": "q1", "output": "a1", "id": 1}),
        json.dumps({"instruction": "q2", "inptu": "ctx", "output": "a2"}),
        json.dumps({"messages": [{"role": "user", "contnet": "q3"}, {"role": "assistant", "content": "a3"}]}),
        json.dumps({"conversations": [{"from": "human", "value": "q4"}, {"from": "gpt", "vaule": "a4"}]}),
        json.dumps({"instruction": "q5", "output": "a5", "source": "s"}),
    ]) + "\n")
    assert error(p) == f"{p}:2: unknown field 'inptu' (did you mean 'input'? alpaca records read instruction, " \
                       "input, output, system, history; fields not close to these are metadata, as are ignore_fields)"
    convs, skipped = read(p, skip_invalid=True)
    assert convs == [[u("q1"), a("a1")], [u("q5"), a("a5")]] and skipped == 3
    row = mix([ChatSourceConfig(path=str(p), skip_invalid=True)], seed=0)[1]["sources"][0]
    assert row["skipped"] == 3 and row["conversations"] == 2
    assert row["first_skipped"].startswith(f"{p}:2: unknown field 'inptu' (did you mean 'input'?")


def test_explicit_format_and_file_errors(tmp_path):
    assert error(FIX / "alpaca.jsonl", format="messages") == \
        f"{FIX / 'alpaca.jsonl'}:1: missing field 'messages' (fields: instruction, input, output)"
    assert error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    assert error(FIX / "alpaca.jsonl", format="chatml") == \
        f"{FIX / 'alpaca.jsonl'}: unknown record format 'chatml' (expected one of: auto, messages, sharegpt, alpaca)"
    assert error(FIX / "alpaca.jsonl", file_format="csv") == \
        f"{FIX / 'alpaca.jsonl'}: unknown file_format 'csv' (expected one of: auto, jsonl, parquet, hf)"
    (tmp_path / "c.csv").write_text("a,b\n")
    assert error(tmp_path / "c.csv").startswith(f"{tmp_path / 'c.csv'}: cannot tell the file format from the name")
    (tmp_path / "arr.json").write_text('[{"instruction": "q", "output": "a"}, {"instruction": "q"}]')
    assert error(tmp_path / "arr.json") == f"{tmp_path / 'arr.json'}: record 1: missing field 'output' " \
                                           "(fields: instruction)"
    (tmp_path / "empty.jsonl").write_text("\n")
    assert error(tmp_path / "empty.jsonl") == f"{tmp_path / 'empty.jsonl'}: no conversations"
    (tmp_path / "allbad.jsonl").write_text("{\n")
    assert error(tmp_path / "allbad.jsonl", skip_invalid=True) == \
        f"{tmp_path / 'allbad.jsonl'}: no conversations (1 invalid records skipped; the first: " \
        f"{tmp_path / 'allbad.jsonl'}:1: invalid JSON (Expecting property name enclosed in double quotes))"


def test_fields_rename_records_of_another_shape(tmp_path):
    """GSM8K-style {question, answer} records read as alpaca once their fields are renamed."""
    p = tmp_path / "gsm.jsonl"
    p.write_text(json.dumps({"question": "Ann has 4 pens and buys 6. How many?", "answer": "4 + 6 = 10.\n#### 10"})
                 + "\n" + json.dumps({"question": "A box holds 8 eggs. How many in 3?"}) + "\n")
    fields = {"instruction": "question", "output": "answer"}
    convs, skipped = read(p, fields=fields, skip_invalid=True)
    assert convs == [[u("Ann has 4 pens and buys 6. How many?"), a("4 + 6 = 10.\n#### 10")]] and skipped == 1
    assert error(p, fields=fields) == f"{p}:2: missing field 'answer' (named in fields; the record has: question)"
    assert error(p).startswith(f"{p}:1: cannot tell the record format")  # without fields: not a chat record
    from lmforge.errors import FieldError

    with pytest.raises(FieldError) as e:
        ChatSourceConfig(path=str(p), fields={"instrucion": "question"})
    assert str(e.value) == "fields.instrucion: not a field the record formats read (did you mean 'instruction'?); " \
                           "expected one of messages, conversations, system, instruction, input, output, history"


# -------------------------------------------------------------- mixtures


def _src(tmp_path, name, n, **kw):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"{name} {i}", "output": "ok"}) + "\n" for i in range(n)))
    return ChatSourceConfig(path=str(p), **kw)


def _origin(conv):
    return conv[0]["content"].split()[0]


def test_mix_weights_are_size_multipliers(tmp_path):
    big, small = _src(tmp_path, "big", 10), _src(tmp_path, "small", 4, weight=2.5)
    convs, stats = mix([big, small], seed=0)
    assert Counter(map(_origin, convs)) == {"big": 10, "small": 10}
    # upsampling 2.5x: two whole passes, then 2 more distinct examples
    per = Counter(c[0]["content"] for c in convs if _origin(c) == "small")
    assert sorted(per.values()) == [2, 2, 3, 3]
    assert stats == {"total": 20, "sources": [
        {"path": big.path, "conversations": 10, "skipped": 0, "weight": 1.0, "drawn": 10},
        {"path": small.path, "conversations": 4, "skipped": 0, "weight": 2.5, "drawn": 10}]}
    # a fraction draws distinct examples; weight 0 turns a source off
    half = mix([_src(tmp_path, "big", 10, weight=0.5), _src(tmp_path, "off", 3, weight=0)], seed=1)[0]
    assert len(half) == 5 and len({c[0]["content"] for c in half}) == 5 and {_origin(c) for c in half} == {"big"}


def test_mix_total_and_determinism(tmp_path):
    srcs = [_src(tmp_path, "big", 10), _src(tmp_path, "small", 4, weight=2.5)]
    convs, stats = mix(srcs, seed=3, total=7)
    assert len(convs) == 7 and [r["drawn"] for r in stats["sources"]] == [4, 3]  # 3.5 : 3.5, ties to the first
    assert mix(srcs, seed=3, total=7)[0] == convs
    assert mix(srcs, seed=4)[0] != mix(srcs, seed=3)[0]
    # shuffled: the sources are interleaved, not concatenated
    order = [_origin(c) for c in mix(srcs, seed=0)[0]]
    assert order != sorted(order) and order != sorted(order, reverse=True)


def test_mix_errors(tmp_path):
    with pytest.raises(LmforgeError, match=r"^chat sources: none given \(expected at least one source\)$"):
        mix([], seed=0)
    with pytest.raises(LmforgeError) as e:
        mix([_src(tmp_path, "x", 2, weight=-1)], seed=0)
    assert str(e.value) == f"{tmp_path / 'x.jsonl'}: weight must be a number >= 0, got -1"
    with pytest.raises(LmforgeError) as e:
        mix([_src(tmp_path, "x", 2, weight=0)], seed=0)
    assert str(e.value) == "chat sources: the mixture is empty (weights: 0)"
    with pytest.raises(LmforgeError, match="total must be positive, got 0"):
        mix([_src(tmp_path, "x", 2)], seed=0, total=0)


def test_ignore_fields_keeps_a_metadata_column_that_looks_like_a_field(tmp_path):
    """An `inputs` column beside `input` is one edit from a field Alpaca reads: an error unless the source
    lists it in ignore_fields, which drops it before reading (and only it)."""
    p = tmp_path / "a.jsonl"
    p.write_text(json.dumps({"instruction": "q", "input": "ctx", "inputs": ["tokens"], "output": "a"}) + "\n")
    with pytest.raises(LmforgeError, match=r"a.jsonl:1: unknown field 'inputs' \(did you mean 'input'\?"):
        read_conversations(ChatSourceConfig(path=str(p)))
    convs, skipped = read(p, ignore_fields=["inputs"])
    assert convs == [[{"role": "user", "content": "q\n\nctx"}, {"role": "assistant", "content": "a"}]] and not skipped
