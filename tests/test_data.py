"""Data pipeline: sources -> shards -> packed rows. Fast (tiny tokenizer, tiny corpora)."""

from __future__ import annotations

import gzip
import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from lmforge.data import (
    PackedDataset,
    SourceConfig,
    iter_documents,
    iter_many,
    load_meta,
    pack_rows,
    prepare_shards,
)
from lmforge.data import sources as sources_mod
from lmforge.errors import LmforgeError
from lmforge.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

FIX = Path(__file__).parent / "fixtures" / "data"
STORIES = [
    "Once upon a time, a small fox lived near the river.\nShe liked to count the stones: 1, 2, 3, 4.",
    'The robot found a red ball in the garden. "Is it mine?" it asked.',
    "Tom and Mia built a boat. It sailed for 12 days and came back home.",
    "Café owners in Zürich say: naïve bees make honey too.",
]
JSONL_DOCS = ["The first document talks about apples.", "The second one is about   spaces.",
              "Third: a line\nwith a newline inside.", "Fifth has unicode: 東京 and emoji 🙂."]


def _corpus(n: int = 80, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the a fox robot ball river boat day night 7 42 sun moon café 東京 sang ran under over".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) + f" #{i}" for i in range(n)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(_corpus(200) + STORIES, tmp_path_factory.mktemp("tok"), vocab_size=300)


def _error(cfg: SourceConfig, pattern: str) -> str:
    """The LmforgeError message for cfg, checked against `pattern` and for being one line."""
    with pytest.raises(LmforgeError, match=pattern) as info:
        list(iter_documents(cfg))
    assert "\n" not in str(info.value)
    return str(info.value)


# ---- sources ---------------------------------------------------------------------------------

def test_text_fixture_splits_on_separator_and_strips():
    assert list(iter_documents(SourceConfig(str(FIX / "stories.txt")))) == STORIES


def test_text_streaming_handles_separator_across_chunks(tmp_path, monkeypatch):
    p = tmp_path / "c.md"
    p.write_bytes("\r\n<|endoftext|>".join(s.replace("\n", "\r\n") for s in STORIES * 5).encode())
    expected = STORIES * 5  # CRLF inside documents reads back as LF
    for chunk in (1, 3, 7, 13, 1 << 20):  # every way a 13-byte separator can be cut
        monkeypatch.setattr(sources_mod, "_CHUNK_BYTES", chunk)
        assert list(iter_documents(SourceConfig(str(p)))) == expected


def test_text_without_separator_is_one_document_and_custom_separator(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("\ufeffline one\n\nline two\n", encoding="utf-8")
    assert list(iter_documents(SourceConfig(str(p)))) == ["line one\n\nline two"]
    assert list(iter_documents(SourceConfig(str(p), separator="\n\n"))) == ["line one", "line two"]


def test_jsonl_fixture_and_gzip(tmp_path):
    assert list(iter_documents(SourceConfig(str(FIX / "docs.jsonl")))) == JSONL_DOCS
    gz = tmp_path / "d.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write((FIX / "docs.jsonl").read_text(encoding="utf-8"))
    assert list(iter_documents(SourceConfig(str(gz)))) == JSONL_DOCS
    other = tmp_path / "o.jsonl"
    other.write_text('{"body": "x y", "text": 3}\n{"body": null}\n', encoding="utf-8")
    assert list(iter_documents(SourceConfig(str(other), text_field="body"))) == ["x y"]


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["alpha beta", None, "  ", " gamma "], "n": [1, 2, 3, 4]}), p)
    assert list(iter_documents(SourceConfig(str(p), text_field="content"))) == ["alpha beta", "gamma"]
    _error(SourceConfig(str(p)), re.escape("d.parquet: missing column 'text' (columns: content, n)"))
    _error(SourceConfig(str(p), text_field="n"), re.escape("d.parquet: column 'n' must hold strings"))
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"this is not parquet at all")
    _error(SourceConfig(str(bad)), r"x\.parquet: cannot read \(.+\)$")


