"""Specialization: the stage trains on a domain mixed with rehearsal in the asked shares, its loss
falls, and eval_specialize scores the domain and the rest (the domain's task left out of "general")
for the starting and the specialized model."""

import json
from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import load_run_config
from lmforge.pipeline import RunContext
from lmforge.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=400",
        "train.steps=4", "train.micro_batch_size=4", "train.seq_len=64", "train.progress=false",
        "train.tensorboard=false", "train.eval_every=2", "train.eval_batches=1",
        "toyworld.corpus.n_stories=10", "toyworld.corpus.n_arithmetic_docs=5", "toyworld.corpus.n_word_problems=5",
        "sft.n_per_task=4", "sft.val_examples=20", "sft.train.steps=6", "sft.train.micro_batch_size=4",
        "sft.train.eval_every=3", "sft.train.progress=false", "sft.train.tensorboard=false",
        "specialize.n_examples=60", "specialize.val_examples=8", "specialize.train.steps=24",
        "specialize.train.micro_batch_size=8", "specialize.train.lr=3e-3", "specialize.train.log_every=4",
        "specialize.train.eval_every=12", "specialize.train.progress=false", "specialize.train.tensorboard=false",
        "eval_sft.qa_examples=4", "eval_sft.per_task=1", "eval_specialize.domain_examples=6",
        "eval_specialize.max_new_tokens=8"]
STAGES = "stages=[toyworld,tokenizer,pretrain,sft,eval_sft,specialize,eval_specialize]"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("specialize")
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={out}", "name=s", STAGES, *TINY]) == 0
    return out


def test_stage_mixes_domain_and_rehearsal_and_its_loss_falls(tiny_run):
    summary = json.loads((tiny_run / "s/summary.json").read_text())
    sp = summary["specialize"]
    # 60 word problems; general_fraction 0.25 of the conversations: 60 * 0.25 / 0.75 = 20 from the SFT
    # mixture; replay_fraction 0.25 of all items: 80 * 0.25 / 0.75 = 27 pretraining documents
    assert (sp["domain_conversations"], sp["general_conversations"]) == (60, 20)
    assert sp["conversations"] == 80 and sp["replay_documents"] == 27
    losses = [r["loss"] for r in read_metrics(tiny_run / "s/specialize", "train")]
    assert len(losses) >= 5 and losses[-1] < losses[0]
    assert (tiny_run / "s/specialize/model/model.safetensors").exists()


def test_eval_reports_both_models_under_their_report_names(tiny_run):
    m = json.loads((tiny_run / "s/summary.json").read_text())["eval_specialize"]
    for who in ("sft", "specialize"):  # the starting model by its stage's name
        suites = [m[f"{who}_{s}_acc"] for s in ("qa_heldout", "heldout_tasks", "other_trained_tasks")]
        assert m[f"{who}_general_acc"] == pytest.approx(sum(suites) / 3, abs=1e-4)
    assert m["domain_gain"] == pytest.approx(m["specialize_domain_acc"] - m["sft_domain_acc"], abs=1e-4)
    # the suites the domain's task was not in are eval_sft's very examples (its records name their prompts)
    records = lambda stage, key: [r["prompt"] for r in json.loads(
        (tiny_run / f"s/{stage}/eval.json").read_text())["details"][key]["records"]]
    for suite in ("qa_heldout", "heldout_tasks"):
        assert records("eval_specialize", f"sft_{suite}") == records("eval_sft", f"sft_{suite}")


def test_summarize_hand_computed():
    from lmforge.stages.eval_specialize import summarize

    m = summarize({"base_domain_acc": 0.1, "base_a_acc": 0.8, "base_b_acc": 0.2, "specialize_domain_acc": 0.4,
                   "specialize_a_acc": 0.4, "specialize_b_acc": 0.2}, "base", "specialize", ["a", "b"])
    # general: (0.8 + 0.2) / 2 = 0.5 and (0.4 + 0.2) / 2 = 0.3; gain 0.4 - 0.1; retained 0.3 / 0.5
    assert (m["base_general_acc"], m["specialize_general_acc"]) == (0.5, 0.3)
    assert (m["domain_gain"], m["general_retained"]) == (0.3, 0.6)
    zero = summarize({"x_domain_acc": 0.0, "x_a_acc": 0.0, "y_domain_acc": 0.5, "y_a_acc": 0.5}, "x", "y", ["a"])
    assert zero["general_retained"] is None  # nothing to retain: not a division by zero


def test_general_suites_leave_the_domain_task_out(tiny_run):
    from lmforge.stages.eval_specialize import suites

    cfg = load_run_config(ROOT / "recipes/demo.yaml", [f"out_dir={tiny_run}", "name=s", STAGES, *TINY,
                                                       "specialize.task=arithmetic"])
    data = suites(RunContext(cfg))
    assert set(data) == {"domain", "qa_heldout", "heldout_tasks", "other_trained_tasks"}
    assert {e.task for e in data["domain"]} == {"arithmetic"} and len(data["domain"]) == 6
    assert all(e.task != "arithmetic" for name, exs in data.items() if name != "domain" for e in exs)
    assert any(e.task == "word_problem" for e in data["other_trained_tasks"])


