"""Fast decoding for the engine: the model's own layers, with per-call preparation hoisted out
of the step loop (RoPE table, padding mask, and on CPU q|k|v and gate|up fused and pre-packed
for oneDNN). See lmforge/engine.py for how and when it is used.
"""

from __future__ import annotations

import warnings
import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmforge import cpu_gemm
from lmforge.group_decode import GroupCache
from lmforge.model.layers import RMSNorm, apply_rope, rope_cos_sin
from lmforge.model.transformer import KVCache, Transformer

_ONEDNN_OK: dict[torch.dtype, bool] = {}


def _onednn_ok(dtype: torch.dtype) -> bool:
    """Whether oneDNN's packed linear works here for `dtype` (checked once against F.linear).

    `torch.ops.mkldnn._linear_pointwise` is the op inductor uses for CPU linears; it is private,
    so any failure (a future PyTorch without it, a CPU without the kernel) falls back to F.linear.
    """
    if dtype not in _ONEDNN_OK:
        ok = False
        if torch.backends.mkldnn.is_available() and dtype in (torch.float32, torch.bfloat16):
            try:
                with torch.inference_mode():
                    w, x = torch.randn(24, 16, dtype=dtype), torch.randn(3, 16, dtype=dtype)
                    y = torch.ops.mkldnn._linear_pointwise(x, torch.ops.mkldnn._reorder_linear_weight(w),
                                                           None, "none", [], "")
                    ok = torch.allclose(y.float(), F.linear(x, w).float(), atol=0.05, rtol=0.05)
            except Exception:  # any failure means: do not use it
                ok = False
        _ONEDNN_OK[dtype] = ok
    return _ONEDNN_OK[dtype]


# The compiled decode step (see _Decoder.step) calls two opaque ops, registered with the low-level
# torch.library API (its `custom_op` wrapper costs ~10 us of Python per call, x17 calls a step):
# - packed_linear: packed weights (oneDNN's opaque tensors, or lmforge.cpu_gemm's layout) are not what
#   the graph should see, so it passes the plain fused weight and the op swaps in its packed copy;
# - attend: attention over the cache columns in use, whose count changes every step; hidden in an
#   op, it leaves every shape of the graph fixed for a run, so the graph compiles once.
_PACKED: dict[int, tuple] = {}  # data_ptr of a _Proj's own fused weight -> (packed copy, own kernel?, rows)


def _matmul(x: torch.Tensor, packed: torch.Tensor, own: bool, n: int) -> torch.Tensor:
    """x @ W^T for W packed by _Proj: lmforge.cpu_gemm's kernel (own) or oneDNN's."""
    if own:
        return cpu_gemm.linear(x, packed, n)
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


def _packed_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    entry = _PACKED.get(w.data_ptr())
    if entry is None:  # not registered (cannot happen while its _Proj lives): same math, unpacked
        return F.linear(x, w)
    return _matmul(x, *entry)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, span: torch.Tensor,
            gqa: bool) -> torch.Tensor:
    """Decode attention over the first `span` (a 0-d tensor) cache columns: the eager path's very call."""
    n = int(span)
    bias = bias[..., :n] if bias is not None else None
    return F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], attn_mask=bias, enable_gqa=gqa).contiguous()


_LIB = torch.library.Library("lmforge", "FRAGMENT")
_LIB.define("packed_linear(Tensor x, Tensor w) -> Tensor")
_LIB.impl("packed_linear", _packed_linear, "CompositeExplicitAutograd")
torch.library.register_fake("lmforge::packed_linear", lambda x, w: x.new_empty((*x.shape[:-1], w.shape[0])),
                            lib=_LIB)
_LIB.define("attend(Tensor q, Tensor k, Tensor v, Tensor? bias, Tensor span, bool gqa) -> Tensor")
_LIB.impl("attend", _attend, "CompositeExplicitAutograd")
torch.library.register_fake("lmforge::attend", lambda q, k, v, bias, span, gqa: q.new_empty(q.shape), lib=_LIB)


_COMPILE_FAILED: list[str] = []  # the first compile failure; once set, every later step decodes eagerly


_COMPILED_STEP = None  # torch.compile(_Decoder.step), made on first use and shared by every _Decoder


