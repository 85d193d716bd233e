"""Training checkpoints: weights, optimizer, RNG and loop position, written atomically.

    <stage>/checkpoints/step_00000200/
        model.safetensors        full (unsharded) weights, HF Llama names
        optimizer.safetensors    AdamW moments keyed "<param name>::<state name>", plus RNG states
        trainer_state.json       step, param groups, python RNG, anything the stage adds
    <stage>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint directory is built under a temporary name and renamed into place, and
`latest` is updated after that, so a run killed at any moment leaves either the old or
the new checkpoint, never a half-written one. Works the same for plain, DDP and FSDP2
models through torch.distributed.checkpoint's full-state-dict API.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from lmforge.errors import LmforgeError
from lmforge.utils import atomic_write_text

_SEP = "::"


def _unwrap_tied(sd: dict, tied: bool) -> dict:
    if tied:
        sd.pop("lm_head.weight", None)
    return sd


def save_checkpoint(ckpt_root: str | os.PathLike, step: int, model, optimizer, *, tied: bool,
                    is_main: bool, extra: dict | None = None, keep: int = 2) -> Path | None:
    """Collective (every rank must call it); rank 0 writes."""
    from safetensors.torch import save_file

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    if not is_main:
        return None
    root = Path(ckpt_root)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    msd = {k: v.contiguous() for k, v in _unwrap_tied(dict(msd), tied).items()}
    save_file(msd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tensors = {f"{name}{_SEP}{k}": v.contiguous() for name, st in osd["state"].items() for k, v in st.items()}
    tensors[f"__rng__{_SEP}torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors[f"__rng__{_SEP}cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    state = {"step": step, "param_groups": osd["param_groups"], "python_rng": _py_rng_to_json(),
             **(extra or {})}
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", final.name)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    marker = Path(ckpt_root) / "latest"
    if not marker.exists():
        return None
    path = Path(ckpt_root) / marker.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: str | os.PathLike, model, optimizer, *, tied: bool) -> dict:
    """Restore weights, optimizer and RNG in place; returns trainer_state.json."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        msd = load_file(str(path / "model.safetensors"))
        flat = load_file(str(path / "optimizer.safetensors"))
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise LmforgeError(f"{path}: unreadable checkpoint ({e})") from None
    if tied:
        msd["lm_head.weight"] = msd["model.embed_tokens.weight"]
    osd_state: dict = {}
    for key, t in flat.items():
        name, k = key.split(_SEP, 1)
        if name == "__rng__":
            continue
        osd_state.setdefault(name, {})[k] = t
    osd = {"state": osd_state, "param_groups": state["param_groups"]}
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                   options=StateDictOptions(full_state_dict=True))
    torch.set_rng_state(flat[f"__rng__{_SEP}torch"])
    if torch.cuda.is_available() and f"__rng__{_SEP}cuda" in flat:
        torch.cuda.set_rng_state(flat[f"__rng__{_SEP}cuda"])
    _py_rng_from_json(state["python_rng"])
    return state


def _py_rng_to_json():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_rng_from_json(s):
    random.setstate((s[0], tuple(s[1]), s[2]))

