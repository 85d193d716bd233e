"""Broken checkpoints, adapters, outputs and flags: one-line errors naming the file or flag, never a traceback
and never a half-written output directory."""

import json
import re
import socket

import pytest
import torch

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.io import load_checkpoint, load_model, save_model
from lmforge.model.lora import LoRAConfig, apply_lora, load_adapter, lora_layers, save_adapter
from lmforge.model.transformer import Transformer
from lmforge.tokenizer import Tokenizer, train_tokenizer
from lmforge.train.distributed import resolve_device

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "two plus two is four"] * 10


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS, d, vocab_size=300, min_frequency=1)
    return d


def tiny(vocab_size: int, d_model: int = 16) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab_size, n_layer=1, d_model=d_model, n_head=2, max_seq_len=32))


@pytest.fixture
def ckpt(tmp_path, tok_dir):
    save_model(tiny(Tokenizer.load(tok_dir).vocab_size), tmp_path / "ckpt", tok_dir)
    return tmp_path / "ckpt"


@pytest.fixture
def adapter(tmp_path, ckpt):
    model = load_model(ckpt)
    cfg = LoRAConfig(r=2, targets=["q_proj", "v_proj"])
    apply_lora(model, cfg)
    for _, layer in lora_layers(model):  # B = 0 would make merging a no-op
        torch.nn.init.normal_(layer.lora_B.weight, std=0.1)
    return save_adapter(model, cfg, tmp_path / "adapter")


def cli_error(capsys, *argv) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `error: ...` line. Returns the message."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err[len("error: "):-1]


def edit_json(path, **changes):
    raw = json.loads(path.read_text())
    raw.update(changes)
    for k, v in changes.items():
        if v is None:
            del raw[k]
    path.write_text(json.dumps(raw))


# --- the checkpoint's own files ------------------------------------------------------------------------

def test_truncated_weights(ckpt, capsys):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(w))}: cannot read \(truncated or not safetensors: "):
        load_model(ckpt)
    assert cli_error(capsys, "chat", ckpt, "-p", "hi").startswith(f"{w}: cannot read (truncated")


def test_model_config_invalid_json(ckpt, capsys):
    (ckpt / "model_config.json").write_text('{"vocab_size": 300,')
    msg = f"{ckpt / 'model_config.json'}: invalid JSON ("
    with pytest.raises(LmforgeError, match=f"^{re.escape(msg)}"):
        load_model(ckpt)
    assert cli_error(capsys, "export", ckpt, ckpt.parent / "hf").startswith(msg)


def test_model_config_wrong_type_and_bad_value(ckpt, capsys):
    edit_json(ckpt / "model_config.json", d_model="16")
    msg = f"{ckpt / 'model_config.json'}: d_model: expected an integer, got '16'"
    with pytest.raises(LmforgeError, match=f"^{re.escape(msg)}$"):
        load_model(ckpt)
    assert cli_error(capsys, "chat", ckpt, "-p", "hi") == msg
    edit_json(ckpt / "model_config.json", d_model=16, n_head=0)
    with pytest.raises(LmforgeError, match=r"model_config.json: n_head: expected a positive integer, got 0$"):
        load_model(ckpt)


def test_config_dims_do_not_match_weights(ckpt):
    edit_json(ckpt / "model_config.json", ffn_hidden=128)
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(ckpt))}: weights do not match model_config.json "
                                           r"\(model\.layers\.0\.mlp\.\w+_proj\.weight: checkpoint \(\d+, \d+\), "
                                           r"config \(\d+, \d+\)\)$"):
        load_model(ckpt)


