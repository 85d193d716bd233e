"""The training loop every stage reuses.

A stage supplies a *train module* (how to turn a micro-batch into a summed loss and the
count it is normalized by) and a *batch source* (which micro-batches form step s); the
loop owns everything else: AdamW, the LR schedule, gradient accumulation, global loss
normalization, clipping, autocast, DDP/FSDP2, logging, evaluation hooks, atomic
checkpoints and exact resumption.

Normalization: each micro-batch contributes loss_sum / N_global, where N_global is the
number of target tokens (or examples) in the whole global batch across accumulation
steps and processes. DDP/FSDP average gradients over processes, so the loss is scaled by
the world size to turn that average back into a sum. The gradient is then identical for
any split of the same global batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from lmforge.errors import LmforgeError
from lmforge.losses import IGNORE_INDEX, cross_entropy_sum
from lmforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistInfo, all_reduce_sum, parallelize
from lmforge.train.metrics import MetricsLogger, measure_peak_flops
from lmforge.train.schedule import lr_at


class StageState(Protocol):
    """State a stage keeps outside the model and optimizer that resuming must restore (e.g. PPO's
    adaptive KL coefficient): a JSON-serializable dict, saved in trainer_state.json as "stage_state"."""

    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class TrainModule(Protocol):
    """count: what the loss is normalized by (tokens, pairs, ...) in one micro-batch.

    loss: (summed loss, aux). When aux is a dict of summed diagnostics (e.g. preference
    accuracy over the pairs of the micro-batch), the loop logs each divided by the global count.
    """

    def count(self, batch) -> int: ...
    def loss(self, model, batch) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor]]: ...


@dataclass
class CausalLMModule:
    """Next-token prediction on (inputs, targets); targets use IGNORE_INDEX where no loss applies.

    doc_mask_bos: the BOS id, to keep the documents packed in a row from attending to each other.
    """

    doc_mask_bos: int | None = None

    def count(self, batch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())

    def loss(self, model, batch):
        inputs, targets = batch
        if self.doc_mask_bos is None:
            return cross_entropy_sum(model(inputs), targets)
        from lmforge.data.packing import document_segments

        return cross_entropy_sum(model(inputs, segments=document_segments(inputs, self.doc_mask_bos)), targets)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float, device: torch.device):
    """AdamW; weight decay only on matrices that are not embeddings (norms, biases, lookups are exempt)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel exists for CPU and CUDA and is ~3x faster than the per-tensor loop on CPU
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8,
                             fused=device.type in ("cpu", "cuda"))


