"""Data: read corpora (text, JSONL, parquet, HF datasets), tokenize them into shards, pack rows."""

from lmforge.data.packing import PackedDataset, pack_rows
from lmforge.data.shards import load_meta, prepare_shards
from lmforge.data.sources import SourceConfig, iter_documents, iter_many

__all__ = ["SourceConfig", "iter_documents", "iter_many", "prepare_shards", "load_meta", "pack_rows",
           "PackedDataset"]
