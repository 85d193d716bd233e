"""A minimal OpenAI-compatible HTTP server for an lmforge checkpoint.

    from lmforge.serve import serve
    serve("runs/demo/sft/model", host="127.0.0.1", port=8000)

    curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Who are you?"}], "max_tokens": 32}'

Endpoints: `GET /v1/models` (the one served model, named after the checkpoint directory, or
`<run>-<stage>` for a stage's `model/`, unless `model_name` is given), `POST /v1/chat/completions`
and `GET /health`. A chat request is rendered with lmforge's chat template (chat.render_prompt) and
sampled by `Engine`, which stops at <|end_of_turn|> or <|end_of_text|>. Supported fields: messages,
model, temperature (0-2, default 1; 0 is greedy), top_p, max_tokens (or max_completion_tokens;
default: the rest of the context), n, seed (default: random, as OpenAI), stop (up to 4 strings;
generation runs on and the text is cut at the first stop string), logprobs and top_logprobs, and
stream (server-sent `chat.completion.chunk` events, then `data: [DONE]`; one choice, no
log-probabilities). Other OpenAI fields are accepted and ignored. Errors are OpenAI-style JSON
(`{"error": {"message", "type", "param", "code"}}`): 400 for a bad request or a prompt longer than
the context, 404 for another model name.

Log-probabilities are those of the model's own distribution (temperature 1, before top-p), as
OpenAI reports them, computed by one forward pass over prompt + completion after sampling; so
they are exact for every generated token and `top_logprobs` lists the most likely alternatives.
A token's text is its bytes decoded as UTF-8 (the first token keeps the space the tokenizer puts
before every text, so "A" comes back as " A"). `max_top_logprobs` caps top_logprobs at 20 like
OpenAI; a server for an AI judge may raise it (vLLM has the same knob, `max_logprobs`).

One request generates at a time (a lock around the model); FastAPI runs requests in a thread
pool, so the event loop stays free. This is the seed of a fuller server (batching of
concurrent requests, a chat page): `ChatService` holds everything that is not HTTP.
"""

import os
import secrets
import threading
import time
import uuid
from collections.abc import Iterator

from lmforge.errors import LmforgeError
from lmforge.serve_api import (
    APIError,
    default_model_name,
    number_field,
    position_logprobs,
    request_messages,
    stop_cut,
    token_bytes,
)

MAX_N = 16