def test_hf_saved_dataset_and_dataset_dict(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": ["one doc", "", "two doc"]}).save_to_disk(str(tmp_path / "ds"))
    assert list(iter_documents(SourceConfig(str(tmp_path / "ds")))) == ["one doc", "two doc"]  # auto -> hf
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"t": ["tr"]}),
                               "test": datasets.Dataset.from_dict({"t": ["te"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    cfg = SourceConfig(str(tmp_path / "dd"), format="hf", text_field="t", split="test")
    assert list(iter_documents(cfg)) == ["te"]
    _error(SourceConfig(str(tmp_path / "dd"), text_field="t", split="dev"),
           re.escape("dd: no split 'dev' (splits: train, test)"))
    _error(SourceConfig(str(tmp_path / "ds"), text_field="body"),
           re.escape("ds: missing column 'body' (columns: text)"))


def test_hub_ids_offline_use_the_cache_or_fail_at_once(tmp_path, monkeypatch):
    """A Hub name that does not resolve means offline: `datasets` is put in offline mode for the call, so
    a cached copy loads and a missing one fails at once, where `datasets` retried for ~25 s first
    (measured: `lmforge eval CKPT --tasks gsm8k` without --data, 26 s -> 2.6 s). HF_HUB_OFFLINE and a proxy
    are left to `datasets`; a local path is never resolved; HF_ENDPOINT names the host asked."""
    import socket

    import datasets
    import huggingface_hub.constants

    calls, cache = [], {"openai/gsm8k"}

    def fake_load_dataset(path, *a, **k):  # offline mode: only what is cached
        offline = (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE)
        calls.append((path, offline))
        if offline == (True, True) and path not in cache:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")
        return ["row"]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    asked = []

    def no_dns(host, port):
        asked.append(host)
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    assert sources_mod.load_hf_split("openai/gsm8k", "main", "test") == ["row"]  # from the cache
    assert calls == [("openai/gsm8k", (True, True))] and asked == ["huggingface.co"]
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == (False, False)  # restored
    with pytest.raises(LmforgeError) as e:
        sources_mod.load_hf_split("someone/notes", None, "train")
    assert str(e.value) == ("someone/notes: cannot load dataset: not a local path, the Hugging Face Hub "
                            "(huggingface.co) does not resolve, and the datasets cache has no copy (Couldn't reach "
                            "'someone/notes' on the Hub (OfflineModeIsEnabled))")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example.org/")
    with pytest.raises(LmforgeError, match=r"the Hugging Face Hub \(hf-mirror\.example\.org\) does not resolve"):
        sources_mod.load_hf_split("someone/notes", None, "train")
    calls.clear()
    (tmp_path / "local").mkdir()  # a directory `datasets` reads itself: no name to resolve
    assert sources_mod.load_hf_split(tmp_path / "local", None, "train") == ["row"]
    asked.clear()
    for key, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "true"), ("HTTPS_PROXY", "http://p:3128")):
        monkeypatch.setenv(key, value)  # datasets decides, as it was told (its flags are left as they are)
        assert sources_mod.load_hf_split("someone/notes", None, "train") == ["row"]
        monkeypatch.delenv(key)
    assert asked == []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [("resolved",)])  # online
    assert sources_mod.load_hf_split("someone/notes", None, "train") == ["row"]
    assert calls == [(str(tmp_path / "local"), (False, False))] + [("someone/notes", (False, False))] * 4


def test_directory_glob_and_iter_many(tmp_path):
    (tmp_path / "a.txt").write_text("A1<|endoftext|>A2", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "B1"}\n', encoding="utf-8")
    (tmp_path / "README").write_text("not data", encoding="utf-8")  # unknown type in a dir: skipped
    (tmp_path / ".hidden.txt").write_text("hidden", encoding="utf-8")
    assert list(iter_documents(SourceConfig(str(tmp_path)))) == ["A1", "A2", "B1"]
    assert list(iter_documents(SourceConfig(str(tmp_path / "**" / "*.jsonl")))) == ["B1"]
    many = [SourceConfig(str(FIX / "docs.jsonl")), SourceConfig(str(tmp_path / "a.txt"))]
    assert list(iter_many(many)) == JSONL_DOCS + ["A1", "A2"]


