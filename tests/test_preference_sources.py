"""Preference data: pairs (strings or messages), HH-RLHF transcripts and KTO examples from
JSONL/parquet/datasets; exact errors, skip-and-count, mixtures; the real HH-RLHF test splits."""

import json
from collections import Counter
from pathlib import Path

import pytest

from lmforge.data.preference_sources import (
    PreferencePair,
    PreferenceSourceConfig,
    UnpairedExample,
    hh_messages,
    load_pairs_file,
    mix,
    pairs_to_unpaired,
    read_pairs,
    read_unpaired,
)
from lmforge.errors import LmforgeError
from tests.conftest import shared_data

FIX = Path(__file__).parent / "fixtures" / "preference"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def pairs(path, **kw):
    return read_pairs(PreferenceSourceConfig(path=str(path), **kw))


def error(path, **kw) -> str:
    with pytest.raises(LmforgeError) as e:
        pairs(path, **kw)
    return str(e.value)


def test_string_pairs():
    got, skipped = pairs(FIX / "pairs.jsonl")
    assert skipped == 0
    assert got == [PreferencePair([u("Capital of Velora?")], "Kamdu.", "Paris."),
                   PreferencePair([{"role": "system", "content": "You are terse."}, u("What is 2+3?")], "5", "6"),
                   PreferencePair([u("Say hi")], " Hi! ", "No.")]  # strings kept verbatim
    assert got[0].conversations() == ([u("Capital of Velora?"), a("Kamdu.")], [u("Capital of Velora?"), a("Paris.")])


def test_message_pairs():
    got, _ = pairs(FIX / "messages.jsonl")
    assert got == [
        PreferencePair([u("hi"), a("hello"), u("Capital of Velora?")], "Kamdu.", "Paris."),
        # UltraFeedback style: chosen/rejected repeat the prompt's messages
        PreferencePair([u("What is 2+3?")], "5", "6"),
        # no prompt field: the shared messages are the prompt
        PreferencePair([{"role": "system", "content": "Be kind."}, u("q1"), a("a1"), u("q2")], "good", "bad"),
        # a prompt ending in a tool output; OpenAI's nested call flattened, tool_call_id dropped
        PreferencePair([u("What is 2+3?"), {"role": "assistant", "content": "",
                                            "tool_calls": [{"name": "calc", "arguments": "2+3"}]},
                        {"role": "tool", "content": "5"}], "It is 5.", "It is 6."),
    ]


def test_hh_rlhf_transcripts():
    got, _ = pairs(FIX / "hh.jsonl")
    assert got == [
        PreferencePair([u("What is the capital of Velora?")], "Kamdu.", "I don't know."),
        PreferencePair([u("hi"), a("Hello! How can I help?"), u("Tell me about Kamdu.")],
                       "Kamdu is the capital of Velora.", "No."),
    ]
    assert pairs(FIX / "hh.jsonl", format="hh_rlhf")[0] == got
    # a transcript whose leading blank line was stripped reads the same
    assert hh_messages("Human: q\n\nAssistant:  a ") == [u("q"), a("a")]


HH_BAD = [  # hh_bad.jsonl, line by line: the policy for real HH-RLHF's odd rows (all skippable)
    "chosen and rejected are identical (nothing to prefer)",
    "chosen and rejected differ before their final assistant turn "
    "(expected a shared conversation, then one assistant turn each)",
    "rejected: empty content",  # an empty final Assistant turn
    "turn 3: empty content",    # an empty Human turn inside the shared prompt
    "field 'chosen' is not an HH-RLHF transcript (expected turns '\\n\\nHuman: ...' and '\\n\\nAssistant: ...')",
]


def test_hh_rlhf_edge_cases_fail_or_are_skipped(tmp_path):
    lines = (FIX / "hh_bad.jsonl").read_text().splitlines()
    for i, msg in enumerate(HH_BAD):
        p = tmp_path / f"{i}.jsonl"
        p.write_text(lines[i] + "\n")
        assert error(p) == f"{p}:1: {msg}"
    got, skipped = pairs(FIX / "hh_bad.jsonl", skip_invalid=True)
    assert got == [PreferencePair([u("q")], "good", "bad")] and skipped == 5
    stats = mix([PreferenceSourceConfig(path=str(FIX / "hh_bad.jsonl"), skip_invalid=True)], seed=0)[1]
    assert stats["sources"][0]["skip_reasons"] == {m: 1 for m in HH_BAD}
    assert stats["sources"][0]["first_skipped"] == f"{FIX / 'hh_bad.jsonl'}:1: {HH_BAD[0]}"


