"""Generation engine: cached greedy equals uncached argmax, batching/padding invariance, N samples,
seeding, stop tokens, length limits, streaming, the compiled step and bf16 matmuls (tool calls:
test_engine_tools.py)."""

import pytest
import torch

import lmforge.engine as engine_mod
import lmforge.fast_decode as fast_decode
from lmforge.engine import Completion, Engine, SamplingParams, generate
from lmforge.model.config import ModelConfig
from lmforge.model.transformer import KVCache, Transformer

VOCAB = 64
VARIANTS = [  # the fast decoder covers the first five; ALiBi and sliding windows use Transformer.forward
    {},
    dict(n_kv_head=1, qk_norm=True, tie_embeddings=True),
    dict(norm="layernorm", position="learned", mlp="gelu"),
    dict(norm_position="post", position="none", mlp="relu2"),
    dict(mask="prefix"),
    dict(position="alibi", n_kv_head=1),
    dict(sliding_window=4),
]
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0)


def tiny(seed: int = 0, **kw) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, n_layer=2, d_model=32, n_head=2, max_seq_len=64), **kw})
    return Transformer(cfg).eval()


def prompts_of(lengths, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def argmax_no_cache(model, prompt, n) -> list[int]:
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def ids(outs) -> list[list[int]]:
    return [samples[0].ids for samples in outs]


@pytest.mark.parametrize("kw", VARIANTS)
@pytest.mark.parametrize("fast", [True, False])
def test_greedy_matches_uncached_argmax(kw, fast):
    model = tiny(**kw)
    prompts = prompts_of([5, 9, 2])
    outs = Engine(model, fast=fast).generate(prompts, GREEDY)
    for p, samples in zip(prompts, outs, strict=True):
        assert samples[0].ids == argmax_no_cache(model, p, 12)
        assert samples[0].mask == [1] * 12 and samples[0].finish_reason == "length"


def test_fast_decoder_is_used_where_supported():
    assert Engine(tiny()).fast and not Engine(tiny(), fast=False).fast
    assert not Engine(tiny(position="alibi")).fast and not Engine(tiny(sliding_window=4)).fast


@pytest.mark.parametrize("kw", VARIANTS[:3])
def test_batched_left_padded_equals_one_prompt_at_a_time(kw):
    model = tiny(**kw)
    prompts = prompts_of([3, 11, 1, 7, 7])
    alone = [Engine(model).generate([p], GREEDY)[0][0].ids for p in prompts]
    assert ids(Engine(model).generate(prompts, GREEDY)) == alone
    assert ids(Engine(model, batch_size=2).generate(prompts, GREEDY)) == alone  # several runs, order kept


def test_lora_model_decodes_like_the_reference_path():
    from lmforge.model.lora import LoRAConfig, apply_lora, lora_layers

    model = tiny()
    apply_lora(model, LoRAConfig(r=4, targets=["q_proj", "v_proj", "up_proj", "lm_head"]))
    for _, m in lora_layers(model):
        torch.nn.init.normal_(m.lora_B.weight, std=0.5)  # a trained adapter: not the identity
    prompts = prompts_of([4, 8])
    ref = ids(Engine(model, fast=False).generate(prompts, GREEDY))
    assert ids(Engine(model).generate(prompts, GREEDY)) == ref
    assert ref == [argmax_no_cache(model, p, 12) for p in prompts]


def test_samples_differ_and_the_seed_reproduces_them():
    model = tiny()
    prompts = prompts_of([4, 6])
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=3)
    a = Engine(model).generate(prompts, params, n=4)
    assert [len(s) for s in a] == [4, 4]
    for samples in a:
        assert len({tuple(c.ids) for c in samples}) > 1
    assert Engine(model).generate(prompts, params, n=4) == a
    other = Engine(model).generate(prompts, SamplingParams(max_new_tokens=10, temperature=1.0, seed=4), n=4)
    assert other != a


def test_n_greedy_samples_are_identical_and_match_n_equal_one():
    model = tiny()
    prompts = prompts_of([4, 9, 2])
    one = ids(Engine(model).generate(prompts, GREEDY))
    for batch_size in (64, 4, 2):  # 2 < n: a prompt's samples are split over runs
        outs = Engine(model, batch_size=batch_size).generate(prompts, GREEDY, n=3)
        assert [[c.ids for c in s] for s in outs] == [[o] * 3 for o in one]


