"""Stage `tokenizer`: train byte-level BPE on the pretraining corpus (or adopt `tokenizer.path`);
report compression (UTF-8 bytes per token) on documents the tokenizer never saw."""

from __future__ import annotations

import itertools
import zlib

from lmforge.pipeline import Stage
from lmforge.stages.common import pretraining_documents

MAX_HELDOUT_DOCS = 2000


def is_heldout(text: str, fraction: float = 0.02) -> bool:
    """A stable ~2% of documents, chosen by content hash, is kept out to measure compression."""
    return zlib.crc32(text.encode("utf-8")) % 10_000 < fraction * 10_000


def split_heldout(docs, heldout: list[str]):
    """Yield the documents to train on; collect the held-out ones (up to MAX_HELDOUT_DOCS) in `heldout`."""
    for doc in docs:
        if is_heldout(doc) and len(heldout) < MAX_HELDOUT_DOCS:
            heldout.append(doc)
        else:
            yield doc


def run(ctx) -> dict:
    from lmforge.tokenizer import Tokenizer, save_tokenizer, train_tokenizer

    tc, out = ctx.cfg.tokenizer, ctx.stage_dir("tokenizer")
    if tc.path:  # bring your own lmforge tokenizer: copy it in and measure it like a trained one
        tok = Tokenizer.load(tc.path)
        save_tokenizer(tok.tok, out)
        heldout = list(itertools.islice(filter(is_heldout, pretraining_documents(ctx)), MAX_HELDOUT_DOCS))
        metrics = {"vocab_size": tok.vocab_size, "source": str(tc.path)}
    else:
        heldout = []
        tok = train_tokenizer(split_heldout(pretraining_documents(ctx), heldout), out, vocab_size=tc.vocab_size,
                              min_frequency=tc.min_frequency, max_chars=tc.max_chars)
        metrics = {"vocab_size": tok.vocab_size}
    if heldout:
        metrics["bytes_per_token_heldout"] = round(tok.bytes_per_token(heldout), 4)
    return metrics


STAGE = Stage("tokenizer", run, description="train a byte-level BPE tokenizer",
              inputs=("seed", "toyworld", "curate", "data", "tokenizer"))