def test_unpaired_kto_examples():
    got, _ = read_unpaired(PreferenceSourceConfig(path=str(FIX / "kto.jsonl")))
    assert got == [UnpairedExample([u("Capital of Velora?")], "Kamdu.", True),
                   UnpairedExample([u("Capital of Velora?")], "Paris.", False),
                   UnpairedExample([u("What is 2+3?")], "5", True)]
    # pairs read as KTO data: chosen desirable, rejected undesirable
    as_kto, _ = read_unpaired(PreferenceSourceConfig(path=str(FIX / "hh.jsonl")))
    assert as_kto == pairs_to_unpaired(pairs(FIX / "hh.jsonl")[0])
    assert [(e.completion, e.label) for e in as_kto[:2]] == [("Kamdu.", True), ("I don't know.", False)]
    # a paired reader refuses unpaired records
    assert error(FIX / "kto.jsonl") == (f"{FIX / 'kto.jsonl'}:1: an unpaired (prompt/completion/label) record where "
                                        "a chosen/rejected pair is needed (only kto reads unpaired data)")


def test_parquet_and_saved_dataset(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"prompt": [u("hi"), a("hello"), u("Capital?")], "chosen": [a("Kamdu.")], "rejected": [a("Paris.")]},
            {"prompt": [u("q")], "chosen": [a("yes")], "rejected": [a("")]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
    path = tmp_path / "p.parquet"
    assert error(path) == f"{path}: record 1: rejected: empty content"
    got, skipped = pairs(path, skip_invalid=True)
    assert got == [PreferencePair([u("hi"), a("hello"), u("Capital?")], "Kamdu.", "Paris.")] and skipped == 1
    # pyarrow fills absent struct fields (here tool_calls) with null: dropped like in chat data
    pq.write_table(pa.Table.from_pylist([{"prompt": [u("q"), {"role": "assistant", "content": "x",
                                                               "tool_calls": None}, u("q2")],
                                          "chosen": "y", "rejected": "n"}]), tmp_path / "n.parquet")
    assert pairs(tmp_path / "n.parquet")[0][0].prompt == [u("q"), a("x"), u("q2")]
    datasets = pytest.importorskip("datasets")
    recs = [json.loads(line) for line in (FIX / "hh.jsonl").read_text().splitlines()]
    datasets.Dataset.from_list(recs).save_to_disk(tmp_path / "ds")
    assert pairs(tmp_path / "ds")[0] == pairs(FIX / "hh.jsonl")[0]


BAD_RECORDS = [
    ('{"prompt": "q", "rejected": "no"}',
     "missing field 'chosen' (fields: prompt, rejected; expected prompt/chosen/rejected or HH-RLHF chosen/rejected "
     "transcripts)"),
    ('{"chosen": "yes", "rejected": "no", "prompt": null}',
     "missing field 'prompt' (fields: chosen, rejected, prompt; expected prompt/chosen/rejected or HH-RLHF "
     "chosen/rejected transcripts)"),
    ('{"chosen": [{"role": "assistant", "content": "a"}], "rejected": "no"}',
     "missing field 'prompt' (fields: chosen, rejected; expected prompt/chosen/rejected or HH-RLHF chosen/rejected "
     "transcripts)"),
    ('{"prompt": "q", "completion": "x"}',
     "missing field 'label' (fields: prompt, completion; expected prompt/completion/label)"),
    ('{"question": "q", "answer": "a"}',
     "cannot tell the record format: expected prompt/chosen/rejected, HH-RLHF chosen/rejected transcripts or "
     "prompt/completion/label fields (fields: question, answer)"),
    ('{"prompt": "q", "chosen": "same", "rejected": "same"}', "chosen and rejected are identical (nothing to prefer)"),
    ('{"prompt": "q", "chosen": "", "rejected": "no"}', "chosen: empty content"),
    ('{"prompt": " ", "chosen": "yes", "rejected": "no"}', "prompt: empty content"),
    ('{"prompt": 3, "chosen": "yes", "rejected": "no"}', "field 'prompt' must be a string or a list of messages, "
                                                          "got number"),
    ('{"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "chosen": "y", '
     '"rejected": "n"}', "the prompt must end with a user message, got an assistant message"),
    ('{"prompt": [{"role": "bot", "content": "q"}], "chosen": "y", "rejected": "n"}',
     "prompt[0]: unknown role 'bot' (expected system, user, assistant or tool)"),
    ('{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], '
     '"rejected": "n"}', "field 'chosen' must be a string or one assistant message (after the prompt's messages), "
                         "got 2 messages"),
    ('{"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "n"}',
     "field 'chosen' must end with one assistant message, got 'user'"),
    ('{"prompt": "q", "chosen": [{"role": "assistant", "content": "", "tool_calls": [{"name": "f", '
     '"arguments": "1"}]}], "rejected": "n"}', "field 'chosen': tool calls are not supported in preference data"),
    ('{"prompt": "q", "chosen": "y", "rejected": "n", "system": 5}', "field 'system' must be a string, got number"),
    ('{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": 5}',
     "field 'rejected' must be an HH-RLHF transcript string, got number"),
    ('{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
     '"rejected": [{"role": "user", "content": "r"}, {"role": "assistant", "content": "a"}]}',
     "chosen and rejected differ before their final assistant turn (expected a shared conversation, then one "
     "assistant turn each)"),
    ('{"prompt": "q", "completion": "x", "label": "yes"}',
     "field 'label' must be true (desirable) or false (undesirable), got 'yes'"),
    ('{"prompt": "q", "completion": "x", "label": 2}',
     "field 'label' must be true (desirable) or false (undesirable), got 2"),
    ("[1, 2]", "expected a JSON object, got array"),
    ('{"a": 1', "invalid JSON (Expecting ',' delimiter)"),
]


@pytest.mark.parametrize("line,msg", BAD_RECORDS, ids=range(len(BAD_RECORDS)))
def test_exact_record_errors(tmp_path, line, msg):
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "fine", "chosen": "ok", "rejected": "bad"}\n\n' + line + "\n")
    reader = read_unpaired if '"label"' in line else read_pairs
    with pytest.raises(LmforgeError) as e:
        reader(PreferenceSourceConfig(path=str(p)))
    assert str(e.value) == f"{p}:3: {msg}"  # the blank line still counts


