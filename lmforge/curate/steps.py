"""datatrove pipeline steps that lmforge's curation adds to datatrove's own.

- `RegexWordTokenizer`: datatrove's English word tokenizer needs NLTK's punkt data or spaCy,
  neither of which is available offline; the Gopher, C4, FineWeb and MinHash steps take this
  one instead (words: runs of letters/digits with inner apostrophes, and single symbols;
  sentences: up to . ! ? followed by a space, or a line end).
- `SourceReader`: lmforge's readers (text, JSONL, parquet, HF datasets), so that bad input is a
  one-line LmforgeError naming the file and line; datatrove's readers skip bad lines with a warning.
- `ShardReader` / `ShardWriter`: one JSONL file per task between executor stages.
- `Tally`: counts documents, characters and words passing a point of the pipeline.
- `RemovalLog`: the exclusion writer given to every removing step; records id, reason and size of
  each removed document and the text of the first few (the samples in the report).
- `Cleanup`, `PIIScrubber`, `BlocklistFilter`: steps datatrove does not have in this form.

Files written by a task are named by its rank, so tasks never share a file.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import sys
import unicodedata
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer


class RegexWordTokenizer(WordTokenizer):
    _WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
    _END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)|\n+")

    def __init__(self):
        super().__init__("regex")

    def word_tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in self._END.finditer(text):
            if text[start:m.end()].strip():
                spans.append((start, m.end()))
            start = m.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for a, b in self.span_tokenize(text) if (s := text[a:b].strip())]


TOKENIZER = RegexWordTokenizer()


def quiet_console() -> None:
    """datatrove logs every task at INFO (and tracebacks) on stderr: keep the console to errors, without
    tracebacks (the exception reaches the caller anyway); tasks keep full logs in <logging_dir>/logs/."""
    from datatrove.utils.logging import logger

    logger.remove()
    logger.add(sys.stderr, level="ERROR", format="{time:HH:mm:ss} | {level: <8} | {message}",
               filter=lambda r: r["exception"] is None)


def _quiet_task_logger():
    """Patch datatrove's per-task logger setup to `quiet_console` and its dedup progress bars off; installed
    on import, so worker processes (which import this module to unpickle their steps) get it too."""
    import datatrove.executor.base as base
    from datatrove.utils import logging as dlog

    if getattr(base.add_task_logger, "_lmforge", False):
        return

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):  # datatrove's, with a quiet console
        quiet_console()
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        dlog.logger.add(logfile, level="DEBUG", format="{time:HH:mm:ss} | {level: <8} | {message}")
        dlog.logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        dlog.logger.complete()
        quiet_console()
        logfile.close()

    add_task_logger._lmforge = True
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    # and no progress bars from the dedup stages
    import datatrove.pipeline.dedup.exact_dedup as exact
    import datatrove.pipeline.dedup.minhash as minhash
    from tqdm import tqdm

    exact.tqdm = minhash.tqdm = functools.partial(tqdm, disable=True)


_quiet_task_logger()


def _doc_record(doc: Document) -> dict:
    return {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


# --- reading and writing ----------------------------------------------------------------------------

class SourceReader(PipelineStep):
    """Documents of lmforge sources; whole files per task when there are enough files, else every task
    reads everything and keeps every `world_size`-th document. Ids: "<source>:<file>:<doc in file>"."""

    type = "📖 - READER"
    name = "lmforge sources"

    def __init__(self, sources: list, files: list[list[tuple[str, str]]]):
        super().__init__()
        self.sources, self.files = sources, files   # files: per source, (path, format) resolved by the caller

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from lmforge.data.sources import _iter_all  # one file of one source, strict, one-line errors

        units = [(si, fi, path, fmt) for si, files in enumerate(self.files) for fi, (path, fmt) in enumerate(files)]
        by_file = len(units) >= world_size and not any(s.max_documents for s in self.sources)
        seen, per_source = 0, [0] * len(self.sources)
        for si, fi, path, fmt in (units[rank::world_size] if by_file else units):
            src = dataclasses.replace(self.sources[si], path=str(path), format=fmt, max_documents=0)
            limit = self.sources[si].max_documents
            for di, text in enumerate(_iter_all(src)):
                if limit and per_source[si] >= limit:
                    break
                per_source[si] += 1
                seen += 1
                if by_file or (seen - 1) % world_size == rank:
                    self.stat_update("documents")
                    yield Document(text=text, id=f"{si}:{fi}:{di}")


class ShardReader(PipelineStep):
    """This task's shard `<folder>/<rank>.jsonl` (absent: no documents)."""

    type = "📖 - READER"
    name = "lmforge shard reader"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        path = Path(self.folder) / f"{rank:05d}.jsonl"
        if not path.exists():
            return
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                yield Document(text=rec["text"], id=rec["id"], metadata=rec.get("metadata") or {})