def test_progress_bar_counts_every_answer_and_changes_no_output(monkeypatch):
    """generate(progress=...) shows a bar of prompts x n answers, advanced per run (2 runs of 2 prompts x 2
    samples here), that reaches its total: a prompt with no room left (64 tokens, the context) is answered
    without a run and left out of it. The outputs are those without the bar."""
    import tqdm.auto

    bars = []

    class Bar:
        def __init__(self, total, desc, **kw):
            self.total, self.desc, self.updates = total, desc, []
            bars.append(self)

        def update(self, k):
            self.updates.append(k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tqdm.auto, "tqdm", Bar)
    model, prompts = tiny(), prompts_of([5, 3, 64, 7, 4])
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3)
    plain = ids(Engine(model, batch_size=4).generate(prompts, params, n=2))
    assert bars == []
    shown = ids(Engine(model, batch_size=4).generate(prompts, params, n=2, progress="sampling"))
    assert shown == plain
    assert [(b.desc, b.total, b.updates) for b in bars] == [("sampling", 8, [4, 4])]


def test_sampling_leaves_the_global_rng_alone():
    model = tiny()
    state = torch.get_rng_state()
    Engine(model).generate(prompts_of([3, 5]), SamplingParams(max_new_tokens=8, temperature=1.0, seed=1), n=2)
    assert torch.equal(torch.get_rng_state(), state)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    model = tiny()
    prompts = prompts_of([3, 8])
    greedy = ids(Engine(model).generate(prompts, GREEDY))
    for params in (SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1, seed=5),
                   SamplingParams(max_new_tokens=12, temperature=1.5, top_p=1e-6, seed=5)):
        assert ids(Engine(model).generate(prompts, params)) == greedy


def test_stop_token_ends_its_row_and_the_others_continue():
    model = tiny()
    prompts = prompts_of([5, 3, 8])
    free = ids(Engine(model).generate(prompts, GREEDY))
    # a token of row 0 (not its first) that some other row never produces
    stop = next(t for t in free[0][1:] if any(t not in f for f in free[1:]))
    outs = Engine(model).generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(stop,)))
    reasons = []
    for full, samples in zip(free, outs, strict=True):
        c = samples[0]
        if stop in full:
            assert c.ids == full[:full.index(stop) + 1] and c.finish_reason == "stop"
        else:
            assert c.ids == full and c.finish_reason == "length"
        reasons.append(c.finish_reason)
    assert outs[0][0].finish_reason == "stop" and len(outs[0][0].ids) < 12 and "length" in reasons


@pytest.mark.parametrize("fast", [True, False])
def test_finished_rows_leave_the_batch(fast, monkeypatch):
    """Once half the rows are done they are dropped from the batch; the others are unaffected."""
    model = tiny()
    prompts = prompts_of([5, 3, 8, 6, 2, 9])
    free = ids(Engine(model, fast=fast).generate(prompts, GREEDY, n=2))
    stop = free[0][1]
    widths = []
    real_forward = Engine._forward
    monkeypatch.setattr(Engine, "_forward", lambda self, d, idx, *a: widths.append(len(idx)) or
                        real_forward(self, d, idx, *a))
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(stop,))
    outs = Engine(model, fast=fast).generate(prompts, params, n=2)
    for full, samples in zip(free, outs, strict=True):
        want = full[:full.index(stop) + 1] if stop in full else full
        assert [c.ids for c in samples] == [want, want]
    assert widths[0] == 6 and widths[1] == 12 and widths[-1] < 6  # prefill, first step, after compaction