@dataclass
class Trainer:
    cfg: TrainConfig
    model: torch.nn.Module                   # unwrapped; the trainer wraps it for DDP/FSDP2
    module: TrainModule
    batches: object                          # has .batches(step) -> list of micro-batches
    out_dir: Path
    device: torch.device
    lr: float
    info: DistInfo = field(default_factory=DistInfo)
    evaluate: Callable[[torch.nn.Module, int], dict] | None = None   # validation metrics
    sample: Callable[[torch.nn.Module, int], dict] | None = None     # text samples to log
    step_stats: Callable[[], dict] | None = None  # extra numbers logged with each step (e.g. rollout rewards)
    stage_state: StageState | None = None    # the stage's own state that checkpoints keep (PPO's KL controller)
    tokens_per_row: int = 0                  # for throughput/MFU (0: not a token-level stage)
    flops_per_token: float = 0.0
    history: list = field(default_factory=list)
    config_key: str = ""                     # cfg's recipe section for messages ("sft.train"); "": from out_dir

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        # a tied head is stored once; a model without a token head (reward model) has nothing to tie
        self.tied = bool(getattr(getattr(self.model, "cfg", None), "tie_embeddings", False)) and \
            hasattr(self.model, "lm_head")
        # Denormal floats (e.g. tiny Adam second moments) run ~100x slower on x86 CPUs; flushing
        # them to zero changes no result that matters and kept SFT steps from slowing 50-fold.
        torch.set_flush_denormal(True)
        self.model.to(self.device)
        # FSDP2 swaps parameters for sharded DTensors, so the optimizer is built after wrapping
        self.wrapped = parallelize(self.model, self.info, self.cfg.parallel, self.device)
        self.optimizer = build_optimizer(self.model, self.cfg, self.lr, self.device)
        if self.cfg.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.logger = MetricsLogger(self.out_dir, enabled=self.info.is_main, tensorboard=self.cfg.tensorboard)
        use_bf16 = self.cfg.use_bf16(self.device)
        self.autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)
        self.peak = 0.0
        if self.flops_per_token:
            self.peak = measure_peak_flops(self.device, torch.bfloat16 if use_bf16 else torch.float32)

    # ---- checkpoints -------------------------------------------------------------------
    def resume(self) -> int:
        """Load the latest checkpoint if any; returns the step to continue from."""
        ckpt = latest_checkpoint(self.ckpt_dir)
        if ckpt is None:
            return 0
        state = load_checkpoint(ckpt, self.wrapped if not self.cfg.compile else self.model,
                                self.optimizer, tied=self.tied)
        if state["step"] > self.cfg.steps:
            # the loop would run no step and the stage would report cfg.steps for a longer-trained model
            key = f"{self.config_key or self._default_config_key()}.steps"
            raise LmforgeError(f"{ckpt}: the checkpoint is at step {state['step']}, past {key}={self.cfg.steps}; "
                               f"set {key} to at least {state['step']} to continue it, or pass --fresh to start over")
        if self.stage_state is not None:
            try:  # a checkpoint from before stage_state existed holds none: {} (a stateless stage accepts it)
                self.stage_state.load_state_dict(state.get("stage_state") or {})
            except KeyError as e:  # e.g. an adaptive-KL run resumed from a checkpoint of a fixed-KL one
                raise LmforgeError(f"{ckpt / 'trainer_state.json'}: \"stage_state\" has no {e} (written by an older "
                                   f"lmforge, or by a run with other settings); pass --fresh to start over") from None
            except (TypeError, ValueError) as e:
                raise LmforgeError(f"{ckpt / 'trainer_state.json'}: \"stage_state\" is damaged ({e}); "
                                   f"pass --fresh to start over") from None
        self.logger.truncate_after(state["step"])
        return state["step"]

    def _default_config_key(self) -> str:
        """The recipe section of cfg, from the stage directory's name: `train` for pretrain, else `<stage>.train`."""
        name = self.out_dir.name
        return "train" if name == "pretrain" else f"{name}.train"

    def save(self, step: int) -> None:
        extra = {"stage_state": self.stage_state.state_dict()} if self.stage_state is not None else None
        save_checkpoint(self.ckpt_dir, step, self.model, self.optimizer, tied=self.tied,
                        is_main=self.info.is_main, extra=extra, keep=self.cfg.keep_checkpoints)

    def _grad_sync(self, sync_now: bool):
        """Skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) on all but the last micro-batch."""
        if not self.info.enabled:
            return contextlib.nullcontext()
        if hasattr(self.model, "set_requires_gradient_sync"):  # FSDP2
            self.model.set_requires_gradient_sync(sync_now)
            return contextlib.nullcontext()
        no_sync = getattr(self.wrapped, "no_sync", None)
        return no_sync() if (no_sync is not None and not sync_now) else contextlib.nullcontext()

    # ---- one optimizer step ------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        cfg = self.cfg
        lr = lr_at(step, peak=self.lr, total=cfg.steps, warmup=cfg.warmup_steps, schedule=cfg.schedule,
                   min_ratio=cfg.min_lr_ratio, decay_fraction=cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.batches.batches(step)
        micro = [tuple(t.to(self.device, non_blocking=True) for t in b) for b in micro]
        n_global = all_reduce_sum(torch.tensor(float(sum(self.module.count(b) for b in micro)),
                                               device=self.device), self.info)
        scale = self.info.world_size / n_global.clamp(min=1.0)
        loss_total = torch.zeros((), device=self.device)
        aux_total: dict[str, torch.Tensor] = {}
        self.model.train()
        for i, batch in enumerate(micro):
            sync_now = i == len(micro) - 1
            ctx = self._grad_sync(sync_now)
            with ctx:
                with self.autocast():
                    loss_sum, aux = self.module.loss(self.wrapped, batch)
                (loss_sum * scale).backward()
            loss_total += loss_sum.detach().float()
            if isinstance(aux, dict):
                for k, v in aux.items():
                    aux_total[k] = aux_total.get(k, 0.0) + v.detach().float()
        loss = all_reduce_sum(loss_total, self.info) / n_global.clamp(min=1.0)
        extra = {k: float(all_reduce_sum(v, self.info) / n_global.clamp(min=1.0)) for k, v in aux_total.items()}
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_stats is not None:
            extra.update(self.step_stats())
        return {"loss": float(loss), "lr": lr, "grad_norm": float(grad_norm), "count": float(n_global), **extra}

    # ---- the loop ----------------------------------------------------------------------
    def run(self, start_step: int = 0, stop_at: int | None = None) -> dict:
        """Train from `start_step` to cfg.steps.

        `stop_at` ends the loop early without a final checkpoint, exactly like a killed process
        (tests use it to check that resumption reproduces the uninterrupted run).
        """
        from tqdm.auto import tqdm

        cfg, end = self.cfg, min(self.cfg.steps, stop_at or self.cfg.steps)
        bar = tqdm(total=cfg.steps, initial=start_step, disable=not (cfg.progress and self.info.is_main),
                   desc=self.out_dir.name, dynamic_ncols=True, leave=False, mininterval=1.0)
        last: dict = {}
        t_mark, tokens_mark, steps_mark = time.perf_counter(), 0, 0
        for step in range(start_step, end):
            rec = self.train_step(step)
            steps_mark += 1
            if self.tokens_per_row:
                tokens_mark += self.batches.rows_per_step * self.tokens_per_row
            done = step + 1
            if done % cfg.log_every == 0 or done == end:
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t_mark
                if self.tokens_per_row and dt > 0:
                    rec["tokens_per_s"] = tokens_mark / dt
                    if self.peak:
                        rec["mfu"] = self.flops_per_token * rec["tokens_per_s"] / (self.peak * self.info.world_size)
                rec["step_time_s"] = dt / max(steps_mark, 1)
                t_mark, tokens_mark, steps_mark = time.perf_counter(), 0, 0
                self.logger.log(done, "train", **rec)
            self.history.append(rec["loss"])
            last.update(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}")
            if self.evaluate and (done % cfg.eval_every == 0 or done == cfg.steps):
                ev = self.evaluate(self.model, done)
                self.logger.log(done, "eval", **ev)
                last.update(ev)
                t_mark = time.perf_counter()  # keep evaluation out of the throughput numbers
            if self.sample and self.info.is_main and (
                    (cfg.sample_every and done % cfg.sample_every == 0) or done == cfg.steps):
                self.logger.log(done, "sample", **self.sample(self.model, done))
                t_mark = time.perf_counter()
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                self.save(done)
                t_mark = time.perf_counter()
        bar.close()
        self.logger.close()
        return last
