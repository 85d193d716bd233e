"""Read documents from plain text, JSONL, parquet and Hugging Face datasets through one interface.

Every reader yields non-empty, stripped `str` documents and turns bad input into a one-line
`LmforgeError` naming the file (and line, for line formats), so a user can fix a 10 GB corpus
without reading a traceback. `datasets` and `pyarrow` are imported lazily: they are slow to
import and only needed for their own formats.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError, non_negative

FORMATS = ("auto", "text", "jsonl", "parquet", "hf")
# Longest suffix first, so `x.jsonl.gz` is not taken for something ending in `.gz`.
_EXTENSIONS = {".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".jsonl": "jsonl",
               ".txt": "text", ".md": "text", ".parquet": "parquet"}
_EXT_HELP = ".txt, .md, .jsonl, .jsonl.gz, .json.gz, .parquet, or a datasets.save_to_disk directory"
# Text files are read in chunks so a multi-GB file never has to sit in memory at once.
_CHUNK_BYTES = 1 << 22


@dataclass
class SourceConfig:
    path: str                  # file, directory or glob; or an HF hub id / local dataset dir (format="hf")
    format: str = "auto"       # auto|text|jsonl|parquet|hf
    text_field: str = "text"   # jsonl/parquet/hf column
    split: str = "train"       # hf split
    separator: str = "<|endoftext|>"  # text files: document separator; a file without it is one document
    name: str = ""             # hf: dataset configuration name (e.g. "sample-10BT" for fineweb-edu)
    streaming: bool = False    # hf: stream from the hub instead of downloading the whole dataset first
    max_documents: int = 0     # stop after this many documents from this source (0: all)

    def __post_init__(self):
        non_negative(self, "max_documents")


def _one_line(e: BaseException) -> str:
    """First line of an exception message: library errors are often multi-line, ours must not be."""
    lines = str(e).strip().splitlines()
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."


def _is_saved_hf_dir(p: Path) -> bool:
    # Dataset.save_to_disk writes state.json; DatasetDict.save_to_disk writes dataset_dict.json.
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def _format_of(p: Path) -> str | None:
    if _is_saved_hf_dir(p):
        return "hf"
    name = p.name.lower()
    for ext, fmt in _EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def _resolve(cfg: SourceConfig) -> list[tuple[Path | str, str]]:
    """Expand cfg.path into (path, format) pairs, in a deterministic (sorted) order."""
    if cfg.format not in FORMATS:
        raise LmforgeError(f"{cfg.path}: unknown format '{cfg.format}' "
                           f"(expected one of: {', '.join(FORMATS)})")
    return resolve_files(cfg.path, cfg.format, _format_of, _EXT_HELP, "format")


def resolve_files(path: str, fmt: str, format_of, ext_help: str, key: str) -> list[tuple[Path | str, str]]:
    """A file, directory or glob -> sorted (path, file format) pairs; shared by text and chat sources.

    fmt: "hf", "auto" (decided per file by `format_of`, which returns None for unknown names) or a
    fixed format. `key` names the config field in the error that asks the user to set it.
    """
    p = Path(path)
    if fmt == "hf":
        # Not a local directory: a hub id (or a path datasets knows how to load); load_dataset decides.
        return [(p if p.exists() else path, "hf")]
    if p.is_dir() and not _is_saved_hf_dir(p):
        files = sorted(f for f in p.rglob("*")
                       if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if fmt == "auto":
            # In a directory, files of unknown type (READMEs, licences) are skipped, not errors.
            pairs = [(f, ff) for f in files if (ff := format_of(f)) is not None]
        else:
            pairs = [(f, fmt) for f in files]
        if not pairs:
            raise LmforgeError(f"{p}: no data files in directory (expected {ext_help})")
        return pairs
    if p.exists():
        paths = [p]
    elif glob.has_magic(path):
        paths = [Path(m) for m in sorted(glob.glob(path, recursive=True)) if Path(m).is_file()]
        if not paths:
            raise LmforgeError(f"{path}: no files match")
    else:
        raise LmforgeError(f"{path}: file not found")
    out = []
    for f in paths:
        ff = fmt if fmt != "auto" else format_of(f)
        if ff is None:
            raise LmforgeError(f"{f}: cannot tell the {key.replace('_', ' ')} from the name (expected {ext_help}); "
                               f"set {key} explicitly")
        out.append((f, ff))
    return out


def _open_error(path, e: OSError) -> LmforgeError:
    if isinstance(e, FileNotFoundError):
        return LmforgeError(f"{path}: file not found")
    return LmforgeError(f"{path}: cannot read ({e.strerror or _one_line(e)})")


def _tail(b: bytes, k: int) -> bytes:
    return b[max(0, len(b) - k):]


def _iter_text(path: Path, sep: str) -> Iterator[str]:
    """Split a text file on `sep`, streaming: a document is joined only once its end is seen."""
    sepb = sep.encode("utf-8")
    offset = 0  # file byte offset of the current (unfinished) document, for UTF-8 error positions

    def decode(raw: bytes, at: int) -> str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise LmforgeError(f"{path}: not valid UTF-8 at byte {at + e.start} ({e.reason})") from None
        if at == 0:
            text = text.lstrip("\ufeff")  # a BOM is an encoding marker, not content
        return text.replace("\r\n", "\n").strip()

    try:
        f = open(path, "rb")
    except OSError as e:
        raise _open_error(path, e) from None
    with f:
        pending: list[bytes] = []  # chunks of the current document; together they hold no separator
        tail = b""  # last len(sep) - 1 bytes of `pending`: a separator may straddle two chunks
        while chunk := f.read(_CHUNK_BYTES):
            if not sepb or sepb not in tail + chunk:
                pending.append(chunk)
                tail = _tail(tail + chunk, len(sepb) - 1)
                continue
            parts = (b"".join(pending) + chunk).split(sepb)
            pending = [parts.pop()]
            tail = _tail(pending[0], len(sepb) - 1)
            for raw in parts:
                if doc := decode(raw, offset):
                    yield doc
                offset += len(raw) + len(sepb)
        if doc := decode(b"".join(pending), offset):
            yield doc


def _json_type(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
            float: "number"}.get(type(v), "null" if v is None else type(v).__name__)


def _iter_jsonl(path: Path, field: str) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        f = opener(path, "rb")  # bytes, decoded per line, so a UTF-8 error gets its own line number
    except OSError as e:
        raise _open_error(path, e) from None
    with f:
        lineno = 0
        try:
            for lineno, raw in enumerate(f, 1):  # noqa: B007 (lineno is read in the except below)
                line = raw.decode("utf-8")
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise LmforgeError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise LmforgeError(f"{path}:{lineno}: expected a JSON object with field '{field}', "
                                       f"got {_json_type(obj)}")
                if field not in obj:
                    raise LmforgeError(f"{path}:{lineno}: missing field '{field}' (fields: {', '.join(obj)})")
                text = obj[field]
                if text is None:  # null is treated like an empty document (skipped), as in parquet
                    continue
                if not isinstance(text, str):
                    raise LmforgeError(f"{path}:{lineno}: field '{field}' must be a string, "
                                       f"got {_json_type(text)}")
                if text := text.strip():
                    yield text
        except UnicodeDecodeError as e:
            raise LmforgeError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None
        except (OSError, EOFError) as e:  # e.g. a truncated or corrupt .gz
            raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None


def _check_column(path, names: list[str], field: str, is_text: bool | None) -> None:
    if field not in names:
        raise LmforgeError(f"{path}: missing column '{field}' (columns: {', '.join(names)})")
    if is_text is False:
        raise LmforgeError(f"{path}: column '{field}' must hold strings")


def _iter_parquet(path: Path, field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise LmforgeError(f"{path}: file not found") from None
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for non-parquet bytes
        raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None
    schema = pf.schema_arrow
    names = list(schema.names)
    if field in names:
        t = schema.field(field).type
        is_text = (pa.types.is_string(t) or pa.types.is_large_string(t)
                   or getattr(pa.types, "is_string_view", lambda _: False)(t))
    else:
        is_text = None
    _check_column(path, names, field, is_text)
    try:
        for batch in pf.iter_batches(columns=[field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text and (text := text.strip()):
                    yield text
    except Exception as e:
        raise LmforgeError(f"{path}: cannot read ({_one_line(e)})") from None


def hub_unreachable() -> str | None:
    """The Hub's host name when it does not resolve: offline, said in milliseconds, where `datasets` would
    retry for ~25 s before it looks in its cache. None when it resolves, when HF_HUB_OFFLINE (or
    HF_DATASETS_OFFLINE, TRANSFORMERS_OFFLINE) already says to use the cache, and behind a proxy (which
    resolves names itself)."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
           for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return None
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return host
    return None


