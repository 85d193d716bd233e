"""Training rows re-packed every epoch from a fresh, seeded order of documents.

Fixed rows (the same documents side by side every epoch) let a small model memorize each row
as a sequence: it learns to continue a row from the documents before it instead of learning
the facts a document states. Shuffling documents before packing, each epoch, removes that
shortcut (it is what large pretraining pipelines do by shuffling before they pack).

Rows still start at a document start; documents are placed first-fit into a small window of
open rows, which wastes far fewer slots than closing a row at the first document that does
not fit. Long documents are cut into pieces of at most seq_len + 1 tokens first.
Everything is a function of (seed, epoch), so resumption and multi-process runs stay exact.
"""

from __future__ import annotations

import numpy as np
import torch

from lmforge.data.packing import IGNORE_INDEX, PAD_INPUT, PackedDataset


def split_pieces(docs: np.ndarray, cap: int) -> np.ndarray:
    """docs (n_docs, 3) (shard, start, length) -> pieces (n_pieces, 3), each at most `cap` tokens."""
    docs = docs[docs[:, 2] > 0]
    n_chunks = -(-docs[:, 2] // cap)                       # (n_docs,) ceil(len / cap)
    doc_of = np.repeat(np.arange(len(docs)), n_chunks)     # (n_pieces,)
    first = np.cumsum(n_chunks) - n_chunks
    chunk_no = np.arange(len(doc_of)) - first[doc_of]
    start = docs[doc_of, 1] + chunk_no * cap
    length = np.minimum(cap, docs[doc_of, 2] - chunk_no * cap)
    return np.stack([docs[doc_of, 0], start, length], axis=1).astype(np.int64)


def first_fit(lengths: np.ndarray, order: np.ndarray, cap: int, window: int = 16) -> list[list[int]]:
    """Pack pieces (in `order`) into rows of at most `cap` tokens; returns piece ids per row.

    Each piece goes into the first of up to `window` open rows with room for it; when a new row
    would exceed the window, the oldest open row is closed. Rows come out roughly in `order`.
    """
    rows: list[list[int]] = []
    open_rows: list[list] = []   # [free slots, piece ids]
    for pid in order.tolist():
        need = int(lengths[pid])
        for row in open_rows:
            if row[0] >= need:
                row[0] -= need
                row[1].append(pid)
                break
        else:
            open_rows.append([cap - need, [pid]])
            if len(open_rows) > window:
                rows.append(open_rows.pop(0)[1])
        if open_rows and open_rows[0][0] == 0:
            rows.append(open_rows.pop(0)[1])
    rows.extend(r[1] for r in open_rows)
    return rows


class EpochRows:
    """The rows of epoch e: a fresh permutation of the split's documents, packed first-fit."""

    def __init__(self, dataset: PackedDataset, seed: int, window: int = 16):
        self.ds, self.seed, self.window = dataset, seed, window
        self.cap = dataset.seq_len + 1
        docs = np.load(dataset.data_dir / dataset.doc_index_name)      # (n_docs, 3)
        self.pieces = split_pieces(docs, self.cap)                     # (n_pieces, 3)
        self._cache: dict[int, list[list[int]]] = {}

    def rows(self, epoch: int) -> list[list[int]]:
        if epoch not in self._cache:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pieces))
            if len(self._cache) >= 2:  # steps only ever move forward through epochs
                self._cache.pop(min(self._cache))
            self._cache[epoch] = first_fit(self.pieces[:, 2], order, self.cap, self.window)
        return self._cache[epoch]

    def pad_fraction(self, epoch: int = 0) -> float:
        rows = self.rows(epoch)
        return 1.0 - float(self.pieces[:, 2].sum()) / (len(rows) * self.cap)

    def get_batch(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of piece ids -> inputs (B, T), targets (B, T) with IGNORE_INDEX on padding."""
        slots = np.full((len(rows), self.cap), PAD_INPUT, dtype=np.int64)   # (B, T + 1)
        n = np.zeros(len(rows), dtype=np.int64)
        for b, row in enumerate(rows):
            for pid in row:
                shard, start, length = self.pieces[pid]
                slots[b, n[b]:n[b] + length] = self.ds.shards[shard][start:start + length]
                n[b] += length
        targets = slots[:, 1:].copy()
        targets[np.arange(self.cap - 1)[None, :] >= (n[:, None] - 1)] = IGNORE_INDEX
        return torch.from_numpy(slots[:, :-1].copy()), torch.from_numpy(targets)
