"""The pipeline runner and CLI end to end, on a tiny configuration."""

import json
from pathlib import Path

import pytest

from lmforge.cli import main

ROOT = Path(__file__).resolve().parent.parent
TINY = ["stages=[toyworld,tokenizer,pretrain,eval_base]",
        "model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=300",
        "train.steps=6", "train.micro_batch_size=4", "train.seq_len=32", "train.warmup_steps=1",
        "train.eval_every=3", "train.eval_batches=2", "train.ckpt_every=3", "train.progress=false",
        "train.tensorboard=false", "eval.cloze_limit=10", "eval.arithmetic_probes=10",
        "toyworld.corpus.n_stories=20", "toyworld.corpus.n_arithmetic_docs=10",
        "toyworld.corpus.n_word_problems=10"]


def run(tmp_path, *extra, command="run"):
    return main([command, str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=t", *TINY, *extra])


def test_run_writes_every_stage_and_a_summary_then_skips(tmp_path, capsys):
    assert run(tmp_path) == 0
    summary = json.loads((tmp_path / "t/summary.json").read_text())
    assert list(summary) == ["toyworld", "tokenizer", "pretrain", "eval_base"]
    assert summary["toyworld"]["facts"] >= 1500
    assert summary["pretrain"]["steps"] == 6 and summary["pretrain"]["tokens_per_s"] > 0
    assert 0.0 <= summary["eval_base"]["cloze_heldout_acc"] <= 1.0
    for name in ("model.safetensors", "model_config.json", "tokenizer.json"):
        assert (tmp_path / "t/pretrain/model" / name).exists()
    metrics = [json.loads(x) for x in (tmp_path / "t/pretrain/metrics.jsonl").read_text().splitlines()]
    assert {m["kind"] for m in metrics} >= {"train", "eval", "sample"}
    assert (tmp_path / "t/pretrain/tensorboard").exists() is False
    # what train.dtype auto chose from is on record, and the stage says what it chose
    from lmforge.train.config import native_bf16
    hw = json.loads((tmp_path / "t/hardware.json").read_text())
    assert hw["cpu_native_bf16"] is native_bf16("cpu") and hw["cpu_capability"]
    out = capsys.readouterr().out
    assert "cloze_heldout_acc" in out  # the summary table
    total = sum(summary[name]["seconds"] for name in summary)
    assert f"[run] 4 stage(s) ran in {total / 60:.1f} min ({total:.0f} s of stage time)" in out
    assert f"device cpu ({'bf16 autocast' if native_bf16('cpu') else 'fp32'})" in out
    assert ("has no native bf16: pretrain train in fp32" in out) is (not native_bf16("cpu"))
    # a second run skips every complete stage
    assert run(tmp_path) == 0
    out = capsys.readouterr().out
    assert out.count("complete, skipping") == 4 and "[run] " not in out  # nothing ran: no stage time
    # a changed recipe is noticed (results kept, the user is told how to redo them)
    assert run(tmp_path, "train.lr=0.001") == 0
    out = capsys.readouterr().out
    assert "[pretrain] note: the recipe changed since this stage ran (train.lr: " in out and "-> 0.001)" in out
    assert "[tokenizer] note" not in out and "use --redo-changed (or --fresh) to redo it" in out
    # --redo-changed redoes the changed stage and every later one, and keeps the earlier ones
    before = (tmp_path / "t/eval_base/stage.json").read_text()
    assert run(tmp_path, "train.lr=0.001", "--redo-changed") == 0
    out = capsys.readouterr().out
    assert "[tokenizer] complete, skipping" in out and "[pretrain] redoing: the recipe changed" in out
    assert "[eval_base] redoing: " in out
    assert json.loads((tmp_path / "t/pretrain/stage.json").read_text())["config"]["train.lr"] == 0.001
    assert (tmp_path / "t/eval_base/stage.json").read_text() != before
    assert run(tmp_path, "train.lr=0.001", "--redo-changed") == 0  # nothing changed now: nothing redone
    assert capsys.readouterr().out.count("complete, skipping") == 4
    # a later stage whose own inputs did not change is redone all the same (eval_base reads no curate.*)
    assert run(tmp_path, "train.lr=0.001", "curate.language.min_score=0.7", "--redo-changed") == 0
    out = capsys.readouterr().out
    assert "[tokenizer] redoing: the recipe changed" in out
    assert "[eval_base] redoing: tokenizer, pretrain ran again after it" in out
    # a stage redone on its own (`lmforge pretrain --redo-changed`) leaves the later ones stale: noticed
    assert run(tmp_path, "train.lr=0.002", "curate.language.min_score=0.7", "--redo-changed",
               command="pretrain") == 0
    capsys.readouterr()
    assert run(tmp_path, "train.lr=0.002", "curate.language.min_score=0.7") == 0
    assert "; pretrain ran again after it; its results are kept" in capsys.readouterr().out
    assert run(tmp_path, "train.lr=0.002", "curate.language.min_score=0.7", "--redo-changed") == 0
    out = capsys.readouterr().out
    assert "[pretrain] complete, skipping" in out and "pretrain ran again after it" in out
    # --fresh on a stage redoes it and every later stage, and keeps earlier ones
    assert run(tmp_path, "--fresh", command="pretrain") == 0
    out = capsys.readouterr().out
    assert "[toyworld] complete, skipping" in out and "[pretrain] pretrain the transformer" in out
    # the closing table shows what ran now (pretrain), not the skipped stages' metrics again
    assert "(the stages run now; every stage's metrics:" in out and "facts" not in out and "tokens_per_s" in out
    assert not (tmp_path / "t/eval_base").exists()
    # --fresh on an evaluation redoes it alone: no later stage reads what it measured
    assert run(tmp_path) == 0
    (tmp_path / "t/sft").mkdir()
    (tmp_path / "t/sft/kept").write_text("")
    stages = "stages=[toyworld,tokenizer,pretrain,eval_base,sft]"
    assert run(tmp_path, stages, "--fresh", command="eval_base") == 0
    assert "[eval_base] " in capsys.readouterr().out and (tmp_path / "t/sft/kept").exists()


def test_dry_run_says_what_the_run_would_do_and_changes_nothing(tmp_path, capsys):
    """Each stage's line is what the run then does: kept, noted, redone (with why) or run; --fresh and
    --redo-changed are honored; the run directory is untouched; a stage whose input stage neither ran
    nor runs first is an error (exit 2), as the run would stop on it."""
    def dry(*extra, command="run"):
        code = run(tmp_path, *extra, "--dry-run", command=command)
        return code, [x for x in capsys.readouterr().err.splitlines() if not x.startswith("dry run:")]

    assert dry() == (0, ["[toyworld] would run", "[tokenizer] would run", "[pretrain] would run",
                         "[eval_base] would run"])
    assert not (tmp_path / "t").exists()
    assert run(tmp_path) == 0
    capsys.readouterr()
    records = {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()}
    kept = [f"[{n}] complete, kept" for n in ("toyworld", "tokenizer", "pretrain", "eval_base")]
    assert dry() == (0, kept)
    # how often a stage validates and checkpoints is no change to its results; how often it logs is (its
    # train_loss is the mean of the last logged losses)
    assert dry("train.ckpt_every=2", "train.eval_every=5", "train.progress=true") == (0, kept)
    assert "(train.log_every: 10 -> 1)" in dry("train.log_every=1")[1][2]
    # what a kept stage would read is not checked (it reads nothing); a stage that would be redone's is
    code, lines = dry("tokenizer.path=/nonexistent/tokenizer.json")
    assert code == 0 and lines[1].startswith("[tokenizer] complete, kept (note: the recipe changed")
    code, lines = dry("tokenizer.path=/nonexistent/tokenizer.json", "--redo-changed")
    assert code == 2 and lines[-1] == "error: tokenizer.path: /nonexistent/tokenizer.json: file not found"
    code, lines = dry("train.lr=0.001")
    assert code == 0 and lines[:2] == ["[toyworld] complete, kept", "[tokenizer] complete, kept"]
    assert lines[2] == "[pretrain] complete, kept (note: the recipe changed since this stage ran (train.lr: 0.004 " \
                       "-> 0.001); --redo-changed redoes it)"
    assert lines[3] == lines[2].replace("[pretrain]", "[eval_base]")  # it evaluates with train.* settings
    code, lines = dry("train.lr=0.001", "--redo-changed")
    assert lines[:2] == ["[toyworld] complete, kept", "[tokenizer] complete, kept"]
    assert lines[2] == "[pretrain] would be redone: the recipe changed since this stage ran (train.lr: 0.004 -> 0.001)"
    assert lines[3] == "[eval_base] would be redone: the recipe changed since this stage ran (train.lr: 0.004 -> " \
                       "0.001); pretrain runs again before it"
    assert dry("--fresh", command="pretrain") == (0, [
        "[toyworld] complete, kept", "[tokenizer] complete, kept", "[pretrain] would run",
        "[eval_base] would be deleted (--fresh: it was built on pretrain)"])
    assert dry("--fresh")[1] == ["[toyworld] would run", "[tokenizer] would run", "[pretrain] would run",
                                 "[eval_base] would run"]
    assert {p: p.read_bytes() for p in (tmp_path / "t").rglob("*") if p.is_file()} == records
    # what the plan said is what the run does
    assert run(tmp_path, "train.lr=0.001", "--redo-changed") == 0
    out = capsys.readouterr().out
    assert "[tokenizer] complete, skipping" in out and "[pretrain] redoing: the recipe changed" in out
    assert "[eval_base] redoing: the recipe changed since this stage ran (train.lr: 0.004 -> 0.001); pretrain ran " \
           "again after it" in out
    # a stage killed after a checkpoint: `run` resumes it, a stage command without --resume stops
    import shutil
    (tmp_path / "t/eval_base/stage.json").unlink()
    (tmp_path / "t/pretrain/stage.json").unlink()
    latest = (tmp_path / "t/pretrain/checkpoints/latest").read_text().strip()
    assert dry()[1][2:] == [f"[pretrain] would resume from {latest}", "[eval_base] would run"]
    assert dry(command="pretrain") == (2, ["[toyworld] complete, kept", "[tokenizer] complete, kept",
                                           f"error: {tmp_path / 't/pretrain'}: holds checkpoints of an earlier run; "
                                           "pass --resume to continue it or --fresh to start over"])
    assert dry("--resume", command="pretrain")[1][2] == f"[pretrain] would resume from {latest}"
    assert run(tmp_path, command="pretrain") == 2  # what the plan said
    assert "holds checkpoints of an earlier run" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "t")
    # an input stage that is neither complete nor listed before the stage
    code, lines = dry("name=u", "stages=[eval_base]")
    assert code == 2 and lines == ["error: stage 'eval_base' needs pretrain first; add it to stages, before "
                                   "'eval_base'"]


def test_redoing_an_evaluation_redoes_nothing_after_it(tmp_path):
    """--redo-changed after a changed evaluation (bon) redoes it alone: no later stage was built on what it
    measured (it redid dpo, eval_dpo and grpo before). The plan and the run share the rule."""
    import json as json_mod

    from lmforge.config import load_run_config
    from lmforge.dry_run import plan
    from lmforge.pipeline import stage_config
    from lmforge.stages import STAGES

    names = ["toyworld", "pairs", "rm", "bon", "dpo", "grpo"]
    cfg = load_run_config(ROOT / "recipes/demo.yaml", [f"out_dir={tmp_path}", "name=r", f"stages=[{','.join(names)}]"])
    for i, name in enumerate(names):  # a complete run, as stage.json records it
        (tmp_path / "r" / name).mkdir(parents=True)
        upstream = {e: j + 1.0 for j, e in enumerate(names[:i]) if not STAGES[e].measures_only}
        (tmp_path / "r" / name / "stage.json").write_text(json_mod.dumps(
            {"stage": name, "seconds": 1.0, "metrics": {}, "config": stage_config(cfg, STAGES[name]),
             "finished": i + 1.0, "upstream": upstream}))
    changed = load_run_config(ROOT / "recipes/demo.yaml", [f"out_dir={tmp_path}", "name=r",
                                                            f"stages=[{','.join(names)}]", "bon.n_prompts=100"])
    lines = [line for _, _, line in plan(changed, redo_changed=True)]
    assert lines == ["[toyworld] complete, kept", "[pairs] complete, kept", "[rm] complete, kept",
                     "[bon] would be redone: the recipe changed since this stage ran (bon.n_prompts: 200 -> 100)",
                     "[dpo] complete, kept", "[grpo] complete, kept"]
    changed = load_run_config(ROOT / "recipes/demo.yaml", [f"out_dir={tmp_path}", "name=r",
                                                            f"stages=[{','.join(names)}]", "rm.train.steps=7"])
    steps = plan(changed, redo_changed=True)  # a changed training stage: everything after it is redone
    assert [(name, action) for name, action, _ in steps] == [
        ("toyworld", "skip"), ("pairs", "skip"), ("rm", "redo"), ("bon", "redo"), ("dpo", "redo"), ("grpo", "redo")]
    assert steps[2][2] == "[rm] would be redone: the recipe changed since this stage ran (rm.train.steps: 120 -> 7)"


def test_stage_command_refuses_to_clobber_checkpoints(tmp_path, capsys):
    assert run(tmp_path, "stages=[toyworld,tokenizer,pretrain]", "train.steps=3", command="pretrain") == 0
    (tmp_path / "t/pretrain/stage.json").unlink()  # as if the run had been killed after its checkpoint
    assert run(tmp_path, "stages=[toyworld,tokenizer,pretrain]", "train.steps=6", command="pretrain") == 2
    assert "pass --resume to continue it or --fresh to start over" in capsys.readouterr().err
    assert run(tmp_path, "stages=[toyworld,tokenizer,pretrain]", "train.steps=6", "--resume",
               command="pretrain") == 0
    assert "resuming from step 3" in capsys.readouterr().out
    # checkpoints without their `latest` pointer: none is known to be complete, and none is overwritten
    (tmp_path / "t/pretrain/stage.json").unlink()
    (tmp_path / "t/pretrain/checkpoints/latest").unlink()
    assert run(tmp_path, "stages=[toyworld,tokenizer,pretrain]", "train.steps=6", "--resume",
               command="pretrain") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}/t/pretrain/checkpoints: step_00000006 but no 'latest' "
                                       f"pointer (a run stopped while saving, or it was deleted); pass --fresh to "
                                       f"start over\n")