@contextlib.contextmanager
def offline_if_unreachable(check: bool = True):
    """Yields the Hub's host name when it does not resolve (`hub_unreachable`; None otherwise, or when not
    `check`), with `datasets` and `huggingface_hub` in offline mode meanwhile, as HF_HUB_OFFLINE=1 would
    set them at import: a Hub id then loads from the datasets cache at once, or fails at once."""
    import datasets.config
    import huggingface_hub.constants

    host = hub_unreachable() if check else None
    mods = [m for m in (datasets.config, huggingface_hub.constants) if host and hasattr(m, "HF_HUB_OFFLINE")]
    before = [m.HF_HUB_OFFLINE for m in mods]
    try:
        for m in mods:
            m.HF_HUB_OFFLINE = True
        yield host
    finally:
        for m, value in zip(mods, before, strict=True):
            m.HF_HUB_OFFLINE = value


def load_hf_split(path: Path | str, name: str | None, split: str, streaming: bool = False):
    """One split of a Hugging Face dataset: a hub id, a local dataset directory, or a directory
    written by `save_to_disk`. Every loading failure becomes a one-line LmforgeError. Offline (the Hub's
    name does not resolve) a Hub id loads from the datasets cache or fails at once, naming why."""
    import datasets

    with offline_if_unreachable(check=not Path(path).exists()) as host:  # a local path names no host
        try:
            if _is_saved_hf_dir(Path(path)):
                ds = datasets.load_from_disk(str(path))
            else:
                extra = {"streaming": True} if streaming else {}
                ds = datasets.load_dataset(str(path), name or None, split=split, **extra)
        except Exception as e:  # hub/network/format errors: all mean "could not load what you named"
            if host:
                raise LmforgeError(f"{path}: cannot load dataset: not a local path, the Hugging Face Hub ({host}) "
                                   f"does not resolve, and the datasets cache has no copy ({_one_line(e)})") from None
            raise LmforgeError(f"{path}: cannot load dataset ({_one_line(e)})") from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in ds:
            raise LmforgeError(f"{path}: no split '{split}' (splits: {', '.join(ds)})")
        ds = ds[split]
    return ds


