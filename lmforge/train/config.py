"""Training-loop configuration shared by every stage that trains."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from lmforge.errors import fraction, non_negative, one_of, positive


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether `device_type` computes bf16 matmuls in hardware, where bf16 autocast pays off.

    CUDA: GPUs with bf16 tensor cores (Ampere and later; not emulated bf16). CPU: x86 with
    AVX512-BF16 or AMX, where a bf16 matmul is 2-4x an fp32 one. Elsewhere (AVX2-only x86, most ARM
    laptops) oneDNN emulates bf16: measured on an AVX2 EPYC, 1.2 GFLOP/s in bf16 against 80 in fp32,
    so autocast would make training ~30x slower. Flags rather than a timing probe: the same machine
    always gets the same answer, which keeps runs deterministic.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        try:
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        except AttributeError:  # private helpers; a PyTorch without them gets the safe choice
            return False
    return False


@dataclass
class TrainConfig:
    steps: int = 1000               # optimizer steps
    micro_batch_size: int = 16      # rows per forward pass per process
    grad_accum: int = 1             # micro-batches per optimizer step per process
    batch_tokens: int = 0           # >0: tokens per optimizer step; grad_accum is derived from it
                                    # (model.depth > 0 and batch_tokens 0: taken from the depth preset)
    seq_len: int = 256
    lr: float = 0.0                 # peak AdamW lr; 0: derived from model width (see suggested_lr)
    min_lr_ratio: float = 0.1       # final lr = min_lr_ratio * lr
    warmup_steps: int = 50
    schedule: str = "cosine"        # cosine | wsd | constant
    decay_fraction: float = 0.2     # wsd: share of steps spent decaying
    weight_decay: float = 0.1       # on matrices only, never on norms/biases
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0          # max global grad norm; 0 disables
    dtype: str = "auto"             # autocast dtype: auto | bf16 | fp32 (weights and optimizer stay fp32);
                                    # auto: bf16 where the hardware has it (native_bf16), else fp32
    compile: bool = False           # torch.compile the model
    device: str = "auto"            # auto | cpu | cuda
    parallel: str = "ddp"           # under torchrun: ddp | fsdp2
    log_every: int = 10
    eval_every: int = 100           # validation loss / bits per byte every N steps (and at the end)
    eval_batches: int = 8           # micro-batches of validation data per evaluation
    sample_every: int = 0           # log sample generations every N steps; 0: only at the end
    ckpt_every: int = 200           # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2       # 0 keeps all
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        for field, options in (("schedule", ("cosine", "wsd", "constant")), ("dtype", ("auto", "bf16", "fp32")),
                               ("device", ("auto", "cpu", "cuda")), ("parallel", ("ddp", "fsdp2"))):
            one_of(self, field, options)
        positive(self, "steps", "micro_batch_size", "grad_accum", "seq_len", "log_every", "eval_every",
                 "eval_batches", "ckpt_every")
        non_negative(self, "keep_checkpoints", "batch_tokens", "lr", "warmup_steps", "weight_decay", "grad_clip",
                     "sample_every")  # (a NaN fails every one of these checks too)
        fraction(self, "min_lr_ratio", "decay_fraction")
        fraction(self, "beta1", "beta2", closed_top=False)

    def use_bf16(self, device: torch.device | str) -> bool:
        """Whether to train (and run the stage's own forwards) under bf16 autocast on `device`."""
        kind = torch.device(device).type
        return self.dtype == "bf16" or (self.dtype == "auto" and native_bf16(kind))
