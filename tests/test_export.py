"""Export to Hugging Face: transformers loads the directory and computes the same logits."""

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.export import export_hf
from lmforge.model.io import load_model, save_model
from lmforge.model.transformer import Transformer

transformers = pytest.importorskip("transformers", reason="transformers is the optional [hf] extra")


@pytest.mark.parametrize("tied", [False, True])
def test_transformers_loads_export_with_equal_logits(toy_data, tmp_path, tied):
    _, tok = toy_data
    torch.manual_seed(0)
    # the Llama-compatible configuration: RMSNorm, RoPE, SwiGLU, grouped-query attention
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                      tie_embeddings=tied, max_seq_len=64)
    model = Transformer(cfg).eval()
    save_model(model, tmp_path / "ckpt", tok_dir(toy_data))
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert (tmp_path / "hf" / name).exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", torch_dtype=torch.float32).eval()
    x = torch.randint(0, tok.vocab_size, (2, 24))
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    assert diff < 1e-4
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "The capital of Zali is Finisdor. 12 + 7 = 19"
    assert hf_tok(text)["input_ids"] == tok.encode(text)
    # the round trip through lmforge's own loader is exact
    assert torch.equal(load_model(tmp_path / "ckpt")(x), model(x))


def tok_dir(toy_data):
    return toy_data[0].parent / "tok"


def test_non_llama_architecture_is_refused(toy_data, tmp_path):
    _, tok = toy_data
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, mlp="gelu"))
    save_model(model, tmp_path / "ckpt", tok_dir(toy_data))
    with pytest.raises(LmforgeError, match="only the Llama-compatible architecture exports.*mlp=gelu"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(LmforgeError, match="not an lmforge checkpoint"):
        export_hf(tmp_path, tmp_path / "hf")
