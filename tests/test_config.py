"""Recipes, overrides and the exact errors for bad configuration."""

from pathlib import Path

import pytest

from lmforge.cli import main
from lmforge.config import dump_yaml, load_run_config
from lmforge.errors import LmforgeError

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_recipes_exist():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    cfg = load_run_config(recipe)
    assert cfg.stages and cfg.name
    assert load_run_config(recipe, []) == cfg


def test_overrides_are_typed(tmp_path):
    cfg = load_run_config(ROOT / "recipes/demo.yaml", ["train.lr=3e-4", "model.n_layer=6", "train.compile=true",
                                                       "stages=toyworld,tokenizer"])
    assert cfg.train.lr == 3e-4 and cfg.model.n_layer == 6 and cfg.train.compile is True
    assert cfg.stages == ["toyworld", "tokenizer"]


def test_list_of_sources_override():
    cfg = load_run_config(None, ["data.sources=[{path: a.txt}, {path: b.jsonl, text_field: body}]",
                                 "data.sources.1.text_field=content"])
    assert [s.path for s in cfg.data.sources] == ["a.txt", "b.jsonl"]
    assert cfg.data.sources[1].text_field == "content"


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "override: unknown key 'train.lrr' (did you mean 'train.lr'?)"),
    ("modle.n_layer=2", "override: unknown key 'modle' (did you mean 'model'?)"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("train.lr=fast", "train.lr: expected a number, got 'fast'"),
    ("train.compile=maybe", "train.compile: expected true or false, got 'maybe'"),
    ("stages=[toyworld,pretrian]", "stages: unknown stage 'pretrian' (did you mean 'pretrain'?)"),
    ("train.schedule=linear", "train.schedule: expected one of cosine, wsd, constant, got 'linear'"),
    ("train.dtype=fp16", "train.dtype: expected one of auto, bf16, fp32, got 'fp16'"),
    ("lr", "override 'lr': expected key=value (e.g. train.lr=3e-4)"),
    # a check in a shared dataclass (TrainConfig, LoRAConfig) names the section it was built for
    ("sft.train.steps=0", "override: sft.train.steps: expected a positive integer, got 0"),
    ("sft.train.eval_every=0", "override: sft.train.eval_every: expected a positive integer, got 0"),
    ("grpo.train.lr=-1", "override: grpo.train.lr: expected a number >= 0, got -1"),
    ("train.warmup_steps=-5", "override: train.warmup_steps: expected a number >= 0, got -5"),
    ("train.beta2=1", "override: train.beta2: expected a number >= 0 and < 1, got 1"),
    ("model.d_model=100", "override: model.d_model: must be divisible by n_head (3), got 100"),
    ("model.n_kv_head=2", "override: model.n_head: must be divisible by n_kv_head (2), got 3"),
    # a required key left out of a list item names the item, not a TypeError of its dataclass
    ("curate.decontam.sets=[{path: x.jsonl}]",
     "override: curate.decontam.sets.0.name: missing (a required key of EvalSetConfig)"),
    ("sft.sources=[{weight: 2}]", "override: sft.sources.0.path: missing (a required key of ChatSourceConfig)"),
    ("sft.val_examples=-3", "override: sft.val_examples: expected a number >= 0, got -3"),
    ("grpo.temperature=-1", "override: grpo.temperature: expected a number > 0 (a group's samples must differ), "
                            "got -1"),
    ("grpo.task=qa", "override: grpo.task: expected one of word_problem, arithmetic, count_letters (the "
                     "verifiable-math reward checks a numeric answer), got 'qa'"),
    ("grpo.updates_per_batch=0", "override: grpo.updates_per_batch: expected a positive integer, got 0"),
    ("grpo.clip_high=0.1", "override: grpo.clip_high: expected a number >= clip_low (0.2), got 0.1"),
    ("ppo.minibatches=64", "override: ppo.minibatches: expected a divisor of prompts_per_step (32): every rollout in "
                           "one minibatch, got 64"),
    ("ppo.minibatches=3", "override: ppo.minibatches: expected a divisor of prompts_per_step (32): every rollout in "
                          "one minibatch, got 3"),
    ("grpo.updates_per_batch=3", "override: grpo.updates_per_batch: expected a divisor of prompts_per_step x "
                                 "group_size (128): every rollout in one update's slice, got 3"),
    ("ppo.tasks={bogus: 1}", "override: ppo.tasks.bogus: not a toyworld task (tasks: "),
    ("ppo.tasks={qa: x}", "override: ppo.tasks.qa: expected a weight > 0, got 'x'"),
    ("rlaif.val_fraction=1.5", "override: rlaif.val_fraction: expected a number >= 0 and < 1, got 1.5"),
    ("rlaif.temperature=0", "override: rlaif.temperature: expected a number > 0 (a prompt's two answers must "
                            "differ), got 0"),
    ("rlaif.judge.timeout=-1", "override: rlaif.judge.timeout: expected a number of seconds > 0, got -1"),
    ("pairs.samples=1", "override: pairs.samples: expected at least 2 answers per prompt (a pair), got 1"),
    ("pairs.temperature=0", "override: pairs.temperature: expected a number > 0 (a prompt's answers must differ to "
                            "make a pair), got 0"),
    ("bon.temperature=0", "override: bon.temperature: expected a number > 0 (greedy gives one answer, not 8 to "
                          "choose from), got 0"),
    ("bon.split=test", "override: bon.split: expected one of heldout, train, got 'test'"),
    ("data.val_fraction=0", "override: data.val_fraction: expected a number > 0 and < 1 (pretraining measures "
                            "its validation loss on that share), got 0"),
    ("eval.max_new_tokens=0", "override: eval.max_new_tokens: expected a positive integer, got 0"),
    ("dpo.beta=-1", "override: dpo.beta: expected a number >= 0, got -1"),
    ("dpo.loss=bogus", "override: dpo.loss: expected one of dpo, cdpo, ipo, hinge, kto, orpo, simpo, got 'bogus'"),
    ("rm.sources=[{pth: x}]", "override: unknown key 'rm.sources.0.pth' (did you mean 'rm.sources.0.path'?)"),
    ("eval_dpo.tasks={nope: 1}", "override: eval_dpo.tasks.nope: not a toyworld task"),
    ("eval_sft.per_task=-2", "override: eval_sft.per_task: expected a positive integer, got -2"),
    ("data.sources=[{path: a.txt, max_documents: -5}]", "override: data.sources.0.max_documents: expected a number "
                                                        ">= 0, got -5"),
    ("name=", "override: name: expected a run name of letters, digits and . _ - + = (the run writes into "
              "out_dir/name/), got ''"),
    ("name=../..", "override: name: expected a run name of letters, digits and . _ - + = (the run writes "
                   "into out_dir/name/), got '../..'"),
    ("name=/tmp/x", "got '/tmp/x'"),
    ("name=a b", "got 'a b'"),
    ("sft.sources=[{path: a.jsonl", "override: sft.sources: invalid YAML value '[{path: a.jsonl'"),
])
def test_bad_overrides_give_one_line_errors(override, message):
    with pytest.raises(LmforgeError) as e:
        load_run_config(ROOT / "recipes/demo.yaml", [override])
    assert message in str(e.value)
    assert str(e.value).startswith("override") or override.startswith("stages")
    assert "\n" not in str(e.value)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(LmforgeError, match=r"nope.yaml: recipe file not found"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stpes: 10\n")
    with pytest.raises(LmforgeError, match=r"bad.yaml: unknown key 'train.stpes' \(did you mean 'train.steps'\?\)"):
        load_run_config(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(LmforgeError, match=r"broken.yaml:\d+: invalid YAML"):
        load_run_config(broken)


def test_cli_exit_code_2_and_one_line(tmp_path, capsys):
    rc = main(["pretrain", str(ROOT / "recipes/demo.yaml"), "train.lrr=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == "error: override: unknown key 'train.lrr' (did you mean 'train.lr'?)\n"


def test_dry_run_prints_resolved_config(capsys):
    assert main(["pretrain", str(ROOT / "recipes/demo.yaml"), "model.n_layer=7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "n_layer: 7" in out
    assert load_run_config(ROOT / "recipes/demo.yaml", ["model.n_layer=7"]) is not None
    assert dump_yaml(load_run_config(ROOT / "recipes/demo.yaml", ["model.n_layer=7"])) == out


def test_dry_run_checks_the_local_data_files_of_the_stages_it_would_run(tmp_path, capsys):
    """--dry-run reads nothing, but a data file that is not there is found before anything trains: each
    missing path is one line naming its key (exit 2); Hub ids are counted, not checked; a section of a
    stage the recipe does not run is not checked."""
    real = tmp_path / "chat.jsonl"
    real.write_text('{"messages": []}\n')
    (tmp_path / "base").mkdir()
    (tmp_path / "base/model_config.json").write_text("{}")
    sources = (f"sft.sources=[{{path: {real}}}, {{path: {tmp_path}/missing.jsonl}}, {{path: '{tmp_path}/*.parquet'}}, "
               f"{{path: someone/chats, file_format: hf}}]")
    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "stages=[sft]", f"sft.init={tmp_path}/base",
            sources, f"dpo.sources=[{{path: {tmp_path}/not_run.jsonl}}]", "--dry-run"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "sources:" in captured.out  # the resolved config is still printed
    assert captured.err.splitlines() == [
        "[sft] would run",
        f"error: sft.sources.1.path: {tmp_path}/missing.jsonl: file not found",
        f"error: sft.sources.2.path: {tmp_path}/*.parquet: no files match",
        "dry run: 4 local path(s) checked, 2 missing; 1 Hub dataset id(s) not checked (they need the network)"]
    assert main(["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "stages=[sft]",
                 f"sft.init={tmp_path}/base", f"sft.sources=[{{path: {real}}}]", "--dry-run"]) == 0
    assert capsys.readouterr().err == "[sft] would run\ndry run: 2 local path(s) checked, 0 missing\n"


def test_dry_run_checks_the_models_stages_read(tmp_path, capsys):
    """A model a stage starts from or scores with is a stage of the recipe or a checkpoint directory: one
    that is neither fails the dry run (it would fail only when that stage starts, after the earlier ones
    ran), as does a judge's missing constitution file. A stage of the recipe is not checked (the run
    checks that it ran, or runs first)."""
    from lmforge.dry_run import check_paths

    ckpt, rm_ckpt = tmp_path / "ckpt", tmp_path / "rm_ckpt"
    for d, config in ((ckpt, "{}"), (rm_ckpt, '{"head": "reward"}')):
        d.mkdir()
        (d / "model_config.json").write_text(config)
    gone = tmp_path / "gone"
    cfg = load_run_config(ROOT / "recipes/rlhf.yaml", [
        f"out_dir={tmp_path}", "stages=[sft, rm, ppo, grpo, rlaif]", f"grpo.init={gone}",
        f"grpo.rewards=[{{kind: math}}, {{kind: rm, model: {gone}}}, {{kind: judge, judge: {{checkpoint: {ckpt}}}}}]",
        f"rlaif.judge.constitution={tmp_path}/rules.txt", f"sft.init={ckpt}", f"ppo.reward={rm_ckpt}"])
    assert check_paths(cfg) == ([
        f"grpo.init: '{gone}' is neither a stage of this recipe nor a checkpoint directory "
        f"(no {gone}/model_config.json)",
        f"grpo.rewards.1.model: '{gone}' is neither a stage of this recipe nor a checkpoint directory "
        f"(no {gone}/model_config.json)",
        f"rlaif.judge.constitution: {tmp_path}/rules.txt: file not found"], 6, 0)
    # a stage of the recipe that cannot serve: listed after its reader (and not run yet), an evaluation,
    # or not a reward model where one is read; a checkpoint that is not a reward model
    cfg = load_run_config(ROOT / "recipes/demo.yaml", [
        f"out_dir={tmp_path}", "stages=[toyworld, tokenizer, pretrain, sft, eval_sft, rm, bon, grpo, dpo, ppo]",
        "grpo.init=dpo", "bon.reward=sft", "dpo.init=eval_sft", f"ppo.reward={ckpt}"])
    assert check_paths(cfg, ["bon", "grpo", "dpo", "ppo"])[0] == [
        "bon.reward: stage 'sft' makes no reward model (the rm stage does)",
        "dpo.init: 'eval_sft' is an evaluation stage; it makes no model",
        "grpo.init: stage 'dpo' comes after 'grpo' in stages, and has no model yet",
        f"ppo.reward: '{ckpt}' is not a reward-model checkpoint (its model_config.json has no \"head\": \"reward\")"]
    (tmp_path / "demo/dpo/model").mkdir(parents=True)  # dpo already made its model: grpo can start from it
    (tmp_path / "demo/dpo/model/model_config.json").write_text("{}")
    assert check_paths(cfg, ["grpo"])[0] == []
    # the same stages by name: nothing to check
    cfg = load_run_config(ROOT / "recipes/rlhf.yaml", [f"out_dir={tmp_path}", "stages=[pretrain, sft, rm, ppo]"])
    assert [p for p in check_paths(cfg)[0] if "model" in p or "init" in p] == []
    # a stage the command does not run is not checked: `lmforge ppo` stops before grpo
    cfg = load_run_config(ROOT / "recipes/rlhf.yaml", ["stages=[sft, rm, ppo, grpo]", f"sft.init={ckpt}",
                                                      f"grpo.init={gone}"])
    assert check_paths(cfg, ["sft", "rm", "ppo"])[0] == []
    assert main(["ppo", str(ROOT / "recipes/rlhf.yaml"), f"out_dir={tmp_path}", "stages=[ppo]", "--dry-run"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: ppo.init: 'sft' is neither a stage of this recipe nor a checkpoint directory "
        "(no sft/model_config.json)",
        "error: ppo.reward: 'rm' is neither a stage of this recipe nor a checkpoint directory "
        "(no rm/model_config.json)",
        "error: stage 'ppo' needs toyworld first; add it to stages, before 'ppo'",
        "dry run: 2 local path(s) checked, 2 missing"]


def test_dry_run_path_check_follows_what_the_stages_read(tmp_path):
    """Only the stages the command runs, and what they read: specialize rehearses sft's mixture;
    a weight-0 source and a switched-off part are never read; a glob must match a file, not a directory."""
    from lmforge.dry_run import check_paths

    (tmp_path / "subdir").mkdir()
    miss = f"{tmp_path}/missing.jsonl"
    cfg = load_run_config(ROOT / "recipes/demo.yaml", [
        "stages=[pretrain,sft,dpo,specialize]",
        f"sft.sources=[{{path: {miss}}}, {{path: {tmp_path}/nope.jsonl, weight: 0}}]",
        f"dpo.sources=[{{path: '{tmp_path}/sub*'}}]", "curate.decontam.enabled=false",
        f"curate.decontam.sets=[{{name: gsm8k, path: {miss}}}]"])
    assert check_paths(cfg, ["sft"]) == ([f"sft.sources.0.path: {miss}: file not found"], 1, 0)
    assert check_paths(cfg, ["specialize"])[0] == [f"sft.sources.0.path: {miss}: file not found"]
    assert check_paths(cfg, ["dpo"]) == ([f"dpo.sources.0.path: {tmp_path}/sub*: no files match"], 1, 0)
    assert check_paths(cfg, ["curate"]) == ([], 0, 0)  # decontamination is off: its set is never read


def test_batch_tokens_and_depth_preset_derive_grad_accum():
    from lmforge.stages.pretrain import resolve_batch
    from lmforge.train.config import TrainConfig

    tc = TrainConfig(micro_batch_size=32, seq_len=2048, batch_tokens=524288)
    assert resolve_batch(tc, depth=0, world_size=1).grad_accum == 8
    assert resolve_batch(tc, depth=0, world_size=8).grad_accum == 1
    # depth 4 preset: 32k tokens per step = 16 rows x 256 tokens x 8 micro-batches
    assert resolve_batch(TrainConfig(micro_batch_size=16, seq_len=256), depth=4, world_size=1).grad_accum == 8
    assert resolve_batch(TrainConfig(grad_accum=3), depth=0, world_size=1).grad_accum == 3


def test_a_partial_section_keeps_the_fields_own_defaults():
    """`rm.train.steps=3` must keep the reward model's training defaults (lr 3e-4, warmup 10), not
    fall back to TrainConfig's class defaults (lr 0, warmup 50)."""
    from lmforge.config import load_run_config

    cfg = load_run_config(None, ["rm.train.steps=3", "grpo.train.lr=2e-5"])
    assert (cfg.rm.train.steps, cfg.rm.train.lr, cfg.rm.train.warmup_steps) == (3, 3e-4, 10)
    assert (cfg.grpo.train.lr, cfg.grpo.train.schedule, cfg.grpo.train.warmup_steps) == (2e-5, "constant", 0)


def test_dtype_auto_follows_the_hardware(monkeypatch):
    """auto means bf16 autocast only where bf16 is native: on an AVX2-only CPU emulated bf16 ran a
    512x512 matmul at 1.2 GFLOP/s against 80 in fp32. bf16 and fp32 force their choice anywhere."""
    import torch

    from lmforge.train import config as tconfig
    from lmforge.train.config import TrainConfig

    assert TrainConfig().dtype == "auto"
    for native in (True, False):
        tconfig.native_bf16.cache_clear()
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert TrainConfig().use_bf16("cpu") is native
        assert TrainConfig(dtype="bf16").use_bf16(torch.device("cpu")) is True
        assert TrainConfig(dtype="fp32").use_bf16("cpu") is False
    tconfig.native_bf16.cache_clear()


def test_a_recipe_extends_another(tmp_path):
    (tmp_path / "base.yaml").write_text("name: base\nseed: 3\nmodel: {n_layer: 2, d_model: 64}\n"
                                        "stages: [toyworld, tokenizer]\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/child.yaml").write_text("extends: ../base.yaml\nname: child\nmodel: {n_layer: 3}\n"
                                             "stages: [toyworld]\n")
    cfg = load_run_config(tmp_path / "sub/child.yaml", ["model.n_head=4"])
    # sections merge key by key (d_model kept), scalars and lists of the child win, overrides apply last
    assert (cfg.name, cfg.seed, cfg.stages) == ("child", 3, ["toyworld"])
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == (3, 64, 4)


def test_bad_extends_are_one_line_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(LmforgeError, match=r"b.yaml: extends: a.yaml extends this recipe back \(a cycle\)"):
        load_run_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(LmforgeError, match=r"missing.yaml: recipe file not found"):
        load_run_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\n")
    with pytest.raises(LmforgeError, match=r"d.yaml: extends: expected the path of another recipe, got \['a.yaml'\]"):
        load_run_config(tmp_path / "d.yaml")


def test_rlhf_recipe_is_the_demo_up_to_the_reward_model():
    """`cp -al runs/demo runs/rlhf` reuses the demo's stages only if their config sections are equal."""
    demo, rlhf = (load_run_config(ROOT / f"recipes/{n}.yaml") for n in ("demo", "rlhf"))
    for section in ("seed", "toyworld", "data", "curate", "tokenizer", "model", "train", "sft", "pairs", "rm",
                    "eval_dpo"):
        assert getattr(demo, section) == getattr(rlhf, section), section
    assert rlhf.stages[-2:] == ["ppo", "eval_ppo"]
