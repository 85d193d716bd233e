"""Stage `tokenizer`: train byte-level BPE on the pretraining corpus; report compression."""

from __future__ import annotations

import zlib

from lmforge.pipeline import Stage
from lmforge.stages.common import pretraining_documents


def is_heldout(text: str, fraction: float = 0.02) -> bool:
    """A stable ~2% of documents, chosen by content hash, is kept out to measure compression."""
    return zlib.crc32(text.encode("utf-8")) % 10_000 < fraction * 10_000


def run(ctx) -> dict:
    from lmforge.tokenizer import train_tokenizer

    tc = ctx.cfg.tokenizer
    heldout: list[str] = []

    def training_texts():
        for doc in pretraining_documents(ctx):
            if is_heldout(doc) and len(heldout) < 2000:
                heldout.append(doc)
            else:
                yield doc

    tok = train_tokenizer(training_texts(), ctx.stage_dir("tokenizer"), vocab_size=tc.vocab_size,
                          min_frequency=tc.min_frequency, max_chars=tc.max_chars)
    metrics = {"vocab_size": tok.vocab_size}
    if heldout:
        metrics["bytes_per_token_heldout"] = round(tok.bytes_per_token(heldout), 4)
    return metrics


STAGE = Stage("tokenizer", run, description="train a byte-level BPE tokenizer")