def test_recipe_errors_come_before_any_work(tmp_path, capsys):
    assert run(tmp_path, "stages=[toyworld,pretrain]") == 2  # no tokenizer: refused before toyworld runs
    assert capsys.readouterr().err == "error: stage 'pretrain' needs tokenizer first; add it to stages, before " \
                                      "'pretrain'\n"
    assert not (tmp_path / "t/toyworld").exists()
    assert run(tmp_path, "stages=[toyworld]", "--fresh", command="pretrain") == 2  # nothing deleted either
    assert capsys.readouterr().err == "error: stage 'pretrain' is not in this recipe's stages (toyworld); add it " \
                                      "with stages=[toyworld,pretrain] or use a recipe that lists it\n"
    assert run(tmp_path, "stages=[]") == 2
    assert capsys.readouterr().err == "error: stages: the recipe lists no stages\n"
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path / 'afile'}", "name=t", *TINY]) == 2
    assert capsys.readouterr().err == f"error: out_dir: {tmp_path / 'afile'} is a file, not a directory\n"


def test_a_damaged_stage_record_is_a_one_line_error(tmp_path, capsys):
    assert run(tmp_path, "stages=[toyworld]") == 0
    (tmp_path / "t/toyworld/stage.json").write_text("{}")
    capsys.readouterr()
    assert run(tmp_path, "stages=[toyworld]") == 2
    assert capsys.readouterr().err == (f"error: {tmp_path}/t/toyworld/stage.json: damaged (expected an object with "
                                       f"'metrics'); delete the stage directory (or use --fresh) to redo it\n")


