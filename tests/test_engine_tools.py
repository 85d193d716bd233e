"""Generation engine, tool use: a tool call's output is forced into the row that made it (mask 0),
tool errors come back as text, and without a tokenizer a call is just text."""

import pytest
import torch

import lmforge.engine as engine_mod
from lmforge.engine import Engine, SamplingParams
from lmforge.tokenizer import END_OF_TURN, END_TOOL_CALL, END_TOOL_OUTPUT, TOOL_CALL, TOOL_OUTPUT
from lmforge.tools import TOOLS
from tests.test_engine import tiny


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lmforge.tokenizer import train_tokenizer

    texts = ["calculator(2+3) gives 5", "hello world, the answer is 12*7 = 84", "what is 2+3? it is 5"] * 20
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


class Script:
    """Stands in for `sample_next`: row r emits scripts[r][step] (the last token once it runs out)."""

    def __init__(self, scripts):
        self.scripts, self.step = scripts, 0

    def __call__(self, logits, temperature, top_k, top_p, generator):
        rows = [s[min(self.step, len(s) - 1)] for s in self.scripts]
        self.step += 1
        return torch.tensor(rows[:logits.shape[0]])


def tool_setup(tok, monkeypatch, call_text="calculator(2+3)"):
    sp = tok.special
    call = [sp[TOOL_CALL], *tok.encode(call_text), sp[END_TOOL_CALL]]
    answer = tok.encode("hello world")
    eot = sp[END_OF_TURN]
    model = tiny(vocab_size=tok.vocab_size)
    fed = []
    real_forward = Engine._forward

    def spy(self, decoder, idx, *args):
        fed.append(idx[:, -1].tolist())
        return real_forward(self, decoder, idx, *args)

    monkeypatch.setattr(Engine, "_forward", spy)
    return model, call, answer, eot, fed


def test_tool_call_output_is_forced_with_mask_zero(tok, monkeypatch):
    model, call, answer, eot, fed = tool_setup(tok, monkeypatch)
    sp = tok.special
    forced = [sp[TOOL_OUTPUT], *tok.encode("5"), sp[END_TOOL_OUTPUT]]
    filler = [answer[0]] * len(forced)  # what the "model" samples while the output is forced (ignored)
    monkeypatch.setattr(engine_mod, "sample_next", Script([call + filler + [eot], answer + [eot]]))
    params = SamplingParams(max_new_tokens=40, temperature=0.0, stop_ids=(eot,))
    out = Engine(model, tok, tools=TOOLS).generate([[tok.bos_id, 5, 6], [tok.bos_id]], params)
    row0, row1 = out[0][0], out[1][0]
    assert row0.ids == call + forced + [eot]
    assert row0.mask == [1] * len(call) + [0] * len(forced) + [1]
    assert row0.finish_reason == "stop"
    assert tok.decode(row0.ids[len(call):len(call) + len(forced)]) == "<|tool_output|> 5<|end_tool_output|>"
    # the other row kept sampling while row 0 was forced
    assert row1.ids == answer + [eot] and row1.mask == [1] * (len(answer) + 1)
    # forced tokens went through the model as row 0's inputs, one per step (fed[0] is the prefill)
    assert [step[0] for step in fed[1:len(call + forced) + 1]] == call + forced


def test_tool_errors_are_forced_as_text(tok, monkeypatch):
    model, call, answer, eot, fed = tool_setup(tok, monkeypatch, call_text="weather(Paris)")
    monkeypatch.setattr(engine_mod, "sample_next", Script([call + [answer[0]] * 30 + [eot]]))
    params = SamplingParams(max_new_tokens=60, temperature=0.0, stop_ids=(eot,))
    (c,) = Engine(model, tok, tools=TOOLS).generate([[tok.bos_id]], params)[0]
    text = tok.decode(c.ids[len(call):])
    assert text.startswith("<|tool_output|> error: unknown tool 'weather'<|end_tool_output|>")
    assert 0 in c.mask


def test_tools_need_a_tokenizer_and_streaming_shows_forced_tokens(tok, monkeypatch):
    model, call, answer, eot, fed = tool_setup(tok, monkeypatch)
    script = call + [answer[0]] * 3 + [eot]
    params = SamplingParams(max_new_tokens=40, temperature=0.0, stop_ids=(eot,))
    monkeypatch.setattr(engine_mod, "sample_next", Script([script]))
    (c,) = Engine(model, None, tools=TOOLS).generate([[tok.bos_id]], params)[0]
    assert c.ids == script and c.mask == [1] * len(script)  # no tokenizer: the call is just text
    monkeypatch.setattr(engine_mod, "sample_next", Script([script]))
    streamed = list(Engine(model, tok, tools=TOOLS).stream([tok.bos_id], params))
    assert tok.decode(streamed[len(call):]).startswith("<|tool_output|> 5<|end_tool_output|>")
    assert streamed[-1] == eot


def test_tool_forcing_is_per_sample(tok, monkeypatch):
    """n samples of one prompt: only the sample that calls the tool gets the output."""
    model, call, answer, eot, fed = tool_setup(tok, monkeypatch)
    monkeypatch.setattr(engine_mod, "sample_next", Script([call + [answer[0]] * 5 + [eot], answer + [eot]]))
    params = SamplingParams(max_new_tokens=40, temperature=1.0, stop_ids=(eot,))
    a, b = Engine(model, tok, tools=TOOLS).generate([[tok.bos_id, 7]], params, n=2)[0]
    assert 0 in a.mask and b.mask == [1] * len(b.ids) and b.ids == answer + [eot]
