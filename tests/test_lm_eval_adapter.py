"""The lm-evaluation-harness adapter: scores equal the model's own logits, generation honours `until`,
and lm-eval runs local tasks (tests/fixtures/lm_eval) end to end through its Python API and its CLI."""

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval", reason="lm-eval is an optional extra (pip install lm-eval)")

from lm_eval.api.instance import Instance  # noqa: E402

from lmforge.chat import render_prompt  # noqa: E402
from lmforge.eval import lm_eval_adapter as adapter  # noqa: E402
from lmforge.model.config import ModelConfig  # noqa: E402
from lmforge.model.io import save_model  # noqa: E402
from lmforge.model.transformer import Transformer  # noqa: E402
from lmforge.tokenizer import train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "lm_eval"
WINDOW = 48
TEXTS = ["The capital of France is Paris. Two plus two equals four.",
         "The quick brown fox jumps over the lazy dog. A cat says meow.",
         "What colour is the sky? The sky is blue. The opposite of hot is cold."] * 20


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    train_tokenizer(TEXTS, root / "tok", vocab_size=320)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=320, n_layer=2, d_model=32, n_head=2, max_seq_len=WINDOW)
    save_model(Transformer(cfg), root / "ckpt", root / "tok")
    return root / "ckpt"


@pytest.fixture(scope="module")
def lm(ckpt):
    return adapter.LmforgeLM(path=str(ckpt), device="cpu", batch_size=2)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and no writes outside tmp_path: the tasks read local JSONL files only."""
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    import datasets.config

    # `datasets` reads these at import time, which may have happened already
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.chdir(ROOT)  # the task YAMLs name their data files relative to the repository root


def req(kind, *args):
    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


@torch.no_grad()
def direct(model, ids, n_cont):
    """Sum of log p over the last n_cont tokens of ids, seeing at most WINDOW tokens; and whether all are argmax."""
    seq = ids[-(WINDOW + 1):]
    logp = model(torch.tensor([seq[:-1]]))[0].log_softmax(-1)
    pos = range(len(seq) - 1 - n_cont, len(seq) - 1)
    ll = sum(logp[p, seq[p + 1]].item() for p in pos)
    return ll, all(logp[p].argmax().item() == seq[p + 1] for p in pos)


def test_registered_beside_builtin_models():
    from lm_eval.api.registry import get_model

    assert get_model("lmforge") is adapter.LmforgeLM
    assert get_model("dummy").__name__ == "DummyLM"  # lm-eval's own models are still there


def test_loglikelihood_equals_logits(lm):
    tok, model = lm.tok, lm.model
    long_ctx = " ".join(["the quick brown fox"] * 20)  # far beyond the window: truncated from the left
    cases = [("The capital of France is", " Paris"), ("Two plus two equals", " four."),
             ("", "The sky is blue"), (long_ctx, " jumps over"), ("A cat", " says meow")]
    got = lm.loglikelihood([req("loglikelihood", c, x) for c, x in cases])
    for (ctx, cont), (ll, greedy) in zip(cases, got, strict=True):
        ids = [tok.bos_id, *tok.encode(ctx + cont)]
        n_ctx = 1 + len(tok.encode(ctx)) if ctx else 1
        assert ids[:n_ctx] == [tok.bos_id, *tok.encode(ctx)][:n_ctx]  # a clean token boundary
        exp_ll, exp_greedy = direct(model, ids, len(ids) - n_ctx)
        assert ll == pytest.approx(exp_ll, abs=1e-4)
        assert greedy == exp_greedy
    assert len([tok.bos_id, *tok.encode(long_ctx)]) > WINDOW
    # the context's trailing space moves to the continuation: the same text, the same score
    (moved, _), = lm.loglikelihood([req("loglikelihood", "The capital of France is ", "Paris")])
    assert moved == pytest.approx(got[0][0], abs=1e-5)


def test_rolling_is_the_full_sequence_sum(lm):
    tok, model = lm.tok, lm.model
    short, long = "The sky is blue.", " ".join(TEXTS[:5])
    got = lm.loglikelihood_rolling([req("loglikelihood_rolling", short), req("loglikelihood_rolling", long)])
    toks = tok.encode(short)
    assert got[0] == pytest.approx(direct(model, [tok.bos_id, *toks], len(toks))[0], abs=1e-4)
    # longer than the window: every token scored exactly once, with as much context as fits
    toks = tok.encode(long)
    seq, expected = [tok.bos_id, *toks], 0.0
    assert len(toks) > 2 * WINDOW and len(toks) % WINDOW  # the last window scores only its last few tokens
    for a in range(0, len(toks), WINDOW):
        b = min(a + WINDOW, len(toks))
        expected += direct(model, seq[max(0, b - WINDOW):b + 1], b - a)[0]
    assert got[1] == pytest.approx(expected, abs=1e-3)


def test_generate_until_cuts_at_the_first_stop_string(lm, monkeypatch):
    def gen(until, n):
        return lm.generate_until([req("generate_until", "The capital of", {"until": until, "max_gen_toks": n,
                                                                            "do_sample": False})])[0]

    full = gen([], 24)
    assert len(full) >= 6, f"the random model should say something: {full!r}"
    stop = full[len(full) // 2:len(full) // 2 + 2]
    assert gen([stop], 24) == full[:full.find(stop)]
    assert full.startswith(gen([], 5)) and len(gen([], 5)) < len(full)  # max_gen_toks bounds the output
    # generation in small chunks (checking `until` between them) continues exactly where it stopped
    monkeypatch.setattr(adapter, "FIRST_CHUNK", 3)
    assert gen([], 24) == full
    # sampling: do_sample/temperature/seed reach the engine; the same seed gives the same text
    sampled = [lm.generate_until([req("generate_until", "The capital of", {"until": [], "max_gen_toks": 12,
                                       "do_sample": True, "temperature": 1.5, "seed": seed})])[0]
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and full[:12] not in sampled


def test_chat_template_gives_render_prompt_ids(lm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
    text = lm.apply_chat_template(msgs)
    assert lm._encode(text) == render_prompt(msgs, lm.tok)
    # lm-eval's gen_prefix: the final assistant message is left open for the model to continue
    prefixed = lm.apply_chat_template([*msgs, {"role": "assistant", "content": "The answer is"}],
                                      add_generation_prompt=False)
    assert lm._encode(prefixed) == render_prompt(msgs, lm.tok) + lm.tok.encode("The answer is")


def test_simple_evaluate_runs_local_tasks(ckpt, offline):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = ["lmforge_toy_mc", "lmforge_toy_gen", "lmforge_toy_ppl"]
    out = lm_eval.simple_evaluate(model="lmforge", model_args={"path": str(ckpt), "device": "cpu"}, tasks=tasks,
                                  batch_size=4, bootstrap_iters=0,
                                  task_manager=TaskManager(include_path=str(FIXTURES), include_defaults=False))
    res = out["results"]
    assert 0 <= res["lmforge_toy_mc"]["acc,none"] <= 1 and 0 <= res["lmforge_toy_mc"]["acc_norm,none"] <= 1
    assert 0 <= res["lmforge_toy_gen"]["exact_match,strip"] <= 1
    assert res["lmforge_toy_ppl"]["word_perplexity,none"] > 1
    assert res["lmforge_toy_ppl"]["bits_per_byte,none"] > 0
    assert out["n-samples"]["lmforge_toy_mc"]["effective"] == 4


def test_cli_forwarding(ckpt, offline, monkeypatch, tmp_path, capsys):
    import lm_eval.tasks

    # the CLI indexes lm-eval's ~15k built-in task configs first (~10 s); these tasks need none of them
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                        include_defaults=False))
    monkeypatch.setattr(sys, "argv", ["lmforge-lm-eval"])
    # no device in model_args: lm-eval's own --device default (cuda) must not fail a machine without one
    adapter.main(["--model", "lmforge", "--model_args", f"path={ckpt},batch_size=4",
                  "--tasks", "lmforge_toy_mc,lmforge_toy_gen", "--include_path", str(FIXTURES),
                  "--output_path", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "lmforge_toy_mc" in printed and "acc_norm" in printed and "exact_match" in printed
    (results,) = (tmp_path / "out").rglob("results_*.json")
    data = json.loads(results.read_text())
    assert "acc,none" in data["results"]["lmforge_toy_mc"]
    assert data["config"]["model"] == "lmforge"


def test_cli_bad_checkpoint_is_a_one_line_error(offline, monkeypatch, tmp_path, capsys):
    import lm_eval.tasks

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(lm_eval.tasks.TaskManager,
                                                                        include_defaults=False))
    monkeypatch.setattr(sys, "argv", ["lmforge-lm-eval"])
    with pytest.raises(SystemExit) as e:
        adapter.main(["--model", "lmforge", "--model_args", f"path={tmp_path}", "--tasks", "lmforge_toy_mc",
                      "--include_path", str(FIXTURES)])
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith(f"error: {tmp_path}: not an lmforge checkpoint (no model_config.json)\n")


def test_cli_offline_hub_task_is_a_one_line_error_at_once(monkeypatch, capsys):
    """A Hub task with the Hub unreachable: lm-eval runs with `datasets` in offline mode (the cache, or
    failure at once, where it retried ~25 s and printed a traceback) and the failure is one line."""
    import datasets.config
    import huggingface_hub.constants
    import lm_eval.__main__

    import lmforge.data.sources

    seen = []

    def hub_task():
        seen.append((datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE))
        raise ConnectionError("Couldn't reach 'Rowan/hellaswag' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # online as far as the libraries know
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(lmforge.data.sources, "hub_unreachable", lambda: "huggingface.co")
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", hub_task)
    monkeypatch.setattr(sys, "argv", ["lmforge-lm-eval"])
    with pytest.raises(SystemExit) as e:
        adapter.main(["--model", "lmforge", "--tasks", "hellaswag"])
    assert e.value.code == 2 and seen == [(True, True)]
    assert capsys.readouterr().err == (
        "error: the Hugging Face Hub (huggingface.co) does not resolve, and a task's dataset could not be loaded "
        "(Couldn't reach 'Rowan/hellaswag' on the Hub (OfflineModeIsEnabled)); offline, use tasks whose data is "
        "local (--include_path DIR with task YAMLs over local files: docs/lm_eval.md)\n")
    assert (datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE) == (False, False)  # restored


def test_without_lm_eval_the_module_imports_and_says_what_to_install():
    code = ("import sys; sys.modules['lm_eval'] = None\n"  # None in sys.modules: `import lm_eval` fails
            "from lmforge.eval import lm_eval_adapter as a\n"
            "a.main(['--model', 'lmforge'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "error: lm-eval is not installed" in run.stderr
