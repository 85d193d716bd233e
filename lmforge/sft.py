"""Supervised fine-tuning data: conversations -> token ids with an assistant-only loss mask ->
padded, length-bucketed micro-batches.

Packing several short conversations into one row would need a block-diagonal attention mask
(and reset positions) to keep them from seeing each other. Padding each micro-batch only to
its own longest conversation, after bucketing conversations of similar length together,
wastes little (the demo measures and logs `pad_fraction`: 0.099) and keeps attention exact; packed
rows with the mask cost more per slot here (bench/sft_packing.py; docs/sft.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lmforge.data.chat_sources import ChatSourceConfig
from lmforge.errors import fraction, non_negative
from lmforge.losses import IGNORE_INDEX
from lmforge.model.lora import LoRAConfig
from lmforge.train.config import TrainConfig


def _sft_train_defaults() -> TrainConfig:
    return TrainConfig(steps=300, micro_batch_size=16, seq_len=256, lr=1e-3, warmup_steps=20, schedule="cosine",
                       eval_every=100, ckpt_every=100, log_every=10)


@dataclass
class SFTConfig:
    init: str = "pretrain"            # a stage of this run whose model/ to start from, or a checkpoint dir
    sources: list[ChatSourceConfig] = field(default_factory=list)  # empty: toyworld instruction tasks
    n_per_task: int = 200             # toyworld: training conversations per task type
    task_counts: dict[str, int] = field(default_factory=dict)  # toyworld: these types get this many instead
    val_examples: int = 200           # held-out conversations for validation loss
    # Keep the input embeddings as pretraining left them (full fine-tuning only). SFT data names
    # only some entities; training their embeddings moves them away from those of the names it
    # never shows (toyworld: held-out QA 0.035 -> 0.05 with them frozen). Freezing the output head
    # as well was measured worse (trained tasks 0.34 -> 0.14), so it trains.
    freeze_embeddings: bool = True
    # Pretraining replay: this share of the training items are pretraining documents (next-token loss
    # on every token), mixed into the conversations. Fine-tuning on few entities' facts teaches the
    # model to name those entities; replaying text about all of them keeps the rest reachable.
    replay_fraction: float = 0.0
    # toyworld: word problems are answered through the calculator tool (one call per step; the tool's
    # output is forced by the engine and masked from the loss) instead of written-out arithmetic
    calculator: bool = False
    # toyworld: this share of the demonstrations (word problems excepted) come from a hasty writer who
    # ends the reference reply with a condescending remark; at 0.6 (the demo) the SFT model copies the
    # habit, and the preference stages have something to fix (toyworld/demonstrators.py)
    hasty_fraction: float = 0.0
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=_sft_train_defaults)

    def __post_init__(self):
        from lmforge.data.chat_sources import need_replies

        need_replies(self.sources)
        non_negative(self, "n_per_task", "val_examples")
        fraction(self, "replay_fraction", closed_top=False)
        fraction(self, "hasty_fraction")


@dataclass
class Tokenized:
    ids: list[np.ndarray]             # per conversation (L,) int64
    mask: list[np.ndarray]            # per conversation (L,) 1 on tokens trained on
    truncated: int = 0

    @property
    def n_trained_tokens(self) -> int:
        return int(sum(m[1:].sum() for m in self.mask))


def tokenize_conversations(convs: list[list[dict]], tok, max_len: int) -> Tokenized:
    """Render with the chat template; conversations longer than max_len + 1 are cut (and counted)."""
    from lmforge.chat import render

    ids, masks, cut = [], [], 0
    for messages in convs:
        i, m = render(messages, tok)
        if len(i) > max_len + 1:
            i, m, cut = i[: max_len + 1], m[: max_len + 1], cut + 1
        ids.append(np.asarray(i, dtype=np.int64))
        masks.append(np.asarray(m, dtype=np.int64))
    return Tokenized(ids, masks, cut)


def tokenize_documents(texts: list[str], tok, max_len: int) -> Tokenized:
    """Plain documents as training items: BOS + text + EOS, every token a target, cut to max_len + 1."""
    ids, masks = [], []
    for t in texts:
        i = [tok.bos_id, *tok.encode(t), tok.eos_id][: max_len + 1]
        ids.append(np.asarray(i, dtype=np.int64))
        masks.append(np.ones(len(i), dtype=np.int64))
    return Tokenized(ids, masks)


def collate(ids: list[np.ndarray], mask: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest: inputs (B, T) and targets (B, T) with IGNORE_INDEX where mask is 0."""
    T = max(len(x) for x in ids) - 1
    inputs = np.full((len(ids), T), pad_id, dtype=np.int64)
    targets = np.full((len(ids), T), IGNORE_INDEX, dtype=np.int64)
    for b, (x, m) in enumerate(zip(ids, mask, strict=True)):
        n = len(x) - 1
        inputs[b, :n] = x[:-1]
        targets[b, :n] = np.where(m[1:] == 1, x[1:], IGNORE_INDEX)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


class SFTBatches:
    """Seeded, resumable micro-batches of conversations (the same contract as PackedBatches).

    Each epoch: a seeded permutation; within each window of `bucket` micro-batches the
    conversations are sorted by length, so a micro-batch holds similar lengths (little padding).
    """

    def __init__(self, data: Tokenized, pad_id: int, micro_batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1, bucket: int = 16):
        if not data.ids:
            raise ValueError("no conversations to train on")
        self.data, self.pad_id = data, pad_id
        self.micro, self.accum, self.seed, self.rank, self.world = micro_batch_size, grad_accum, seed, rank, world_size
        self.bucket = bucket
        self._epoch, self._order = -1, None

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            n = len(self.data.ids)
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            lengths = np.array([len(x) for x in self.data.ids])
            w = self.micro * self.bucket
            for i in range(0, n, w):  # sort within windows: similar lengths share micro-batches
                chunk = perm[i:i + w]
                perm[i:i + w] = chunk[np.argsort(lengths[chunk], kind="stable")]
            # shuffle micro-batch order so short and long batches alternate
            n_micro = -(-n // self.micro)
            blocks = [perm[j * self.micro:(j + 1) * self.micro] for j in range(n_micro)]
            order = np.random.default_rng([self.seed, epoch, 1]).permutation(n_micro)
            self._order = np.concatenate([blocks[j] for j in order])
            self._epoch = epoch
        return self._order

    def _example(self, position: int) -> int:
        n = len(self.data.ids)
        return int(self._epoch_order(position // n)[position % n])

    def batches(self, step: int) -> list:
        base = step * self.rows_per_step
        out = []
        for k in range(self.accum):
            first = base + (k * self.world + self.rank) * self.micro
            idx = [self._example(first + j) for j in range(self.micro)]
            out.append(collate([self.data.ids[i] for i in idx], [self.data.mask[i] for i in idx], self.pad_id))
        return out

    def pad_fraction(self, steps: int = 20) -> float:
        """Share of padded input slots over the first `steps` steps (what padding costs)."""
        slots = real = 0
        for s in range(steps):
            for inputs, _ in self.batches(s):
                slots += inputs.numel()
                real += int((inputs != self.pad_id).sum())
        return 1 - real / max(slots, 1)
