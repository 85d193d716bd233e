"""Where each optimizer step's rows come from: a seeded, resumable stream of packed rows.

Epoch e re-packs the documents in a fresh seeded order (lmforge.data.epochs); the epochs are
laid end to end and step s takes the next `rows_per_step` rows of that stream. The stream is a
function of the seed alone, so a resumed run reads exactly the rows the uninterrupted run
would have read, and N processes with accumulation A read the same global batch as one
process with accumulation N*A.
"""

from __future__ import annotations

import bisect

from lmforge.data.epochs import EpochRows


class PackedBatches:
    """Micro-batches for one optimizer step on one rank.

    Global batch = micro_batch_size * grad_accum * world_size rows. Rank r's k-th micro-batch is
    global micro-batch k * world_size + r, so the union over ranks is the single-process batch.
    """

    def __init__(self, dataset, micro_batch_size: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError("no training rows")
        self.epochs = EpochRows(dataset, seed)
        self.micro, self.accum = micro_batch_size, grad_accum
        self.rank, self.world = rank, world_size
        self._starts = [0]  # _starts[e]: stream position of epoch e's first row

    @property
    def rows_per_step(self) -> int:
        return self.micro * self.accum * self.world

    def _row(self, position: int) -> list[int]:
        while self._starts[-1] <= position:
            self._starts.append(self._starts[-1] + len(self.epochs.rows(len(self._starts) - 1)))
        epoch = bisect.bisect_right(self._starts, position) - 1
        return self.epochs.rows(epoch)[position - self._starts[epoch]]

    def batches(self, step: int) -> list:
        base = step * self.rows_per_step
        out = []
        for k in range(self.accum):
            first = base + (k * self.world + self.rank) * self.micro
            out.append(self.epochs.get_batch([self._row(first + j) for j in range(self.micro)]))
        return out
