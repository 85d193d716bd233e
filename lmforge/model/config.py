"""Model configuration: every architectural choice a student of LLMs compares, in one dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

CHOICES = {
    "norm": ("rmsnorm", "layernorm"),
    "norm_position": ("pre", "post"),
    "position": ("rope", "learned", "alibi", "none"),
    "mlp": ("swiglu", "gelu", "relu2"),
    "mask": ("causal", "prefix"),
}


# The architecture transformers' LlamaForCausalLM computes (any head counts, tied or untied embeddings).
LLAMA = {"norm": "rmsnorm", "norm_position": "pre", "position": "rope", "mlp": "swiglu", "qk_norm": False,
         "sliding_window": 0, "mask": "causal"}


@dataclass
class ModelConfig:
    vocab_size: int = 0           # 0: taken from the tokenizer
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    n_kv_head: int = 0            # 0: = n_head (multi-head); 1: multi-query; else grouped-query
    ffn_hidden: int = 0           # 0: 4*d (gelu/relu2) or ~8/3*d rounded to 64 (swiglu)
    max_seq_len: int = 256
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    norm_position: str = "pre"
    position: str = "rope"
    rope_theta: float = 10000.0
    mlp: str = "swiglu"
    qk_norm: bool = False
    tie_embeddings: bool = False
    sliding_window: int = 0       # 0: full attention; w>0: each token sees the last w positions
    mask: str = "causal"          # causal, or prefix (bidirectional over a given prefix: prefix-LM)
    init_std: float = 0.02
    # One-knob size preset (nanochat's depth): when > 0 it sets n_layer, d_model, n_head.
    depth: int = 0

    def __post_init__(self):
        self.resolve()

    def resolve(self) -> ModelConfig:
        from lmforge.errors import FieldError, non_negative, one_of, positive

        for field, allowed in CHOICES.items():
            one_of(self, field, allowed)
        non_negative(self, "vocab_size", "n_kv_head", "ffn_hidden", "depth", "sliding_window", "init_std")
        if self.depth == 0:
            positive(self, "n_layer", "d_model", "n_head")
        positive(self, "max_seq_len")
        if self.depth > 0:
            self.n_layer, self.d_model, self.n_head = depth_preset(self.depth)
        if self.n_kv_head == 0:
            self.n_kv_head = self.n_head
        if self.d_model % self.n_head:
            raise FieldError("d_model", f"must be divisible by n_head ({self.n_head}), got {self.d_model}")
        if self.n_head % self.n_kv_head:
            if self.depth > 0:  # n_head came from the depth preset: the value to change is n_kv_head
                raise FieldError("n_kv_head", f"must divide n_head ({self.n_head}, from depth={self.depth}), "
                                              f"got {self.n_kv_head}")
            raise FieldError("n_head", f"must be divisible by n_kv_head ({self.n_kv_head}), got {self.n_head}")
        if self.position == "rope" and self.head_dim % 2:
            raise FieldError("d_model", f"RoPE needs an even head dimension (d_model / n_head), got {self.head_dim}")
        if self.ffn_hidden == 0:
            if self.mlp == "swiglu":  # keep parameter count equal to a 4*d non-gated MLP
                self.ffn_hidden = int(math.ceil(8 * self.d_model / 3 / 64) * 64)
            else:
                self.ffn_hidden = 4 * self.d_model
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def llama_compatible(self) -> bool:
        """True when the architecture is exactly what transformers' LlamaForCausalLM computes."""
        return not self.not_llama()

    def not_llama(self) -> list[str]:
        """The settings that differ from LLAMA, as "name=value (needs value)"."""
        return [f"{k}={getattr(self, k)} (needs {v})" for k, v in LLAMA.items() if getattr(self, k) != v]


def depth_preset(depth: int) -> tuple[int, int, int]:
    """(n_layer, d_model, n_head) from one number, as nanochat does: width grows with depth.

    d_model = 64 * depth keeps the aspect ratio (width/depth = 64) that works well for small
    models; heads of dimension 64 (at least 1).
    """
    d_model = 64 * depth
    return depth, d_model, max(1, d_model // 64)


def suggested_batch_tokens(depth: int) -> int:
    """Tokens per optimizer step for a depth-N model: grows with model size (~N^2), as a power of two.

    depth 4 -> 32k, depth 12 -> 256k, depth 20 -> 1M tokens (nanochat trains depth 20 on ~0.5M).
    """
    return 2 ** round(math.log2(2048 * depth ** 2))


def suggested_lr(d_model: int) -> float:
    """AdamW learning rate that scales like 1/sqrt(width) (3e-3 at d_model=256)."""
    return 3e-3 * (256 / d_model) ** 0.5
