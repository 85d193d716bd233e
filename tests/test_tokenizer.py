"""BPE tokenizer: special tokens, lossless round trip, HF compatibility, compression, CLI."""

import pytest

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tokenizer import BOS, SPECIAL_TOKENS, USER, Tokenizer, train_tokenizer

TEXTS = ["The capital of Velora is Kamdu. 123 + 456 = 579.", "Kamdu lives in Velora; héllo wörld!"] * 50


def test_special_tokens_and_round_trip(tmp_path):
    tok = train_tokenizer(TEXTS, tmp_path, vocab_size=320)
    assert [tok.tok.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] == SPECIAL_TOKENS
    for text in ["héllo wörld 🙂", "  spaces\tand\nnewlines", "x" * 50]:
        assert tok.decode(tok.encode(text)) == text
    # digits are split one per token (after the space every text segment starts with)
    assert [tok.decode([i]) for i in tok.encode("12345")][1:] == list("12345")
    # a word is the same token at the start of a text and inside one: the chat model answers
    # with the very tokens the question and the corpus use
    assert tok.encode("Kamdu")[0] == tok.encode("in Kamdu")[-1]
    # literal special-token text in data stays text; the real token only comes by id
    ids = tok.encode(f"a {USER} b")
    assert tok.special[USER] not in ids
    assert tok.decode(ids) == f"a {USER} b"
    assert Tokenizer.load(tmp_path).bos_id == tok.special[BOS]


def test_transformers_and_tokenizers_load_it_unchanged(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HF

    tok = train_tokenizer(TEXTS, tmp_path, vocab_size=320)
    text = "Kamdu lives in Velora. 42"
    raw = HF.from_file(str(tmp_path / "tokenizer.json"))
    assert raw.encode(text).ids == tok.encode(text)
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert fast(text)["input_ids"] == tok.encode(text)
    assert fast.bos_token == BOS and fast.convert_tokens_to_ids(USER) == tok.special[USER]


def test_compression_is_reported(tmp_path):
    tok = train_tokenizer(TEXTS, tmp_path, vocab_size=400)
    bpt = tok.bytes_per_token(["The capital of Velora is Kamdu."])
    assert 2.0 < bpt < 31  # merges learned: far better than 1 byte per token


def test_errors(tmp_path):
    with pytest.raises(LmforgeError, match="tokenizer training: the corpus is empty"):
        train_tokenizer([], tmp_path, vocab_size=300)
    with pytest.raises(LmforgeError, match="tokenizer.vocab_size: expected at least 267"):
        train_tokenizer(TEXTS, tmp_path, vocab_size=100)
    with pytest.raises(LmforgeError, match="tokenizer file not found"):
        Tokenizer.load(tmp_path / "nope")


def test_cli_tokenizer_train(tmp_path, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(f'{{"text": "document number {i} about Kamdu and Velora"}}\n' for i in range(300)))
    assert main(["tokenizer", "train", "--input", str(corpus), "--out", str(tmp_path / "t"),
                 "--vocab-size", "300"]) == 0
    out = capsys.readouterr().out
    assert "tokenizer.json" in out and "bytes/token" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    assert main(["tokenizer", "train", "--input", str(bad), "--out", str(tmp_path / "u")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:2" in err and err.count("\n") == 1


@pytest.mark.parametrize("kw, expected", [
    ({"min_frequency": -1}, "tokenizer.min_frequency: expected an integer >= 0, got -1"),
    ({"max_chars": 0}, "tokenizer.max_chars: expected a positive number of characters, got 0"),
    ({"vocab_size": -5}, "tokenizer.vocab_size: expected at least 267 (256 bytes + 11 special tokens), got -5"),
])
def test_bad_training_arguments(tmp_path, kw, expected):
    """A negative min_frequency was an OverflowError from the Rust trainer; max_chars=0 said the corpus was empty."""
    with pytest.raises(LmforgeError) as e:
        train_tokenizer(TEXTS, tmp_path / "t", **{"vocab_size": 300, **kw})
    assert str(e.value) == expected
    assert not (tmp_path / "t").exists()


def test_output_path_is_a_file_fails_before_training(tmp_path):
    out = tmp_path / "tok"
    out.write_text("not a directory")

    def corpus():  # never read: the output is checked first
        raise AssertionError("trained before the output path was checked")
        yield

    with pytest.raises(LmforgeError) as e:
        train_tokenizer(corpus(), out, vocab_size=300)
    assert str(e.value) == f"{out}: exists and is not a directory; give a directory for tokenizer.json"
    with pytest.raises(LmforgeError) as e:
        train_tokenizer(corpus(), out / "sub", vocab_size=300)
    assert str(e.value) == f"{out / 'sub'}: {out} is a file, not a directory; give a directory for tokenizer.json"
    assert out.read_text() == "not a directory"


@pytest.mark.parametrize("override, expected", [
    ("tokenizer.min_frequency=-1", "tokenizer.min_frequency: expected an integer >= 0, got -1"),
    ("tokenizer.max_chars=0", "tokenizer.max_chars: expected a positive number of characters, got 0"),
    ("tokenizer.vocab_size=100", "tokenizer.vocab_size: expected at least 267 (256 bytes + 11 special tokens), "
                                 "got 100"),
])
def test_recipe_values_are_checked_when_it_loads(override, expected):
    from lmforge.config import load_run_config

    with pytest.raises(LmforgeError) as e:
        load_run_config("recipes/demo.yaml", [override])
    assert str(e.value) == f"override: {expected}"


def test_cli_bad_min_frequency(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text\n")
    assert main(["tokenizer", "train", "--input", str(corpus), "--out", str(tmp_path / "t"),
                 "--min-frequency", "-1"]) == 2
    assert capsys.readouterr().err == "error: --min-frequency: expected an integer >= 0, got -1\n"  # as typed
    assert main(["tokenizer", "train", "--input", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "t"),
                 "--vocab-size", "10"]) == 2  # checked before the input is read
    assert capsys.readouterr().err.startswith("error: --vocab-size: expected at least 267")
