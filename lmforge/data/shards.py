"""Tokenize a document stream into memory-mapped token shards with a train/val split.

Layout of `out_dir` (what `PackedDataset` and the trainer read):
    {split}_{i:05d}.bin   raw token ids (dtype in meta.json), np.memmap-readable; docs never straddle shards
    {split}_docs.npy      int64 (n_docs, 3): (shard index, start offset, length) of every document
    meta.json             written LAST: its presence marks a complete dataset

Each document is stored as [bos_id] + ids + [eos_id], so a model sees where documents start
and learns to emit EOS. The split of a document depends only on (seed, its text): a re-run with
other sources added, another order or another batch size keeps every old val document in val,
and exact duplicates always land in the same split (no train/val leakage through copies).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lmforge.errors import LmforgeError
from lmforge.tokenizer import Tokenizer
from lmforge.utils import atomic_write_bytes, write_json

SPLITS = ("train", "val")
_SHARD_RE = re.compile(r"^(train|val)_\d{5}\.bin$")


def _unit_hash(text: str, key: bytes) -> float:
    """Uniform in [0, 1), a pure function of (seed, text): the split decision."""
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest()
    return int.from_bytes(h, "little") / 2.0**64


def _flatten(ids: list[list[int]], bos: int, eos: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens (sum(len)+2n,), lengths (n,)), each doc wrapped in bos ... eos."""
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 2  # (n,) with bos/eos
    out = np.empty(int(lens.sum()), dtype=dtype)
    starts = np.cumsum(lens) - lens  # (n,) exclusive prefix sum: where each doc begins in `out`
    content = np.ones(out.shape[0], dtype=bool)
    content[starts] = False
    content[starts + lens - 1] = False
    out[starts] = bos
    out[starts + lens - 1] = eos
    out[content] = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(content.sum()))
    return out, lens


class _SplitWriter:
    """Accumulates one split's tokens per shard in numpy arrays and writes full shards atomically."""

    def __init__(self, name: str, out_dir: Path, dtype, shard_tokens: int):
        self.name, self.out_dir, self.dtype, self.shard_tokens = name, out_dir, dtype, shard_tokens
        self.cur: list[np.ndarray] = []      # token arrays of the unwritten shard
        self.cur_lens: list[np.ndarray] = []  # doc lengths of the unwritten shard
        self.cur_tokens = 0
        self.shard_lens: list[np.ndarray] = []  # per written shard: (n_docs_in_shard,) lengths
        self.n_docs = 0
        self.n_tokens = 0

    def add(self, tokens: np.ndarray, lens: np.ndarray) -> None:
        """Append whole docs (tokens: (sum(lens),), lens: (n,)), starting a new shard where one is full."""
        i, pos = 0, 0
        while i < len(lens):
            room = self.shard_tokens - self.cur_tokens
            k = int(np.searchsorted(np.cumsum(lens[i:]), room, side="right"))  # docs that still fit
            if k == 0:
                if self.cur_tokens:
                    self.flush()
                    continue
                k = 1  # a doc longer than a whole shard gets a shard of its own (never split here)
            n = int(lens[i:i + k].sum())
            self.cur.append(tokens[pos:pos + n])
            self.cur_lens.append(lens[i:i + k])
            self.cur_tokens += n
            i, pos = i + k, pos + n
        self.n_docs += len(lens)
        self.n_tokens += int(lens.sum())

    def shard_name(self, i: int) -> str:
        return f"{self.name}_{i:05d}.bin"

    def flush(self) -> None:
        if not self.cur_tokens:
            return
        data = np.concatenate(self.cur)
        atomic_write_bytes(self.out_dir / self.shard_name(len(self.shard_lens)), data.data)
        self.shard_lens.append(np.concatenate(self.cur_lens))
        self.cur, self.cur_lens, self.cur_tokens = [], [], 0

    def pop_doc(self, g: int) -> np.ndarray:
        """Remove document number `g` (0-based, in write order) and return its tokens.

        Only used by the at-least-one-val-doc rule, i.e. on small corpora, so rewriting a shard is cheap.
        """
        self.flush()
        k = 0
        while g >= len(self.shard_lens[k]):
            g -= len(self.shard_lens[k])
            k += 1
        lens = self.shard_lens[k]
        start = int(lens[:g].sum())
        path = self.out_dir / self.shard_name(k)
        data = np.fromfile(path, dtype=self.dtype)
        doc = data[start:start + lens[g]].copy()
        if len(lens) == 1:  # the shard held only this doc: drop it and renumber the later shards
            os.unlink(path)
            for j in range(k + 1, len(self.shard_lens)):
                os.replace(self.out_dir / self.shard_name(j), self.out_dir / self.shard_name(j - 1))
            del self.shard_lens[k]
        else:
            atomic_write_bytes(path, np.delete(data, np.s_[start:start + lens[g]]).data)
            self.shard_lens[k] = np.delete(lens, g)
        self.n_docs -= 1
        self.n_tokens -= len(doc)
        return doc

    def finish(self) -> dict:
        self.flush()
        parts = []
        for k, lens in enumerate(self.shard_lens):
            starts = np.cumsum(lens) - lens
            parts.append(np.stack([np.full_like(lens, k), starts, lens], axis=1))
        docs = np.concatenate(parts) if parts else np.zeros((0, 3), np.int64)  # (n_docs, 3) int64
        buf = io.BytesIO()
        np.save(buf, docs.astype(np.int64))
        atomic_write_bytes(self.out_dir / f"{self.name}_docs.npy", buf.getvalue())
        return {"n_docs": self.n_docs, "n_tokens": self.n_tokens,
                "shards": [self.shard_name(k) for k in range(len(self.shard_lens))],
                "docs": f"{self.name}_docs.npy"}


