"""LoRA: low-rank adapters on chosen linear layers, saved in the PEFT format.

A LoRA layer keeps the frozen weight W (d_out, d_in) and learns A (r, d_in) and B (d_out, r):
    y = x W^T + (alpha / r) * dropout(x) A^T B^T
B starts at zero, so training starts exactly at the base model. Only A and B train:
r * (d_in + d_out) parameters per layer instead of d_in * d_out.

`LoRALinear` subclasses `nn.Linear` and keeps the weight under its own name, so the base
parameters keep their Hugging Face names (`...q_proj.weight`) and the adapters add
`...q_proj.lora_A.weight` / `...lora_B.weight`: exactly the keys PEFT writes (under
`base_model.model.`), so `peft.PeftModel.from_pretrained(exported_llama, adapter_dir)` loads them.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lmforge.errors import FieldError, LmforgeError, above_zero, fraction, positive
from lmforge.utils import atomic_write_bytes, read_safetensors, write_json

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(ALL_LINEAR))  # module names (last component)

    def __post_init__(self):
        positive(self, "r")
        above_zero(self, "alpha")
        fraction(self, "dropout", closed_top=False)
        bad = [t for t in self.targets if t not in ALL_LINEAR + ["lm_head"]]
        if bad:
            raise FieldError("targets", f"unknown module {bad[0]!r} (choose from {', '.join(ALL_LINEAR)}, lm_head)")


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight  # shared, frozen below
        if base.bias is not None:
            self.bias = base.bias
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.lora_enabled:
            y = y + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling
        return y

    def merged_weight(self) -> torch.Tensor:
        return self.weight + (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def _targets(model: nn.Module, names: list[str]):
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) and full.rsplit(".", 1)[-1] in names and not isinstance(module, LoRALinear):
            parent = model.get_submodule(full.rsplit(".", 1)[0]) if "." in full else model
            yield full, parent, full.rsplit(".", 1)[-1], module


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> int:
    """Freeze the model and add adapters to the target layers; returns the number of trainable parameters."""
    found = list(_targets(model, cfg.targets))
    if not found:
        raise LmforgeError(f"lora.targets: none of {cfg.targets} found in the model")
    for p in model.parameters():
        p.requires_grad_(False)
    for _, parent, attr, module in found:
        setattr(parent, attr, LoRALinear(module, cfg.r, cfg.alpha, cfg.dropout))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


@contextlib.contextmanager
def lora_disabled(model: nn.Module):
    """Run the base model (adapters off): the reference policy of DPO/PPO when training LoRA."""
    layers = lora_layers(model)
    for _, m in layers:
        m.lora_enabled = False
    try:
        yield model
    finally:
        for _, m in layers:
            m.lora_enabled = True


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight (W + scale * B A) and restore plain nn.Linear layers."""
    for name, m in lora_layers(model):
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(m.merged_weight())
            if m.bias is not None:
                plain.bias.copy_(m.bias)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights under PEFT's names."""
    out = {}
    for name, m in lora_layers(model):
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().cpu().contiguous()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().cpu().contiguous()
    return out


def save_adapter(model: nn.Module, cfg: LoRAConfig, out_dir: str | os.PathLike, base_model: str = "") -> Path:
    """Write adapter_model.safetensors + adapter_config.json (PEFT's LoRA format)."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "adapter_model.safetensors", save(adapter_state_dict(model), metadata={"format": "pt"}))
    names = sorted({n.rsplit(".", 1)[-1] for n, _ in lora_layers(model)})
    write_json(out / "adapter_config.json", {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": names,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_rslora": False, "use_dora": False, "revision": None,
    })
    return out


# adapter_config.json's names for LoRAConfig's fields
PEFT_FIELDS = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules"}


def read_adapter_config(adapter_dir: str | os.PathLike) -> LoRAConfig:
    """The LoRAConfig of a PEFT adapter directory; any problem is one line naming adapter_config.json."""
    from lmforge.model.io import read_json_object

    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise LmforgeError(f"{adapter_dir}: not a LoRA adapter directory (no adapter_config.json)")
    raw = read_json_object(path)

    def get(key, kinds, expected, default=None):
        value = raw.get(key, default)
        if value is None:
            raise LmforgeError(f"{path}: missing {key!r}")
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise LmforgeError(f"{path}: {key}: expected {expected}, got {value!r}")
        return value

    targets = get("target_modules", list, "a list of module names")
    if not all(isinstance(t, str) for t in targets):
        raise LmforgeError(f"{path}: target_modules: expected a list of module names, got {targets!r}")
    try:
        return LoRAConfig(enabled=True, r=get("r", int, "an integer"),
                          alpha=float(get("lora_alpha", (int, float), "a number")),
                          dropout=float(get("lora_dropout", (int, float), "a number", 0.0)), targets=targets)
    except FieldError as e:
        raise LmforgeError(f"{path}: {PEFT_FIELDS[e.field]}: {e.what}") from None


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """Add the adapters of a PEFT-format directory to `model` (in place)."""
    d = Path(adapter_dir)
    cfg = read_adapter_config(d)
    sd = read_safetensors(d / "adapter_model.safetensors", missing=f"{d}: no adapter_model.safetensors")
    apply_lora(model, cfg)
    layers = dict(lora_layers(model))
    unset = {f"{name}.{which}" for name in layers for which in ("lora_A", "lora_B")}
    for key, t in sd.items():
        rest = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else ""
        name, _, which = rest.removesuffix(".weight").rpartition(".")
        if not rest.endswith(".weight") or which not in ("lora_A", "lora_B") or name not in layers:
            raise LmforgeError(f"{d}: adapter weight {key} has no matching layer in the model")
        target = getattr(layers[name], which).weight
        if t.shape != target.shape:  # copy_ would fail with an unnamed RuntimeError
            raise LmforgeError(f"{d}: adapter does not fit this base model ({key}: adapter {tuple(t.shape)}, "
                               f"model {tuple(target.shape)}); was it trained on another base?")
        with torch.no_grad():
            target.copy_(t)
        unset.discard(f"{name}.{which}")
    # a layer the adapter leaves out keeps B = 0 and changes nothing (PEFT's layers_to_transform); one
    # with B but not A would multiply a loaded B by a random A
    half = sorted(n for n in layers if f"{n}.lora_A" in unset and f"{n}.lora_B" not in unset)
    if half:
        raise LmforgeError(f"{d}: adapter has lora_B but no lora_A for {len(half)} layer(s) (e.g. {half[0]})")
    return model