class ChatService:
    """A model, its tokenizer and an engine answering OpenAI chat requests (no HTTP in here)."""

    def __init__(self, model, tok, name: str, *, max_top_logprobs: int = 20):
        from lmforge.engine import Engine
        from lmforge.tokenizer import END_OF_TURN

        self.model, self.tok, self.name = model.eval(), tok, name
        self.engine = Engine(self.model, tok)
        self.stop_ids = (tok.special[END_OF_TURN], tok.eos_id)
        self.max_top_logprobs = max_top_logprobs
        self.created = int(time.time())
        self.pieces = token_bytes(tok)
        self.lock = threading.Lock()

    @classmethod
    def load(cls, ckpt_dir: str | os.PathLike, *, model_name: str | None = None, device: str = "cpu",
             max_top_logprobs: int = 20) -> "ChatService":
        from lmforge.model.io import load_checkpoint
        from lmforge.train.distributed import resolve_device

        name = model_name or default_model_name(ckpt_dir)
        model, tok = load_checkpoint(ckpt_dir, resolve_device(device))
        return cls(model, tok, name, max_top_logprobs=max_top_logprobs)

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "lmforge"}]}

    def _parse(self, body) -> dict:
        """The request's fields, checked (APIError 400/404 naming the field), and its prompt ids."""
        from lmforge.chat import render_prompt
        from lmforge.engine import SamplingParams

        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise APIError(404, f"The model '{model}' does not exist (this server serves '{self.name}')",
                           "model", "model_not_found")
        prompt = render_prompt(request_messages(body.get("messages")), self.tok)
        ctx = self.model.cfg.max_seq_len
        if len(prompt) >= ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens, but the messages are "
                                f"{len(prompt)} tokens", "messages", "context_length_exceeded")
        key = "max_completion_tokens" if body.get("max_tokens") is None else "max_tokens"
        max_tokens = number_field(body, key, ctx - len(prompt), 1, float("inf"), integer=True)
        if len(prompt) + max_tokens > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens; the messages are "
                                f"{len(prompt)} tokens and {key} is {max_tokens}", key, "context_length_exceeded")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else stop
        if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                                 or not all(isinstance(s, str) and s for s in stop)):
            raise APIError(400, "'stop' must be a string or a list of up to 4 non-empty strings", "stop")
        want_lp = body.get("logprobs") or False
        if not isinstance(want_lp, bool):
            raise APIError(400, f"'logprobs' must be a boolean, got {want_lp!r}", "logprobs")
        top = number_field(body, "top_logprobs", 0, 0, self.max_top_logprobs, integer=True)
        if top and not want_lp:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        n = number_field(body, "n", 1, 1, MAX_N, integer=True)
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise APIError(400, f"'seed' must be an integer, got {seed!r}", "seed")
        temperature, top_p = number_field(body, "temperature", 1.0, 0, 2), number_field(body, "top_p", 1.0, 0, 1)
        if top_p == 0:  # only the most likely token is left: greedy
            temperature, top_p = 0.0, 1.0
        params = SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop_ids=self.stop_ids,
                                seed=secrets.randbelow(2**31) if seed is None else seed)
        return {"prompt": prompt, "params": params, "stop": stop or [], "logprobs": want_lp, "top": top, "n": n}

    def chat_completion(self, body) -> dict:
        if isinstance(body, dict) and body.get("stream"):
            raise APIError(400, "a streaming request goes through start_stream", "stream")
        req = self._parse(body)
        prompt = req["prompt"]
        with self.lock:
            completions = self.engine.generate([prompt], req["params"], n=req["n"])[0]
            choices = [self._choice(i, prompt, c, req["stop"], req["logprobs"], req["top"])
                       for i, c in enumerate(completions)]
        generated = sum(len(c.ids) for c in completions)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": generated,
                          "total_tokens": len(prompt) + generated}}

    def start_stream(self, body) -> Iterator[str]:
        """Check a `"stream": true` request now (errors are plain 400s), then return the generator of its
        server-sent events: `chat.completion.chunk`s whose deltas add up to the reply, then `[DONE]`."""
        req = self._parse(body)
        if req["n"] != 1:
            raise APIError(400, "streaming returns one choice: leave 'n' at 1", "n")
        if req["logprobs"]:
            raise APIError(400, "streaming does not return log-probabilities: leave 'logprobs' unset", "logprobs")
        return self._events(req)

    def _events(self, req: dict) -> Iterator[str]:
        """The stream's events. The tokens come from a thread of their own that holds the model lock only
        while it generates: a paused or vanished client never keeps the lock (the thread runs to the end,
        or to the first token after the stream is closed), and the worker threads that carry the events
        never wait on it."""
        import json
        import queue

        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.name}

        def event(delta: dict, finish: str | None = None) -> str:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n"

        tokens: queue.Queue = queue.Queue()
        closed = threading.Event()

        def produce():
            try:
                with self.lock:
                    for t in self.engine.stream(req["prompt"], req["params"]):
                        tokens.put(t)
                        if closed.is_set():
                            break
            except Exception as e:  # handed to the stream, which raises it where the server reports errors
                tokens.put(e)
            finally:
                tokens.put(None)

        threading.Thread(target=produce, daemon=True, name="lmforge-stream").start()
        stop = req["stop"]
        hold = max((len(s) for s in stop), default=1) - 1  # text that may yet turn out to start a stop string
        ids, text, sent, finish = [], "", 0, "length"
        try:
            yield event({"role": "assistant", "content": ""})
            while (t := tokens.get()) is not None:
                if isinstance(t, Exception):
                    raise t
                if t in self.stop_ids:
                    finish = "stop"
                    break
                ids.append(t)
                text = self.tok.decode(ids, skip_special=True)
                cut, pending = stop_cut(text, stop)
                if cut is not None and not pending:  # no earlier stop string can still complete
                    text, finish = text[:cut], "stop"
                    break
                ready = min(len(text) - hold, len(text) if cut is None else cut)
                if not text.endswith("\ufffd") and ready > sent:  # a half-decoded character waits
                    yield event({"content": text[sent:ready]})
                    sent = ready
            cut, _ = stop_cut(text, stop)
            if cut is not None:
                text, finish = text[:cut], "stop"
            if len(text) > sent:
                yield event({"content": text[sent:]})
            yield event({}, finish)
            yield "data: [DONE]\n\n"
        finally:
            closed.set()

    def _choice(self, index: int, prompt: list[int], c, stop: list[str], want_lp: bool, top: int) -> dict:
        ids = list(c.ids)
        finish = c.finish_reason
        if finish == "stop" and ids and ids[-1] in self.stop_ids:
            ids = ids[:-1]
        text = self.tok.decode(ids, skip_special=True)
        cut, _ = stop_cut(text, stop)  # the rule the stream follows too
        if cut is not None:  # cut at the first stop string; keep the tokens that lie wholly before it
            text, finish = text[:cut], "stop"
            while ids and len(self.tok.decode(ids, skip_special=True)) > len(text):
                ids.pop()
        logprobs = {"content": self._logprobs(prompt, ids, top)} if want_lp else None
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}

    def _logprobs(self, prompt: list[int], ids: list[int], top: int) -> list[dict]:
        if not ids:
            return []
        pos = range(len(prompt) - 1, len(prompt) + len(ids) - 1)
        lp = position_logprobs(self.model, [prompt + ids], [pos], self.tok.pad_id)[0]

        def entry(i: int, value: float) -> dict:
            b = self.pieces[i]
            return {"token": b.decode("utf-8", errors="replace"), "logprob": value, "bytes": list(b)}

        out = []
        for t, row in zip(ids, lp, strict=True):
            e = entry(t, row[t].item())
            if top:
                values, alts = row.topk(top)
                e["top_logprobs"] = [entry(a, v) for a, v in zip(alts.tolist(), values.tolist(), strict=True)]
            else:
                e["top_logprobs"] = []
            out.append(e)
        return out