def prepare_shards(docs: Iterable[str], tokenizer: Tokenizer, out_dir, *, val_fraction: float = 0.05,
                   seed: int = 0, shard_tokens: int = 50_000_000, batch_docs: int = 1024,
                   progress: bool = True, source: str = "") -> dict:
    """Tokenize `docs` (in parallel, `batch_docs` at a time) into shards under `out_dir`; return meta.

    `source` describes where the documents came from (kept in meta.json for `shards_are_current`).

    Memory stays bounded by one shard per split plus one batch: tokens go from the tokenizer's
    lists straight into numpy arrays, and a shard is written as soon as the next doc would overflow it.
    """
    from tqdm import tqdm

    if not 0.0 <= val_fraction < 1.0:
        raise LmforgeError(f"data.val_fraction: expected a number in [0, 1), got {val_fraction}")
    if shard_tokens < 1 or batch_docs < 1:
        raise LmforgeError(f"data: expected shard_tokens >= 1 and batch_docs >= 1, "
                           f"got {shard_tokens} and {batch_docs}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Remove the old completion marker first: until the new one is written, out_dir is "not prepared".
    (out / "meta.json").unlink(missing_ok=True)
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.uint32)
    writers = {s: _SplitWriter(s, out, dtype, shard_tokens) for s in SPLITS}
    key = str(seed).encode()
    # Fallback candidates if hashing leaves a split empty: the train doc closest to val, and vice versa.
    best_train = (2.0, -1)  # (u, doc number in train), lowest u
    best_val = (-1.0, -1)   # (u, doc number in val), highest u

    it = iter(docs)
    bar = tqdm(unit="doc", desc="tokenize", disable=not progress)
    try:
        while batch := [t for t in itertools.islice(it, batch_docs) if t]:
            ids = tokenizer.encode_batch(batch)  # Rust threads; list[list[int]]
            us = [_unit_hash(t, key) for t in batch]
            for split in SPLITS:
                w = writers[split]
                sel = [j for j, u in enumerate(us) if (u < val_fraction) == (split == "val")]
                if not sel:
                    continue
                for rank, j in enumerate(sel):
                    if split == "train" and us[j] < best_train[0]:
                        best_train = (us[j], w.n_docs + rank)
                    if split == "val" and us[j] > best_val[0]:
                        best_val = (us[j], w.n_docs + rank)
                w.add(*_flatten([ids[j] for j in sel], tokenizer.bos_id, tokenizer.eos_id, dtype))
            bar.update(len(batch))
            bar.set_postfix(tokens=writers["train"].n_tokens + writers["val"].n_tokens, refresh=False)
    finally:
        bar.close()

    train, val = writers["train"], writers["val"]
    if train.n_docs + val.n_docs == 0:
        raise LmforgeError(f"{out}: empty corpus (no documents to tokenize)")
    # Small corpora: training needs data first; then, from 2 docs on, evaluation must not silently
    # have nothing to do. The doc moved is the one whose hash is nearest the threshold, so the
    # choice still depends only on (seed, texts), not on their order.
    if train.n_docs == 0:
        doc = val.pop_doc(best_val[1])
        train.add(doc, np.array([len(doc)], np.int64))
    if val_fraction > 0 and val.n_docs == 0 and train.n_docs >= 2:
        doc = train.pop_doc(best_train[1])
        val.add(doc, np.array([len(doc)], np.int64))

    splits = {s: writers[s].finish() for s in SPLITS}
    keep = {name for info in splits.values() for name in info["shards"]}
    for f in out.iterdir():  # shards of an earlier, larger run in the same directory
        if _SHARD_RE.match(f.name) and f.name not in keep:
            f.unlink()
    meta = {
        "format": "lmforge-shards-v1",
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "seed": seed,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "source": source,
        "splits": splits,
    }
    write_json(out / "meta.json", meta)
    return meta


def tokenizer_fingerprint(tokenizer) -> str | None:
    """sha256 of the tokenizer's JSON: shards made with another tokenizer are not reusable."""
    to_str = getattr(getattr(tokenizer, "tok", None), "to_str", None)
    return hashlib.sha256(to_str().encode()).hexdigest() if to_str else None


def shards_are_current(out_dir, tokenizer, **made_with) -> bool:
    """True when `out_dir` holds complete shards made with this very tokenizer and with the same
    `made_with` settings as recorded in meta.json (seed, val_fraction, source): shards left by a run
    with other data or another split are remade, never reused."""
    meta_path = Path(out_dir) / "meta.json"
    if not meta_path.exists():
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # damaged: remake
    # a setting meta.json does not record (shards made before it was recorded) is not held against them
    return meta.get("tokenizer_sha256") == tokenizer_fingerprint(tokenizer) and \
        all(meta[k] == v for k, v in made_with.items() if k in meta)


def load_meta(out_dir) -> dict:
    """Read `meta.json` of a prepared dataset; LmforgeError if it is missing or unreadable."""
    path = Path(out_dir) / "meta.json"
    if not path.is_file():
        raise LmforgeError(f"{out_dir}: data not prepared (no meta.json); run the data preparation "
                           "stage (prepare_shards) first")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path}: invalid JSON ({e.msg})") from None
    except OSError as e:
        raise LmforgeError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(meta, dict) or "splits" not in meta or "dtype" not in meta:
        raise LmforgeError(f"{path}: not an lmforge shard index (expected keys 'dtype' and 'splits')")
    return meta
