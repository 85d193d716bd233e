"""Instruction tuning: assistant-only targets (end-of-turn included), the model learns to answer
and to stop, LoRA SFT writes a PEFT adapter and a merged model, resumable like pretraining."""

import json
from pathlib import Path

import numpy as np
import torch

from lmforge.chat import render
from lmforge.cli import main
from lmforge.losses import IGNORE_INDEX
from lmforge.sft import SFTBatches, Tokenized, collate, tokenize_conversations
from lmforge.tokenizer import END_OF_TURN

ROOT = Path(__file__).resolve().parent.parent
CONV = [{"role": "user", "content": "What is the capital of Zali?"},
        {"role": "assistant", "content": "The capital of Zali is Finisdor."}]


def test_targets_are_assistant_tokens_including_end_of_turn(toy_data):
    _, tok = toy_data
    data = tokenize_conversations([CONV], tok, max_len=128)
    inputs, targets = collate(data.ids, data.mask, tok.pad_id)
    trained = targets[targets != IGNORE_INDEX].tolist()
    assert trained[-1] == tok.special[END_OF_TURN]  # the stop token is a target: the model learns to stop
    assert tok.decode(trained[:-1]) == "The capital of Zali is Finisdor."
    ids, _ = render(CONV, tok)
    assert inputs[0].tolist() == ids[:-1]


def test_batches_are_deterministic_and_cover_every_conversation(toy_data):
    _, tok = toy_data
    convs = [[{"role": "user", "content": f"q{i}" * (1 + i % 7)}, {"role": "assistant", "content": f"a{i}"}]
             for i in range(40)]
    data = tokenize_conversations(convs, tok, 64)
    b1, b2 = SFTBatches(data, tok.pad_id, 4, 2, seed=3), SFTBatches(data, tok.pad_id, 4, 2, seed=3)
    seen = set()
    for step in range(5):  # 5 steps x 8 = one epoch of 40
        for (x1, y1), (x2, y2) in zip(b1.batches(step), b2.batches(step), strict=True):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
            seen.update(tuple(r[r != tok.pad_id].tolist()) for r in x1)
    assert len(seen) == 40
    assert b1.pad_fraction(steps=5) < 0.5


def tiny_sft_run(tmp_path, *extra):
    args = ["run", str(ROOT / "recipes/demo.yaml"), f"out_dir={tmp_path}", "name=s",
            "stages=[toyworld,tokenizer,pretrain,sft,eval_sft]",
            "model.n_layer=1", "model.d_model=32", "model.n_head=2", "tokenizer.vocab_size=400",
            "train.steps=4", "train.micro_batch_size=4", "train.seq_len=64", "train.progress=false",
            "train.tensorboard=false", "train.eval_every=2", "train.eval_batches=1",
            "toyworld.corpus.n_stories=10", "toyworld.corpus.n_arithmetic_docs=5", "toyworld.corpus.n_word_problems=5",
            "sft.n_per_task=4", "sft.val_examples=20", "sft.train.steps=6", "sft.train.micro_batch_size=4",
            "sft.train.eval_every=3", "sft.train.progress=false", "sft.train.tensorboard=false",
            "eval_sft.qa_examples=6", "eval_sft.per_task=2", "eval_sft.max_new_tokens=8", *extra]
    return main(args)


def test_sft_stage_full_and_eval(tmp_path):
    assert tiny_sft_run(tmp_path) == 0
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["sft"]["steps"] == 6 and summary["sft"]["conversations"] > 40
    assert {"base_qa_heldout_acc", "sft_qa_heldout_acc", "sft_heldout_tasks_acc", "sft_trained_tasks_acc"} \
        <= set(summary["eval_sft"])
    assert (tmp_path / "s/sft/model/model.safetensors").exists()
    # sft.freeze_embeddings (the default): the input embeddings are pretraining's, the rest trained
    from safetensors.torch import load_file

    before, after = (load_file(str(tmp_path / f"s/{st}/model/model.safetensors")) for st in ("pretrain", "sft"))
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_lora_sft_writes_peft_adapter_and_merged_model(tmp_path):
    assert tiny_sft_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft]", "sft.lora.enabled=true",
                        "sft.lora.r=2") == 0
    cfg = json.loads((tmp_path / "s/sft/adapter/adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "s/sft/adapter/adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["sft"]["trainable_params"] < summary["pretrain"]["params"] / 5


def test_sft_learns_to_answer_and_stop(toy_data, tmp_path):
    """A tiny model fine-tuned on a handful of conversations reproduces an answer and then stops."""
    from lmforge.engine import Engine, SamplingParams
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer
    from lmforge.train.config import TrainConfig
    from lmforge.train.trainer import CausalLMModule, Trainer

    _, tok = toy_data
    convs = [[{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]
             for w in ("Kamdu", "Velora", "Zali", "Finisdor")]
    data = tokenize_conversations(convs, tok, 64)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, max_seq_len=64))
    tc = TrainConfig(steps=60, micro_batch_size=4, lr=3e-3, warmup_steps=5, progress=False, tensorboard=False,
                     ckpt_every=1000, log_every=10, dtype="fp32")
    Trainer(cfg=tc, model=model, module=CausalLMModule(), batches=SFTBatches(data, tok.pad_id, 4, 1, seed=0),
            out_dir=tmp_path, device=torch.device("cpu"), lr=tc.lr).run()
    from lmforge.chat import render_prompt

    eot = tok.special[END_OF_TURN]
    out = Engine(model, tok).generate([render_prompt(convs[2][:1], tok)],
                                      SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(eot,)))[0][0]
    assert out.ids[-1] == eot and out.finish_reason == "stop"
    assert tok.decode(out.ids[:-1]) == "Zali!"


def test_tokenized_counts():
    t = Tokenized([np.array([1, 2, 3])], [np.array([0, 1, 1])])
    assert t.n_trained_tokens == 2


def test_bad_task_counts_are_one_line_errors(tmp_path, capsys):
    """`{qa:600}` (no space after the colon) is YAML for a key "qa:600" with no value."""
    assert tiny_sft_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft]", "sft.task_counts={qa:600}") == 2
    assert "sft.task_counts.qa:600: expected a count >= 0, got None" in capsys.readouterr().err
    assert tiny_sft_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft]", "sft.task_counts={verify: 5}") == 2
    assert "sft.task_counts: task counts for verify: not among the SFT task types" in capsys.readouterr().err


def test_bad_hasty_fraction_is_a_one_line_error(tmp_path, capsys):
    assert tiny_sft_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft]", "sft.hasty_fraction=2") == 2
    err = capsys.readouterr().err
    assert err == "error: override: sft.hasty_fraction: expected a number between 0 and 1, got 2.0\n"


def test_sources_that_are_all_validation_copies_are_a_one_line_error(tmp_path, capsys):
    """30 copies of one conversation: validation holds it out, so every copy leaves training."""
    conv = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    (tmp_path / "dup.jsonl").write_text((json.dumps(conv) + "\n") * 30)
    assert tiny_sft_run(tmp_path, "stages=[toyworld,tokenizer,pretrain,sft]", "sft.hasty_fraction=0",
                        f"sft.sources=[{{path: {tmp_path / 'dup.jsonl'}}}]") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: sft.sources: all 30 conversations are copies of the 3 held out for validation; nothing is left to "
        "train on (add distinct conversations, or set sft.val_examples=0)")
    assert not (tmp_path / "s/sft/stage.json").exists()
