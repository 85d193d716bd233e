"""Metrics: a JSONL file (the source of truth for reports and tests) plus TensorBoard,
and the FLOP accounting behind MFU."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


class MetricsLogger:
    """Appends one JSON object per event to metrics.jsonl; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a missing one must not stop training
                self.tb = None

    def truncate_after(self, step: int) -> None:
        """On resume: drop events logged after the checkpoint, so the file reads as one clean run."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, kind: str, **values) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)
                elif isinstance(v, str):
                    self.tb.add_text(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path, kind: str | None = None) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    if not p.exists():
        return []
    rows = [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]


_PEAK_CACHE: dict = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16, seconds: float = 0.3) -> float:
    """Measured matmul throughput (FLOP/s) of this device in `dtype`: the denominator of MFU.

    A square matmul big enough to saturate the device is timed for ~`seconds`. Measuring
    rather than looking up a datasheet number keeps MFU honest on CPUs, where the peak
    depends on cores, AVX-512/AMX and clocks.
    """
    key = (str(device), dtype)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        a @ b
    sync()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or iters < 3:
        a @ b
        iters += 1
    sync()
    flops = 2 * n**3 * iters / (time.perf_counter() - t0)
    _PEAK_CACHE[key] = flops
    return flops