def test_bad_data_source_is_one_line_and_leaves_no_complete_stage(tmp_path, capsys):
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"text": "a fine document"}\n{"text": "another"\n')
    rc = run(tmp_path, "stages=[tokenizer,pretrain]", f"data.sources=[{{path: {bad}}}]")
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"error: {bad}:2: invalid JSON") and err.count("\n") == 1
    assert not (tmp_path / "t/tokenizer/stage.json").exists()


@pytest.mark.slow
def test_demo_recipe_bounded(tmp_path):
    """The shipped demo recipe end to end with fewer steps: every stage runs, loss falls."""
    rc = main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "train.steps=40",
               "train.progress=false", "train.eval_every=20", "sft.train.steps=20", "sft.train.progress=false",
               "eval_sft.qa_examples=20", "eval_sft.per_task=3",
               "pairs.n_prompts=60", "pairs.val_fraction=0.3", "pairs.min_margin=0", "pairs.temperature=1.0",
               "rm.train.steps=4", "rm.train.progress=false",
               "bon.n_prompts=6", "bon.n=4", "dpo.train.steps=4", "dpo.train.progress=false",
               "eval_dpo.n_prompts=20", "eval_dpo.qa_examples=10",
               "grpo.train.steps=2", "grpo.train.progress=false", "grpo.prompts_per_step=4", "grpo.group_size=4",
               "grpo.eval_examples=8", "grpo.eval_samples=1"])
    assert rc == 0
    summary = json.loads((tmp_path / "demo/summary.json").read_text())
    evals = [json.loads(x) for x in (tmp_path / "demo/pretrain/metrics.jsonl").read_text().splitlines()]
    val = [e["val_loss"] for e in evals if e["kind"] == "eval"]
    assert len(val) == 2 and val[1] < val[0]
    assert summary["eval_base"]["val_loss"] == pytest.approx(val[-1], abs=0.3)
    assert list(summary) == ["toyworld", "curate", "tokenizer", "pretrain", "eval_base", "sft", "eval_sft",
                             "pairs", "rm", "bon", "dpo", "eval_dpo", "grpo"]
    assert summary["grpo"]["steps"] == 2 and 0.0 <= summary["grpo"]["heldout_acc_after"] <= 1.0
    assert 0 < summary["curate"]["documents_out"] < summary["curate"]["documents_in"]


