"""Transformer variants: shapes, masking semantics, KV-cache consistency, parameter names."""

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig, depth_preset
from lmforge.model.layers import alibi_slopes
from lmforge.model.transformer import KVCache, Transformer

VARIANTS = [
    {},
    dict(norm="layernorm", position="learned", mlp="gelu"),
    dict(position="alibi", mlp="relu2", n_kv_head=1, qk_norm=True),
    dict(sliding_window=3, n_kv_head=2, tie_embeddings=True),
    dict(norm_position="post", position="none"),
]


def tiny(**kw):
    return ModelConfig(**{**dict(vocab_size=50, n_layer=2, d_model=32, n_head=4, max_seq_len=32), **kw})


@pytest.mark.parametrize("kw", VARIANTS)
def test_variants_are_causal_and_cache_consistent(kw):
    torch.manual_seed(0)
    model = Transformer(tiny(**kw)).eval()
    x = torch.randint(0, 50, (2, 12))
    full = model(x)
    # causality: changing a later token never changes earlier logits
    x2 = x.clone()
    x2[:, 8] = (x2[:, 8] + 1) % 50
    assert torch.allclose(model(x2)[:, :8], full[:, :8], atol=1e-6)
    assert not torch.allclose(model(x2)[:, 8:], full[:, 8:], atol=1e-6)
    # a prefill of 7 tokens then single-token decoding through the cache reproduces the full pass
    cache = KVCache(model.cfg, 2, 16, "cpu", torch.float32)
    parts = [model(x[:, :7], cache=cache, start=0)]
    for t in range(7, 12):
        parts.append(model(x[:, t:t + 1], cache=cache, start=t))
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_sliding_window_limits_what_a_token_sees():
    torch.manual_seed(0)
    model = Transformer(tiny(sliding_window=2, n_layer=1)).eval()
    x = torch.randint(0, 50, (1, 10))
    x2 = x.clone()
    x2[0, 2] = (x2[0, 2] + 1) % 50
    # with one layer and a window of 2, position 5 sees positions 4 and 5 only
    assert torch.allclose(model(x)[0, 5], model(x2)[0, 5], atol=1e-6)
    assert not torch.allclose(model(x)[0, 3], model(x2)[0, 3], atol=1e-6)


def test_prefix_lm_is_bidirectional_inside_the_prefix_only():
    torch.manual_seed(0)
    model = Transformer(tiny(mask="prefix", n_layer=1)).eval()
    x = torch.randint(0, 50, (1, 10))
    x2 = x.clone()
    x2[0, 3] = (x2[0, 3] + 1) % 50
    pl = torch.tensor([5])
    a, b = model(x, prefix_len=pl), model(x2, prefix_len=pl)
    assert not torch.allclose(a[0, 1], b[0, 1], atol=1e-6)  # position 1 sees position 3 (both in prefix)
    x3 = x.clone()
    x3[0, 7] = (x3[0, 7] + 1) % 50
    assert torch.allclose(model(x3, prefix_len=pl)[0, :7], a[0, :7], atol=1e-6)  # after the prefix: causal


def test_llama_parameter_names():
    names = set(Transformer(tiny(n_kv_head=2)).state_dict())
    for n in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
              "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
              "model.norm.weight", "lm_head.weight"]:
        assert n in names
    k = Transformer(tiny(n_kv_head=2)).model.layers[0].self_attn.k_proj.weight
    assert k.shape == (2 * 8, 32)  # grouped-query: 2 kv heads of dim 8


def test_tied_embeddings_share_storage():
    m = Transformer(tiny(tie_embeddings=True))
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    assert m.num_params() == Transformer(tiny()).num_params() - 50 * 32


def test_alibi_slopes_match_the_paper():
    # 8 heads: 2^-1 ... 2^-8
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    assert alibi_slopes(6).shape == (6,)


