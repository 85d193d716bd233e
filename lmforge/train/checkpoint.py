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
import re
import shutil
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from lmforge.errors import LmforgeError
from lmforge.utils import atomic_write_text

_SEP = "::"
_STEP_DIR = re.compile(r"step_\d+")


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
    """The checkpoint `latest` names; None when there is no `latest` yet (nothing was saved).

    A `latest` that cannot be read or names no checkpoint is an error, not None: None would make a
    resumed run start again from step 0 and overwrite the checkpoints it was asked to continue.
    """
    root = Path(ckpt_root)
    marker = root / "latest"
    if not marker.exists():
        return None
    try:
        name = marker.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise LmforgeError(f"{marker}: not UTF-8 text; expected the name of a checkpoint directory "
                           f"(step_NNNNNNNN)") from None
    except OSError as e:
        raise LmforgeError(f"{marker}: cannot read ({e.strerror})") from None
    if not _STEP_DIR.fullmatch(name):  # also keeps "" and "../x" from naming a directory outside root
        raise LmforgeError(f"{marker}: expected the name of a checkpoint directory (step_NNNNNNNN), "
                           f"got {name[:40]!r}")
    path = root / name
    if not path.is_dir():
        raise LmforgeError(f"{marker} names {name}, which does not exist")
    return path


def load_checkpoint(path: str | os.PathLike, model, optimizer, *, tied: bool) -> dict:
    """Restore weights, optimizer and RNG in place; returns trainer_state.json.

    Every file is read and checked against the model and optimizer before anything is restored,
    so a damaged or mismatched checkpoint is a one-line error naming the file.
    """
    path = Path(path)
    model_file, optim_file, state_file = (path / n for n in ("model.safetensors", "optimizer.safetensors",
                                                             "trainer_state.json"))
    msd, flat, state = _read_tensors(model_file), _read_tensors(optim_file), _read_state(state_file)
    if tied and "model.embed_tokens.weight" in msd:
        msd["lm_head.weight"] = msd["model.embed_tokens.weight"]
    shapes = {_fqn(k): tuple(v.shape) for k, v in model.state_dict().items()}
    _check_model(model_file, msd, shapes)
    osd_state: dict = {}
    for key, t in flat.items():
        name, sep, k = key.partition(_SEP)
        if not sep:
            raise LmforgeError(f"{optim_file}: unexpected tensor {key!r}; not an optimizer state lmforge wrote")
        if name != "__rng__":
            osd_state.setdefault(name, {})[k] = t
    _check_optimizer(optim_file, state_file, osd_state, state["param_groups"], model, optimizer, shapes)
    rng = flat.get(f"__rng__{_SEP}torch")
    if rng is None or rng.dtype != torch.uint8:
        raise LmforgeError(f"{optim_file}: no torch RNG state; not an optimizer state lmforge wrote")
    osd = {"state": osd_state, "param_groups": state["param_groups"]}
    try:
        set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=osd,
                       options=StateDictOptions(full_state_dict=True))
        torch.set_rng_state(rng)
        if torch.cuda.is_available() and f"__rng__{_SEP}cuda" in flat:
            torch.cuda.set_rng_state(flat[f"__rng__{_SEP}cuda"])
    except (RuntimeError, KeyError, ValueError) as e:  # what the checks above do not foresee, in one line
        raise LmforgeError(f"{path}: cannot restore this checkpoint ({_first_line(e)})") from None
    _py_rng_from_json(state_file, state["python_rng"])
    return state


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _fqn(key: str) -> str:
    """A parameter name without the wrappers' prefixes (DDP's module., torch.compile's _orig_mod.):
    the names get_state_dict writes and set_state_dict reads."""
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    from lmforge.utils import read_safetensors

    return read_safetensors(file, missing=f"{file}: missing; the checkpoint is incomplete")


def _read_state(file: Path) -> dict:
    """trainer_state.json, with the keys resuming needs checked (a stage may add more)."""
    if not file.is_file():
        raise LmforgeError(f"{file}: missing; the checkpoint is incomplete")
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LmforgeError(f"{file}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{file}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except OSError as e:
        raise LmforgeError(f"{file}: cannot read ({e.strerror})") from None
    if not isinstance(state, dict):
        raise LmforgeError(f"{file}: expected a JSON object, got {type(state).__name__}")
    checks = {
        "step": ("a step number >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
        "param_groups": ("a list of optimizer parameter groups",
                         lambda v: isinstance(v, list) and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                               for g in v)),
        "python_rng": ("a Python RNG state [version, [state...], gauss]",
                       lambda v: isinstance(v, list) and len(v) == 3 and isinstance(v[1], list)),
    }
    for key, (what, ok) in checks.items():
        if key not in state:
            raise LmforgeError(f"{file}: no \"{key}\" (expected {what}); not a trainer state lmforge wrote")
        if not ok(state[key]):
            raise LmforgeError(f"{file}: \"{key}\" must be {what}, got {json.dumps(state[key])[:60]}")
    return state


def _mismatch(file: Path, detail: str) -> LmforgeError:
    return LmforgeError(f"{file}: the checkpoint does not match the model config ({detail}); restore the model "
                        f"settings it was saved with, or pass --fresh to start over")


def _check_model(file: Path, msd: dict, shapes: dict) -> None:
    """Shapes and names first: load_state_dict would raise a many-line RuntimeError listing every mismatch."""
    for k, t in msd.items():
        if k in shapes and tuple(t.shape) != shapes[k]:
            raise _mismatch(file, f"{k}: checkpoint {tuple(t.shape)}, model {shapes[k]}")
    extra = [k for k in msd if k not in shapes]
    if extra:
        raise _mismatch(file, f"{extra[0]}: checkpoint {tuple(msd[extra[0]].shape)}, not in the model; "
                              f"{len(extra)} such tensors")
    missing = [k for k in shapes if k not in msd]
    if missing:
        raise _mismatch(file, f"{missing[0]}: model {shapes[missing[0]]}, not in the checkpoint; "
                              f"{len(missing)} such tensors")


def _check_optimizer(optim_file: Path, state_file: Path, osd_state: dict, groups: list, model, optimizer,
                     shapes: dict) -> None:
    params = {_fqn(k) for k, _ in model.named_parameters(remove_duplicate=False)}  # a tied weight by either name
    for name, st in osd_state.items():
        if name not in params:
            raise LmforgeError(f"{optim_file}: state for {name!r}, which is not a parameter of the model")
        for k, t in st.items():  # the moments have the parameter's shape; "step" is a scalar
            if t.dim() and tuple(t.shape) != shapes.get(name):
                raise LmforgeError(f"{optim_file}: {name}{_SEP}{k} has shape {tuple(t.shape)}, but the parameter "
                                   f"has {shapes.get(name)}")
    saved, built = [len(g["params"]) for g in groups], [len(g["params"]) for g in optimizer.param_groups]
    unknown = [p for g in groups for p in g["params"] if p not in params]
    if saved != built or unknown:
        detail = f"unknown parameter {unknown[0]!r}" if unknown else f"group sizes {saved}, expected {built}"
        raise LmforgeError(f"{state_file}: the optimizer's parameter groups do not match the model ({detail})")


def _py_rng_to_json():
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _py_rng_from_json(file: Path, s) -> None:
    try:
        random.setstate((s[0], tuple(s[1]), s[2]))
    except (TypeError, ValueError, OverflowError):
        raise LmforgeError(f"{file}: \"python_rng\" is not a Python RNG state lmforge wrote") from None

