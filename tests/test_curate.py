"""Data curation on datatrove (lmforge/curate, stage `curate`), measured on toyworld's noisy web.

One pipeline run on the whole toyworld corpus mixed with labelled junk (module fixture, ~5 s) feeds
the precision/recall, decontamination, PII and bookkeeping tests; the rest are unit tests of the
custom steps and one-line errors.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from datatrove.data import Document

from lmforge.config import load_run_config
from lmforge.curate.config import CleanupConfig, EvalSetConfig, PIIConfig
from lmforge.curate.decontam import NGramDecontFilter, load_eval_items, toyworld_items, write_items
from lmforge.curate.pipeline import CurateInput, run_curation
from lmforge.curate.steps import TOKENIZER, BlocklistFilter, Cleanup, PIIScrubber, RemovalLog, read_blocklist
from lmforge.errors import LmforgeError
from lmforge.toyworld import generate_world, pretraining_corpus
from lmforge.toyworld.noisy_web import TARGETS, NoisyWebConfig, noisy_web_corpus
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "curate_toyworld.yaml"
EVAL_FIX = ROOT / "tests" / "fixtures" / "eval"
FIXTURE_SETS = [EvalSetConfig(name, str(EVAL_FIX / name)) for name in ("gsm8k", "svamp", "asdiv", "multiarith", "bbh")]


def curate_cfg(*overrides):
    """The toyworld recipe's curate section, in one process (tasks=1, workers=1) unless overridden."""
    return load_run_config(RECIPE, ["curate.executor.tasks=1", "curate.executor.workers=1", *overrides]).curate


