"""Perplexity and bits per byte of a text corpus.

Documents: a `.txt` file is split at blank lines (paragraphs); a `.jsonl`/`.json` file gives one
document per record's `text` field; a hub dataset one per row of its text column. Each document
starts with BOS and is scored in windows of the model's context (`max_seq_len`): every window
predicts its tokens from the window's tokens only, and consecutive windows share one token, so
each token is predicted exactly once (lm-evaluation-harness's rolling log-likelihood).

Metrics, over the whole corpus (total negative log-likelihood in nats, NLL):
    token_perplexity  exp(NLL / tokens)        depends on the tokenizer
    word_perplexity   exp(NLL / words)         words = whitespace-separated pieces
    byte_perplexity   exp(NLL / bytes)         bytes = UTF-8 bytes of the documents
    bits_per_byte     NLL / ln 2 / bytes       comparable across tokenizers
Standard errors: bootstrap over documents (1,000 resamples); none for a single document.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.eval.tasks.base import (
    Loaded,
    Task,
    TaskOptions,
    TaskOutput,
    apply_limit,
    bootstrap_stderr,
    get_field,
    read_hf,
    read_local,
)


def read_documents(path: Path, field: str = "text") -> list[str]:
    if path.is_dir():
        raise LmforgeError(f"{path}: is a directory, expected a data file (.txt, .jsonl or .json)")
    if path.suffix in (".jsonl", ".json"):
        return [get_field(rec, where, [field], "a string (the document)") for where, rec in read_local(path)]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]


class PerplexityTask(Task):
    kind = "perplexity"

    def __init__(self, name: str, description: str, hf: str | None, hf_config: str | None, split: str,
                 field: str = "text"):
        self.name, self.description = name, description
        self.hf, self.hf_config, self.split, self.field = hf, hf_config, split, field

    def load(self, opts: TaskOptions) -> Loaded:
        if opts.path is not None:
            path = Path(opts.path)
            source, docs = str(path), read_documents(path)
        elif opts.hf or self.hf:
            split = opts.split or self.split
            source = f"{opts.hf or self.hf}[{split}]"
            records = read_hf(opts.hf or self.hf, opts.config or self.hf_config, split)
            docs = [get_field(r, w, [self.field], "a string (the document)") for w, r in records]
            docs = [d.strip() for d in docs if d.strip()]
        else:
            raise LmforgeError(f"{self.name}: no default dataset; give a text file with --data FILE or "
                               f"{self.name}:path=FILE")
        if not docs:
            raise LmforgeError(f"{source}: no text (expected at least one non-empty document)")
        return Loaded(apply_limit(docs, opts.limit), [], source, {"documents": len(docs)})

    def evaluate(self, lm, data: Loaded, opts: TaskOptions) -> TaskOutput:
        import numpy as np

        scored = lm.rolling_loglikelihood(data.docs, desc=self.name)
        nll = np.array([-logprob for logprob, _ in scored], dtype=np.float64)
        tokens = np.array([n for _, n in scored], dtype=np.float64)
        words = np.array([len(d.split()) for d in data.docs], dtype=np.float64)
        n_bytes = np.array([len(d.encode("utf-8")) for d in data.docs], dtype=np.float64)
        ratios = {"token_perplexity": (tokens, True), "word_perplexity": (words, True),
                  "byte_perplexity": (n_bytes, True), "bits_per_byte": (n_bytes, False)}

        def metric(name: str, idx) -> float:
            units, exponentiate = ratios[name]
            per_unit = nll[idx].sum() / max(units[idx].sum(), 1.0)
            return math.exp(per_unit) if exponentiate else per_unit / math.log(2)

        everything = np.arange(len(data.docs))
        aggregate = {name: metric(name, everything) for name in ratios}
        stderr = {name: bootstrap_stderr(lambda idx, name=name: metric(name, idx), len(data.docs), opts.seed)
                  for name in ratios}
        samples = [{"doc_id": i, "text": d[:200], "nll": float(nll[i]), "tokens": int(tokens[i]),
                    "bytes": int(n_bytes[i])} for i, d in enumerate(data.docs)]
        return TaskOutput({}, samples, aggregate, stderr)


TEXT_TASKS = [
    PerplexityTask("perplexity", "perplexity and bits per byte of a local text file (.txt paragraphs or .jsonl text)",
                   None, None, "test"),
    PerplexityTask("wikitext", "WikiText-2 test pages: perplexity and bits per byte",
                   "EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test", field="page"),
]