def test_source_errors(tmp_path):
    bad = tmp_path / "data.jsonl"
    bad.write_text('{"text": "ok"}\n\n{"text": "a" "b"}\n', encoding="utf-8")
    _error(SourceConfig(str(bad)), re.escape("data.jsonl:3: invalid JSON (Expecting ',' delimiter)"))
    bad.write_text('{"text": "ok"}\n{"title": "T", "body": "B"}\n', encoding="utf-8")
    _error(SourceConfig(str(bad)), re.escape("data.jsonl:2: missing field 'text' (fields: title, body)")
           + "$")
    bad.write_text('{"text": 5}\n', encoding="utf-8")
    _error(SourceConfig(str(bad)), re.escape("data.jsonl:1: field 'text' must be a string, got number"))
    bad.write_text('["text"]\n', encoding="utf-8")
    _error(SourceConfig(str(bad)),
           re.escape("data.jsonl:1: expected a JSON object with field 'text', got array"))
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    _error(SourceConfig(str(bad)), r"data\.jsonl:2: not valid UTF-8")
    empty = tmp_path / "corpus.txt"
    empty.write_text(" \n<|endoftext|>\n\n<|endoftext|>", encoding="utf-8")
    _error(SourceConfig(str(empty)), re.escape("corpus.txt: empty corpus (no documents)") + "$")
    with pytest.raises(LmforgeError, match="empty corpus"):
        list(iter_many([SourceConfig(str(empty)), SourceConfig(str(empty))]))
    (tmp_path / "bin.txt").write_bytes(b"ok\xc3(")
    _error(SourceConfig(str(tmp_path / "bin.txt")), r"bin\.txt: not valid UTF-8 at byte 2")
    _error(SourceConfig(str(tmp_path / "missing.txt")), re.escape("missing.txt: file not found") + "$")
    _error(SourceConfig(str(tmp_path / "nope" / "*.txt")), re.escape("*.txt: no files match"))
    _error(SourceConfig(str(empty), format="csv"),
           re.escape("corpus.txt: unknown format 'csv' (expected one of: auto, text, jsonl, parquet, hf)"))
    (tmp_path / "d.csv").write_text("text\nhi\n", encoding="utf-8")
    _error(SourceConfig(str(tmp_path / "d.csv")), r"d\.csv: cannot tell the format from the name")
    assert list(iter_documents(SourceConfig(str(tmp_path / "d.csv"), format="text"))) == ["text\nhi"]


# ---- shards ----------------------------------------------------------------------------------

def _read_split(out: Path, meta: dict, split: str) -> list[np.ndarray]:
    """Every document's tokens of one split, via the docs index and memmapped shards."""
    info = meta["splits"][split]
    shards = [np.memmap(out / name, dtype=meta["dtype"], mode="r") for name in info["shards"]]
    docs = np.load(out / info["docs"])
    assert docs.dtype == np.int64 and docs.shape == (info["n_docs"], 3)
    for s, shard in enumerate(shards):  # docs tile each shard exactly: none straddles, none overlaps
        mine = docs[docs[:, 0] == s]
        assert mine[0, 1] == 0 and (mine[1:, 1] == mine[:-1, 1] + mine[:-1, 2]).all()
        assert mine[-1, 1] + mine[-1, 2] == len(shard)
    return [np.asarray(shards[s][a:a + n]) for s, a, n in docs]


def _decode_split(out, meta, split, tok) -> list[str]:
    texts = []
    for ids in _read_split(out, meta, split):
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        texts.append(tok.decode(ids[1:-1].tolist()))
    return texts


def test_shards_round_trip_and_deterministic_split(tok, tmp_path):
    docs = _corpus(80)
    meta = prepare_shards(docs, tok, tmp_path / "a", val_fraction=0.2, shard_tokens=300, batch_docs=7,
                          progress=False)
    assert meta == load_meta(tmp_path / "a") and meta["dtype"] == "uint16" and meta["vocab_size"] == 300
    train = _decode_split(tmp_path / "a", meta, "train", tok)
    val = _decode_split(tmp_path / "a", meta, "val", tok)
    assert Counter(train + val) == Counter(docs)
    assert train == [d for d in docs if d in set(train)]  # document order kept within a split
    assert 5 <= len(val) <= 30 and len(meta["splits"]["train"]["shards"]) > 1
    total = sum(len(ids) for ids in tok.encode_batch(docs)) + 2 * len(docs)
    assert meta["splits"]["train"]["n_tokens"] + meta["splits"]["val"]["n_tokens"] == total
    # Same split with another batch size, shard size, and document order.
    shuffled = docs[::-1]
    meta2 = prepare_shards(shuffled, tok, tmp_path / "b", val_fraction=0.2, shard_tokens=10_000,
                           batch_docs=1000, progress=False)
    assert set(_decode_split(tmp_path / "b", meta2, "val", tok)) == set(val)
    # Another seed gives another split.
    meta3 = prepare_shards(docs, tok, tmp_path / "c", val_fraction=0.2, seed=1, progress=False)
    assert set(_decode_split(tmp_path / "c", meta3, "val", tok)) != set(val)


