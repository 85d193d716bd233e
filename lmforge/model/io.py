"""lmforge checkpoints on disk: a directory any stage can read.

    model.safetensors   weights, Hugging Face Llama parameter names
    model_config.json   lmforge's ModelConfig
    tokenizer.json      (+ tokenizer_config.json) the tokenizer the model was trained with

No pickle anywhere: tensors in safetensors, metadata in JSON.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.utils import atomic_write_bytes, read_json, write_json


def state_dict_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.cfg.tie_embeddings:
        sd.pop("lm_head.weight", None)  # safetensors stores no aliases; HF re-ties on load
    return sd


def save_model(model: Transformer, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
               extra: dict | None = None) -> None:
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", save(state_dict_for_saving(model), metadata={"format": "pt"}))
    write_model_meta(model.cfg, out, tokenizer_dir, extra)


def write_model_meta(cfg: ModelConfig, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None,
                     extra: dict | None = None) -> None:
    """Tokenizer files and model_config.json (written last: it marks the checkpoint complete)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            src = Path(tokenizer_dir) / name
            if src.exists() and src.resolve() != (out / name).resolve():
                shutil.copyfile(src, out / name)
    write_json(out / "model_config.json", {**dataclasses.asdict(cfg), **(extra or {})})


def load_config(ckpt_dir: str | os.PathLike) -> ModelConfig:
    p = Path(ckpt_dir) / "model_config.json"
    if not p.exists():
        raise LmforgeError(f"{ckpt_dir}: not an lmforge checkpoint (no model_config.json)")
    raw = read_json(p)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    raw = {k: v for k, v in raw.items() if k in fields}
    raw["depth"] = 0  # dims are already resolved
    return ModelConfig(**raw)


def load_model(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    from safetensors.torch import load_file

    cfg = load_config(ckpt_dir)
    model = Transformer(cfg)
    weights = Path(ckpt_dir) / "model.safetensors"
    if not weights.exists():
        raise LmforgeError(f"{ckpt_dir}: no model.safetensors")
    sd = load_file(str(weights))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise LmforgeError(f"{weights}: weights do not match model_config.json "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)
