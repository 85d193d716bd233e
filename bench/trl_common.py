"""Pieces the trl side-by-side benchmarks share: a random Llama-compatible checkpoint, random text
of a given token length, the model-shape flags, and trl's name for activation checkpointing."""

from __future__ import annotations

import argparse
import random
from dataclasses import fields
from pathlib import Path

import torch

from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import train_tokenizer

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Once upon a time there was a small model.",
         "12 + 30 = 42", "Generation is prefill, then one token at a time through the KV cache.",
         "A preference pair is a prompt with a chosen and a rejected answer."] * 20
WORDS = sorted({w.strip(".,") for t in TEXTS for w in t.split()} - {"", "+", "="})


def add_model_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--checkpoint", default=None, help="an lmforge model directory (Llama-compatible)")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--max-seq-len", type=int, default=512)


def make_checkpoint(args, root: Path) -> Path:
    """A random Llama-compatible model with a small tokenizer, saved as an lmforge checkpoint."""
    train_tokenizer(TEXTS, root / "tok", vocab_size=300)
    torch.manual_seed(args.seed)
    cfg = ModelConfig(vocab_size=args.vocab, n_layer=args.layers, d_model=args.d_model, n_head=args.heads,
                      n_kv_head=args.kv_heads, max_seq_len=args.max_seq_len)
    save_model(Transformer(cfg), root / "ckpt", tokenizer_dir=root / "tok")
    return root / "ckpt"


def text_of(tok, n_tokens: int, rng: random.Random) -> str:
    """Random words, as many as fit in n_tokens tokens (lmforge's tokenizer, which the export shares)."""
    text = rng.choice(WORDS)
    while True:
        longer = text + " " + rng.choice(WORDS)
        if len(tok.encode(longer)) > n_tokens:
            return text
        text = longer


def checkpointing_field(config_cls) -> str:
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing."""
    names = {f.name for f in fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
