"""The explicit bf16 CPU training attention (lmforge.model.layers.attention) against SDPA: outputs and
gradients as close to the exact (fp64) result as SDPA's own bf16 kernel, for every mask the model
builds; fp32 is SDPA itself."""

import pytest
import torch
import torch.nn.functional as F

import lmforge.model.layers as layers
import lmforge.model.transformer as transformer
from lmforge.model.config import ModelConfig
from lmforge.model.layers import attention
from lmforge.model.transformer import Transformer


def sdpa(q, k, v, bias, causal):
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=causal, enable_gqa=gqa)


def masks(T: int, S: int, B: int, H: int) -> dict:
    allowed = torch.ones(T, S, dtype=torch.bool).tril(S - T)
    causal = torch.zeros(T, S).masked_fill(~allowed, float("-inf"))
    pad = causal.repeat(B, 1, 1, 1)                                       # (B, 1, T, S): row 1 left-padded by 3
    pad[1, :, :, :3] = float("-inf")
    pad[1, :, torch.arange(3), torch.arange(3)] = 0.0                    # a pad query sees only itself
    alibi = causal - torch.rand(1, H, 1, 1) * torch.arange(S).flip(0)    # (1, H, T, S) distance penalty
    return {"causal": None, "float causal": causal[None, None], "padded rows": pad, "alibi": alibi}


def run(fn, q0, k0, v0, g, bias, causal, dtype):
    q, k, v = (t.to(dtype).requires_grad_() for t in (q0, k0, v0))
    y = fn(q, k, v, None if bias is None else bias.to(dtype), causal)
    y.backward(g.to(dtype))
    return [t.detach().double() for t in (y, q.grad, k.grad, v.grad)]


def rel_err(got, ref):
    return max(float(((a - b).abs().max() / b.abs().max()).detach()) for a, b in zip(got, ref, strict=True))


@pytest.mark.parametrize("mask", ["causal", "float causal", "padded rows", "alibi"])
@pytest.mark.parametrize("hkv", [4, 2])
def test_explicit_bf16_attention_is_as_exact_as_sdpa(mask, hkv, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(layers, "_CHUNK_SCORES", 2 * 4 * 24 * 24)  # chunks of 2 rows: the chunking is covered
    B, H, T, D = 5, 4, 24, 16
    q0 = 1.5 * torch.randn(B, H, T, D)
    k0, v0 = 1.5 * torch.randn(B, hkv, T, D), torch.randn(B, hkv, T, D)
    g = torch.randn(B, H, T, D)
    bias = masks(T, T, B, H)[mask]
    causal = bias is None
    exact = run(sdpa, q0, k0, v0, g, bias, causal, torch.float64)
    ours = run(attention, q0, k0, v0, g, bias, causal, torch.bfloat16)
    theirs = run(sdpa, q0, k0, v0, g, bias, causal, torch.bfloat16)
    assert rel_err(ours, exact) <= 1.25 * rel_err(theirs, exact) + 1e-3
    assert rel_err(ours, theirs) < 2e-2  # a few bf16 roundings apart
    # under autocast from fp32 inputs (how the model calls it) the same numbers come out
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = run(attention, q0, k0, v0, g, bias, causal, torch.float32)
    assert rel_err(autocast, exact) <= 1.25 * rel_err(theirs, exact) + 1e-3


def test_fp32_stays_on_sdpa_and_bf16_inference_equals_training():
    """fp32 is SDPA itself; a bf16 forward without gradients (reference or old log-probs) gives exactly
    the training forward's output."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 16) for _ in range(3))
    assert torch.equal(attention(q, k, v, None, True), sdpa(q, k, v, None, True))
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    with torch.no_grad():
        inference = attention(qb, kb, vb, None, True)
    assert torch.equal(inference, attention(qb, kb, vb, None, True))


@pytest.mark.parametrize("kw", [{}, {"n_kv_head": 1, "qk_norm": True}, {"position": "alibi"}])
def test_model_bf16_training_matches_sdpa(kw, monkeypatch):
    """A bf16-autocast forward + backward of the whole model: logits and every gradient as exact
    (against the fp32 model) as with SDPA."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, d_model=64, n_head=4, max_seq_len=64, **kw))
    idx = torch.randint(0, 64, (3, 20))
    segments = torch.tensor([[0] * 8 + [1] * 12, [0] * 20, [0] * 15 + [1] * 5])

    def grads(bf16: bool, seg):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(idx, segments=seg).float()
        F.cross_entropy(logits.view(-1, 64), idx.view(-1)).backward()
        return [logits.double()] + [p.grad.double() for p in model.parameters()]

    for seg in (None, segments):
        exact = grads(False, seg)
        ours = grads(True, seg)
        monkeypatch.setattr(transformer, "attention", sdpa)
        theirs = grads(True, seg)
        monkeypatch.undo()
        assert rel_err(ours, exact) <= 1.25 * rel_err(theirs, exact) + 1e-3