def test_small_corpora_get_both_splits(tok, tmp_path):
    out = tmp_path / "a"
    meta = prepare_shards(["only two", "documents here"], tok, out, val_fraction=1e-9, progress=False)
    assert meta["splits"]["val"]["n_docs"] == 1 and meta["splits"]["train"]["n_docs"] == 1
    both = _decode_split(out, meta, "train", tok) + _decode_split(out, meta, "val", tok)
    assert sorted(both) == ["documents here", "only two"]
    meta = prepare_shards(_corpus(5), tok, tmp_path / "b", val_fraction=0.999999, progress=False)
    assert meta["splits"]["train"]["n_docs"] == 1 and meta["splits"]["val"]["n_docs"] == 4
    meta = prepare_shards(["alone"], tok, tmp_path / "e", val_fraction=0.999999, progress=False)
    assert meta["splits"]["train"]["n_docs"] == 1 and meta["splits"]["val"]["n_docs"] == 0
    meta = prepare_shards(_corpus(20), tok, tmp_path / "c", val_fraction=0.0, progress=False)
    assert meta["splits"]["val"] == {"n_docs": 0, "n_tokens": 0, "shards": [], "docs": "val_docs.npy"}
    with pytest.raises(LmforgeError, match="empty corpus"):
        prepare_shards([], tok, tmp_path / "d", progress=False)


def test_failed_prepare_leaves_no_meta(tok, tmp_path):
    prepare_shards(_corpus(30), tok, tmp_path, progress=False)

    def broken():
        yield from _corpus(10)
        raise LmforgeError("boom")

    with pytest.raises(LmforgeError, match="boom"):
        prepare_shards(broken(), tok, tmp_path, batch_docs=4, progress=False)
    with pytest.raises(LmforgeError, match=r"not prepared \(no meta\.json\)"):
        load_meta(tmp_path)
    with pytest.raises(LmforgeError, match=r"not prepared \(no meta\.json\)"):
        PackedDataset(tmp_path, "train", 16)


def test_uint32_for_large_vocab(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab |= {f"w{i}": len(SPECIAL_TOKENS) + i for i in range(70_000)}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token=SPECIAL_TOKENS[2]))
    hf.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    big = Tokenizer(hf)
    docs = ["w69999 w3 w65536", "w0 w65535", "w12345"] * 3
    meta = prepare_shards(docs, big, tmp_path, val_fraction=0.3, progress=False)
    assert meta["dtype"] == "uint32" and big.vocab_size > 65536
    got = [ids[1:-1].tolist() for split in ("train", "val") for ids in _read_split(tmp_path, meta, split)]
    assert Counter(map(tuple, got)) == Counter(tuple(big.encode(d)) for d in docs)
    assert max(max(g) for g in got) == len(SPECIAL_TOKENS) + 69_999


# ---- packing ---------------------------------------------------------------------------------

def _pack_reference(docs: np.ndarray, seq_len: int) -> list[tuple[int, int, int]]:
    """The packing rule written as the plain loop it is specified as."""
    cap, rows, cur = seq_len + 1, [], None  # cur: [shard, start, n] of the open row
    for shard, start, n in docs.tolist():
        while n > cap:  # long doc: full chunks, each its own row
            if cur:
                rows.append(tuple(cur))
                cur = None
            rows.append((shard, start, cap))
            start, n = start + cap, n - cap
        if cur and cur[0] == shard and cur[1] + cur[2] == start and cur[2] + n <= cap:
            cur[2] += n
        else:
            if cur:
                rows.append(tuple(cur))
            cur = [shard, start, n]
    return rows + ([tuple(cur)] if cur else [])


def _random_docs(rng: np.random.Generator, n: int, n_shards: int) -> np.ndarray:
    lens = rng.integers(2, 40, size=n)
    lens[rng.random(n) < 0.1] *= 5  # some documents far longer than a row
    shard = np.sort(rng.integers(0, n_shards, size=n))
    start = np.zeros(n, np.int64)
    for s in range(n_shards):
        m = shard == s
        start[m] = np.cumsum(lens[m]) - lens[m]
    return np.stack([shard, start, lens], axis=1)