@pytest.mark.parametrize("kw", VARIANTS[:5])
def test_samples_from_the_group_cache_equal_copied_cache_rows(kw, monkeypatch):
    """n samples per prompt on the fast path keep the prompt's keys and values once (GroupCache); they
    equal the reference path's, which copies the prompt's cache rows n times: the same tokens and
    log-probs at temperature 1, through rows finishing at different steps (stop tokens: rows and then
    whole prompts leave the batch) and prompts of different lengths (left padding)."""
    from lmforge.group_decode import GroupCache

    model = tiny(**kw)
    prompts = prompts_of([5, 3, 8, 6, 2, 9])
    kept = []
    real_keep = GroupCache.keep_rows

    def keep_rows(self, keep):
        real_keep(self, keep)
        kept.append((len(keep), self.P))  # rows, prompts still decoding

    monkeypatch.setattr(GroupCache, "keep_rows", keep_rows)
    stop: tuple = ()
    for _ in range(2):  # free-running, then stopping at the tokens the samples used most
        params = SamplingParams(max_new_tokens=20, temperature=1.0, seed=3, stop_ids=stop, logprobs=True)
        group = Engine(model).generate(prompts, params, n=4)
        copied = Engine(model, fast=False).generate(prompts, params, n=4)
        assert [[c.ids for c in s] for s in group] == [[c.ids for c in s] for s in copied]
        for s, t in zip(group, copied, strict=True):
            for a, b in zip(s, t, strict=True):
                assert a.finish_reason == b.finish_reason
                torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
        counts = torch.bincount(torch.tensor([t for s in group for c in s for t in c.ids[1:]]), minlength=VOCAB)
        stop = tuple(counts.topk(10).indices.tolist())
    assert kept and any(p < 6 for _, p in kept)  # rows left, and then prompts with no row left
    assert any(r < 4 * p for r, p in kept)  # and prompts decoding with only some of their rows


def test_max_seq_len_is_respected():
    model = tiny(max_seq_len=20)
    long, short, too_long = prompts_of([17, 4, 20])
    outs = Engine(model).generate([long, short, too_long], SamplingParams(max_new_tokens=10, temperature=0.0))
    assert [len(s[0].ids) for s in outs] == [3, 10, 0]
    assert all(s[0].finish_reason == "length" for s in outs)
    assert outs[0][0].ids == argmax_no_cache(model, long, 3)


def test_long_and_short_prompts_near_max_seq_len():
    """A short prompt batched with a long one still gets all its tokens (they go to separate runs)."""
    model = tiny(position="learned", max_seq_len=20)
    long, short = prompts_of([16, 3])
    outs = Engine(model).generate([long, short], SamplingParams(max_new_tokens=10, temperature=0.0))
    assert outs[0][0].ids == argmax_no_cache(model, long, 4)
    assert outs[1][0].ids == argmax_no_cache(model, short, 10)


def test_stream_yields_the_same_tokens_as_generate():
    model = tiny()
    (prompt,) = prompts_of([6])
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=7)
    streamed = list(Engine(model).stream(prompt, params))
    assert streamed == Engine(model).generate([prompt], params)[0][0].ids
    assert len(streamed) == 10


def test_training_mode_is_restored():
    model = tiny()
    model.train()
    Engine(model).generate(prompts_of([3]), GREEDY)
    assert model.training
    next(Engine(model).stream(prompts_of([3])[0], GREEDY))
    assert model.training


def test_functional_generate_keeps_its_contract():
    model = tiny()
    prompts = prompts_of([4, 4, 7])
    free = generate(model, prompts, 8)
    assert free == [argmax_no_cache(model, p, 8) for p in prompts]
    stop = free[1][1]
    cut = generate(model, prompts, 8, stop_ids=(stop,), batch_size=1)
    assert cut[1] == free[1][:2]
    sampled = generate(model, prompts, 8, temperature=1.0, top_k=5, top_p=0.9, seed=2)
    assert sampled == generate(model, prompts, 8, temperature=1.0, top_k=5, top_p=0.9, seed=2)


def test_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError):
        Engine(model).generate([[]], GREEDY)
    with pytest.raises(ValueError):
        Engine(model).generate([[1]], GREEDY, n=0)
    with pytest.raises(ValueError, match=r"^SamplingParams.top_p: out of range, got 0.0 \(expected"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match=r"^SamplingParams.temperature: out of range, got nan"):
        SamplingParams(temperature=float("nan"))
    assert Engine(model).generate([], GREEDY) == []
    assert Engine(model).generate([[1, 2]], SamplingParams(max_new_tokens=0)) == [[Completion([], [], "length")]]


# --- compiled decode step (Engine(compile=True)) -------------------------------------------------