def test_tokenizer_larger_than_the_model(tmp_path, tok_dir, capsys):
    n = Tokenizer.load(tok_dir).vocab_size
    save_model(tiny(n - 10), tmp_path / "ckpt", tok_dir)
    msg = f"{tmp_path / 'ckpt'}: the tokenizer has {n} tokens but the model's vocab_size is {n - 10} "
    for load in (load_model, load_checkpoint):
        with pytest.raises(LmforgeError, match=f"^{re.escape(msg)}"):
            load(tmp_path / "ckpt")
    assert cli_error(capsys, "chat", tmp_path / "ckpt", "-p", "hi").startswith(msg)
    assert cli_error(capsys, "export", tmp_path / "ckpt", tmp_path / "hf").startswith(msg)
    assert not (tmp_path / "hf").exists()


def test_an_adapter_is_not_a_checkpoint(adapter, capsys):
    msg = (f"{adapter}: a LoRA adapter, not a full checkpoint; fold it into its base model first with "
           f"`lmforge merge {adapter} BASE OUT` and use OUT")
    assert cli_error(capsys, "chat", adapter, "-p", "hi") == msg
    assert cli_error(capsys, "export", adapter, adapter.parent / "hf") == msg


# --- export and merge outputs ----------------------------------------------------------------------------

def leftovers(d) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.endswith(".tmp")]


def test_export_checks_inputs_and_output_before_writing(ckpt, capsys):
    (ckpt / "tokenizer_config.json").unlink()
    out = ckpt.parent / "hf"
    assert cli_error(capsys, "export", ckpt, out) == \
        f"{ckpt}: no tokenizer_config.json (export copies the tokenizer files next to the model)"
    assert not out.exists() and not leftovers(ckpt.parent)
    a_file = ckpt.parent / "a_file"
    a_file.write_text("x")
    assert cli_error(capsys, "export", ckpt, a_file) == \
        f"{a_file}: exists and is not a directory; give a directory to write"
    assert cli_error(capsys, "export", ckpt, ckpt) == \
        f"{ckpt}: the output directory is the input {ckpt}; give another directory"


def test_export_failing_midway_leaves_no_output(ckpt, monkeypatch):
    import lmforge.model.export as export

    def broken(*_):
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_chat_template", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_hf(ckpt, ckpt.parent / "hf")
    assert not (ckpt.parent / "hf").exists() and not leftovers(ckpt.parent)


def test_export_into_an_existing_directory_replaces_its_files(ckpt):
    from lmforge.model.export import export_hf

    out = ckpt.parent / "hf"
    out.mkdir()
    (out / "README.md").write_text("mine")
    (out / "config.json").write_text("{}")
    export_hf(ckpt, out)
    assert (out / "README.md").read_text() == "mine"
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    assert (out / "model.safetensors").exists() and not leftovers(ckpt.parent)


def test_merge_writes_a_whole_checkpoint_and_refuses_a_file(ckpt, adapter, capsys):
    out = ckpt.parent / "merged"
    assert main(["merge", str(adapter), str(ckpt), str(out)]) == 0
    x = torch.randint(0, 50, (1, 8))
    with torch.no_grad():
        merged, with_adapter, base = load_model(out)(x), load_adapter(load_model(ckpt), adapter)(x), load_model(ckpt)(x)
    assert torch.allclose(merged, with_adapter, atol=1e-5) and not torch.allclose(merged, base)
    assert not leftovers(ckpt.parent)
    a_file = ckpt.parent / "a_file"
    a_file.write_text("x")
    assert cli_error(capsys, "merge", adapter, ckpt, a_file) == \
        f"{a_file}: exists and is not a directory; give a directory to write"


