"""Export an lmforge checkpoint as a Hugging Face `LlamaForCausalLM` directory.

The result (config.json, model.safetensors, tokenizer files, generation_config.json)
loads with `transformers.AutoModelForCausalLM.from_pretrained(dir)` and in vLLM. A reward
checkpoint (`lmforge rm`) exports as `LlamaForSequenceClassification` with one label, which
`AutoModelForSequenceClassification` loads: its logit for a conversation is lmforge's reward
(both read the head at the last token that is not padding).
Only the Llama-compatible architecture exports: RMSNorm, pre-norm, RoPE, SwiGLU,
MHA/GQA/MQA, causal, full attention, no QK-norm (tied embeddings are fine).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lmforge.chat import write_chat_template
from lmforge.errors import LmforgeError
from lmforge.model.io import (
    check_output_dir,
    load_checkpoint,
    load_config,
    load_tokenizer,
    read_json_object,
    staged_dir,
    state_dict_for_saving,
)
from lmforge.tokenizer import Tokenizer
from lmforge.utils import atomic_write_bytes, write_json

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def llama_config(cfg, tok: Tokenizer) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.ffn_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": tok.bos_id,
        "eos_token_id": tok.eos_id,
        "pad_token_id": tok.pad_id,
        "torch_dtype": "float32",
    }


def export_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    from safetensors.torch import save

    from lmforge.model.reward import is_reward_checkpoint, load_reward_model

    check_output_dir(out_dir, ckpt_dir)
    reward = is_reward_checkpoint(ckpt_dir)
    if reward:
        model, tok = load_reward_model(ckpt_dir), load_tokenizer(ckpt_dir, load_config(ckpt_dir))
    else:
        model, tok = load_checkpoint(ckpt_dir)
    cfg = model.cfg
    if not cfg.llama_compatible:
        raise LmforgeError(f"{ckpt_dir}: only the Llama-compatible architecture exports to transformers; this "
                           f"model has {', '.join(cfg.not_llama())}")
    for name in TOKENIZER_FILES:
        if not (Path(ckpt_dir) / name).is_file():
            raise LmforgeError(f"{ckpt_dir}: no {name} (export copies the tokenizer files next to the model)")
    read_json_object(Path(ckpt_dir) / "tokenizer_config.json")  # the chat template is added to it below
    with staged_dir(out_dir, "config.json") as out:
        for name in TOKENIZER_FILES:
            shutil.copyfile(Path(ckpt_dir) / name, out / name)
        write_chat_template(out)  # apply_chat_template then yields the ids lmforge trains on
        atomic_write_bytes(out / "model.safetensors", save(state_dict_for_saving(model), metadata={"format": "pt"}))
        config = llama_config(cfg, tok)
        if reward:  # `model.*` + `score.weight`: the names LlamaForSequenceClassification loads
            config.update(architectures=["LlamaForSequenceClassification"], num_labels=1,
                          id2label={0: "LABEL_0"}, label2id={"LABEL_0": 0}, tie_word_embeddings=False)
        else:
            write_json(out / "generation_config.json", {
                "bos_token_id": tok.bos_id,
                "eos_token_id": [tok.eos_id, tok.special["<|end_of_turn|>"]],
                "pad_token_id": tok.pad_id,
            })
        write_json(out / "config.json", config)  # last: marks the export complete
    return Path(out_dir)