@pytest.mark.parametrize("kw", [VARIANTS[0], VARIANTS[1]])
def test_compiled_decoding_matches_eager(kw, monkeypatch):
    """Same tokens as the eager fast path: padded and unpadded runs, rows leaving the batch (the compiled
    step then runs a smaller batch), streaming; n > 1 decodes eagerly through a GroupCache either way."""
    monkeypatch.setattr(fast_decode, "_COMPILE_FAILED", [])  # a failure would fall back to eager: record it
    model = tiny(**kw)
    prompts = prompts_of([5, 9, 2, 7])
    eager, comp = Engine(model), Engine(model, compile=True)
    assert comp.compile and not Engine(model, fast=False, compile=True).compile
    assert ids(comp.generate(prompts, GREEDY)) == ids(eager.generate(prompts, GREEDY))
    assert ids(comp.generate(prompts[:1], GREEDY)) == ids(eager.generate(prompts[:1], GREEDY))  # no padding
    free = ids(eager.generate(prompts, GREEDY))
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(free[0][1],))
    assert comp.generate(prompts, params, n=2) == eager.generate(prompts, params, n=2)
    kept = []
    real_keep = KVCache.keep_rows
    monkeypatch.setattr(KVCache, "keep_rows", lambda self, keep: (kept.append(len(keep)), real_keep(self, keep)))
    early = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(free[0][1], free[1][1]))
    assert comp.generate(prompts, early) == eager.generate(prompts, early)
    assert kept and all(k < len(prompts) for k in kept)  # rows left the batch, in both runs
    sampled = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=8, seed=3)
    assert comp.generate(prompts, sampled, n=2) == eager.generate(prompts, sampled, n=2)
    assert list(comp.stream(prompts[0], sampled)) == comp.generate(prompts[:1], sampled)[0][0].ids
    assert fast_decode._COMPILE_FAILED == []


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    model = tiny()
    prompts = prompts_of([4, 8])
    want = ids(Engine(model).generate(prompts, GREEDY))

    def broken(*args):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(fast_decode, "_compiled_step", lambda: broken)
    monkeypatch.setattr(fast_decode, "_COMPILE_FAILED", [])
    with pytest.warns(UserWarning, match="torch.compile failed, decoding eagerly .RuntimeError: no compiler here.$"):
        assert ids(Engine(model, compile=True).generate(prompts, GREEDY)) == want
    assert ids(Engine(model, compile=True).generate(prompts, GREEDY)) == want  # no second warning, still eager


def test_prepared_weights_are_reused_until_the_model_changes():
    model = tiny()
    prompts = prompts_of([4, 8])
    engine = Engine(model)
    first = ids(engine.generate(prompts, GREEDY))
    decoder = engine._decoder()
    assert ids(engine.generate(prompts, GREEDY)) == first and engine._decoder() is decoder  # reused
    with torch.no_grad():  # an optimizer step: in place
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    assert engine._decoder() is not decoder
    assert ids(engine.generate(prompts, GREEDY)) == ids(Engine(model).generate(prompts, GREEDY))
    assert ids(engine.generate(prompts, GREEDY)) == [argmax_no_cache(model, p, 12) for p in prompts]


def test_sampler_draws_in_proportion_and_never_a_banned_token():
    """Inverse-CDF sampling: frequencies follow softmax(logits / T); top-k cuts never come up."""
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05])).repeat(40_000, 1)
    gen = torch.Generator().manual_seed(0)
    freq = torch.bincount(engine_mod.sample_next(logits, 1.0, 0, 1.0, gen), minlength=4) / 40_000
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01)
    top2 = engine_mod.sample_next(logits, 1.0, 2, 1.0, gen)
    assert set(top2.tolist()) == {0, 1}


def test_bf16_matmuls_pack_bf16_weights_and_stay_close_to_fp32():
    """Engine(bf16=True) (RL rollouts under bf16 autocast) decodes with bf16 packed weights; the log-probs
    it records for its samples stay within bf16 rounding (0.05) of an fp32 forward over the same tokens."""
    if not fast_decode._onednn_ok(torch.bfloat16):
        pytest.skip("no oneDNN bf16 matmul on this CPU")
    model = tiny()
    prompts = prompts_of([5, 9])
    engine = Engine(model, bf16=True)
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=3, logprobs=True))
    assert engine._prepared[2].head.weight.dtype == torch.bfloat16
    assert Engine(model)._decoder().head.weight.dtype == torch.float32
    for p, samples in zip(prompts, outs, strict=True):
        c = samples[0]
        with torch.inference_mode():
            logits = model(torch.tensor([p + c.ids[:-1]]))[0, len(p) - 1:]
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(c.ids)[:, None]).squeeze(1)
        assert (ref - torch.tensor(c.logprobs)).abs().max() < 0.05
