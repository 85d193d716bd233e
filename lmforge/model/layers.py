"""Building blocks: norms, rotary embeddings, ALiBi slopes, attention masks, attention, MLPs.

Shapes: B batch, T query length, S key length, H heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 as Llama does (matters for parity under bf16)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def make_norm(cfg: ModelConfig, dim: int | None = None) -> nn.Module:
    dim = dim or cfg.d_model
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for `positions` (T,) -> (T, D), in the non-interleaved (rotate-half) layout of HF Llama."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)                 # (T, D)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); rotates pairs (i, i + D/2) by position-dependent angles."""
    d = x.shape[-1] // 2
    rotated = torch.cat([-x[..., d:], x[..., :d]], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al.): a geometric sequence 2^(-8/n), 2^(-16/n), ...

    For a head count that is not a power of two, take the slopes of the next lower power
    of two and fill in with every other slope of the next higher one, as the paper does.
    """
    def power_of_2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_2(n_head)
    else:
        lower = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_2(lower) + power_of_2(2 * lower)[0::2][: n_head - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def attention_mask(cfg: ModelConfig, q_pos: torch.Tensor, k_pos: torch.Tensor,
                   prefix_len: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive mask (B or 1, H or 1, T, S) for SDPA, or None when plain causal suffices.

    q_pos: (T,) absolute positions of the queries; k_pos: (S,) of the keys.
    Combines: causal, prefix-LM (keys inside the prefix are visible to every query of that
    row), a sliding window, and ALiBi's linear distance penalty.
    """
    rel = q_pos[:, None] - k_pos[None, :]            # (T, S): how far back each key is
    allowed = rel >= 0                               # causal
    if cfg.sliding_window > 0:
        allowed = allowed & (rel < cfg.sliding_window)
    allowed = allowed[None, None]                    # (1, 1, T, S)
    if cfg.mask == "prefix" and prefix_len is not None:
        # prefix-LM: keys inside a row's prefix are visible to every query of that row,
        # which makes attention bidirectional over the prefix and causal after it.
        in_prefix = k_pos[None, :] < prefix_len.to(k_pos.device)[:, None]   # (B, S)
        allowed = allowed | in_prefix[:, None, None, :]                     # (B, 1, T, S)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=q_pos.device)
    bias = bias.masked_fill(~allowed, float("-inf"))
    if cfg.position == "alibi":
        slopes = alibi_slopes(cfg.n_head).to(q_pos.device, dtype)           # (H,)
        bias = bias - slopes[None, :, None, None] * rel.clamp(min=0).to(dtype)[None, None]
    return bias


# Score elements (rows x T x S) per chunk of the explicit CPU attention: 2M fp32 scores (8 MB) keep a
# chunk's scores -> probabilities -> bf16 copy in cache; whole batches of T=256 rows ran 1.3x slower.
_CHUNK_SCORES = 1 << 21


def _explicit_bf16_attention(q, k, v, bias, causal: bool) -> torch.Tensor:
    """SDPA's math for bf16 CPU training: fp32 scores and softmax, bf16 probabilities @ bf16 values.

    The numerics of SDPA's CPU flash kernel in bf16 (fp32 q.k and softmax, bf16 p.v), which it
    matches as closely as it matches fp32; but its bf16 backward is slow on few threads (twice its
    fp32 backward at T=128), and these plain matmuls are 1.5-2x faster forward+backward at the
    small models' shapes (B 16-64, H 3-4, T 128-256, D 64). Chunked over the batch (see above).
    """
    B, H, T, D = q.shape
    S = k.shape[2]
    if k.shape[1] != H:  # grouped-query: kv head h // (H / Hkv) serves query head h, as enable_gqa does
        k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // v.shape[1], 1)
    if bias is None:
        bias = torch.zeros(T, S, device=q.device)
        if causal:  # queries are the last T of the S columns
            bias = bias.masked_fill(torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T).logical_not(),
                                    float("-inf"))
    bias = bias.float()
    if bias.dim() == 4 and bias.shape[0] == 1:
        bias = bias[0]                                                    # (1|H, T, S): the same for every row
    step = max(1, _CHUNK_SCORES // (H * T * S))
    with torch.autocast(q.device.type, enabled=False):  # the fp32 matmuls must stay fp32
        outs = []
        for i in range(0, B, step):
            qf = q[i:i + step].float() * D ** -0.5
            s = qf @ k[i:i + step].float().transpose(-1, -2)             # (b, H, T, S) fp32
            s = s + (bias if bias.dim() < 4 else bias[i:i + step])
            p = torch.softmax(s, -1).to(torch.bfloat16)
            outs.append(p @ v[i:i + step].to(torch.bfloat16))             # (b, H, T, D) bf16
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
              causal: bool) -> torch.Tensor:
    """q (B, H, T, D), k/v (B, Hkv, S, D), bias additive (B|1, H|1, T, S) or None -> (B, H, T, D).

    causal (with bias None): query t sees keys up to t. bf16 on CPU takes the explicit path above,
    with or without gradients (as fast forward only, and a no-grad forward, such as reference or old
    log-probs, then gives exactly the training forward's numbers); fp32 and CUDA take SDPA, whose
    kernels are the fastest there.
    """
    bf16 = q.dtype == torch.bfloat16 or (torch.is_autocast_enabled(q.device.type)
                                         and torch.get_autocast_dtype(q.device.type) == torch.bfloat16)
    if q.device.type == "cpu" and bf16:
        return _explicit_bf16_attention(q, k, v, bias, causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal,
                                          enable_gqa=k.shape[1] != q.shape[1])


class MLP(nn.Module):
    """SwiGLU (gate * silu, Llama's names gate/up/down), or a plain GELU / ReLU² MLP (up/down)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        if self.kind == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.kind == "gelu":
            h = F.gelu(self.up_proj(x))
        else:  # relu2 (Primer): cheap and strong at small scale
            h = F.relu(self.up_proj(x)).square()
        return self.down_proj(h)
