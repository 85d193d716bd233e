"""Training-loop configuration shared by every stage that trains."""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.errors import LmforgeError


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
    dtype: str = "bf16"             # autocast dtype: bf16 | fp32 (weights and optimizer stay fp32)
    compile: bool = False           # torch.compile the model
    device: str = "auto"            # auto | cpu | cuda
    parallel: str = "ddp"           # under torchrun: ddp | fsdp2
    log_every: int = 10
    eval_every: int = 100           # validation loss / bits per byte every N steps (and at the end)
    eval_batches: int = 8           # micro-batches of validation data per evaluation
    sample_every: int = 0           # log sample generations every N steps; 0: only at the end
    ckpt_every: int = 200           # checkpoint every N steps (and at the end)
    keep_checkpoints: int = 2
    tensorboard: bool = True
    progress: bool = True

    def __post_init__(self):
        allowed = {"schedule": ("cosine", "wsd", "constant"), "dtype": ("bf16", "fp32"),
                   "device": ("auto", "cpu", "cuda"), "parallel": ("ddp", "fsdp2")}
        for field, options in allowed.items():
            if getattr(self, field) not in options:
                raise LmforgeError(f"train.{field}: expected one of {', '.join(options)}, "
                                   f"got {getattr(self, field)!r}")
        for field in ("steps", "micro_batch_size", "grad_accum", "seq_len"):
            if getattr(self, field) < 1:
                raise LmforgeError(f"train.{field}: expected a positive integer, got {getattr(self, field)}")