class ShardWriter(PipelineStep):
    """Write this task's documents to `<folder>/<rank>.jsonl` (always created) and pass them on."""

    type = "💽 - WRITER"
    name = "lmforge shard writer"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        with open(Path(self.folder) / f"{rank:05d}.jsonl", "w", encoding="utf-8") as f:
            for doc in data:
                f.write(json.dumps(_doc_record(doc)) + "\n")
                yield doc


def write_shards(folder: Path, docs, tasks: int) -> None:
    """Deal (id, text, metadata) records round-robin into `tasks` shard files, for ShardReader."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [open(folder / f"{r:05d}.jsonl", "w", encoding="utf-8") for r in range(tasks)]
    try:
        for i, rec in enumerate(docs):
            files[i % tasks].write(json.dumps(rec) + "\n")
    finally:
        for f in files:
            f.close()


class Tally(PipelineStep):
    """Count documents, characters and words passing this point; `<folder>/<point>/<rank>.json` at the end."""

    type = "📊 - STATS"
    name = "lmforge tally"

    def __init__(self, folder: str, point: str):
        super().__init__()
        self.folder, self.point = folder, point

    def run(self, data, rank: int = 0, world_size: int = 1):
        n = chars = words = 0
        for doc in data:
            n += 1
            chars += len(doc.text)
            words += len(doc.text.split())
            yield doc
        out = Path(self.folder) / self.point
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{rank:05d}.json").write_text(json.dumps({"documents": n, "characters": chars, "words": words}))


class RemovalLog:
    """Exclusion writer (datatrove's filters call `write(doc, rank)` inside `with`): one JSON line per
    removed document in `<folder>/<step>/<rank>.jsonl`, with the full text for the first `samples`."""

    def __init__(self, folder: str, step: str, samples: int):
        self.folder, self.step, self.samples = folder, step, samples
        self._f, self._n = None, 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._f is not None:
            self._f.close()
            self._f = None

    def write(self, doc: Document, rank: int = 0, reason: str | None = None) -> None:
        if self._f is None:
            out = Path(self.folder) / self.step
            out.mkdir(parents=True, exist_ok=True)
            self._f = open(out / f"{rank:05d}.jsonl", "w", encoding="utf-8")
        rec = {"id": doc.id, "reason": reason or doc.metadata.get("filter_reason") or self.step,
               "label": doc.metadata.get("label"), "characters": len(doc.text), "words": len(doc.text.split())}
        for key in ("contaminated_set", "contaminated_item", "pii_replaced"):
            if key in doc.metadata:
                rec[key] = doc.metadata[key]
        if self._n < self.samples:
            rec["text"] = doc.text
        self._n += 1
        self._f.write(json.dumps(rec) + "\n")


# --- cleanups, PII, blocklist ------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff\ud800-\udfff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


class Cleanup(PipelineStep):
    """Unicode NFC, control characters, whitespace, symbol-only lines (datatrove's SymbolLinesFormatter),
    optionally ftfy; a document left empty is removed (reason "empty")."""

    type = "✂️ - FORMAT"
    name = "lmforge cleanup"

    def __init__(self, cfg, log: RemovalLog):
        super().__init__()
        from datatrove.pipeline.formatters import SymbolLinesFormatter

        self.cfg, self.log = cfg, log
        self.symbols = SymbolLinesFormatter(replace_char="\n") if cfg.symbol_lines else None
        self.ftfy = None
        if cfg.ftfy:
            from datatrove.pipeline.formatters import FTFYFormatter

            self.ftfy = FTFYFormatter()

    def clean(self, text: str) -> str:
        if self.ftfy is not None:
            text = self.ftfy.format(text)
        if self.cfg.unicode_nfc:
            text = unicodedata.normalize("NFC", text)
        if self.cfg.strip_control:
            text = _CONTROL.sub("", text)
        if self.symbols is not None:
            text = self.symbols.format(text)
        if self.cfg.normalize_whitespace:
            text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
            text = _BLANKS.sub("\n\n", _TRAILING.sub("\n", text + "\n"))
        return text.strip()

    def run(self, data, rank: int = 0, world_size: int = 1):
        with self.log as log:
            for doc in data:
                self.stat_update("total")
                text = self.clean(doc.text)
                if text != doc.text:
                    self.stat_update("modified")
                if not text:
                    log.write(doc, rank, "empty")
                    continue
                doc.text = text
                yield doc


# Phone numbers: (415) 555-0142, 415-555-0142, 415.555.0142, +1 415 555 0142, +44 20 7946 0958.
PHONE = re.compile(r"(?<![\w+])(?:\+1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[.-]|\d{3} (?=\d{3} \d{4}))\d{3}[ .-]\d{4}(?!\w)"
                   r"|(?<![\w+])\+\d{1,3}(?:[ .-]\d{2,4}){2,4}(?!\w)")


def _replace(kind: str, validator, repl: str, counts: dict, m: re.Match) -> str:
    if validator is not None and not validator(m.group(0)):
        return m.group(0)
    counts[kind] = counts.get(kind, 0) + 1
    return repl


class PIIScrubber(PipelineStep):
    """Replace emails and IPs (datatrove PIIFormatter's patterns, public IPs only by default) and phone
    numbers; counts replacements per kind and logs each changed document (reason pii:<kinds>)."""

    type = "✂️ - FORMAT"
    name = "lmforge PII"

    def __init__(self, cfg, log: RemovalLog):
        super().__init__()
        from datatrove.pipeline.formatters import PIIFormatter

        pii = PIIFormatter(only_remove_public_ips=cfg.only_public_ips)
        self.cfg, self.log = cfg, log
        self.patterns = [(kind, rx, validator, repl) for kind, on, rx, validator, repl in (
            ("email", cfg.emails, pii.emails_replacer.regex, None, cfg.email_replacement),
            ("phone", cfg.phones, PHONE, None, cfg.phone_replacement),
            ("ip", cfg.ips, pii.ip_replacer.regex, pii.ip_replacer.validator, cfg.ip_replacement)) if on]

    def run(self, data, rank: int = 0, world_size: int = 1):
        with self.log as log:
            for doc in data:
                counts = {}
                for kind, rx, validator, repl in self.patterns:
                    doc.text = rx.sub(functools.partial(_replace, kind, validator, repl, counts), doc.text)
                if counts:
                    for kind, n in counts.items():
                        self.stat_update(kind, value=n)
                    doc.metadata["pii_replaced"] = counts
                    log.write(doc, rank, "pii:" + "+".join(sorted(counts)))
                    del doc.metadata["pii_replaced"]
                yield doc


def read_blocklist(path: str, words: list[str]) -> list[str]:
    from lmforge.errors import LmforgeError

    out = [w.strip().lower() for w in words if w.strip()]
    if path:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise LmforgeError(f"{path}: blocklist file not found (curate.blocklist.path)") from None
        except (OSError, UnicodeDecodeError) as e:
            raise LmforgeError(f"{path}: cannot read the blocklist ({e})") from None
        out += [s.lower() for line in lines if (s := line.split("#", 1)[0].strip())]
    return sorted(set(out))


class BlocklistFilter(BaseFilter):
    """Drop documents with at least `min_hits` whole-word (or whole-phrase) matches, case-insensitive."""

    name = "lmforge blocklist"

    def __init__(self, words: list[str], min_hits: int = 1, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.words = {w for w in words if " " not in w}
        self.phrases = [f" {w} " for w in words if " " in w]
        self.min_hits = min_hits

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        tokens = re.findall(r"\w+(?:'\w+)*", doc.text.lower())
        hits = sum(t in self.words for t in tokens)
        if self.phrases:
            joined = f" {' '.join(tokens)} "
            hits += sum(joined.count(p) for p in self.phrases)
        if hits >= self.min_hits:
            return False, "blocklist"
        return True