def test_precision_notes_name_the_stages_that_train_slowly(monkeypatch, capsys):
    """On a CPU without native bf16 the run says which pending stages train in fp32 (dtype auto) and
    warns about any that force bf16 (emulated, ~30x slower); on a CPU with it, nothing is said."""
    from lmforge import pipeline
    from lmforge.config import load_run_config

    cfg = load_run_config(ROOT / "recipes/demo.yaml", ["sft.train.dtype=bf16", "dpo.train.dtype=fp32",
                                                       "train.device=cpu", "grpo.train.device=cpu"])
    ctx = pipeline.RunContext(cfg=cfg)
    for native, expect in ((False, True), (True, False)):
        monkeypatch.setattr(pipeline, "native_bf16", lambda kind, native=native: native)
        pipeline._precision_notes(ctx, ["toyworld", "pretrain", "sft", "dpo", "grpo"])
        out = capsys.readouterr().out
        assert ("has no native bf16: pretrain, grpo train in fp32 (train.dtype auto)" in out) is expect
        assert ("and sft force train.dtype bf16: emulated" in out) is expect
        assert "dpo" not in out


def test_a_damaged_corpus_file_is_a_one_line_error(tmp_path, capsys):
    assert run(tmp_path, "stages=[toyworld]") == 0
    corpus = tmp_path / "t/toyworld/corpus.jsonl"
    lines = corpus.read_bytes().splitlines(keepends=True)
    corpus.write_bytes(b"".join(lines[:2]) + b'{"text": "cut off\n')
    capsys.readouterr()
    assert run(tmp_path, "stages=[toyworld,tokenizer]") == 2
    assert capsys.readouterr().err == (f"error: {corpus}:3: damaged (expected a JSON object with 'text'); redo the "
                                       f"stage that wrote it (--fresh)\n")