def records(texts):
    return [{"id": f"d{i}", "text": t, "metadata": {}} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    world = generate_world(0)
    cfg = curate_cfg("curate.keep_work=true")
    items = toyworld_items(world, ["word_problem", "main_character"], 40, [0]) + load_eval_items(FIXTURE_SETS)
    fixture_questions = [q for s, q in items if not s.startswith("toyworld")]
    # every usable evaluation item is planted once (contaminated: more than there are)
    nw = NoisyWebConfig(enabled=True, gibberish=40, repeated=40, boilerplate=40, link_list=40, exact_dup=40,
                        near_dup=120, pii=40, toxic=40, contaminated=1000)
    docs = noisy_web_corpus(pretraining_corpus(world), nw, [q for _, q in items], cfg.blocklist.words,
                            [e.name for e in world.entities])
    out = tmp_path_factory.mktemp("noisy") / "curate"
    recs = [{"id": d.id, "text": d.text, "metadata": {"label": d.label}} for d in docs]
    logs = []
    stats = run_curation(cfg, out, CurateInput(records=recs, name="noisy web"), items, {d.id: d for d in docs},
                         log=logs.append)
    return SimpleNamespace(stats=stats, out=out, docs=docs, cfg=cfg, logs=logs, fixture_questions=fixture_questions)


def removed(out: Path, step: str) -> list[dict]:
    return [json.loads(line) for f in sorted((out / "work" / "removed" / step).glob("*.jsonl")) for line in open(f)]


def output(out: Path) -> dict[str, str]:
    return {r["id"]: r["text"] for r in map(json.loads, open(out / "documents.jsonl"))}


# --- the noisy web: every filter against the junk it targets -------------------------------------------

def test_each_filter_removes_its_junk_and_keeps_the_rest(noisy):
    scores = noisy.stats["noisy_web"]["steps"]
    assert set(TARGETS.values()) <= set(scores)
    for step, r in scores.items():
        if step == "pii":
            continue
        assert r["reached"] > 0, step
        assert r["precision"] >= 0.95 and r["recall"] >= 0.95, (step, r)
    assert noisy.stats["noisy_web"]["clean_kept"] >= 0.99
    assert noisy.stats["noisy_web"]["junk_removed"] == 1.0


def test_near_duplicates_found_by_minhash(noisy):
    r = noisy.stats["noisy_web"]["steps"]["near_dedup"]
    assert r["reached"] >= 120
    assert r["recall"] >= 0.9 and r["precision"] >= 0.95, r
    exact = noisy.stats["noisy_web"]["steps"]["exact_dedup"]
    assert exact["recall"] == 1.0 and exact["precision"] == 1.0


def test_every_planted_question_is_removed_by_decontamination(noisy):
    planted = {d.id for d in noisy.docs if d.label == "contaminated" and not d.meta.get("natural")}
    assert len(planted) >= 80
    by_decontam = {r["id"]: r for r in removed(noisy.out, "decontam")}
    assert planted <= set(by_decontam)
    # the fixture files' questions (GSM8K, SVAMP, ASDiv, MultiArith formats) were among them
    sets = {by_decontam[i]["reason"] for i in planted}
    assert {"decontam:gsm8k", "decontam:svamp", "decontam:asdiv", "decontam:multiarith"} <= sets
    assert {"toyworld_word_problem", "toyworld_main_character"} & {s.split(":")[1] for s in sets}
    kept = output(noisy.out)
    assert not any(q in text for text in kept.values() for q in noisy.fixture_questions)


def test_pii_is_replaced_not_dropped(noisy):
    p = noisy.stats["noisy_web"]["steps"]["pii"]
    assert p["kept"] == p["labelled"] == 40 and p["recall"] == 1.0 and p["precision"] == 1.0
    assert p["clean_changed"] == 0
    kept = output(noisy.out)
    pii_docs = [d for d in noisy.docs if d.label == "pii"]
    assert all(s not in kept[d.id] for d in pii_docs for s in d.meta["pii"])
    placeholders = (noisy.cfg.pii.email_replacement, noisy.cfg.pii.phone_replacement, noisy.cfg.pii.ip_replacement)
    assert all(sum(kept[d.id].count(x) for x in placeholders) == len(d.meta["pii"]) for d in pii_docs)


def test_stats_counts_are_consistent(noisy):
    s = noisy.stats
    assert not s["warnings"]
    prev = s["input"]["documents"]
    for row in s["steps"]:
        assert row["in_documents"] == prev
        assert row["in_documents"] - row["removed_documents"] == row["kept_documents"]
        assert sum(row["reasons"].values()) == row.get("changed_documents", row["removed_documents"])
        prev = row["kept_documents"]
    assert prev == s["output"]["documents"] == len(output(noisy.out))
    assert s["output"]["characters"] == sum(len(t) for t in output(noisy.out).values())
    assert s["input"]["documents"] == len(noisy.docs)
    assert json.loads((noisy.out / "stats.json").read_text()) == json.loads(json.dumps(s))
    steps = [row["step"] for row in s["steps"]]
    assert steps == ["cleanup", "gopher_quality", "gopher_repetition", "c4", "fineweb", "exact_dedup", "near_dedup",
                     "pii", "blocklist", "decontam"]


def test_report_plot_and_samples(noisy):
    report = (noisy.out / "report.md").read_text()
    assert "| gopher_quality |" in report and "precision" in report and "plots/curate.png" in report
    assert (noisy.out / "plots" / "curate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for row in noisy.stats["steps"]:
        f = noisy.out / "removed_samples" / f"{row['step']}.jsonl"
        if row["removed_documents"] or row.get("changed_documents"):
            lines = [json.loads(x) for x in f.read_text().splitlines()]
            assert 0 < len(lines) <= noisy.cfg.samples_per_filter
            assert all(x["text"] and x["reason"] for x in lines)
    assert not list(noisy.out.glob(".documents.jsonl.*"))  # no temp file left behind
    assert (noisy.out / "work" / "logs" / "1_filter" / "stats.json").exists()


# --- the stage, wired into a run ------------------------------------------------------------------------

def test_stage_feeds_pretraining_and_parallel_workers(tmp_path):
    from lmforge.pipeline import RunContext, run_pipeline
    from lmforge.stages.common import pretraining_documents

    counts = [f"curate.noisy_web.{k}=8" for k in ("gibberish", "repeated", "boilerplate", "link_list", "exact_dup",
                                                 "near_dup", "pii", "toxic", "contaminated")]
    small = ["toyworld.corpus.n_stories=60", "toyworld.corpus.n_arithmetic_docs=20",
             "toyworld.corpus.n_word_problems=40", "curate.decontam.toyworld_per_task=20"]
    cfg = load_run_config(RECIPE, [f"out_dir={tmp_path}", "curate.executor.tasks=2", "curate.executor.workers=2",
                                   *counts, *small])
    summary = run_pipeline(cfg, until="curate")
    m = summary["curate"]
    assert m["documents_out"] < m["documents_in"] and m["warnings"] == 0
    assert m["precision_gopher_quality"] == 1.0 and m["recall_decontam"] == 1.0
    ctx = RunContext(cfg=cfg)
    docs = list(pretraining_documents(ctx))
    assert len(docs) == m["documents_out"]
    # two tasks on two worker processes give the same documents as one process
    one = load_run_config(RECIPE, [f"out_dir={tmp_path / 'one'}", "curate.executor.workers=1", *counts, *small])
    run_pipeline(one, until="curate")
    assert sorted(pretraining_documents(RunContext(cfg=one))) == sorted(docs)


# --- the custom steps -------------------------------------------------------------------------------

def run_step(step, texts):
    return list(step.run((Document(t, f"d{i}") for i, t in enumerate(texts)), 0, 1))


def test_pii_formats(tmp_path):
    cfg = PIIConfig()
    step = PIIScrubber(cfg, RemovalLog(str(tmp_path), "pii", 5))
    texts = ["Mail ana.bo@mail-box.org now.", "Call (415) 555-0142, 415-555-0142, 415.555.0142 or +1 415 555 0142.",
             "London: +44 20 7946 0958.", "Server 93.184.216.34 and router 192.168.1.1.",
             "74 + 75 = 149\n12 * 9 = 108\nIn the year 1018, 3 cities.", "Version 1.2.3 of the 2019-2020 plan."]
    out = [d.text for d in run_step(step, texts)]
    assert out[0] == f"Mail {cfg.email_replacement} now."
    assert out[1].count(cfg.phone_replacement) == 4 and "415" not in out[1]
    assert out[2] == f"London: {cfg.phone_replacement}."
    assert out[3] == f"Server {cfg.ip_replacement} and router 192.168.1.1."  # private addresses are not personal
    assert out[4:] == texts[4:]
    log = [json.loads(x) for x in (tmp_path / "pii" / "00000.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in log] == ["pii:email", "pii:phone", "pii:phone", "pii:ip"]
    assert log[1]["pii_replaced"] == {"phone": 4}


def test_blocklist_whole_words_and_phrases(tmp_path):
    f = tmp_path / "words.txt"
    f.write_text("# comment\nHexcrud\nbad phrase  # trailing comment\n\n")
    words = read_blocklist(str(f), ["Wyrmspit"])
    assert words == ["bad phrase", "hexcrud", "wyrmspit"]
    flt = BlocklistFilter(words)
    keep = [flt.filter(Document(t, "x")) for t in ("What a HEXCRUD.", "hexcrudish words", "a bad  phrase here",
                                                    "badphrase", "wyrmspit!")]
    assert keep == [(False, "blocklist"), True, (False, "blocklist"), True, (False, "blocklist")]
    assert BlocklistFilter(words, min_hits=2).filter(Document("hexcrud once", "x")) is True


def test_cleanup_normalises_and_drops_empty(tmp_path):
    step = Cleanup(CleanupConfig(), RemovalLog(str(tmp_path), "cleanup", 5))
    texts = ["Cafe\u0301 ok\u200b.  \r\nNext line.\n\n\n\nEnd.", "-----\n|||\n", "Clean text."]
    out = run_step(step, texts)
    assert [d.text for d in out] == ["Café ok.\nNext line.\n\nEnd.", "Clean text."]
    assert json.loads((tmp_path / "cleanup" / "00000.jsonl").read_text())["reason"] == "empty"


def test_word_tokenizer_offline():
    assert TOKENIZER.word_tokenize("Don't stop: 3.5 km!") == ["Don't", "stop", ":", "3", ".", "5", "km", "!"]
    assert TOKENIZER.sent_tokenize("One. Two? 3.5 stays\nNew line") == ["One.", "Two?", "3.5 stays", "New line"]


# --- decontamination ---------------------------------------------------------------------------------

def test_eval_sets_load_in_their_formats():
    items = load_eval_items(FIXTURE_SETS)
    by_set = {}
    for name, q in items:
        by_set.setdefault(name, []).append(q)
    assert set(by_set) == {"gsm8k", "svamp", "asdiv", "multiarith", "bbh"}
    assert by_set["gsm8k"][0].startswith("A bakery sells 250 rolls")
    assert by_set["svamp"][0] == "A farmer has 14 cows and buys 9 more How many cows does the farmer have now?"
    items = load_eval_items([EvalSetConfig("mine", str(EVAL_FIX / "gsm8k" / "test.jsonl"), field="question")])
    assert items[0][0] == "mine" and items[0][1].startswith("A bakery")
    with pytest.raises(LmforgeError) as e:  # a reader's error names the recipe entry too
        load_eval_items([FIXTURE_SETS[0], EvalSetConfig("gsm8k", "/nonexistent/test.jsonl")])
    assert str(e.value) == "/nonexistent/test.jsonl: file not found (curate.decontam.sets.1: gsm8k)"


def test_decontam_rule(tmp_path):
    q = "A train travels 60 km each hour for 3 hours. How far does it go in all?"
    counts = write_items(tmp_path / "items.json", [("gsm8k", q), ("bbh", "not ( False ) is")], 8, False)
    assert counts == {"gsm8k": {"items": 1, "usable": 1, "too_short": 0},
                      "bbh": {"items": 1, "usable": 0, "too_short": 1}}
    flt = NGramDecontFilter(str(tmp_path / "items.json"), 8, 0.7, False)
    words = q.split()
    cases = {f"Homework: {q.upper()} thanks": False,          # case and punctuation do not matter
             " ".join(words[:9]): True,                        # about half of the item's 8-grams
             q.replace("60", "70"): True,                      # numbers count unless normalize_numbers
             "not ( False ) is": True}
    for text, keep in cases.items():
        assert (flt.filter(Document(text, "x")) is True) == keep, text
    loose = NGramDecontFilter(str(tmp_path / "items.json"), 8, 0.7, True)
    write_items(tmp_path / "items.json", [("gsm8k", q)], 8, True)
    assert loose.filter(Document(q.replace("60", "70"), "x")) == (False, "decontam:gsm8k")


@pytest.mark.shared
def test_real_eval_sets_by_path(tmp_path):
    root = shared_data()
    sets = [EvalSetConfig(n, str(root)) for n in ("gsm8k", "svamp", "asdiv", "multiarith")]
    items = load_eval_items([*sets, EvalSetConfig("bbh", str(root / "bbh"))])
    counts = {}
    for name, _ in items:
        counts[name] = counts.get(name, 0) + 1
    assert counts == {"gsm8k": 1319, "svamp": 1000, "asdiv": 2305, "multiarith": 600, "bbh": 6511}
    write_items(tmp_path / "items.json", items, 8, False)
    flt = NGramDecontFilter(str(tmp_path / "items.json"), 8, 0.7, False)
    picks = [q for name, q in items[::250] if len(q.split()) >= 12]
    for q in picks:
        assert flt.filter(Document(f"Can anyone solve this? {q} Thanks!", "x"))[0] is False, q
    clean = pretraining_corpus(generate_world(0))[:300]
    assert sum(flt.filter(Document(t, "x")) is not True for t in clean) == 0


# --- one-line errors ---------------------------------------------------------------------------------

def test_bad_input_is_a_one_line_error(tmp_path):
    from lmforge.data.sources import SourceConfig

    def run(sources, *overrides):
        return run_curation(curate_cfg(*overrides), tmp_path / "out", CurateInput(sources=sources), log=lambda m: None)

    with pytest.raises(LmforgeError, match=r"^\S*nope\.jsonl: file not found$"):
        run([SourceConfig(path=str(tmp_path / "nope.jsonl"))])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "a document with the wrong field."}\n')
    with pytest.raises(LmforgeError, match=r"bad\.jsonl:1: missing field 'text' \(fields: body\)$"):
        run([SourceConfig(path=str(bad))])
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"ok\xff\xfe text")
    with pytest.raises(LmforgeError, match=r"bin\.txt: not valid UTF-8 at byte 2"):
        run([SourceConfig(path=str(binary))])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LmforgeError, match=r"empty\.jsonl: empty corpus \(no documents\)$"):
        run([SourceConfig(path=str(empty))])
    with pytest.raises(LmforgeError, match=r"missing\.txt: blocklist file not found \(curate\.blocklist\.path\)"):
        run([SourceConfig(path=str(bad))], f"curate.blocklist.path={tmp_path / 'missing.txt'}")


def test_a_filter_removing_everything_warns_and_empty_output_fails(tmp_path):
    logs = []
    cfg = curate_cfg("curate.gopher_quality.min_doc_words=1000", "curate.exact_dedup.enabled=false",
                     "curate.minhash.enabled=false")
    with pytest.raises(LmforgeError, match=r"no documents left after curation \(read 3; removed: gopher_quality 3\); "
                                           r"loosen the curate\.\* thresholds"):
        run_curation(cfg, tmp_path / "out", CurateInput(records=records(["One two.", "Four five six.", "x y z."])),
                     log=logs.append)
    assert any("WARNING" in m and "'gopher_quality' removed ALL 3 documents" in m for m in logs)
    assert "WARNING" in (tmp_path / "out" / "report.md").read_text()  # kept, to show what removed everything
    assert not (tmp_path / "out" / "documents.jsonl").exists()  # no empty corpus that looks like a result


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(LmforgeError, match=r"curate\.decontam\.ngram: expected an integer >= 2, got 1"):
        curate_cfg("curate.decontam.ngram=1")
    with pytest.raises(LmforgeError, match=r"unknown key 'curate\.minhash\.band' \(did you mean '\S+\.bands'"):
        curate_cfg("curate.minhash.band=3")
    with pytest.raises(LmforgeError, match=r"'triviaqa' is not one of .*give `field`"):
        load_eval_items([EvalSetConfig("triviaqa", str(EVAL_FIX / "gsm8k" / "test.jsonl"))])
    with pytest.raises(LmforgeError, match=r"toyworld_tasks: unknown task 'nope'"):
        toyworld_items(generate_world(0), ["nope"], 1, [0])
    import importlib.util

    if importlib.util.find_spec("fasttext") is None:
        with pytest.raises(LmforgeError, match=r"curate\.language\.enabled .*needs the 'fasttext' package"):
            run_curation(curate_cfg("curate.language.enabled=true"), tmp_path / "o",
                         CurateInput(records=records(["Some text here."])), log=lambda m: None)


def test_readers_text_jsonl_parquet_hf(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lmforge.data.sources import SourceConfig

    prose = [f"Document number {i} talks about the river Kamdu and its {i} bridges. It is long enough to keep."
             for i in range(40)]
    (tmp_path / "a.txt").write_text("<|endoftext|>".join(prose[:10]))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in prose[10:20]))
    pq.write_table(pa.table({"text": prose[20:30]}), tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"text": prose[30:40]}).save_to_disk(str(tmp_path / "hf"))
    sources = [SourceConfig(path=str(tmp_path / "a.txt")),
               SourceConfig(path=str(tmp_path / "b.jsonl"), text_field="body"),
               SourceConfig(path=str(tmp_path / "c.parquet")), SourceConfig(path=str(tmp_path / "hf"), format="hf")]
    off = ["curate.exact_dedup.enabled=false", "curate.minhash.enabled=false", "curate.decontam.enabled=false"]
    capped = [*sources[:3], SourceConfig(path=str(tmp_path / "hf"), format="hf", max_documents=4)]
    # 4 files, 3 tasks: whole files per task; with max_documents every task reads all and keeps its share
    for srcs, tasks, expected in ((sources, 3, prose), (capped, 2, prose[:34])):
        stats = run_curation(curate_cfg(*off, f"curate.executor.tasks={tasks}"), tmp_path / "out",
                             CurateInput(sources=srcs), log=lambda m: None)
        kept = output(tmp_path / "out")
        assert sorted(kept.values()) == sorted(expected)
        assert stats["input"]["documents"] == len(kept)
        assert len(set(kept)) == len(kept)  # ids "<source>:<file>:<document>" are unique
