"""Small shared helpers: atomic file writes, JSON I/O, seeding."""

from __future__ import annotations

import json
import os
import random
import secrets
import stat
from pathlib import Path


def temp_file_beside(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temp file in `path`'s directory, with the mode a plain write of `path` would
    leave: an existing file's own mode, else 0o666 less the umask (the OS applies it, as for open()).
    mkstemp's 0600 would make every report and checkpoint private once renamed into place."""
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    except FileNotFoundError:
        pass
    return fd, tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path`.

    A reader never sees a half-written file: either the old content or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def not_a_dir(out: str | os.PathLike) -> str | None:
    """Why `out` cannot be (or become) a directory, or None: the nearest existing path decides."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists():
            if p.is_dir():
                return None
            return "exists and is not a directory" if p == out else f"{p} is a file, not a directory"
    return None


def read_safetensors(path: str | os.PathLike, missing: str) -> dict:
    """The tensors of a safetensors file; a missing file raises LmforgeError(missing), an unreadable one
    a one-line error naming it (safetensors' own errors are multi-line or unnamed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lmforge.errors import LmforgeError

    if not Path(path).is_file():
        raise LmforgeError(missing)
    try:
        return load_file(str(path))
    except SafetensorError as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LmforgeError(f"{path}: cannot read (truncated or not safetensors: {first})") from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror})") from None


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def upstream_reruns(record: dict, finished) -> list[str]:
    """The stages a stage.json `record` was built on that finished at another time than it recorded
    (they ran again since): `finished(stage)` is that stage's finish time now, or None if it has none.

    >>> upstream_reruns({"upstream": {"pretrain": 5.0, "sft": 10.0}}, {"pretrain": 5.0, "sft": 20.0}.get)
    ['sft']
    """
    upstream = record.get("upstream") if isinstance(record.get("upstream"), dict) else {}
    return [u for u, t in upstream.items() if (now := finished(u)) is not None and now != t]