def _compiled_step():
    """One compiled function for all decoders: the guards check shapes and configuration, not which
    decoder (or which copy of the weights) it is, so a new generate call reuses the compiled code.
    Inductor's own kernels run single-threaded: at decode sizes (a few rows) an OpenMP fork/join costs
    more than it saves, and on a busy machine its barriers stall; the matmuls keep their threads.
    No size asserts: the generated code would check the shape and strides of every custom op's output,
    ~60 checks a step (6% of a step at the bench's size); the tests compare compiled and eager outputs."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_Decoder.step, options={"cpp.threads": 1, "size_asserts": False})
    return _COMPILED_STEP


def _plain_weight(m: nn.Module) -> torch.Tensor | None:
    """The weight that makes `m` a bias-free matmul, or None when `m` is anything else."""
    from lmforge.model.lora import LoRALinear

    if type(m) is nn.Linear and m.bias is None:
        return m.weight
    if type(m) is LoRALinear and m.bias is None:  # eval-mode LoRA is a matmul by the merged weight
        return m.merged_weight() if m.lora_enabled else m.weight
    return None


class _Proj:
    """Linear layers that read the same input (q|k|v, gate|up), as one packed matmul on CPU: in bf16 on a
    CPU with AVX512-BF16, lmforge's own kernel (`lmforge.cpu_gemm`, 2-4x oneDNN's call at decode sizes),
    else oneDNN's packed linear.

    Elsewhere (GPU, unusual modules) the modules are called as they are: no weight copies.
    """

    def __init__(self, mods: list[nn.Module], pack: bool, dtype: torch.dtype):
        self.mods = mods
        ws = [_plain_weight(m) for m in mods]
        self.packed = None
        if pack and all(w is not None for w in ws):
            # our own copy (torch.cat copies; a lone weight is cloned): the key of _PACKED must never be
            # memory that training rewrites, and the entry goes when this copy is freed
            self.weight = torch.cat(ws).detach() if len(ws) > 1 else ws[0].detach().clone()
            self.weight = self.weight.to(dtype).contiguous()
            self.own = dtype == torch.bfloat16 and self.weight.shape[1] % 2 == 0 and cpu_gemm.available()
            self.packed = (cpu_gemm.pack(self.weight) if self.own
                           else torch.ops.mkldnn._reorder_linear_weight(self.weight))
            self.sizes = [w.shape[0] for w in ws]
            key = self.weight.data_ptr()
            self.entry = (self.packed, self.own, self.weight.shape[0])  # what _matmul takes after x
            _PACKED[key] = self.entry
            weakref.finalize(self.weight, _PACKED.pop, key, None)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """All outputs side by side (packed only), in the packed weights' dtype."""
        x = x.to(self.weight.dtype)
        if torch.compiler.is_compiling():
            return torch.ops.lmforge.packed_linear(x, self.weight)
        return _matmul(x, *self.entry)

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.packed is None:
            return [m(x) for m in self.mods]
        y = self.fused(x)
        return list(y.split(self.sizes, -1)) if len(self.sizes) > 1 else [y]


class _Layer(NamedTuple):
    """One transformer block as the decoder runs it."""

    qkv: _Proj
    o_proj: _Proj
    up: _Proj
    down: _Proj
    norm_in: tuple | nn.Module     # (weight, eps) of an fp32 RMSNorm (F.rms_norm), else the module
    norm_post: tuple | nn.Module
    pre: bool                      # pre-norm (else post-norm)
    kind: str                      # MLP: swiglu | gelu | relu2
    qk_norm: tuple | None          # (q_norm, k_norm) modules when the config has QK-norm


