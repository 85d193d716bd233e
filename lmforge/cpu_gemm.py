"""bf16 matmuls for decoding on x86 CPUs with AVX512-BF16: lmforge's own kernel (csrc/gemm_bf16.c).

At decode sizes (a few rows a step) PyTorch's oneDNN linear spends ~13 of its ~18-40 us outside
oneDNN's kernel (`ONEDNN_VERBOSE` times the kernel at ~5 us for 8 x 256 x 256); this kernel, called
through ctypes, takes 4-24 us for the same matmuls and was as fast or faster up to 1,024 rows at the
shapes measured (bench/README.md). It runs on the OpenMP threads PyTorch already uses.

It is built on first use with the system C compiler (`$CC`, else `cc`) into `~/.cache/lmforge`
(`$LMFORGE_CACHE`), loaded, and checked against `F.linear`. Where any of that fails (not x86-64
Linux, a CPU without AVX512-BF16, no compiler) `available()` is False and the engine keeps oneDNN;
`LMFORGE_CPU_GEMM=0` turns it off. `why_unavailable()` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).parent / "csrc" / "gemm_bf16.c"
FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16", "-fopenmp", "-shared", "-fPIC"]

_STATE: dict = {}  # "fn": the loaded function or None, "why": the reason it is None


def available() -> bool:
    """Whether the kernel runs here (decided once per process)."""
    if "fn" not in _STATE:
        try:
            _STATE["fn"] = _load()
        except Exception as e:  # any failure: oneDNN does the work instead
            _STATE["fn"], _STATE["why"] = None, f"{type(e).__name__}: {e}".splitlines()[0][:300]
    return _STATE["fn"] is not None


def why_unavailable() -> str:
    return "" if available() else _STATE["why"]


def pack(w: torch.Tensor) -> torch.Tensor:
    """W (N, K) -> the kernel's layout (N32 / 32, K / 2, 32, 2) in bf16, N zero-padded to N32 (a multiple of 32)."""
    N, K = w.shape
    if K % 2:
        raise ValueError(f"cpu_gemm.pack: K must be even, got {K}")
    n32 = -(-N // 32) * 32
    w = F.pad(w.detach().to(torch.bfloat16), (0, 0, 0, n32 - N))
    return w.view(n32 // 32, 32, K // 2, 2).permute(0, 2, 1, 3).contiguous()


def linear(x: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    """x (..., K) -> x @ W^T (..., n) in bf16, for W packed by `pack` (n: its rows before padding)."""
    K = packed.shape[1] * 2
    x2 = x.reshape(-1, K).to(torch.bfloat16).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=torch.bfloat16, device=x.device)
    if x2.shape[0]:
        _STATE["fn"](x2.data_ptr(), packed.data_ptr(), y.data_ptr(), x2.shape[0], n, K)
    return y.view(*x.shape[:-1], n)


def _load():
    if os.environ.get("LMFORGE_CPU_GEMM", "1") == "0":
        raise RuntimeError("turned off by LMFORGE_CPU_GEMM=0")
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise RuntimeError(f"needs x86-64 Linux, not {platform.system()} {platform.machine()}")
    if not getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        raise RuntimeError("this CPU has no AVX512-BF16")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc) to build it with")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("LMFORGE_CACHE") or Path.home() / ".cache" / "lmforge")
    so = cache / f"gemm_bf16-{key}.so"
    if not so.exists():  # built once per source and compiler; concurrent builders each rename their own file
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        try:
            done = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True, timeout=120)
            if done.returncode:
                raise RuntimeError(f"{cc} failed: {done.stderr.strip()}")
            os.replace(tmp, so)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    fn = ctypes.CDLL(str(so)).lmforge_gemm_bf16  # after torch: its OpenMP runtime is the one linked
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 3
    fn.restype = None
    _STATE["fn"] = fn
    _self_check()
    return fn


def _self_check() -> None:
    """Odd sizes (a partial column block, rows past 8) against F.linear; both round the fp32 sum to bf16."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(11, 70, generator=g).to(torch.bfloat16)
    w = torch.randn(45, 70, generator=g).to(torch.bfloat16)
    with torch.inference_mode():
        got, want = linear(x, pack(w), 45).float(), F.linear(x, w).float()
    if not torch.allclose(got, want, rtol=2e-2, atol=2e-2):
        raise RuntimeError(f"self-check against F.linear failed (max diff {(got - want).abs().max():.3g})")