def _iter_hf(path: Path | str, cfg: SourceConfig) -> Iterator[str]:
    import datasets

    field = cfg.text_field
    ds = load_hf_split(path, cfg.name, cfg.split, cfg.streaming)
    if isinstance(ds, datasets.IterableDataset):  # streaming: columns are only known row by row
        for i, row in enumerate(ds):
            if field not in row:
                raise LmforgeError(f"{path}: row {i}: missing field '{field}' (fields: {', '.join(row)})")
            if isinstance(row[field], str) and (text := row[field].strip()):
                yield text
        return
    feat = ds.features.get(field)
    is_text = None if feat is None else (isinstance(feat, datasets.Value)
                                         and feat.dtype in ("string", "large_string"))
    _check_column(path, list(ds.column_names), field, is_text)
    for batch in ds.select_columns([field]).iter(batch_size=1024):
        for text in batch[field]:
            if text and (text := text.strip()):
                yield text


def _iter_source(cfg: SourceConfig) -> Iterator[str]:
    docs = _iter_all(cfg)
    if cfg.max_documents > 0:
        docs = itertools.islice(docs, cfg.max_documents)
    yield from docs


def _iter_all(cfg: SourceConfig) -> Iterator[str]:
    for path, fmt in _resolve(cfg):
        if fmt == "text":
            yield from _iter_text(path, cfg.separator)
        elif fmt == "jsonl":
            yield from _iter_jsonl(path, cfg.text_field)
        elif fmt == "parquet":
            yield from _iter_parquet(path, cfg.text_field)
        else:
            yield from _iter_hf(path, cfg)


def iter_documents(cfg: SourceConfig) -> Iterator[str]:
    """Yield the non-empty, stripped documents of one source; LmforgeError on bad or empty input."""
    n = 0
    for doc in _iter_source(cfg):
        n += 1
        yield doc
    if n == 0:
        raise LmforgeError(f"{cfg.path}: empty corpus (no documents)")


def iter_many(cfgs: list[SourceConfig]) -> Iterator[str]:
    """Documents of several sources, one after the other. Only an empty *total* is an error:
    one empty file in a mix is allowed (its siblings carry the corpus)."""
    if not cfgs:
        raise LmforgeError("data sources: none given (expected at least one source)")
    n = 0
    for cfg in cfgs:
        for doc in _iter_source(cfg):
            n += 1
            yield doc
    if n == 0:
        raise LmforgeError(f"{', '.join(c.path for c in cfgs)}: empty corpus (no documents)")