class _Decoder:
    """`Transformer.forward` for generation, returning only the last position's logits.

    Covers the configurations whose attention is plain causal (rope, learned or no positions;
    pre/post-norm; any MLP; QK-norm; GQA); `supports()` says which. Prepared once per
    generate/stream call, so weights changed by training are picked up by the next call.
    """

    def __init__(self, model: Transformer, compile: bool = False, bf16: bool = False):
        cfg = self.cfg = model.cfg
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        pack = self.device.type == "cpu" and _onednn_ok(self.dtype)
        # bf16: the packed matmuls take bf16 weights and inputs, the rest stays in the model's dtype
        # (what bf16 autocast computes); only where every matmul is packed, else nothing changes
        mm_dtype = torch.bfloat16 if bf16 and pack and _onednn_ok(torch.bfloat16) else self.dtype
        # F.rms_norm is one kernel and, in fp32, bit-identical to RMSNorm's six
        fast_norm = self.dtype == torch.float32

        def norm(mod: nn.Module):  # (weight, eps) for F.rms_norm, or the module itself
            return (mod.weight, mod.eps) if fast_norm and type(mod) is RMSNorm else mod

        # Plain values (tensors, tuples, bools, strings) rather than modules where the step can (fp32
        # RMSNorm, embeddings, flags): torch.compile guards what a step reads on every call, and a
        # module attribute costs more to guard
        self.layers = []
        for block in model.model.layers:
            a, mlp = block.self_attn, block.mlp
            self.layers.append(_Layer(
                _Proj([a.q_proj, a.k_proj, a.v_proj], pack, mm_dtype),
                _Proj([a.o_proj], pack, mm_dtype),
                _Proj([mlp.gate_proj, mlp.up_proj] if cfg.mlp == "swiglu" else [mlp.up_proj], pack, mm_dtype),
                _Proj([mlp.down_proj], pack, mm_dtype),
                norm(block.input_layernorm), norm(block.post_attention_layernorm), block.pre, mlp.kind,
                (a.q_norm, a.k_norm) if cfg.qk_norm else None,
            ))
        self.head = _Proj([model.lm_head], pack, mm_dtype)
        self.final_norm = norm(model.model.norm)
        self.embed = model.model.embed_tokens.weight
        self.embed_positions = model.model.embed_positions.weight if cfg.position == "learned" else None
        self.gqa = cfg.n_kv_head != cfg.n_head  # a plain bool: under torch.compile a SymBool would break the graph
        self.rope = None
        if cfg.position == "rope":  # every position a row can reach: 0 .. max_seq_len - 1
            cos, sin = rope_cos_sin(torch.arange(cfg.max_seq_len, device=self.device), cfg.head_dim, cfg.rope_theta)
            self.rope = (cos, sin)
        self.compiled = compile and not _COMPILE_FAILED

    @staticmethod
    def weights_key(model: nn.Module) -> tuple:
        """What a prepared decoder depends on: each parameter's identity, storage and version (in-place
        writes such as optimizer steps and load_state_dict bump it), and LoRA switches. An equal key
        means the packed copies are still current and the decoder can be reused."""
        params = tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())
        lora = tuple((m.lora_enabled, m.scaling) for m in model.modules() if hasattr(m, "lora_enabled"))
        return params, lora

    @staticmethod
    def supports(model: nn.Module) -> bool:
        """A Transformer whose forward is the stock one, with plain causal attention."""
        return (isinstance(model, Transformer) and type(model).forward is Transformer.forward
                and type(model.model.embed_tokens) is nn.Embedding and model.model.embed_tokens.max_norm is None
                and model.cfg.position != "alibi" and model.cfg.sliding_window == 0)

    def forward(self, idx: torch.Tensor, start: int, pos: torch.Tensor, bias: torch.Tensor | None,
                cache: KVCache | GroupCache) -> torch.Tensor:
        """idx (B, T) in columns start.., at positions pos (B, T) -> logits of the last column (B, V).

        bias: additive attention mask (B, 1, T, S >= start + T; columns past start + T are ignored),
        or None for plain causal. A GroupCache (n samples per prompt, one token each) brings its own.
        """
        T = idx.shape[1]
        if isinstance(cache, GroupCache):
            return self._layers(idx, pos, lambda li, q, k, v: cache.attend(li, q, k, v, start))
        if T == 1 and self.compiled:
            return self._step(idx, start, pos, bias, cache)
        if bias is not None and bias.shape[-1] > start + T:
            bias = bias[..., :start + T]
        causal = bias is None and T > 1

        def attend(li, q, k, v):
            k, v = cache.update(li, k, v, start)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, enable_gqa=self.gqa)

        return self._layers(idx, pos, attend)

    def step(self, idx: torch.Tensor, col: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor | None,
             cache: KVCache) -> torch.Tensor:
        """`forward` for one token per row written at column `col` (a 0-d tensor): what torch.compile runs.

        Every shape depends only on the batch and the cache length, never on the step: the attention,
        whose span grows by one column per step, is an opaque op (`lmforge::attend`) that slices the
        cache to the columns in use when it runs. So one compiled graph serves every step of a run.
        """
        at, span = col.view(1), col + 1

        def attend(li, q, k, v):
            cache.k[li].index_copy_(2, at, k)
            cache.v[li].index_copy_(2, at, v)
            return torch.ops.lmforge.attend(q, cache.k[li], cache.v[li], bias, span, self.gqa)

        return self._layers(idx, pos, attend)

    def _step(self, idx, start: int, pos, bias, cache) -> torch.Tensor:
        col = torch.tensor(start, device=idx.device)
        if not _COMPILE_FAILED:
            try:
                return _compiled_step()(self, idx, col, pos, bias, cache)
            except Exception as e:  # never let a compiler problem stop generation: decode eagerly from now on
                _COMPILE_FAILED.append(f"{type(e).__name__}: {e}".splitlines()[0][:200])
                warnings.warn(f"lmforge engine: torch.compile failed, decoding eagerly ({_COMPILE_FAILED[0]})",
                              stacklevel=2)
        return self.step(idx, col, pos, bias, cache)

    def _layers(self, idx: torch.Tensor, pos: torch.Tensor, attend):
        """The blocks; attend(layer, q, k, v) stores the new keys and values and returns attention (B, H, T, D)."""
        cfg = self.cfg
        B, T = idx.shape
        H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        x = F.embedding(idx, self.embed)
        if self.embed_positions is not None:
            x = x + F.embedding(pos, self.embed_positions)
        rope = None
        if self.rope is not None:
            rope = (self.rope[0][pos][:, None], self.rope[1][pos][:, None])     # (B, 1, T, D)
        for li, layer in enumerate(self.layers):
            qkv, o_proj, up, down = layer.qkv, layer.o_proj, layer.up, layer.down
            attn_in = _norm(layer.norm_in, x) if layer.pre else x
            if qkv.packed is not None and rope is not None and layer.qk_norm is None:
                y = qkv.fused(attn_in)  # rotate q and k in one go: they sit side by side
                qk = apply_rope(y[..., :(H + Hkv) * D].view(B, T, H + Hkv, D).transpose(1, 2), *rope)
                q, k = qk[:, :H], qk[:, H:]
                v = y[..., (H + Hkv) * D:].view(B, T, Hkv, D).transpose(1, 2)
            else:
                q, k, v = qkv(attn_in)
                q = q.view(B, T, H, D).transpose(1, 2)
                k = k.view(B, T, Hkv, D).transpose(1, 2)
                v = v.view(B, T, Hkv, D).transpose(1, 2)
                if layer.qk_norm is not None:
                    q, k = layer.qk_norm[0](q), layer.qk_norm[1](k)
                if rope is not None:
                    q, k = apply_rope(q, *rope), apply_rope(k, *rope)
            # bf16 matmuls give bf16 q|k|v; the cache and the attention keep the model's dtype (a bf16
            # cache halves the bytes a step reads, but SDPA's CPU kernel is slower in bf16 at one query)
            q, k, v = q.to(self.dtype), k.to(self.dtype), v.to(self.dtype)
            y = attend(li, q, k, v)
            y = o_proj(y.transpose(1, 2).reshape(B, T, H * D))[0]
            if layer.pre:
                x = x + y
                h = up(_norm(layer.norm_post, x))
            else:
                x = _norm(layer.norm_in, x + y)
                h = up(x)
            kind = layer.kind
            h = F.silu(h[0]) * h[1] if kind == "swiglu" else F.gelu(h[0]) if kind == "gelu" else F.relu(h[0]).square()
            x = x + down(h)[0] if layer.pre else _norm(layer.norm_post, x + down(h)[0])
        return self.head(_norm(self.final_norm, x[:, -1]))[0].to(self.dtype)  # logits in the model's dtype


def _norm(spec: tuple | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm as `_Decoder.__init__` prepared it: (weight, eps) runs F.rms_norm, a module runs itself."""
    if isinstance(spec, tuple):
        return F.rms_norm(x, spec[0].shape, spec[0], spec[1])
    return spec(x)
