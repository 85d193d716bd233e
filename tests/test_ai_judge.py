"""The AI judge (local and through a real OpenAI-compatible server) and the server itself.

The server is lmforge.serve's app run by uvicorn on a free localhost port in a background thread,
serving a tiny random checkpoint; the judge's HTTP backend talks to it over real sockets.
"""

import asyncio
import collections
import contextlib
import json
import math
import socket
import threading
import time

import httpx
import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.model.config import ModelConfig
from lmforge.model.io import save_model
from lmforge.model.transformer import Transformer
from lmforge.rewards import AIJudge, AIJudgeConfig, RewardRequest, RewardSource
from lmforge.rewards.ai_judge import CONSTITUTION, JudgeReply, _option_logprobs, _parse, load_constitution
from lmforge.tokenizer import save_tokenizer

CONV = [{"role": "user", "content": "What is the capital of Zali?"}]
GOOD, BAD = "The capital of Zali is Finisdor.", "Go away, you idiot."


@pytest.fixture(scope="module")
def ckpt(toy_data, tmp_path_factory):
    """A tiny random checkpoint; init_std 0.5 (not 0.02) makes its next-token distributions far from
    uniform and dependent on the answers, so the backends' agreement means something."""
    torch.set_num_threads(1)
    _, tok = toy_data
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, n_layer=2, d_model=32, n_head=2, max_seq_len=512,
                                    init_std=0.5))
    out = tmp_path_factory.mktemp("judge")
    save_tokenizer(tok.tok, out)
    save_model(model, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app):
    """Runs an ASGI app with uvicorn on a free localhost port in a background thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started:
        assert time.time() < deadline, "the test server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(5)
        sock.close()


@pytest.fixture(scope="module")
def server(ckpt, toy_data):
    from lmforge.serve import create_app

    torch.set_num_threads(1)
    with serving(create_app(ckpt, model_name="judge", max_top_logprobs=toy_data[1].vocab_size)) as url:
        yield url


def post(url, body, **kw):
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10, **kw)


# --- the server --------------------------------------------------------------------------------------
def test_models_and_a_greedy_completion_with_logprobs(server):
    assert httpx.get(server + "/v1/models").json()["data"][0]["id"] == "judge"
    body = {"model": "judge", "messages": CONV, "temperature": 0, "max_tokens": 6, "logprobs": True,
            "top_logprobs": 3}
    r = post(server, body)
    assert r.status_code == 200, r.text
    out = r.json()
    choice = out["choices"][0]
    assert out["object"] == "chat.completion" and choice["finish_reason"] in ("stop", "length")
    assert isinstance(choice["message"]["content"], str) and choice["message"]["role"] == "assistant"
    content = choice["logprobs"]["content"]
    assert 1 <= len(content) <= 6 and out["usage"]["completion_tokens"] >= len(content)
    for e in content:  # greedy: each token is the most likely one
        assert len(e["top_logprobs"]) == 3 and e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"] and e["logprob"] <= 0
    joined = b"".join(bytes(e["bytes"]) for e in content).decode("utf-8", "replace")
    assert joined.strip() == choice["message"]["content"].strip()  # the tokens spell the reply
    assert post(server, body).json()["choices"][0]["message"] == choice["message"]  # deterministic


def test_sampling_n_seed_and_stop_strings(server):
    body = {"messages": CONV, "temperature": 1.0, "max_tokens": 8, "n": 3, "seed": 7}
    a, b = post(server, body).json(), post(server, body).json()
    assert len(a["choices"]) == 3 and [c["message"] for c in a["choices"]] == [c["message"] for c in b["choices"]]
    text = post(server, {"messages": CONV, "temperature": 0, "max_tokens": 12}).json()["choices"][0]["message"]
    text = text["content"]
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        cut = post(server, {"messages": CONV, "temperature": 0, "max_tokens": 12, "stop": [stop]}).json()
        assert cut["choices"][0]["message"]["content"] == text[:text.find(stop)]
        assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("change, status, param", [
    ({"temperature": 3}, 400, "temperature"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages"),
    ({"max_tokens": 100_000}, 400, "max_tokens"),
    ({"top_logprobs": 2}, 400, "top_logprobs"),
    ({"stream": True, "n": 2}, 400, "n"),
    ({"stream": True, "logprobs": True}, 400, "logprobs"),
    ({"stream": True, "temperature": 9}, 400, "temperature"),  # checked before the stream starts
    ({"model": "gpt-4"}, 404, "model"),
])
def test_bad_requests_get_openai_style_errors(server, change, status, param):
    r = post(server, {"messages": CONV, "max_tokens": 2, **change})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error"


def stream(server, body) -> tuple[str, str | None, list[dict]]:
    """(the deltas joined, the last chunk's finish_reason, every chunk) of a streamed completion."""
    with httpx.stream("POST", server + "/v1/chat/completions", json={**body, "stream": True}, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)
    chunks = [json.loads(ln[len("data: "):]) for ln in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    return text, chunks[-1]["choices"][0]["finish_reason"], chunks


def test_streaming_adds_up_to_the_same_reply(server):
    body = {"messages": CONV, "temperature": 0, "max_tokens": 12}
    whole = post(server, body).json()["choices"][0]
    text, finish, chunks = stream(server, body)
    assert text == whole["message"]["content"] and finish == whole["finish_reason"]
    assert len(chunks) >= 3  # the role, at least one piece of text, the finish
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():  # a stop string is cut out of the stream as from the whole reply
        cut, finish, _ = stream(server, {**body, "stop": [stop]})
        assert cut == text[:text.find(stop)] and finish == "stop"
    assert post(server, body).status_code == 200  # the model lock was released when the stream ended


def test_overlapping_stop_strings_cut_the_stream_as_the_whole_reply(server):
    body = {"messages": CONV, "temperature": 0, "max_tokens": 16}
    text = post(server, body).json()["choices"][0]["message"]["content"]
    a = len(text) // 3
    outer, inner = text[a:a + 6], text[a + 2:a + 4]  # the inner one completes first, the outer starts first
    if outer.strip() and inner.strip():
        whole = post(server, {**body, "stop": [outer, inner]}).json()["choices"][0]["message"]["content"]
        streamed, finish, _ = stream(server, {**body, "stop": [outer, inner]})
        assert streamed == whole == text[:text.find(outer)] and finish == "stop"


def test_a_paused_stream_does_not_hold_the_model(ckpt):
    """The tokens come from a thread that holds the lock only while it generates: a client that stops
    reading (or leaves) cannot keep every other request waiting."""
    from lmforge.serve import ChatService

    svc = ChatService.load(ckpt)
    events = svc.start_stream({"messages": CONV, "temperature": 0, "max_tokens": 40, "stream": True})
    first = [next(events), next(events)]  # the role, then the first text: then its reader goes quiet
    assert '"content": ""' in first[0] and '"content": ""' not in first[1]
    deadline = time.time() + 10
    while svc.lock.locked():
        assert time.time() < deadline, "the paused stream kept the model lock"
        time.sleep(0.01)
    assert svc.chat_completion({"messages": CONV, "max_tokens": 2})["choices"]  # another request runs meanwhile
    rest = list(events)  # and the paused stream still finishes
    assert rest[-1] == "data: [DONE]\n\n"


def test_invalid_json_and_unknown_paths(server):
    r = httpx.post(server + "/v1/chat/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    assert httpx.get(server + "/v1/nothing").json()["error"]["message"] == "Not Found"
    long = [{"role": "user", "content": "word " * 600}]
    r = post(server, {"messages": long})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


# --- the judge -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def judges(ckpt, server, toy_data):
    vocab = toy_data[1].vocab_size
    return {order: (AIJudge.local(ckpt, both_orders=order),
                    AIJudge.http(server, "judge", top_logprobs=vocab, both_orders=order, workers=2))
            for order in (True, False)}


def test_local_and_http_judges_agree(judges):
    items = [(CONV, GOOD, BAD), (CONV, BAD, GOOD), (CONV, "Finisdor.", "I don't know.")]
    for local, remote in judges.values():
        p_local, p_http = local.compare_batch(items), remote.compare_batch(items)
        assert all(0 <= p <= 1 for p in p_local + p_http)
        assert p_local == pytest.approx(p_http, abs=1e-3)
        assert local.last_position_bias == pytest.approx(remote.last_position_bias, abs=1e-3)
    raw = judges[False][0].compare_batch(items)
    # a real signal that depends on the answers, not a tie the backends would agree on anyway
    assert max(abs(p - 0.5) for p in raw) > 0.1 and max(raw) - min(raw) > 0.1
    both = judges[True][0]
    assert both.compare(CONV, GOOD, BAD) == pytest.approx(1 - both.compare(CONV, BAD, GOOD))  # order-symmetric


def test_judge_scores_are_probabilities(judges):
    local, remote = judges[True]
    reqs = [RewardRequest(CONV, GOOD), RewardRequest(CONV, BAD)]
    for judge in (local, remote):
        assert isinstance(judge, RewardSource)
        scores = judge.score(reqs)
        assert len(scores) == 2 and all(0 <= s <= 1 for s in scores)


def test_text_method_parses_the_reply(ckpt):
    judge = AIJudge.local(ckpt, method="text", both_orders=False)
    p = judge.compare(CONV, GOOD, BAD)
    assert 0 <= p <= 1  # a random model's reply: a parsed letter or grade, else 0.5


def test_unreachable_endpoint_fails_fast_with_one_line():
    port = free_port()  # nothing listens there
    judge = AIJudge.http(f"http://127.0.0.1:{port}", "judge", timeout=0.5, tries=2, backoff=0.01)
    start = time.time()
    with pytest.raises(LmforgeError) as e:
        judge.compare(CONV, GOOD, BAD)
    assert str(e.value) == f"AI judge at http://127.0.0.1:{port}: connection refused after 2 tries (timeout 0.5 s)"
    assert time.time() - start < 3


def test_api_key_comes_from_the_named_variable(server, monkeypatch):
    monkeypatch.delenv("LMFORGE_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(LmforgeError, match="environment variable LMFORGE_TEST_JUDGE_KEY is not set"):
        AIJudge.http(server, "judge", api_key_env="LMFORGE_TEST_JUDGE_KEY")  # at once, before any sampling
    monkeypatch.setenv("LMFORGE_TEST_JUDGE_KEY", "sk-test-secret")
    judge = AIJudge.http(server, "judge", api_key_env="LMFORGE_TEST_JUDGE_KEY", both_orders=False)
    monkeypatch.delenv("LMFORGE_TEST_JUDGE_KEY")
    with pytest.raises(LmforgeError, match="environment variable LMFORGE_TEST_JUDGE_KEY is not set"):
        judge.compare(CONV, GOOD, BAD)  # read for each request, never stored
    monkeypatch.setenv("LMFORGE_TEST_JUDGE_KEY", "sk-test-secret")
    assert 0 <= judge.compare(CONV, GOOD, BAD) <= 1  # the local server ignores the key


# --- a misbehaving endpoint: retries, timeouts, client errors, bad replies ----------------------------------
LP_A, LP_B = -0.1, -2.4
P_A = 1 / (1 + math.exp(LP_B - LP_A))  # what a judge reads from REPLY (method "logprobs", one order)
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "model": "judge",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A"},
                      "logprobs": {"content": [{"token": "A", "logprob": LP_A,
                                                "top_logprobs": [{"token": "A", "logprob": LP_A},
                                                                 {"token": "B", "logprob": LP_B}]}]}}]}
CLIENT_ERRORS = {400: "max_tokens is too large", 401: "Incorrect API key provided",
                 403: "This key may not use the model", 404: "The model judge does not exist"}
BAD_BODIES = {"empty": {}, "list": [], "no_choices": {"choices": []}, "legacy": {"choices": [{"text": "A"}]},
              "no_content": {"choices": [{"message": {"role": "assistant"}}]},
              "message_string": {"choices": [{"message": "A"}]}}


@pytest.fixture(scope="module")
def misbehaving_server():
    """A real HTTP server whose /{case}/v1/chat/completions behaves as `case` says; `seen[case]` holds
    the arrival time (time.monotonic) of each request for that case."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

    app, seen = FastAPI(), collections.defaultdict(list)

    @app.post("/{case}/v1/chat/completions")
    async def chat(case: str, request: Request):
        seen[case].append(time.monotonic())
        body = await request.json()
        kind, _, arg = case.partition("-")
        if kind == "fail":  # fail-{status}-{k}: that status for the first k requests, then a good reply
            status, k = map(int, arg.split("-"))
            if len(seen[case]) <= k:
                return JSONResponse({"error": {"message": "overloaded, try again"}}, status)
        elif kind == "always500":  # a multi-line plain-text body, as a proxy in front of a server sends
            return PlainTextResponse("upstream error:\n   connect() failed\n", 500)
        elif kind == "slow":
            await asyncio.sleep(1.5)
        elif kind == "status":
            return JSONResponse({"error": {"message": CLIENT_ERRORS[int(arg)], "type": "invalid_request_error"}},
                                int(arg))
        elif kind == "html":  # 200, but not JSON (a login page, a web UI at the wrong path)
            return HTMLResponse("<html>\n<body>Welcome</body>\n</html>")
        elif kind == "json":  # 200, JSON, but not a chat completion
            return JSONResponse(BAD_BODIES[arg])
        elif kind == "nologprobs":  # a server that refuses logprobs, as some hosted APIs do
            if body.get("logprobs"):
                return JSONResponse({"error": {"message": "logprobs are not supported for this model"}}, 400)
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "B"}}]}
        return REPLY

    with serving(app) as url:
        yield url, seen


@pytest.fixture
def endpoint(misbehaving_server):
    url, seen = misbehaving_server
    seen.clear()
    return url, seen


@pytest.mark.parametrize("status, k", [(503, 2), (429, 1), (502, 3)])
def test_429_and_5xx_are_retried_with_exponential_backoff(endpoint, status, k):
    url, seen = endpoint
    case = f"fail-{status}-{k}"
    judge = AIJudge.http(f"{url}/{case}", "judge", tries=5, backoff=0.05, both_orders=False)
    start = time.monotonic()
    assert judge.compare(CONV, GOOD, BAD) == pytest.approx(P_A)
    elapsed = time.monotonic() - start
    assert len(seen[case]) == k + 1  # k failures, one success, nothing after it
    gaps = [b - a for a, b in zip(seen[case], seen[case][1:], strict=False)]
    assert all(g >= 0.05 * 2 ** i for i, g in enumerate(gaps)), gaps  # backoff, 2 x backoff, 4 x backoff
    assert elapsed < 2  # 0.05 + 0.1 + 0.2 s of backoff at most: the delay is the configured one


def test_a_persistent_5xx_fails_after_every_try_with_one_line(endpoint):
    url, seen = endpoint
    judge = AIJudge.http(f"{url}/always500", "judge", tries=3, backoff=0.01, both_orders=False)
    with pytest.raises(LmforgeError) as e:
        judge.compare(CONV, GOOD, BAD)
    assert str(e.value) == f"AI judge at {url}/always500: HTTP 500 (upstream error: connect() failed) after 3 tries"
    assert len(seen["always500"]) == 3
    one = AIJudge.http(f"{url}/always500", "judge", tries=1, both_orders=False)
    with pytest.raises(LmforgeError, match=r"HTTP 500 \(upstream error: connect\(\) failed\) after 1 try$"):
        one.compare(CONV, GOOD, BAD)
    assert len(seen["always500"]) == 4


def test_a_slow_endpoint_times_out_with_one_line(endpoint):
    url, seen = endpoint
    judge = AIJudge.http(f"{url}/slow", "judge", timeout=0.5, tries=2, backoff=0.01, both_orders=False)
    start = time.monotonic()
    with pytest.raises(LmforgeError) as e:
        judge.compare(CONV, GOOD, BAD)
    elapsed = time.monotonic() - start
    assert str(e.value) == f"AI judge at {url}/slow: timed out after 2 tries (timeout 0.5 s)"
    assert len(seen["slow"]) == 2
    assert 2 * 0.5 <= elapsed < 3  # each try waits the timeout, not the server's 1.5 s


@pytest.mark.parametrize("status", sorted(CLIENT_ERRORS))
def test_client_errors_are_not_retried(endpoint, status, monkeypatch):
    url, seen = endpoint
    monkeypatch.setenv("LMFORGE_TEST_JUDGE_KEY", "sk-wrong")
    judge = AIJudge.http(f"{url}/status-{status}", "judge", api_key_env="LMFORGE_TEST_JUDGE_KEY", tries=3,
                         backoff=0.01, both_orders=False)
    with pytest.raises(LmforgeError) as e:
        judge.compare(CONV, GOOD, BAD)
    where = f" (POST {url}/status-{status}/v1/chat/completions)" if status == 404 else ""
    assert str(e.value) == f"AI judge at {url}/status-{status}: HTTP {status}: {CLIENT_ERRORS[status]}{where}"
    assert len(seen[f"status-{status}"]) == 1  # a bad key or request stays bad: no retry
    assert "sk-wrong" not in str(e.value)


@pytest.mark.parametrize("case, what", [
    ("html", "the reply is not JSON"),
    *[(f"json-{name}", "the reply has no choices[0].message.content") for name in BAD_BODIES],
])
def test_a_200_that_is_not_a_chat_completion_is_a_clear_error(endpoint, case, what):
    url, seen = endpoint
    judge = AIJudge.http(f"{url}/{case}", "judge", tries=3, backoff=0.01, both_orders=False)
    with pytest.raises(LmforgeError) as e:
        judge.compare(CONV, GOOD, BAD)
    assert str(e.value) == f"AI judge at {url}/{case}: {what} (is this an OpenAI-compatible endpoint?)"
    assert e.value.__cause__ is None and e.value.__suppress_context__  # no KeyError/JSON traceback attached
    assert len(seen[case]) == 1


def test_a_server_without_logprobs_is_asked_again_for_text_once(endpoint, capsys):
    """The one 400 that is worth a second request: the endpoint refuses logprobs, so the judge reads texts."""
    url, seen = endpoint
    judge = AIJudge.http(f"{url}/nologprobs", "judge", tries=3, backoff=0.01, both_orders=False)
    assert judge.compare(CONV, GOOD, BAD) == 0.0  # the reply "B"
    assert len(seen["nologprobs"]) == 2
    assert "no log-probs (logprobs are not supported for this model); reading reply texts instead" in \
        capsys.readouterr().err
    assert judge.compare(CONV, GOOD, BAD) == 0.0 and len(seen["nologprobs"]) == 3  # remembered: one request


def test_retry_settings_come_from_the_config(endpoint):
    url, seen = endpoint
    assert (AIJudgeConfig().timeout, AIJudgeConfig().tries, AIJudgeConfig().backoff) == (10.0, 3, 0.5)
    cfg = AIJudgeConfig(backend="http", base_url=f"{url}/fail-503-1", model="judge", timeout=0.5, tries=2,
                        backoff=0.01, both_orders=False)
    judge = cfg.build()
    assert (judge.backend.timeout, judge.backend.tries, judge.backend.backoff) == (0.5, 2, 0.01)
    assert judge.compare(CONV, GOOD, BAD) == pytest.approx(P_A) and len(seen["fail-503-1"]) == 2
    cfg = AIJudgeConfig(backend="http", base_url=f"{url}/fail-503-2", model="judge", tries=2, backoff=0.01)
    with pytest.raises(LmforgeError, match=r"HTTP 503 \(overloaded, try again\) after 2 tries$"):
        cfg.build().compare(CONV, GOOD, BAD)
    with pytest.raises(LmforgeError, match=r"^backoff: expected a number >= 0, got -1$"):
        AIJudgeConfig(backend="http", base_url="http://x", model="m", backoff=-1)


# --- pieces ------------------------------------------------------------------------------------------------
class FirstAlways:
    """A backend whose judge prefers whatever answer comes first with probability 0.8."""

    def ask(self, prompts, options):
        return [JudgeReply([-0.2231435513, -1.6094379124]) for _ in prompts]  # log 0.8, log 0.2


def test_both_orders_cancel_a_pure_position_bias():
    judge = AIJudge(FirstAlways())
    assert judge.compare(CONV, GOOD, BAD) == pytest.approx(0.5)
    assert judge.last_position_bias == pytest.approx(0.6)
    assert AIJudge(FirstAlways(), both_orders=False).compare(CONV, GOOD, BAD) == pytest.approx(0.8)


def test_reading_logprobs_and_text():
    entry = lambda t, lp: {"token": t, "logprob": lp}
    lp = {"content": [{**entry(" A", -1.0), "top_logprobs": [entry(" A", -1.0), entry("A", -1.0), entry("C", -3.0)]}]}
    got = _option_logprobs(lp, ("A", "B"))
    assert got[0] == pytest.approx(-1.0 + torch.tensor(2.0).log().item()) and got[1] == -3.0  # floor: lowest listed
    assert _option_logprobs({"content": [entry("C", -0.1)]}, ("A", "B")) is None
    assert _option_logprobs(None, ("A", "B")) is None
    assert [_parse(t, ("A", "B")) for t in ("B is better.", "Answer A", "7/10", "", "a or b")] == \
        [0.0, 1.0, pytest.approx(2 / 3), 0.5, 0.5]
    assert _parse("yes, it is", ("Yes", "No")) == 1.0


def test_constitution_from_a_file(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("1. Be kind.\n2. Be right.\n")
    judge = AIJudge(FirstAlways(), constitution=load_constitution(path))
    assert "2. Be right." in judge.compare_prompt(CONV, GOOD, BAD)[0]["content"]
    assert "2. Honest" in AIJudge(FirstAlways()).score_prompt(CONV, GOOD)[0]["content"] and len(
        CONSTITUTION.strip().splitlines()) == 6
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(LmforgeError, match="the constitution is empty"):
        load_constitution(tmp_path / "empty.txt")
    with pytest.raises(LmforgeError, match="cannot read the constitution"):
        AIJudgeConfig(backend="http", base_url="http://x", model="m", constitution=str(tmp_path / "no.txt")).build()
    with pytest.raises(LmforgeError, match="^backend: expected one of local, http, got 'grpc'$"):
        AIJudgeConfig(backend="grpc")
    with pytest.raises(LmforgeError, match=r"^timeout: expected a number of seconds > 0, got -1$"):
        AIJudgeConfig(backend="http", base_url="http://x", model="m", timeout=-1)
    with pytest.raises(LmforgeError, match="^model: required for the http backend$"):
        AIJudgeConfig(backend="http", base_url="http://x")
    assert json.dumps(judge.compare_prompt(CONV, GOOD, BAD))  # plain JSON: what the HTTP backend sends