def test_skip_and_count_and_source_errors(tmp_path):
    bad = FIX / "bad.jsonl"
    assert error(bad) == f"{bad}:2: invalid JSON (Expecting property name enclosed in double quotes)"
    got, skipped = pairs(bad, skip_invalid=True)
    assert [p.prompt[0]["content"] for p in got] == ["ok 1", "ok 2"] and skipped == 4
    assert pairs(bad, skip_invalid=True, limit=1)[0] == got[:1]  # limit counts valid records
    assert error(FIX / "pairs.jsonl", format="hh_rlhf") == (
        f"{FIX / 'pairs.jsonl'}:1: field 'chosen' is not an HH-RLHF transcript (expected turns '\\n\\nHuman: ...' "
        "and '\\n\\nAssistant: ...')")
    assert error(FIX / "hh.jsonl", format="pairs") == (
        f"{FIX / 'hh.jsonl'}:1: missing field 'prompt' (fields: chosen, rejected; expected prompt/chosen/rejected)")
    assert error(FIX / "pairs.jsonl", format="dpo") == (
        f"{FIX / 'pairs.jsonl'}: unknown record format 'dpo' (expected one of: auto, pairs, hh_rlhf, unpaired)")
    assert error(FIX / "pairs.jsonl", file_format="csv") == (
        f"{FIX / 'pairs.jsonl'}: unknown file_format 'csv' (expected one of: auto, jsonl, parquet, hf)")
    assert error(FIX / "pairs.jsonl", limit=-1) == f"{FIX / 'pairs.jsonl'}: limit must be a whole number >= 0, got -1"
    assert error(tmp_path / "nope.jsonl") == f"{tmp_path / 'nope.jsonl'}: file not found"
    (tmp_path / "allbad.jsonl").write_text('{"prompt": "q", "chosen": "x", "rejected": "x"}\n')
    assert error(tmp_path / "allbad.jsonl", skip_invalid=True) == (
        f"{tmp_path / 'allbad.jsonl'}: no preference pairs (1 invalid records skipped; the first: "
        f"{tmp_path / 'allbad.jsonl'}:1: chosen and rejected are identical (nothing to prefer))")