@pytest.mark.parametrize("seq_len", [1, 8, 31, 64, 500])
def test_pack_rows_matches_reference_and_invariants(seq_len):
    rng = np.random.default_rng(seq_len)
    docs = _random_docs(rng, 400, 3)
    rows = pack_rows(docs, seq_len)
    assert rows.dtype == np.int64 and rows.shape[1] == 3
    assert [tuple(r) for r in rows.tolist()] == _pack_reference(docs, seq_len)
    cap = seq_len + 1
    assert (rows[:, 2] >= 1).all() and (rows[:, 2] <= cap).all()
    assert rows[:, 2].sum() == docs[:, 2].sum()  # no content dropped
    doc_at = {(s, a): n for s, a, n in docs.tolist()}
    for s, a, _ in rows.tolist():
        if (s, a) not in doc_at:  # not a doc start: must be a continuation chunk of a long doc
            d = docs[(docs[:, 0] == s) & (docs[:, 1] < a) & (docs[:, 1] + docs[:, 2] > a)][0]
            assert (a - d[1]) % cap == 0 and d[2] > cap


def test_pack_rows_respects_holes_and_edge_cases():
    docs = np.array([[0, 0, 3], [0, 10, 3], [1, 0, 3]])  # a hole in shard 0, then a new shard
    assert pack_rows(docs, 15).tolist() == [[0, 0, 3], [0, 10, 3], [1, 0, 3]]
    assert pack_rows(np.zeros((0, 3), np.int64), 8).shape == (0, 3)
    with pytest.raises(LmforgeError, match="seq_len"):
        pack_rows(docs, 0)


def test_packed_dataset_batches(tok, tmp_path):
    docs = _corpus(60)
    meta = prepare_shards(docs, tok, tmp_path, val_fraction=0.1, shard_tokens=400, progress=False)
    seq_len = 24
    ds = PackedDataset(tmp_path, "train", seq_len)
    stream = np.concatenate(_read_split(tmp_path, meta, "train"))  # all train tokens in order
    x, y = ds.get_batch(range(len(ds)))
    assert x.shape == y.shape == (len(ds), seq_len) and str(x.dtype) == str(y.dtype) == "torch.int64"
    n = ds.rows[:, 2]
    slots = np.concatenate([x.numpy(), y.numpy()[:, -1:]], axis=1)  # (B, T + 1)
    content = np.arange(seq_len + 1)[None, :] < n[:, None]
    assert np.array_equal(slots[content], stream)  # rows in order reproduce every token once
    assert (x.numpy()[~content[:, :-1]] == 0).all()
    pad_target = ~content[:, 1:]
    assert (y.numpy()[pad_target] == -100).all() and (y.numpy()[~pad_target] != -100).all()
    assert np.array_equal(y.numpy()[:, :-1][~pad_target[:, :-1]], x.numpy()[:, 1:][~pad_target[:, :-1]])
    # A row starts with BOS exactly when it starts at a document (else it continues a long one).
    doc_starts = {(s, a) for s, a, _ in np.load(tmp_path / "train_docs.npy").tolist()}
    at_doc = np.array([(s, a) in doc_starts for s, a, _ in ds.rows.tolist()])
    assert np.array_equal(x.numpy()[:, 0] == tok.bos_id, at_doc) and 0 < at_doc.mean() < 1
    assert 0 <= ds.pad_fraction < 1 and len(PackedDataset(tmp_path, "val", seq_len)) >= 1
    xb, yb = pickle.loads(pickle.dumps(ds)).get_batch([2, 0])  # as a spawned DataLoader worker would
    assert np.array_equal(xb[1].numpy(), x[0].numpy()) and np.array_equal(yb[0].numpy(), y[2].numpy())
    shard_bytes = sum(s.nbytes for s in ds.shards)
    assert len(pickle.dumps(ds)) < ds.rows.nbytes + 1024 < shard_bytes  # shards travel as paths, not data
    with pytest.raises(LmforgeError, match="no split 'test'"):
        PackedDataset(tmp_path, "test", seq_len)
    json.loads((tmp_path / "meta.json").read_text())  # plain JSON, readable by other tools


def test_shards_made_with_other_settings_are_not_current(tok, tmp_path):
    """A failed or earlier run's shards are reused only when tokenizer, seed, split and source all match."""
    from lmforge.data.shards import shards_are_current

    made = {"seed": 0, "val_fraction": 0.2, "source": "corpus.jsonl:100:1"}
    prepare_shards(_corpus(20), tok, tmp_path, progress=False, **made)
    assert shards_are_current(tmp_path, tok, **made)
    for key, other in (("seed", 1), ("val_fraction", 0.1), ("source", "corpus.jsonl:101:2")):
        assert not shards_are_current(tmp_path, tok, **{**made, key: other}), key
    (tmp_path / "meta.json").write_text("{not json")
    assert not shards_are_current(tmp_path, tok, **made)  # damaged: remade
