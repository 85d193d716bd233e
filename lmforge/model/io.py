"""lmforge checkpoints on disk: a directory any stage can read.

    model.safetensors   weights, Hugging Face Llama parameter names
    model_config.json   lmforge's ModelConfig
    tokenizer.json      (+ tokenizer_config.json) the tokenizer the model was trained with

No pickle anywhere: tensors in safetensors, metadata in JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import Transformer
from lmforge.utils import atomic_write_bytes, not_a_dir, read_json, read_safetensors, write_json

if TYPE_CHECKING:
    from lmforge.tokenizer import Tokenizer


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


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON file holding an object, or a one-line error naming the file."""
    try:
        raw = read_json(path)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise LmforgeError(f"{path}: not UTF-8 text") from None
    if not isinstance(raw, dict):
        raise LmforgeError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return raw


def not_a_checkpoint(ckpt_dir: str | os.PathLike) -> LmforgeError:
    if (Path(ckpt_dir) / "adapter_config.json").exists():
        return LmforgeError(f"{ckpt_dir}: a LoRA adapter, not a full checkpoint; fold it into its base model "
                            f"first with `lmforge merge {ckpt_dir} BASE OUT` and use OUT")
    return LmforgeError(f"{ckpt_dir}: not an lmforge checkpoint (no model_config.json)")


def load_config(ckpt_dir: str | os.PathLike) -> ModelConfig:
    from lmforge.config import build

    p = Path(ckpt_dir) / "model_config.json"
    if not p.is_file():
        raise not_a_checkpoint(ckpt_dir)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    raw = {k: v for k, v in read_json_object(p).items() if k in fields}  # other keys: a stage's `extra`
    raw["depth"] = 0  # dims are already resolved
    return build(ModelConfig, raw, source=f"{p}: ")  # checks types: "d_model": "192" is an error, not a crash


def load_model(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Transformer:
    """The checkpoint's model; the tokenizer beside it, if any, must fit it (see load_tokenizer)."""
    cfg = load_config(ckpt_dir)
    if (Path(ckpt_dir) / "tokenizer.json").is_file():
        load_tokenizer(ckpt_dir, cfg)
    return _load_weights(ckpt_dir, cfg, device)


def load_tokenizer(ckpt_dir: str | os.PathLike, cfg: ModelConfig | None = None) -> Tokenizer:
    """The checkpoint's tokenizer, checked to fit its model: a token id past the embedding table
    would crash generation (IndexError) and make an export that transformers cannot run."""
    from lmforge.tokenizer import Tokenizer

    cfg = cfg or load_config(ckpt_dir)
    tok = Tokenizer.load(ckpt_dir)
    if tok.vocab_size > cfg.vocab_size:
        raise LmforgeError(f"{ckpt_dir}: the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is "
                           f"{cfg.vocab_size} (tokenizer.json is not the one this model was trained with)")
    return tok


def load_checkpoint(ckpt_dir: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Transformer, Tokenizer]:
    """Model and tokenizer of a checkpoint, checked to belong together."""
    cfg = load_config(ckpt_dir)
    tok = load_tokenizer(ckpt_dir, cfg)
    return _load_weights(ckpt_dir, cfg, device), tok


def _load_weights(ckpt_dir: str | os.PathLike, cfg: ModelConfig, device: str | torch.device) -> Transformer:
    from lmforge.model.reward import is_reward_checkpoint

    if is_reward_checkpoint(ckpt_dir):  # its head scores answers: there are no token logits to generate with
        raise LmforgeError(f"{ckpt_dir}: a reward model (model_config.json \"head\": \"reward\"), not a language "
                           f"model: it scores answers and cannot generate; give a policy checkpoint such as "
                           f"<run>/sft/model (reward models: best-of-n, PPO, `lmforge export`)")
    weights = Path(ckpt_dir) / "model.safetensors"
    sd = read_safetensors(weights, missing=f"{ckpt_dir}: no model.safetensors")
    model = Transformer(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, t in sd.items():  # load_state_dict would raise a multi-line RuntimeError listing every mismatch
        if k in shapes and tuple(t.shape) != shapes[k]:
            raise LmforgeError(f"{ckpt_dir}: weights do not match model_config.json "
                               f"({k}: checkpoint {tuple(t.shape)}, config {shapes[k]})")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise LmforgeError(f"{weights}: weights do not match model_config.json "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)


def check_output_dir(out: str | os.PathLike, *inputs: str | os.PathLike) -> None:
    """Refuse an output path that is a file or one of the command's inputs, before anything is read or written."""
    out = Path(out)
    if why := not_a_dir(out):
        raise LmforgeError(f"{out}: {why}; give a directory to write")
    for src in inputs:
        if out.resolve() == Path(src).resolve():
            raise LmforgeError(f"{out}: the output directory is the input {src}; give another directory")


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike, marker: str) -> Iterator[Path]:
    """Yield a temporary sibling of `out` to write into, then move its files into place.

    A new `out` appears whole (one rename). Into an existing directory the files move one by one
    (its other files stay), with `marker`, the file that says the directory is complete, removed
    first and moved last. On an error `out` is left as it was.
    """
    out = Path(out)
    check_output_dir(out)
    exists = out.is_dir()
    # the temporary directory sits where the files end up (inside an existing `out`, which may be a link
    # to another filesystem), so every move is a rename on one filesystem
    base = out.resolve() if exists else out.parent
    tmp = base / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise LmforgeError(f"{out}: cannot create the output directory ({e.strerror})") from None
    try:
        yield tmp
        try:
            if exists:
                (out / marker).unlink(missing_ok=True)
                for f in sorted(tmp.iterdir(), key=lambda f: f.name == marker):
                    os.replace(f, out / f.name)
            else:
                os.rename(tmp, out)
        except OSError as e:
            raise LmforgeError(f"{out}: cannot move the new files into place ({e.strerror})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
