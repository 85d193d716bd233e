"""Byte-level BPE tokenizer, trained with Hugging Face `tokenizers`.

The tokenizer is saved as a plain `tokenizer.json` (plus a `tokenizer_config.json`
naming the special tokens) so that `tokenizers.Tokenizer.from_file` and
`transformers.AutoTokenizer.from_pretrained(dir)` load it unchanged.

Design choices:
- byte-level: every string round-trips, nothing is ever <unk>;
- digits are split one per token, so numbers share sub-structure and arithmetic
  is learnable by a small model (as in LLaMA and nanochat);
- no automatic BOS/EOS insertion: document and chat rendering add them explicitly,
  so what the model sees is always spelled out in lmforge's code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import FieldError, LmforgeError

# Special tokens; chat/tool markers are reserved now so that every later stage
# (SFT, tool use, RL) can rely on them without retraining the tokenizer.
BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end_of_turn|>"
TOOL_CALL = "<|tool_call|>"
END_TOOL_CALL = "<|end_tool_call|>"
TOOL_OUTPUT = "<|tool_output|>"
END_TOOL_OUTPUT = "<|end_tool_output|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END_OF_TURN,
                  TOOL_CALL, END_TOOL_CALL, TOOL_OUTPUT, END_TOOL_OUTPUT]


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096
    min_frequency: int = 2
    # Characters of training text to use at most (BPE needs far less than a full corpus).
    max_chars: int = 200_000_000
    path: str = ""  # use an existing tokenizer.json instead of training one

    def __post_init__(self):
        # the recipe's values are checked when it loads, not after the corpus has been read
        check_training_args(self.vocab_size, self.min_frequency, self.max_chars, FieldError)


def _build_empty():
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.BPE())
    # A space before every text segment (a document, or the text between two special tokens),
    # so a word is one token wherever it stands: "Fopa" answering after <|assistant|> is the
    # same token as " Fopa" in the question and in the corpus. Without it, a chat model must
    # learn a second token for every name it may answer with, which it never can for names
    # that only pretraining text mentioned. The decoder strips that one space again.
    tok.normalizer = normalizers.Prepend(" ")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return tok


def _limit(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for t in texts:
        if seen >= max_chars:
            return
        seen += len(t)
        yield t


def check_training_args(vocab_size: int, min_frequency: int, max_chars: int, error=None) -> None:
    """`error(field, what)` builds the exception: FieldError in the config (the loader adds the
    section's path), else a LmforgeError naming tokenizer.<field>."""
    error = error or (lambda name, what: LmforgeError(f"tokenizer.{name}: {what}"))
    least = 256 + len(SPECIAL_TOKENS)
    # the Rust trainer takes unsigned integers: a negative one is an OverflowError, not a message
    checks = (("vocab_size", vocab_size, least, f"at least {least} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"),
              ("min_frequency", min_frequency, 0, "an integer >= 0"),
              ("max_chars", max_chars, 1, "a positive number of characters"))
    for name, value, lo, what in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise error(name, f"expected {what}, got {value!r}")
    if vocab_size >= 2**32:
        raise error("vocab_size", f"expected less than 2**32, got {vocab_size}")


def check_output_dir(out_dir: str | os.PathLike) -> None:
    """The output must be a directory or creatable as one (checked before training, not after)."""
    from lmforge.utils import not_a_dir

    if why := not_a_dir(out_dir):
        raise LmforgeError(f"{out_dir}: {why}; give a directory for tokenizer.json")


def train_tokenizer(texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 4096,
                    min_frequency: int = 2, max_chars: int = 200_000_000) -> Tokenizer:
    """Train byte-level BPE on `texts` and save `tokenizer.json` + config into `out_dir`."""
    from tokenizers import pre_tokenizers, trainers

    check_training_args(vocab_size, min_frequency, max_chars)
    check_output_dir(out_dir)  # before training: the error would otherwise come after all the work
    tok = _build_empty()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n = [0]

    def counted():
        for t in _limit(texts, max_chars):
            n[0] += 1
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if n[0] == 0:
        raise LmforgeError("tokenizer training: the corpus is empty (no documents)")
    save_tokenizer(tok, out_dir)
    return Tokenizer(tok)


def save_tokenizer(tok, out_dir: str | os.PathLike) -> None:
    """Write tokenizer.json and tokenizer_config.json atomically into out_dir."""
    from lmforge.utils import atomic_write_text

    out = Path(out_dir)
    check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LmforgeError(f"{out}: cannot create the directory ({e.strerror})") from None
    atomic_write_text(out / "tokenizer.json", tok.to_str(pretty=False))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [t for t in SPECIAL_TOKENS if t not in (BOS, EOS, PAD)],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    atomic_write_text(out / "tokenizer_config.json", json.dumps(cfg, indent=2))


class Tokenizer:
    """Thin wrapper over `tokenizers.Tokenizer` with lmforge's special tokens."""

    def __init__(self, tok):
        self.tok = tok
        # Text is always text: a document that contains "<|user|>" must not smuggle in a real
        # turn marker. Special tokens enter sequences only by id, from lmforge's own rendering.
        self.tok.encode_special_tokens = True
        self.vocab_size = tok.get_vocab_size()
        ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise LmforgeError(f"tokenizer lacks the special tokens {missing}; train it with lmforge")
        self.special = ids
        self.bos_id = ids[BOS]
        self.eos_id = ids[EOS]
        self.pad_id = ids[PAD]

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise LmforgeError(f"{p}: tokenizer file not found")
        try:
            return cls(HFTokenizer.from_file(str(p)))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise LmforgeError(f"{p}: not a valid tokenizer.json ({str(e).splitlines()[0]})") from None

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads inside `tokenizers`)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], skip_special: bool = False) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def token_bytes(self) -> list[int]:
        """UTF-8 byte length of each token id (0 for special tokens), for bits-per-byte."""
        special = set(self.special.values())
        # byte-level BPE: each character of a token's string stands for exactly one byte, so the
        # string length is the byte count even for tokens holding part of a multi-byte character
        return [0 if i in special else len(self.tok.id_to_token(i)) for i in range(self.vocab_size)]

    def bytes_per_token(self, texts: list[str]) -> float:
        """Compression on held-out text: UTF-8 bytes divided by tokens."""
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        n_tok = sum(len(ids) for ids in self.encode_batch(texts))
        return n_bytes / max(n_tok, 1)
