"""LoRA: starts at the base model, trains only adapters, merges exactly, loads in peft."""

import re

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.lora import LoRAConfig, LoRALinear, apply_lora, load_adapter, lora_disabled, merge_lora, save_adapter
from lmforge.model.transformer import Transformer


def tiny():
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=4, n_kv_head=2)).eval()


def test_lora_starts_at_base_and_trains_only_adapters():
    model, x = tiny(), torch.randint(0, 64, (2, 10))
    before = model(x)
    n = apply_lora(model, LoRAConfig(r=4, targets=["q_proj", "v_proj"]))
    assert n == 2 * ((4 * 32 + 32 * 4) + (4 * 32 + 16 * 4))  # per layer: q 32->32, v 32->16 (2 kv heads x 8)
    assert torch.equal(model(x), before)  # B = 0
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        f"model.layers.{i}.self_attn.{m}.lora_{ab}.weight" for i in range(2) for m in ("q_proj", "v_proj")
        for ab in "AB"}
    assert "model.layers.0.self_attn.q_proj.weight" in model.state_dict()  # base names unchanged


def test_merge_equals_base_plus_adapter_and_disable_gives_base(tmp_path):
    model, x = tiny(), torch.randint(0, 64, (2, 10))
    base = model(x)
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    with_adapter = model(x)
    assert not torch.allclose(with_adapter, base)
    with lora_disabled(model):
        assert torch.allclose(model(x), base)
    save_adapter(model, LoRAConfig(r=4, alpha=8), tmp_path / "adapter")
    reloaded = load_adapter(tiny(), tmp_path / "adapter")
    assert torch.allclose(reloaded(x), with_adapter, atol=1e-6)
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert torch.allclose(merged(x), with_adapter, atol=1e-5)


def test_peft_loads_the_adapter_on_the_exported_model(toy_data, tmp_path):
    peft = pytest.importorskip("peft", reason="peft is needed to check the adapter format")
    transformers = pytest.importorskip("transformers")
    from lmforge.model.export import export_hf
    from lmforge.model.io import save_model

    _, tok = toy_data
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=4, n_kv_head=2)).eval()
    save_model(model, tmp_path / "base", toy_data[0].parent / "tok")
    export_hf(tmp_path / "base", tmp_path / "hf")
    cfg = LoRAConfig(r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    apply_lora(model, cfg)
    for _, m in model.named_modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    save_adapter(model, cfg, tmp_path / "adapter", base_model=str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    peft_model = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    x = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        assert (peft_model(x).logits - model(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("kwargs,message", [
    ({"targets": ["qproj"]}, "targets: unknown module 'qproj' (choose from q_proj, k_proj, v_proj, o_proj, "
                             "gate_proj, up_proj, down_proj, lm_head)"),
    ({"r": 0}, "r: expected a positive integer, got 0"),
    ({"alpha": -1.0}, "alpha: expected a number > 0, got -1.0"),
    ({"dropout": 1.0}, "dropout: expected a number >= 0 and < 1, got 1.0"),
])
def test_bad_lora_config(kwargs, message):
    with pytest.raises(LmforgeError) as e:
        LoRAConfig(**kwargs)
    assert str(e.value) == message


@pytest.mark.parametrize("override,message", [
    ("sft.lora.dropout=2", "sft.lora.dropout: expected a number >= 0 and < 1, got 2.0"),
    ("dpo.lora.r=0", "dpo.lora.r: expected a positive integer, got 0"),
    ("sft.lora.targets=qkv", "sft.lora.targets: unknown module 'qkv'"),
])
def test_bad_lora_config_is_named_by_its_section(override, message):
    from pathlib import Path

    from lmforge.config import load_run_config

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"
    with pytest.raises(LmforgeError, match=re.escape(message)):
        load_run_config(recipe, [override])
