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


def _hf_ids(result):
    # transformers 4.x returns a list of ids, 5.x a BatchEncoding
    return list(result) if isinstance(result, list) else list(result["input_ids"])


def test_exported_chat_template_gives_lmforge_ids(toy_data, tmp_path):
    """transformers' apply_chat_template on the exported directory gives the ids lmforge trains on and prompts
    with: a system turn, several user/assistant turns, an OpenAI-style tool call and its output, with and
    without the generation prompt (none after a tool output: the assistant's turn is still open)."""
    from lmforge.chat import render, render_prompt
    from lmforge.data.chat_sources import normalize_messages

    _, tok = toy_data
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, max_seq_len=64)
    save_model(Transformer(cfg), tmp_path / "ckpt", tok_dir(toy_data))
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    conv = [{"role": "system", "content": "You are Forge."},
            {"role": "user", "content": "What is the capital of Zali?"},
            {"role": "assistant", "content": "The capital of Zali is Finisdor."},
            {"role": "user", "content": "And 12 + 7?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": {"expr": "12+7"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "19"},
            {"role": "assistant", "content": "12 + 7 = 19."}]
    ours = normalize_messages(conv)  # how lmforge reads OpenAI-style records (chat sources)
    assert ours[4]["tool_calls"] == [{"name": "calculator", "arguments": '{"expr": "12+7"}'}]
    assert _hf_ids(hf_tok.apply_chat_template(conv, tokenize=True, add_generation_prompt=False)) == render(ours, tok)[0]
    prompts = 0
    for k in range(1, len(conv)):  # every prefix: the conversation so far, and the prompt the engine would see
        got = _hf_ids(hf_tok.apply_chat_template(conv[:k], tokenize=True, add_generation_prompt=False))
        assert got == render(ours[:k], tok)[0], k
        if conv[k]["role"] == "assistant":
            got = _hf_ids(hf_tok.apply_chat_template(conv[:k], tokenize=True, add_generation_prompt=True))
            assert got == render_prompt(ours[:k], tok), k
            prompts += 1
    assert prompts == 3
    assert render_prompt(ours[:6], tok) == render(ours[:6], tok)[0]  # after the tool output: no new marker


def tok_dir(toy_data):
    return toy_data[0].parent / "tok"


def test_reward_model_exports_as_sequence_classification_with_equal_rewards(toy_data, tmp_path):
    """`lmforge export` of a reward checkpoint: transformers' AutoModelForSequenceClassification gives
    lmforge's reward as its one logit, also for a right-padded row (both read the last real token).
    Measured on the demo's reward model: 1.29477 for a plain answer, -2.00888 with the hasty sign-off,
    on both sides. Loading one as a language model (chat, eval, export as a causal LM) is refused."""
    from lmforge.model.reward import RewardModel, save_reward_model

    _, tok = toy_data
    torch.manual_seed(0)
    rm = RewardModel(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                                 tie_embeddings=True, max_seq_len=64)).eval()
    torch.nn.init.normal_(rm.score.weight)  # a trained head: zero-initialized would score everything 0
    save_reward_model(rm, tmp_path / "rm", tok_dir(toy_data))
    export_hf(tmp_path / "rm", tmp_path / "hf")
    assert not (tmp_path / "hf/generation_config.json").exists()
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.architectures == ["LlamaForSequenceClassification"] and hf.config.num_labels == 1
    x = torch.randint(tok.pad_id + 1, tok.vocab_size, (2, 20))
    x[1, 15:] = tok.pad_id                                            # row 1: 15 real tokens, then padding
    with torch.no_grad():
        theirs = hf(x).logits[:, 0]
        ours = rm(x, last=torch.tensor([19, 14]))
    assert (theirs - ours).abs().max().item() < 1e-4 and ours.abs().min().item() > 1e-3
    with pytest.raises(LmforgeError, match=r"a reward model \(model_config.json \"head\": \"reward\"\), not a "
                                           r"language model: it scores answers and cannot generate"):
        load_model(tmp_path / "rm")


def test_non_llama_architecture_is_refused(toy_data, tmp_path):
    _, tok = toy_data
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, mlp="gelu"))
    save_model(model, tmp_path / "ckpt", tok_dir(toy_data))
    with pytest.raises(LmforgeError, match=r"only the Llama-compatible architecture exports to transformers; "
                                           r"this model has mlp=gelu \(needs swiglu\)$"):
        export_hf(tmp_path / "ckpt", tmp_path / "hf")


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(LmforgeError, match="not an lmforge checkpoint"):
        export_hf(tmp_path, tmp_path / "hf")
