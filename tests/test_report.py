"""The report card: tables from a fake run directory, valid PNG plots, a self-contained HTML page,
notes instead of crashes for missing pieces, and one-line errors for a bad RUN_DIR."""

import argparse
import base64
import json
import re
import shutil
import struct

import pytest
import yaml

from lmforge.errors import LmforgeError
from lmforge.report import add_parser, run_report, write_report
from lmforge.report_data import model_and_metric

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("loss.png", "lr.png", "throughput.png", "eval_scores.png")

STAGE_METRICS = {
    "tokenizer": ({"vocab_size": 512}, 0.25),
    "pretrain": ({"steps": 50, "tokens": 204800, "train_loss": 2.5, "val_loss": 2.75}, 100.5),
    "eval_base": ({"val_loss": 2.75, "cloze_heldout_acc": 0.55, "arithmetic_acc": 0.125}, 2.0),
    "sft": ({"steps": 30, "assistant_tokens": 4321, "train_loss": 1.25}, 40.0),
    "eval_sft": ({"base_qa_heldout_acc": 0.1, "sft_qa_heldout_acc": 0.45, "sft_trained_tasks_acc": 0.625}, 3.5),
}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_run(root, stages=tuple(STAGE_METRICS)):
    """A run directory shaped like the pipeline's: config, hardware, summary, stage.json, metrics.jsonl."""
    run = root / "fake"
    run.mkdir()
    config = {"name": "fake", "seed": 0, "stages": list(stages), "model": {"n_layer": 2, "d_model": 64},
              "sft": {"lora": {"enabled": False, "targets": ["q_proj", "v_proj"]}, "train": {"lr": 0.0003}}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run / "hardware.json").write_text(json.dumps({"python": "3.11.7", "threads": 2, "cuda": None}))
    summary = {}
    for stage in stages:
        metrics, seconds = STAGE_METRICS[stage]
        (run / stage).mkdir()
        (run / stage / "stage.json").write_text(json.dumps({"stage": stage, "seconds": seconds, "metrics": metrics}))
        summary[stage] = {**metrics, "seconds": seconds}
    (run / "summary.json").write_text(json.dumps(summary))
    if "pretrain" in stages:
        write_jsonl(run / "pretrain" / "metrics.jsonl",
                    [{"step": s, "kind": "train", "loss": 6.0 / (s / 10), "lr": 1e-3, "grad_norm": 1.0,
                      "tokens_per_s": 4000.0 + s} for s in range(10, 60, 10)]
                    + [{"step": 20, "kind": "eval", "val_loss": 3.5, "val_bpb": 1.5},
                       {"step": 50, "kind": "eval", "val_loss": 2.75, "val_bpb": 1.25}])
    if "sft" in stages:
        write_jsonl(run / "sft" / "metrics.jsonl",
                    [{"step": s, "kind": "train", "loss": 3.0 - s / 20, "lr": 3e-4, "grad_norm": 2.0}
                     for s in (10, 20, 30)] + [{"step": 30, "kind": "eval", "val_loss": 1.5, "val_bpb": 0.75}])
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report"))
    md_path = write_report(run)
    return run, md_path.read_text(), (run / "report.html").read_text()


