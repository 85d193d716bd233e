"""Real corpora from ../shared/data (skipped with a reason when that directory is absent)."""

from lmforge.data import PackedDataset, SourceConfig, iter_documents, prepare_shards
from lmforge.tokenizer import train_tokenizer
from tests.conftest import shared_data


def test_tinystories_sample_reads_tokenizes_and_packs(tmp_path):
    stories = list(iter_documents(SourceConfig(path=str(shared_data("tinystories", "tinystories_sample.txt")))))
    assert len(stories) == 5 and all("<|endoftext|>" not in d for d in stories)
    # the larger sample has no separator token: split it into paragraphs
    path = shared_data("tinystories", "tinystories.txt")
    docs = list(iter_documents(SourceConfig(path=str(path), format="text", separator="\n\n")))
    assert len(docs) > 100
    tok = train_tokenizer(docs, tmp_path / "tok", vocab_size=1024)
    meta = prepare_shards(docs, tok, tmp_path / "data", val_fraction=0.05, seed=0, progress=False)
    assert meta["splits"]["train"]["n_docs"] + meta["splits"]["val"]["n_docs"] == len(docs)
    rows = PackedDataset(tmp_path / "data", "train", 128)
    inputs, targets = rows.get_batch([0, 1])
    assert inputs[0, 0].item() == tok.bos_id  # rows start on a document
    # a BPE trained on English stories compresses held-out English well beyond 1 byte/token
    shakespeare = shared_data("tinyshakespeare", "input.txt").read_text()[:20000]
    assert tok.bytes_per_token([shakespeare]) > 1.8


def test_gsm8k_train_reads_as_specialization_data_through_renamed_fields():
    """GSM8K's train split ({question, answer}) as chat data for `specialize.sources` (never its test split)."""
    from lmforge.data.chat_sources import ChatSourceConfig, read_conversations

    path = shared_data("gsm8k", "train.jsonl")
    convs, skipped = read_conversations(ChatSourceConfig(path=str(path), fields={"instruction": "question",
                                                                                  "output": "answer"}))
    assert (len(convs), skipped) == (7473, 0)
    assert all([m["role"] for m in c] == ["user", "assistant"] and "#### " in c[1]["content"] for c in convs)