def test_demo_ends_with_next_steps_that_keep_its_overrides(tmp_path):
    from lmforge.cli import next_steps

    (tmp_path / "demo/dpo/model").mkdir(parents=True)
    (tmp_path / "demo/dpo/model/model_config.json").write_text("{}")
    text = next_steps(tmp_path / "demo", ["sft", "dpo", "eval_dpo", "grpo"], [])  # grpo has no model yet
    assert f"lmforge chat {tmp_path / 'demo/dpo/model'}" in text
    assert "lmforge run recipes/specialize.yaml   #" in text
    assert f"cp -al {tmp_path / 'demo'} {tmp_path / 'rlhf'} && lmforge run recipes/rlhf.yaml" in text
    (tmp_path / "rlhf").mkdir()  # copied already: a second cp -al would nest the copy inside it
    assert "  lmforge run recipes/rlhf.yaml" in next_steps(tmp_path / "demo", ["dpo"], [])
    assert f"cp -al {tmp_path / 'demo'} {tmp_path / 'rlaif'} && lmforge run recipes/rlaif.yaml --redo-changed" in text
    text = next_steps(tmp_path / "demo", ["dpo"], ["seed=1", "data.sources=[{path: a b.txt}]", "stages=[dpo]"])
    assert "lmforge run recipes/specialize.yaml seed=1 'data.sources=[{path: a b.txt}]'   #" in text
    assert "rlhf" not in text and "rlaif" not in text  # their own run names would not find this run's directory
    (tmp_path / "demo/rm/model").mkdir(parents=True)  # the reward model is no chat model
    (tmp_path / "demo/rm/model/model_config.json").write_text("{}")
    text = next_steps(tmp_path / "demo", ["dpo", "rm", "specialize"], [])
    assert f"chat {tmp_path / 'demo/dpo/model'}" in text and "specialize.yaml" not in text  # already in the run


def test_out_of_memory_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """A size beyond the machine (here: the pipeline raising as torch's CPU allocator does) is one line, exit 2."""
    import lmforge.cli

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                           "memory: you tried to allocate 8000000000000 bytes.\nsecond line")

    monkeypatch.setattr(lmforge.cli, "_pipeline_command", oom)
    assert run(tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory ([enforce fail") and err.count("\n") == 1 and "Traceback" not in err
    assert err.endswith("; LMFORGE_TRACEBACK=1 shows where\n")
    monkeypatch.setenv("LMFORGE_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="can't allocate memory"):  # where it came from, for a bug report
        run(tmp_path)
    monkeypatch.delenv("LMFORGE_TRACEBACK")
    monkeypatch.setattr(lmforge.cli, "_pipeline_command", lambda *a: (_ for _ in ()).throw(RuntimeError("other")))
    with pytest.raises(RuntimeError, match="^other$"):  # any other error is not dressed up as one
        run(tmp_path)