def test_load_pairs_file(tmp_path):
    """Strict reading of lmforge's own pairs files (the `pairs` stage); an empty file is no pairs."""
    assert load_pairs_file(FIX / "messages.jsonl") == pairs(FIX / "messages.jsonl")[0]
    (tmp_path / "empty.jsonl").write_text("")
    assert load_pairs_file(tmp_path / "empty.jsonl") == []
    with pytest.raises(LmforgeError, match=r"hh.jsonl:1: missing field 'prompt'"):
        load_pairs_file(FIX / "hh.jsonl")


# -------------------------------------------------------------- mixtures


def _src(tmp_path, name, n, **kw):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"{name} {i}", "chosen": "y", "rejected": "n"}) + "\n"
                         for i in range(n)))
    return PreferenceSourceConfig(path=str(p), **kw)


def _origin(rec):
    return rec.prompt[0]["content"].split()[0]


def test_mix_weights_total_and_determinism(tmp_path):
    big, small = _src(tmp_path, "big", 10), _src(tmp_path, "small", 4, weight=2.5)
    got, stats = mix([big, small], seed=0)
    assert Counter(map(_origin, got)) == {"big": 10, "small": 10}
    per = Counter(p.prompt[0]["content"] for p in got if _origin(p) == "small")
    assert sorted(per.values()) == [2, 2, 3, 3]  # two whole passes, then 2 more distinct pairs
    assert stats == {"total": 20, "sources": [
        {"path": big.path, "records": 10, "skipped": 0, "weight": 1.0, "drawn": 10},
        {"path": small.path, "records": 4, "skipped": 0, "weight": 2.5, "drawn": 10}]}
    assert [r["drawn"] for r in mix([big, small], seed=3, total=7)[1]["sources"]] == [4, 3]
    assert mix([big, small], seed=3)[0] == mix([big, small], seed=3)[0] != mix([big, small], seed=4)[0]
    # unpaired: pairs become two examples each, then weights apply
    kto, stats = mix([big, PreferenceSourceConfig(path=str(FIX / "kto.jsonl"))], seed=0, unpaired=True)
    assert len(kto) == 23 and all(isinstance(e, UnpairedExample) for e in kto)
    assert [r["records"] for r in stats["sources"]] == [20, 3]


def test_mix_errors(tmp_path):
    with pytest.raises(LmforgeError, match=r"^preference sources: none given \(expected at least one source\)$"):
        mix([], seed=0)
    with pytest.raises(LmforgeError) as e:
        mix([_src(tmp_path, "x", 2, weight=-1)], seed=0)
    assert str(e.value) == f"{tmp_path / 'x.jsonl'}: weight must be a number >= 0, got -1"
    with pytest.raises(LmforgeError, match=r"^preference sources: the mixture is empty \(weights: 0\)$"):
        mix([_src(tmp_path, "x", 2, weight=0)], seed=0)


# -------------------------------------------------------------- the real HH-RLHF test splits

# rows, pairs read, and the skipped rows by reason, as measured on ../shared/data/hh_rlhf
DIFFER = ("chosen and rejected differ before their final assistant turn (expected a shared conversation, then one "
          "assistant turn each)")
HH_SPLITS = [
    ("helpful-base", 2354, 2339, {DIFFER: 9, "rejected: empty content": 3,
                                  "chosen and rejected are identical (nothing to prefer)": 2,
                                  "turn 4: empty content": 1}),
    ("harmless-base", 2312, 2303, {DIFFER: 5, "chosen: empty content": 4}),
]


@pytest.mark.shared
@pytest.mark.parametrize("split, rows, read, reasons", HH_SPLITS, ids=[s[0] for s in HH_SPLITS])
def test_real_hh_rlhf_parses(split, rows, read, reasons):
    path = shared_data("hh_rlhf", split, "test.jsonl.gz")
    got, stats = mix([PreferenceSourceConfig(path=str(path), skip_invalid=True)], seed=0)
    row = stats["sources"][0]
    print(f"{split}: {rows} rows, {row['records']} pairs, skipped {row['skipped']}: {row.get('skip_reasons')}")
    assert row["records"] == read and row["skipped"] == rows - read and row["skip_reasons"] == reasons
    for p in got:
        assert p.prompt[0]["role"] == "user" and p.prompt[-1]["role"] == "user"
        assert p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected
        assert all(m["role"] in ("user", "assistant") and m["content"].strip() for m in p.prompt)