def rows_of(markdown):
    """Table rows as lists of stripped cells."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]


def test_markdown_tables_hold_the_runs_numbers(report):
    run, md, _ = report
    rows = rows_of(md)
    assert ["pretrain", "done", "100.5", "68.7%", "204,800"] in rows
    assert ["sft", "done", "40", "27.4%", "4,321 (assistant_tokens)"] in rows
    assert ["total", "", "146.25", "100%", ""] in rows
    assert ["model", "n_layer=2, d_model=64"] in rows
    assert ["sft.lora", "enabled=false, targets=[q_proj, v_proj]"] in rows
    assert ["cuda", "none"] in rows and ["threads", "2"] in rows
    # Evaluations: one column per model; prefixes name the model, eval_base's plain metrics are the base model's.
    assert ["metric", "base", "sft", "from"] in rows
    assert ["cloze_heldout_acc", "0.55", "—", "eval_base"] in rows
    assert ["qa_heldout_acc", "0.1", "0.45", "eval_sft"] in rows
    assert ["trained_tasks_acc", "—", "0.625", "eval_sft"] in rows
    # Training: last logged values from metrics.jsonl
    assert ["pretrain", "50", "1.2", "2.75", "1.25", "4,030.0"] in rows
    assert "tokens/s not logged by sft" in md
    assert md.startswith("# Report card: fake\n")


def test_plots_are_valid_pngs(report):
    run, md, _ = report
    for name in PLOTS:
        data = (run / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk follows the signature
        assert width > 100 and height > 100 and len(data) > 5000, name
        assert f"(plots/{name})" in md


def test_html_is_self_contained(report):
    run, _, page = report
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(PLOTS) and all(s.startswith("data:image/png;base64,") for s in sources)
    for name in PLOTS:  # the very bytes of each PNG file are embedded
        assert base64.b64encode((run / "plots" / name).read_bytes()).decode() in page
    for external in ("http://", "https://", "<link", "<script", "url(", "href=", "plots/"):
        assert external not in page
    assert "<details><summary>config.yaml" in page and "<style>" in page
    assert '<td class="num">204,800</td>' in page


def test_missing_pieces_are_notes_not_crashes(tmp_path):
    run = make_run(tmp_path)
    write_report(run)
    (run / "sft" / "metrics.jsonl").unlink()
    (run / "pretrain" / "metrics.jsonl").write_text(
        (run / "pretrain" / "metrics.jsonl").read_text().replace('"tokens_per_s"', '"other"') + '{"step": 60, "ki')
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["stages"] += ["dpo", "eval_dpo"]  # dpo started (a directory, partial metrics), eval_dpo never ran
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    write_jsonl(run / "dpo" / "metrics.jsonl", [{"step": 10, "kind": "train", "loss": 0.69, "lr": 1e-5}])
    shutil.rmtree(run / "eval_base")  # a copy without the stage folder: summary.json still has its numbers
    md = write_report(run).read_text()
    assert ["cloze_heldout_acc", "0.55", "—", "eval_base"] in rows_of(md)
    assert "stage sft: training stage without metrics.jsonl; no training curves" in md
    assert "stage dpo: started but not finished (no stage.json)" in md
    assert "stage eval_dpo: not run (no stage.json)" in md
    assert "stage pretrain: skipped 1 unreadable line(s) of metrics.jsonl" in md
    assert ["dpo", "not finished", "—", "—", "—"] in rows_of(md)
    assert "| dpo (unfinished) | 10 |" in md
    assert not (run / "plots" / "throughput.png").exists()  # a stale plot from the first report is removed


def test_an_evaluation_older_than_the_model_it_measured_is_noted(tmp_path):
    run = make_run(tmp_path)
    for stage, finished, upstream in (("sft", 200.0, {"pretrain": 100.0}), ("eval_sft", 150.0, {"sft": 120.0})):
        rec = json.loads((run / stage / "stage.json").read_text())
        (run / stage / "stage.json").write_text(json.dumps({**rec, "finished": finished, "upstream": upstream}))
    md = write_report(run).read_text()
    # sft finished at 200 but eval_sft measured the sft model that finished at 120 (since redone)
    assert "stage eval_sft: sft ran again after it; its results are for the earlier outputs" in md
    assert "stage sft:" not in md  # pretrain has no finish time recorded here: nothing to compare


def test_run_without_evaluations_config_or_hardware(tmp_path):
    run = make_run(tmp_path, stages=("tokenizer",))
    (run / "config.yaml").unlink()
    (run / "hardware.json").unlink()
    md = write_report(run).read_text()
    for note in ("no config.yaml; not shown", "no hardware.json; not shown", "no stage logged metrics.jsonl",
                 "no finished evaluation stage (eval_*)"):
        assert note in md
    assert not (run / "plots").exists() or not any((run / "plots").iterdir())
    assert "<img" not in (run / "report.html").read_text()


def test_later_eval_stages_get_their_own_column(tmp_path):
    """eval_dpo with dpo_/sft_ prefixes adds a dpo column; an sft_ metric measured again there does not
    replace the number eval_sft (the stage dedicated to the SFT model) reported."""
    STAGE_METRICS["dpo"] = ({"steps": 20}, 10.0)
    STAGE_METRICS["eval_dpo"] = ({"dpo_qa_heldout_acc": 0.5, "sft_qa_heldout_acc": 0.4, "win_rate": 0.75}, 1.0)
    try:
        run = make_run(tmp_path, stages=(*STAGE_METRICS,))
    finally:
        del STAGE_METRICS["dpo"], STAGE_METRICS["eval_dpo"]
    rows = rows_of(write_report(run).read_text())
    assert ["metric", "base", "sft", "dpo", "from"] in rows
    assert ["qa_heldout_acc", "0.1", "0.45", "0.5", "eval_sft, eval_dpo"] in rows
    assert ["win_rate", "—", "—", "0.75", "eval_dpo"] in rows
    assert model_and_metric("eval_base", "val_loss", ["base", "sft"]) == ("base", "val_loss")
    assert model_and_metric("eval_sft", "sft_lora_acc", ["base", "sft", "sft_lora"]) == ("sft_lora", "acc")


def test_a_training_stages_before_and_after_metrics_join_the_evaluation_table(tmp_path):
    """GRPO measures held-out accuracy on the model it starts from (grpo.init) and on its own: a
    `grpo_heldout_acc` row with both cells. Started from a checkpoint outside the run: no row."""
    STAGE_METRICS["grpo"] = ({"steps": 5, "heldout_acc_before": 0.185, "heldout_acc_after": 0.3525,
                              "heldout_acc_gain": 0.1675, "reward_first": 0.04}, 100.0)
    try:
        run = make_run(tmp_path, stages=(*STAGE_METRICS,))
    finally:
        del STAGE_METRICS["grpo"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "grpo": {"init": "sft"}}))
    rows = rows_of(write_report(run).read_text())
    assert ["metric", "base", "sft", "grpo", "from"] in rows
    assert ["grpo_heldout_acc", "—", "0.185", "0.3525", "grpo"] in rows
    assert not any(r[0].startswith("grpo_heldout_acc_gain") or r[0] == "grpo_reward" for r in rows)
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "grpo": {"init": "/elsewhere/model"}}))
    assert not any(r[0] == "grpo_heldout_acc" for r in rows_of(write_report(run).read_text()))


def test_bad_run_dir_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(LmforgeError) as e:
        write_report(missing)
    assert str(e.value) == f"{missing}: no such run directory (expected runs/<name>/ containing summary.json)"
    with pytest.raises(LmforgeError) as e:
        write_report(tmp_path)
    assert str(e.value) == f"{tmp_path / 'summary.json'}: missing (expected the summary.json that `lmforge run` writes)"
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="summary.json: not valid JSON"):
        write_report(tmp_path)


def test_cli_prints_the_paths_written(tmp_path, capsys):
    run = make_run(tmp_path, stages=("tokenizer", "pretrain", "eval_base"))
    parser = argparse.ArgumentParser(prog="lmforge")
    add_parser(parser.add_subparsers(dest="command"))
    assert run_report(parser.parse_args(["report", str(run)])) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [f"wrote {run / 'report.md'}", f"wrote {run / 'report.html'}"]
    assert f"wrote {run / 'plots' / 'loss.png'}" in printed and len(printed) == 2 + 4