def test_domain_examples_are_new_and_rehearsal_repeats_a_small_pool(tiny_run):
    from lmforge.stages.sft import conversations
    from lmforge.stages.specialize import domain_conversations, general_conversations

    ctx = RunContext(load_run_config(ROOT / "recipes/demo.yaml", [f"out_dir={tiny_run}", "name=s", STAGES, *TINY]))
    domain, val, stats = domain_conversations(ctx)
    assert stats == {"domain": "toyworld word_problem"} and len(domain) == 60 and len(val) == 8
    sft_train, _, _ = conversations(ctx)
    sft_problems = {json.dumps(c) for c in sft_train if "####" in c[-1]["content"]}
    assert sft_problems and not sft_problems & {json.dumps(c) for c in domain}  # drawn apart from SFT's
    assert not {json.dumps(c) for c in val} & {json.dumps(c) for c in domain}
    pool = len(sft_train)
    picks = general_conversations(ctx, pool + 5)  # more than the SFT mixture holds: every one, then repeats
    assert len(picks) == pool + 5 and len({json.dumps(c) for c in picks}) == pool


def _gsm_file(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"question": f"Ann has {i} pens and buys 2. How many?",
                                        "answer": f"{i} + 2 = {i + 2}.\n#### {i + 2}"}) + "\n" for i in range(n)))
    return path


def test_sources_with_renamed_fields_keep_validation_copies_out_of_training(tiny_run, tmp_path):
    from lmforge.stages.specialize import domain_conversations

    src = _gsm_file(tmp_path / "gsm.jsonl", 30)
    ctx = RunContext(load_run_config(ROOT / "recipes/demo.yaml", [
        f"out_dir={tiny_run}", "name=s", STAGES, *TINY,
        f"specialize.sources=[{{path: {src}, weight: 3, fields: {{instruction: question, output: answer}}}}]"]))
    train, val, stats = domain_conversations(ctx)
    assert stats == {"domain": "specialize.sources", "skipped_records": 0}
    # 90 conversations (each record 3 times); 8 held out, and the other copies of those 8 with them
    assert len(val) == 8 and len(train) == 90 - 3 * 8
    i = int(val[0][0]["content"].split()[2])  # "Ann has {i} pens ...": read as alpaca, question -> user
    assert val[0] == [{"role": "user", "content": f"Ann has {i} pens and buys 2. How many?"},
                      {"role": "assistant", "content": f"{i} + 2 = {i + 2}.\n#### {i + 2}"}]
    assert not {json.dumps(c) for c in val} & {json.dumps(c) for c in train}
    # and the stage trains on them
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tiny_run}", "name=src",
                 "stages=[toyworld,specialize]", *TINY, f"specialize.init={tiny_run}/s/sft/model",
                 "specialize.train.steps=2", "specialize.general_fraction=0",
                 f"specialize.sources=[{{path: {src}, fields: {{instruction: question, output: answer}}}}]"]) == 0
    sp = json.loads((tiny_run / "src/summary.json").read_text())["specialize"]
    assert (sp["domain_conversations"], sp["general_conversations"], sp["skipped_records"]) == (27, 0, 0)


def test_lora_from_a_checkpoint_directory(tiny_run):
    """specialize.init may be any checkpoint; LoRA writes a PEFT adapter; the start is reported as `init`."""
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tiny_run}", "name=l",
                 "stages=[toyworld,specialize,eval_specialize]", *TINY, f"specialize.init={tiny_run}/s/sft/model",
                 "specialize.lora.enabled=true", "specialize.lora.r=2", "specialize.train.steps=4"]) == 0
    summary = json.loads((tiny_run / "l/summary.json").read_text())
    full = json.loads((tiny_run / "s/summary.json").read_text())["pretrain"]["params"]
    assert summary["specialize"]["trainable_params"] < full / 5
    assert (tiny_run / "l/specialize/adapter/adapter_config.json").exists()
    assert {"init_domain_acc", "specialize_domain_acc", "general_retained"} <= set(summary["eval_specialize"])


@pytest.mark.parametrize("override, message", [
    ("specialize.task=bogus", "specialize.task: not a toyworld task"),
    ("specialize.general_fraction=1", "specialize.general_fraction: expected a number >= 0 and < 1, got 1.0"),
    ("specialize.n_examples=0", "specialize.n_examples: expected"),
])
def test_bad_config_is_a_one_line_error(tmp_path, capsys, override, message):
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", STAGES, override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_init_without_a_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["specialize", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=s",
                 "stages=[toyworld,specialize]", "specialize.init=sft", *TINY]) == 2
    err = capsys.readouterr().err
    assert "specialize.init: 'sft' is neither a stage of this recipe nor a checkpoint directory" in err
