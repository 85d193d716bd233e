"""Where each optimizer step's rows come from: a seeded, resumable order over packed rows.

The order is a function of (seed, step) alone, so a resumed run reads exactly the rows
the uninterrupted run would have read, and N processes with accumulation A read the
same global batch as one process with accumulation N*A.
"""

from __future__ import annotations

import numpy as np


class PackedBatches:
    """Micro-batches of `dataset` rows for one optimizer step on one rank.

    Global batch = micro_batch_size * grad_accum * world_size rows. Rows are drawn from a
    fresh seeded permutation each epoch. Rank r's k-th micro-batch is global micro-batch
    k * world_size + r, so the union over ranks is the single-process batch.
    """

    def __init__(self, dataset, micro_batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError("no training rows")
        self.dataset, self.micro, self.accum = dataset, micro_batch_size, grad_accum
        self.seed, self.rank, self.world = seed, rank, world_size
        self._perm_epoch, self._perm = -1, None

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def _row(self, position: int) -> int:
        n = len(self.dataset)
        epoch = position // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[position % n])

    def batches(self, step: int) -> list:
        base = step * self.rows_per_step
        out = []
        for k in range(self.accum):
            first = base + (k * self.world + self.rank) * self.micro
            out.append(self.dataset.get_batch([self._row(first + j) for j in range(self.micro)]))
        return out
