"""Per-epoch re-packing of training rows: every document once per epoch, rows start on a
document, fresh order each epoch, deterministic from the seed."""

import numpy as np

from lmforge.data import PackedDataset, pack_rows
from lmforge.data.epochs import EpochRows, first_fit, split_pieces
from lmforge.losses import IGNORE_INDEX


def test_first_fit_places_every_piece_once_within_capacity():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=500)
    rows = first_fit(lengths, rng.permutation(500), cap=64, window=8)
    placed = sorted(p for r in rows for p in r)
    assert placed == list(range(500))
    assert all(sum(lengths[p] for p in r) <= 64 for r in rows)
    # first-fit over a window wastes less than closing a row at the first misfit
    greedy = first_fit(lengths, rng.permutation(500), cap=64, window=1)
    assert len(rows) < len(greedy)


def test_split_pieces_cuts_long_documents():
    docs = np.array([[0, 0, 10], [0, 10, 25], [1, 0, 0]])
    assert split_pieces(docs, 10).tolist() == [[0, 0, 10], [0, 10, 10], [0, 20, 10], [0, 30, 5]]


def test_epoch_rows(toy_data):
    data_dir, tok = toy_data
    ds = PackedDataset(data_dir, "train", 32)
    er = EpochRows(ds, seed=0)
    e0, e1 = er.rows(0), er.rows(1)
    n_pieces = len(er.pieces)
    assert sorted(p for r in e0 for p in r) == list(range(n_pieces))
    assert sorted(p for r in e1 for p in r) == list(range(n_pieces))
    assert e0 != e1                                   # a fresh packing each epoch
    assert EpochRows(ds, seed=0).rows(1) == e1        # ... that depends on the seed alone
    inputs, targets = er.get_batch(e0[:8])
    assert inputs.shape == targets.shape == (8, 32)
    # a row starts with BOS exactly when its first piece starts a document (not a continuation)
    docs = np.load(data_dir / ds.doc_index_name)
    doc_starts = {(int(s), int(b)) for s, b, _ in docs}
    for b, row in enumerate(e0[:8]):
        shard, start, _ = er.pieces[row[0]]
        assert (int(inputs[b, 0]) == tok.bos_id) == ((int(shard), int(start)) in doc_starts)
    valid = targets != IGNORE_INDEX
    assert (targets[:, :-1][valid[:, :-1]] == inputs[:, 1:][valid[:, :-1]]).all()
    # same tokens as the fixed packing of the same split, just arranged differently
    fixed = pack_rows(np.load(data_dir / ds.doc_index_name), 32)
    assert int(er.pieces[:, 2].sum()) == int(fixed[:, 2].sum())
    assert er.pad_fraction(0) < ds.pad_fraction