def create_app(ckpt_dir: str | os.PathLike | None = None, *, service: ChatService | None = None,
               model_name: str | None = None, device: str = "cpu", max_top_logprobs: int = 20):
    """The FastAPI app serving `ckpt_dir` (or an already built `service`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    if service is None:
        if ckpt_dir is None:
            raise LmforgeError("create_app: give a checkpoint directory or a ChatService")
        service = ChatService.load(ckpt_dir, model_name=model_name, device=device, max_top_logprobs=max_top_logprobs)
    app = FastAPI(title="lmforge", description=f"OpenAI-compatible API serving {service.name}")
    app.state.service = service

    def error(e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):  # unknown paths and methods, in OpenAI's error shape
        return error(APIError(exc.status_code, str(exc.detail), type="invalid_request_error"))

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    def models():
        return service.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):  # serve.py has no `from __future__ import annotations`:
        # FastAPI must see the Request class itself here, and it is imported inside create_app
        try:
            body = await request.json()
        except ValueError:
            return error(APIError(400, "the request body is not valid JSON"))
        try:
            if isinstance(body, dict) and body.get("stream"):
                events = await run_in_threadpool(service.start_stream, body)
                # a client that leaves mid-stream: close the generator, which tells the token thread to stop
                return StreamingResponse(events, media_type="text/event-stream",
                                         background=BackgroundTask(events.close))
            return await run_in_threadpool(service.chat_completion, body)
        except APIError as e:
            return error(e)
        except LmforgeError as e:
            return error(APIError(400, str(e)))
        except Exception as e:  # a bug: say so in the API's shape rather than drop the connection
            return error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    return app


def serve(ckpt_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, *, model_name: str | None = None,
          device: str = "cpu", max_top_logprobs: int = 20, log_level: str = "info") -> None:
    """Serve `ckpt_dir` until interrupted (blocking)."""
    import uvicorn

    check_port(host, port)  # before the model loads, and instead of uvicorn's multi-line log and exit 3
    app = create_app(ckpt_dir, model_name=model_name, device=device, max_top_logprobs=max_top_logprobs)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def check_port(host: str, port: int) -> None:
    """Bind `host:port` once, as uvicorn will, so a port in use or a bad host is a one-line error."""
    import errno
    import socket

    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, OverflowError) as e:
        raise LmforgeError(f"--host {host} --port {port}: cannot listen there ({e})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closing connection is no conflict
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise LmforgeError(f"port {port} on {host} is in use") from None
            raise LmforgeError(f"cannot listen on {host} port {port} ({e.strerror})") from None
