"""A configurable decoder-only transformer.

Parameter names follow the Hugging Face Llama layout (`model.embed_tokens`,
`model.layers.N.self_attn.q_proj`, `model.layers.N.mlp.gate_proj`, `model.norm`,
`lm_head`), so the Llama-compatible configuration exports to `transformers` with a
plain state-dict copy. The model knows nothing about parallelism or training.

Shapes: B batch, T new tokens, S keys (cache + new), V vocab, C d_model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lmforge.model.config import ModelConfig
from lmforge.model.layers import MLP, RMSNorm, apply_rope, attention, attention_mask, make_norm, rope_cos_sin


class KVCache:
    """Preallocated keys/values per layer: (B, Hkv, max_len, D). Filled left to right."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device, dtype):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int):
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} > {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep only rows `keep` (indices) of every layer."""
        self.k, self.v = [t[keep] for t in self.k], [t[keep] for t in self.v]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        c, h, hkv, d = cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(c, h * d, bias=False)
        self.k_proj = nn.Linear(c, hkv * d, bias=False)
        self.v_proj = nn.Linear(c, hkv * d, bias=False)
        self.o_proj = nn.Linear(h * d, c, bias=False)
        if cfg.qk_norm:  # normalizing q and k per head keeps attention logits bounded (OLMo 2, Qwen3)
            self.q_norm = RMSNorm(d, cfg.norm_eps)
            self.k_norm = RMSNorm(d, cfg.norm_eps)

    def forward(self, x, rope, bias, cache: KVCache | None, start: int) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, cfg.n_head, cfg.head_dim).transpose(1, 2)      # (B, H, T, D)
        k = self.k_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)   # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, cfg.n_kv_head, cfg.head_dim).transpose(1, 2)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, start)                          # (B, Hkv, S, D)
        if bias is not None:
            bias = bias.to(q.dtype)
        y = attention(q, k, v, bias, causal=bias is None and T > 1)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, cfg.n_head * cfg.head_dim))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.pre = cfg.norm_position == "pre"
        self.input_layernorm = make_norm(cfg)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, bias, cache, start):
        if self.pre:  # pre-norm: the residual stream is never normalized, which trains stably deep
            x = x + self.self_attn(self.input_layernorm(x), rope, bias, cache, start)
            return x + self.mlp(self.post_attention_layernorm(x))
        # post-norm (original Transformer): normalize after each residual sum
        x = self.input_layernorm(x + self.self_attn(x, rope, bias, cache, start))
        return self.post_attention_layernorm(x + self.mlp(x))


class Backbone(nn.Module):
    """Named `model` inside `Transformer`, matching HF's `LlamaModel`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.position == "learned":
            self.embed_positions = nn.Embedding(cfg.max_seq_len, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        # post-norm blocks already end in a norm; pre-norm needs one before the head
        self.norm = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (it comes from the tokenizer)")
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self):
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue  # norm weights stay 1 (biases 0) as constructed
            # output projections write into the residual stream: scale down with depth (GPT-2)
            s = std / math.sqrt(2 * self.cfg.n_layer) if name.endswith(("o_proj.weight", "down_proj.weight")) \
                else std
            nn.init.normal_(p, mean=0.0, std=s)

    def forward(self, idx: torch.Tensor, *, prefix_len: torch.Tensor | None = None,
                cache: KVCache | None = None, start: int = 0, pad_left: torch.Tensor | None = None,
                segments: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids in columns start..start+T-1 -> logits (B, T, V). See `hidden`.

        keep: (B, T) bool -> logits (N, V) of the N kept positions only, in row-major order: the head
        runs where a loss needs it (a wrapper such as DDP can only call forward).
        """
        h = self.hidden(idx, prefix_len=prefix_len, cache=cache, start=start, pad_left=pad_left, segments=segments)
        return self.lm_head(h if keep is None else h[keep])

    def hidden(self, idx: torch.Tensor, *, prefix_len: torch.Tensor | None = None,
               cache: KVCache | None = None, start: int = 0, pad_left: torch.Tensor | None = None,
               segments: torch.Tensor | None = None) -> torch.Tensor:
        """idx: (B, T) token ids in columns start..start+T-1 -> final normalized hidden states (B, T, C).

        prefix_len: (B,) prefix lengths for prefix-LM masking; cache: filled in place.
        pad_left: (B,) left-padding columns per row, for batches of prompts of different lengths:
        row b's real tokens start at column pad_left[b] and get positions 0, 1, ...; pad columns
        are never attended to (a pad query sees only itself, which keeps its output finite).
        segments: (B, T) document index of each token of packed rows (training, start 0): a token
        attends only to earlier tokens of its own document.
        """
        cfg = self.cfg
        B, T = idx.shape
        if start + T > cfg.max_seq_len and cfg.position == "learned":
            raise ValueError(f"sequence of {start + T} tokens exceeds max_seq_len {cfg.max_seq_len}")
        x = self.model.embed_tokens(idx)
        q_pos = torch.arange(start, start + T, device=idx.device)                      # (T,) columns
        pos = q_pos if pad_left is None else (q_pos[None, :] - pad_left[:, None]).clamp(min=0)  # (T,)|(B, T)
        if cfg.position == "learned":
            x = x + self.model.embed_positions(pos)
        rope = None
        if cfg.position == "rope":
            cos, sin = rope_cos_sin(pos.reshape(-1), cfg.head_dim, cfg.rope_theta)     # (T | B*T, D)
            rope = (cos, sin) if pad_left is None else (cos.view(B, 1, T, -1), sin.view(B, 1, T, -1))
        bias = None
        plain_causal = cfg.position != "alibi" and cfg.sliding_window == 0 and cfg.mask == "causal"
        if not plain_causal or (T > 1 and start > 0) or pad_left is not None:
            k_pos = torch.arange(0, start + T, device=idx.device)
            bias = attention_mask(cfg, q_pos, k_pos, prefix_len, torch.float32)          # (1|B, 1|H, T, S)
            if pad_left is not None:
                is_pad = k_pos[None, :] < pad_left[:, None]                              # (B, S)
                hide = is_pad[:, None, :] & (k_pos[None, None, :] != q_pos[None, :, None])  # (B, T, S)
                bias = bias.masked_fill(hide[:, None], float("-inf"))
        if segments is not None:
            if start != 0 or cache is not None:
                raise ValueError("segments (document masking) is for whole packed rows, not cached decoding")
            other_doc = segments[:, :, None] != segments[:, None, :]                    # (B, T, T)
            if bias is None:  # plain causal: add the causal part here
                bias = attention_mask(cfg, q_pos, q_pos, None, torch.float32)            # (1, 1, T, T)
            bias = bias.masked_fill(other_doc[:, None], float("-inf"))                  # (B, 1|H, T, T)
        for block in self.model.layers:
            x = block(x, rope, bias, cache, start)
        return self.model.norm(x)

    def num_params(self, matmul_only: bool = False) -> int:
        """Parameter count; `matmul_only` drops embedding lookups (which cost no FLOPs)."""
        seen, n = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            # a tied matrix is counted once: as the head, which is a matmul
            if matmul_only and "embed_" in name and not (self.cfg.tie_embeddings and "tokens" in name):
                continue
            n += p.numel()
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 per matmul weight plus attention scores (PaLM appendix B)."""
        cfg = self.cfg
        attn = 12 * cfg.n_layer * cfg.d_model * seq_len / 2  # causal: half of the score matrix on average
        return 6 * self.num_params(matmul_only=True) + attn
