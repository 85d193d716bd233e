"""Pack documents into fixed-length training rows that start on document boundaries.

A row has `seq_len + 1` token slots: inputs are slots[:-1], targets slots[1:]. Rows are filled
greedily in document order with whole documents from one shard; when the next document does not
fit, the row is closed and padded. Compared with concatenate-and-chop, every row begins with BOS
and no document is cut at an arbitrary point, at the price of some padding (reported by
`PackedDataset.pad_fraction`).

Documents longer than a row are the exception: they are cut into consecutive, non-overlapping
chunks of `seq_len + 1` tokens, each its own row; the final partial chunk is then treated like a
short document (it starts a row that may take more documents after it). Non-overlapping chunks
keep the "every content token appears in exactly one row" invariant; the cost is that the first
token of each continuation chunk is an input only, never a target (1 in seq_len + 1 targets of
long documents).

By default documents in one row attend to each other; with `data.doc_mask` each attends only
to itself: `document_segments` numbers the documents of a row from their BOS tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lmforge.data.shards import load_meta
from lmforge.errors import LmforgeError

IGNORE_INDEX = -100  # targets on padding slots (torch cross_entropy's default ignore_index)
PAD_INPUT = 0        # the pad id is a tokenizer detail; padded inputs never reach a counted target


def document_segments(inputs: torch.Tensor, bos_id: int) -> torch.Tensor:
    """inputs (B, T) -> (B, T) index of the document each token belongs to within its row.

    Rows start on a document (or a continuation piece of one) and each document starts with BOS,
    so counting the BOS tokens seen so far numbers them; padding joins the last document.
    """
    return (inputs == bos_id).cumsum(dim=1)


def _chain_from_zero(nxt: np.ndarray) -> np.ndarray:
    """Nodes on the path 0 -> nxt[0] -> ... (nxt: (n+1,), nxt[i] > i for i < n, nxt[n] = n).

    Pointer doubling: after round k, `on` holds every node within 2**k - 1 steps of 0, and `jump`
    is nxt applied 2**k times. O(n log n_rows) in numpy instead of a Python loop over rows.
    """
    n = len(nxt) - 1
    on = np.zeros(n + 1, dtype=bool)
    on[0] = True
    jump = nxt.copy()
    while not on[n]:
        on[jump[on]] = True
        jump = jump[jump]
    return np.flatnonzero(on[:n])


def pack_rows(docs: np.ndarray, seq_len: int) -> np.ndarray:
    """docs: (n_docs, 3) int64 (shard, start, length) in document order -> rows (n_rows, 3) int64
    (shard, start, n_tokens) with n_tokens <= seq_len + 1; deterministic, no token dropped."""
    if seq_len < 1:
        raise LmforgeError(f"seq_len: expected a positive integer, got {seq_len}")
    cap = seq_len + 1
    docs = np.asarray(docs, dtype=np.int64).reshape(-1, 3)
    docs = docs[docs[:, 2] > 0]
    if len(docs) == 0:
        return np.zeros((0, 3), np.int64)

    # 1) Cut long documents into pieces of at most `cap` tokens; pieces are what gets packed.
    n_chunks = -(-docs[:, 2] // cap)                        # (n_docs,) ceil(len / cap)
    doc_of = np.repeat(np.arange(len(docs)), n_chunks)     # (n_pieces,) source doc of each piece
    first = np.cumsum(n_chunks) - n_chunks                  # (n_docs,) index of each doc's first piece
    chunk_no = np.arange(len(doc_of)) - first[doc_of]       # (n_pieces,) 0, 1, ... within its doc
    shard = docs[doc_of, 0]
    start = docs[doc_of, 1] + chunk_no * cap
    length = np.minimum(cap, docs[doc_of, 2] - chunk_no * cap)

    # 2) Lay pieces on one number line; a gap larger than a row wherever two consecutive pieces are
    #    not contiguous (new shard, or a hole in the index) so no row can span it.
    brk = np.zeros(len(length), dtype=bool)
    brk[1:] = (shard[1:] != shard[:-1]) | (start[1:] != start[:-1] + length[:-1])
    pos = np.cumsum(length) - length + np.cumsum(brk) * (cap + 1)  # (n_pieces,) start on the line
    end = pos + length

    # 3) Greedy: a row starting at piece i takes pieces i..nxt[i]-1, all that end within cap slots.
    nxt = np.searchsorted(end, pos + cap, side="right")    # (n_pieces,), > i since length <= cap
    nxt = np.append(nxt, len(length))
    row_first = _chain_from_zero(nxt)                       # (n_rows,) piece that starts each row
    row_last = nxt[row_first] - 1
    n_tokens = end[row_last] - pos[row_first]
    return np.stack([shard[row_first], start[row_first], n_tokens], axis=1).astype(np.int64)


class PackedDataset:
    """Rows of one split of a prepared data dir, served as (inputs, targets) batches."""

    def __init__(self, data_dir, split: str, seq_len: int):
        self.data_dir, self.split, self.seq_len = Path(data_dir), split, seq_len
        meta = load_meta(data_dir)
        if split not in meta["splits"]:
            raise LmforgeError(f"{data_dir}: no split '{split}' (splits: {', '.join(meta['splits'])})")
        info = meta["splits"][split]
        if info["n_docs"] == 0:
            raise LmforgeError(f"{data_dir}: split '{split}' has no documents")
        self._dtype = np.dtype(meta["dtype"])
        self._paths = [self.data_dir / name for name in info["shards"]]
        for path in self._paths:
            if not path.is_file():
                raise LmforgeError(f"{path}: shard file not found (incomplete data dir; prepare it again)")
        self._open()
        self.doc_index_name = info["docs"]
        docs = np.load(self.data_dir / info["docs"])  # (n_docs, 3) int64
        # Packing is deterministic and vectorised (about a second for 10M docs), so rows are
        # recomputed and cached in memory rather than stored on disk per seq_len.
        self.rows = pack_rows(docs, seq_len)          # (n_rows, 3) (shard, start, n_tokens)
        self.n_tokens = int(self.rows[:, 2].sum())

    def _open(self) -> None:
        self.shards = [np.memmap(p, dtype=self._dtype, mode="r") for p in self._paths]  # (shard_len,) each

    # A pickled np.memmap carries a full copy of its data; DataLoader workers started with "spawn"
    # would copy every shard. Send the paths instead and map the files again on the other side.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "shards"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def pad_fraction(self) -> float:
        """Share of row slots that are padding: what start-aligned packing costs on this corpus."""
        return 1.0 - self.n_tokens / max(1, len(self.rows) * (self.seq_len + 1))

    def get_batch(self, row_indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows -> inputs (B, T) int64 and targets (B, T) int64 with T = seq_len; targets are
        the inputs shifted by one, and IGNORE_INDEX wherever the target slot is padding."""
        cap = self.seq_len + 1
        slots = np.full((len(row_indices), cap), PAD_INPUT, dtype=np.int64)  # (B, T + 1)
        n = np.empty(len(row_indices), dtype=np.int64)                       # (B,) real tokens per row
        for b, r in enumerate(row_indices):
            shard, start, n[b] = self.rows[r]
            slots[b, :n[b]] = self.shards[shard][start:start + n[b]]
        inputs = torch.from_numpy(slots[:, :-1].copy())                     # (B, T)
        targets = slots[:, 1:].copy()                                       # (B, T)
        targets[np.arange(cap - 1)[None, :] >= (n[:, None] - 1)] = IGNORE_INDEX  # target slot j+1 >= n
        return inputs, torch.from_numpy(targets)