# --- broken adapters ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("breakage,message", [
    ("no weights", "{d}: no adapter_model.safetensors"),
    ("no r", "{d}/adapter_config.json: missing 'r'"),
    ("bad json", "{d}/adapter_config.json: invalid JSON (Expecting value at line 1, column 7)"),
    ("r as text", "{d}/adapter_config.json: r: expected an integer, got '2'"),
    ("unknown target", "{d}/adapter_config.json: target_modules: unknown module 'qkv' (choose from q_proj, "
                       "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)"),
    ("negative alpha", "{d}/adapter_config.json: lora_alpha: expected a number > 0, got -1.0"),
    ("truncated", "{d}/adapter_model.safetensors: cannot read (truncated or not safetensors: "),
])
def test_broken_adapter(ckpt, adapter, capsys, breakage, message):
    cfg = adapter / "adapter_config.json"
    if breakage == "no weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif breakage == "bad json":
        cfg.write_text('{"r": }')
    elif breakage == "truncated":
        (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 20)
    else:
        edit_json(cfg, **{"no r": {"r": None}, "r as text": {"r": "2"}, "unknown target": {"target_modules": ["qkv"]},
                          "negative alpha": {"lora_alpha": -1}}[breakage])
    message = message.format(d=adapter)
    with pytest.raises(LmforgeError, match=f"^{re.escape(message)}"):
        load_adapter(load_model(ckpt), adapter)
    assert cli_error(capsys, "merge", adapter, ckpt, ckpt.parent / "merged").startswith(message)
    assert not (ckpt.parent / "merged").exists()


def test_an_adapter_may_leave_layers_out_but_not_half_a_layer(ckpt, adapter):
    """A layer the adapter does not cover keeps B = 0 (PEFT's layers_to_transform): no change there."""
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    sd = load_file(str(path))
    v_keys = [k for k in sd if ".v_proj." in k]
    save_file({k: t for k, t in sd.items() if k not in v_keys}, str(path))
    model = load_adapter(load_model(ckpt), adapter)
    assert not dict(lora_layers(model))["model.layers.0.self_attn.v_proj"].lora_B.weight.any()
    save_file({k: t for k, t in sd.items() if k != next(k for k in v_keys if "lora_A" in k)}, str(path))
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(adapter))}: adapter has lora_B but no lora_A for 1 "
                                           r"layer\(s\) \(e\.g\. model\.layers\.0\.self_attn\.v_proj\)$"):
        load_adapter(load_model(ckpt), adapter)


def test_adapter_from_another_base(tmp_path, ckpt):
    model = tiny(50, d_model=32)
    cfg = LoRAConfig(r=2, targets=["q_proj"])
    apply_lora(model, cfg)
    save_adapter(model, cfg, tmp_path / "other")
    with pytest.raises(LmforgeError, match=rf"^{re.escape(str(tmp_path / 'other'))}: adapter does not fit this base "
                                           r"model \(base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_\w\."
                                           r"weight: adapter \(\d+, \d+\), model \(\d+, \d+\)\); was it trained"):
        load_adapter(load_model(ckpt), tmp_path / "other")


# --- devices and ports --------------------------------------------------------------------------------------

def test_devices(monkeypatch, ckpt, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(LmforgeError, match=r"^--device mps: MPS is not available on this machine \(use cpu\)$"):
        resolve_device("mps", flag="--device")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(LmforgeError, match=r"^--device tpu: expected auto, cpu, cuda, cuda:N or mps$"):
        resolve_device("tpu", flag="--device")
    with pytest.raises(LmforgeError, match=r"^device cuda: CUDA is not available on this machine \(use cpu\)$"):
        resolve_device("cuda")
    assert cli_error(capsys, "chat", ckpt, "-p", "hi", "--device", "tpu") == \
        "--device tpu: expected auto, cpu, cuda, cuda:N or mps"
    assert cli_error(capsys, "serve", ckpt, "--device", "cuda") == \
        "--device cuda: CUDA is not available on this machine (use cpu)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(LmforgeError, match=r"^device cuda:2: this machine has 2 CUDA device\(s\)$"):
        resolve_device("cuda:2")


def test_serve_ports(ckpt, capsys):
    assert cli_error(capsys, "serve", ckpt, "--port", "99999") == "--port 99999: expected a port number from 0 to 65535"
    assert cli_error(capsys, "serve", ckpt, "--port", "-1") == "--port -1: expected a port number from 0 to 65535"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli_error(capsys, "serve", ckpt, "--port", port) == f"port {port} on 127.0.0.1 is in use"
