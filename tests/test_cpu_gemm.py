"""lmforge.cpu_gemm: the decode-size bf16 kernel against F.linear, and the engine's fallback to oneDNN."""

import pytest
import torch
import torch.nn.functional as F

from lmforge import cpu_gemm

needs_kernel = pytest.mark.skipif(not cpu_gemm.available(),
                                  reason=f"cpu_gemm kernel unavailable here: {cpu_gemm.why_unavailable()}")


@needs_kernel
@pytest.mark.parametrize("rows", [1, 7, 8, 9, 20])
@pytest.mark.parametrize("n", [32, 45, 96, 130])
def test_kernel_matches_f_linear_in_bf16(rows, n):
    """Rows past a multiple of 8 and a partial last block of 32 columns: every output written, none past n.
    Both sides sum in fp32 and round to bf16, so they agree to bf16's rounding (1 ulp at most here)."""
    g = torch.Generator().manual_seed(rows * 1000 + n)
    x = torch.randn(2, rows, 64, generator=g).to(torch.bfloat16)
    w = torch.randn(n, 64, generator=g).to(torch.bfloat16)
    got = cpu_gemm.linear(x, cpu_gemm.pack(w), n)
    want = F.linear(x, w)
    assert got.shape == (2, rows, n) and got.dtype == torch.bfloat16 and got.is_contiguous()
    assert torch.allclose(got.float(), want.float(), rtol=1e-2, atol=1e-2)


def test_pack_refuses_an_odd_input_width():
    with pytest.raises(ValueError, match="K must be even, got 5"):
        cpu_gemm.pack(torch.zeros(4, 5))


@needs_kernel
def test_engine_bf16_decodes_the_same_with_the_kernel_and_with_onednn(monkeypatch):
    """The same greedy tokens from the kernel and from oneDNN's packed linear (a small model, where bf16
    rounding rarely flips an argmax), eager and compiled alike use whichever _Proj chose."""
    from lmforge.engine import Engine, SamplingParams
    from lmforge.model.config import ModelConfig
    from lmforge.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, n_layer=2, d_model=64, n_head=4, max_seq_len=64)).eval()
    prompts = [[1, 5, 9, 3], [2, 7], [4, 4, 4, 4, 4, 8]]
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    ours = [c[0].ids for c in Engine(model, bf16=True).generate(prompts, params)]
    monkeypatch.setitem(cpu_gemm._STATE, "fn", None)
    monkeypatch.setitem(cpu_gemm._STATE, "why", "turned off by the test")
    assert not cpu_gemm.available()
    onednn = [c[0].ids for c in Engine(model, bf16=True).generate(prompts, params)]
    assert ours == onednn


def test_unavailable_when_turned_off(monkeypatch):
    monkeypatch.setattr(cpu_gemm, "_STATE", {})
    monkeypatch.setenv("LMFORGE_CPU_GEMM", "0")
    assert not cpu_gemm.available()
    assert cpu_gemm.why_unavailable() == "RuntimeError: turned off by LMFORGE_CPU_GEMM=0"