def test_depth_preset_and_bad_choices():
    assert depth_preset(4) == (4, 256, 4)
    cfg = ModelConfig(vocab_size=10, depth=6)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head) == (6, 384, 6)
    with pytest.raises(LmforgeError, match="^mlp: expected one of swiglu, gelu, relu2, got 'silu'$"):
        ModelConfig(mlp="silu")
    with pytest.raises(LmforgeError, match=r"^n_head: must be divisible by n_kv_head \(3\), got 4$"):
        ModelConfig(n_head=4, d_model=64, n_kv_head=3)
    with pytest.raises(LmforgeError, match=r"^n_kv_head: must divide n_head \(4, from depth=4\), got 3$"):
        ModelConfig(depth=4, n_kv_head=3)  # the preset set n_head: the value to change is n_kv_head
    with pytest.raises(LmforgeError, match=r"^n_layer: expected a positive integer, got 0$"):
        ModelConfig(n_layer=0)


@pytest.mark.parametrize("kw", VARIANTS[:4])
def test_left_padded_batch_matches_unpadded_rows(kw):
    """Prompts of different lengths in one left-padded batch give each row's unpadded logits,
    through prefill and cached decoding alike."""
    torch.manual_seed(0)
    model = Transformer(tiny(**kw)).eval()
    a, b = torch.randint(0, 50, (1, 9)), torch.randint(0, 50, (1, 5))
    batch = torch.zeros(2, 9, dtype=torch.long)
    batch[0], batch[1, 4:] = a[0], b[0]
    pad_left = torch.tensor([0, 4])
    cache = KVCache(model.cfg, 2, 12, "cpu", torch.float32)
    out = model(batch, cache=cache, pad_left=pad_left)
    assert torch.allclose(out[0], model(a)[0], atol=1e-5)
    assert torch.allclose(out[1, 4:], model(b)[0], atol=1e-5)
    nxt = torch.tensor([[7], [8]])
    step = model(nxt, cache=cache, start=9, pad_left=pad_left)
    assert torch.allclose(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5)
    assert torch.allclose(step[0, 0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-5)


def test_document_masking_makes_a_packed_document_see_only_itself():
    """Two documents packed in one row ([BOS a b c][BOS d e f]): with their segments, the second
    one's logits equal those it gets alone (RoPE is relative, so its later columns do not matter);
    without segments it attends to the first document and its logits differ."""
    from lmforge.data.packing import document_segments
    from lmforge.train.trainer import CausalLMModule

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, n_layer=2, d_model=32, n_head=2, max_seq_len=32)).eval()
    bos = 1
    row = torch.tensor([[bos, 5, 6, 7, bos, 8, 9, 3]])
    alone = torch.tensor([[bos, 8, 9, 3]])
    segments = document_segments(row, bos)
    assert segments.tolist() == [[1, 1, 1, 1, 2, 2, 2, 2]]
    with torch.no_grad():
        masked, unmasked, ref = model(row, segments=segments), model(row), model(alone)
    torch.testing.assert_close(masked[:, 4:], ref, atol=1e-5, rtol=0)
    assert (unmasked[:, 4:] - ref).abs().max() > 1e-2
    # the train module applies it: the row's summed loss is the sum of each document's loss alone
    targets = torch.tensor([[5, 6, 7, bos, 8, 9, 3, -100]])
    with torch.no_grad():
        masked_sum = CausalLMModule(doc_mask_bos=bos).loss(model, (row, targets))[0]
        plain_sum = CausalLMModule().loss(model, (row, targets))[0]
        separate = (CausalLMModule().loss(model, (row[:, :4], targets[:, :4]))[0]
                    + CausalLMModule().loss(model, (alone, targets[:, 4:]))[0])
    torch.testing.assert_close(masked_sum, separate, atol=1e-4, rtol=0)
    assert abs(plain_sum - separate) > 1e-3
    with pytest.raises(ValueError, match="segments"):
        model(row[:, :1], segments=segments[:, :1], start=3)
