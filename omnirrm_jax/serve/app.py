"""The HTTP face of the server (FastAPI): routes, bearer-key check, error answers, and the wait on a batch.

Every route does its host work (validation, media decoding, tokenising) in the thread pool, queues one job per
prompt with the engine and awaits it, watching the deadline (--request-timeout -> 504) and the client (gone ->
its job is cancelled and skipped by the worker). Every refusal is an OpenAI-style error body
`{"error": {"message", "type", "param", "code"}}` with a 4xx status (a body over --max-body-mb 413); a fault of the
server is the same body with 500 and code "internal_error"; nothing a client sends takes the server down.
Metrics label only the known routes (anything else is "other"), so no client can grow the label set.
Chat streaming (`stream: true`) sends the finished completion as OpenAI SSE chunks ending with `data: [DONE]`: the
decode loop is one compiled program, so the text is complete before the first chunk."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import time
import uuid
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from omnirrm_jax.serve.engine import Engine, QueueFull
from omnirrm_jax.serve.inputs import Inputs, RequestError
from omnirrm_jax.serve.metrics import Metrics
from omnirrm_jax.serve.runner import chat_mode
from omnirrm_jax.serve.schemas import ChatRequest, JudgeRequest, RewardRequest

log = logging.getLogger(__name__)
OPEN_PATHS = ("/health",)
ROUTES = ("/v1/judge", "/v1/reward", "/v1/chat/completions")  # metric labels; every other /v1/ path is "other"


@dataclasses.dataclass
class ServerState:
    inputs: Inputs
    engine: Engine
    metrics: Metrics
    model_name: str
    max_tokens: int
    request_timeout: float
    chat_len: Callable[[int], int]  # a request's max_tokens -> the decode length of its batch (`Runner.chat_len`)
    api_key: str | None = None
    max_body_bytes: int = 64 << 20


class ClientGone(Exception):
    """The client disconnected while its request waited."""


def _error(status: int, message: str, *, param=None, code: str = "invalid_request", headers=None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status,
                        headers=headers)


_UNION_TAGS = {"str", "int", "float", "bool", "none"}


def _param(loc) -> str:
    """A pydantic error location -> `messages[0].content[1].video` (union branch tags dropped)."""
    out, last = "", None
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, str) and ("[" in part or part in _UNION_TAGS or part == last):
            continue
        last = part
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "body"


def _most_specific(errors: list) -> dict:
    """The error to report: the deepest one, a constraint over a type mismatch (for `str | list[str]`, a too-long
    list is reported, not "not a string")."""
    return max(errors, key=lambda e: (len(e.get("loc", ())), not str(e.get("type", "")).endswith("_type")))


class BearerAuth:
    """ASGI middleware: every path but /health needs `Authorization: Bearer <key>` (checked before the body is
    read; the key is never logged)."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            got = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(got, b"Bearer " + self.key):
                resp = _error(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key",
                              headers={"WWW-Authenticate": "Bearer"})
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` answers 413, by its Content-Length before anything is read,
    or (chunked, or a lying length) as soon as the bytes read pass the limit. The body is read here and replayed
    to the app; later `receive` calls go to the client, so disconnects are still seen."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
        del chunks

        async def receive_():
            return replay.pop() if replay else await receive()

        return await self.app(scope, receive_, send)

    async def _refuse(self, scope, receive, send):
        mb = self.max_bytes / (1 << 20)
        resp = _error(413, f"the request body is larger than the server's --max-body-mb {mb:g}", param="body",
                      code="body_too_large", headers={"Connection": "close"})
        return await resp(scope, receive, send)


class Timing:
    """ASGI middleware: latency and status of every /v1/ answer (pure ASGI, so streaming and disconnect
    detection pass through untouched)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [499]  # no answer started: the client left (mid-body, say)

        async def send_(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_)
        except Exception as e:  # answered 500 by the server's error handler, outside this middleware
            if status[0] == 499 and not isinstance(e, ClientDisconnect):
                status[0] = 500
            raise
        finally:
            path = scope["path"]
            self.metrics.answer(path if path in ROUTES else "other", status[0], time.perf_counter() - t0)


def create_app(state: ServerState) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        log.info("draining: %d queued jobs", state.engine.depth)
        await run_in_threadpool(state.engine.stop)

    app = FastAPI(title="omnirrm serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=state.max_body_bytes)  # inside the key check: strangers send nothing
    if state.api_key:
        app.add_middleware(BearerAuth, key=state.api_key)
    app.add_middleware(Timing, metrics=state.metrics)  # outermost: 401s are counted too
    m = state.metrics

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = _most_specific(exc.errors()) if exc.errors() else {"loc": (), "msg": "invalid request",
                                                                     "type": "invalid"}
        if first.get("type") == "json_invalid":
            msg, param = f"the body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})", "body"
        else:
            param = _param(first.get("loc", ()))
            msg = f"{param}: {first['msg']}"
        m.error(first.get("type", "invalid"))
        return _error(400, msg, param=param, code=first.get("type", "invalid"))

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        m.error(exc.code)
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return _error(exc.status, str(exc), param=exc.param, code=exc.code, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def routing(request: Request, exc: StarletteHTTPException):
        """Unknown paths, wrong methods, unreadable bodies: the same OpenAI error shape as every other refusal."""
        m.error(f"http_{exc.status_code}")
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                      code=f"http_{exc.status_code}", headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def fault(request: Request, exc: Exception):
        """Anything unexpected (a failed batch, a bug): logged by the server, answered as JSON 500."""
        m.error("internal_error")
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal server error ({type(exc).__name__})", code="internal_error")

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        m.error("client_disconnected")
        return Response(status_code=499)

    async def prepare(fn, *args, deadline: float):
        try:
            return await asyncio.wait_for(run_in_threadpool(fn, *args), max(deadline - time.monotonic(), 0.001))
        except asyncio.TimeoutError:
            raise RequestError(f"not prepared within --request-timeout {state.request_timeout} s", code="timeout",
                               status=504) from None

    def submit(kind, key, item, cost):
        return submit_all([(kind, key, item, cost)])[0]

    def submit_all(jobs):
        """Queues every job of one request, or none (429 / 503)."""
        try:
            return state.engine.submit_many(jobs)
        except QueueFull as e:
            raise RequestError(f"server busy: {e}; retry later", code="queue_full", status=429) from None
        except RuntimeError as e:
            raise RequestError(str(e), code="shutting_down", status=503) from None

    async def wait(request: Request, futures: list, deadline: float) -> list:
        waiting = [asyncio.wrap_future(f) for f in futures]
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestError(f"no answer within --request-timeout {state.request_timeout} s",
                                       code="timeout", status=504)
                done, pending = await asyncio.wait(waiting, timeout=min(0.2, left))
                if not pending:
                    return [w.result() for w in waiting]
                if await request.is_disconnected():
                    raise ClientGone()
        finally:
            for f in futures:
                f.cancel()  # a no-op for finished or running jobs; queued ones are skipped by the worker

    def deadline() -> float:
        return time.monotonic() + state.request_timeout

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": state.model_name, "queue_depth": state.engine.depth,
                "max_batch": state.engine.max_batch}

    @app.get("/metrics")
    async def metrics():
        return Response(m.text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/judge")
    async def judge(body: JudgeRequest, request: Request):
        end = deadline()
        prepared = await prepare(state.inputs.pair, body, body.both_orders, deadline=end)
        rec, = await wait(request, [submit("judge", "judge", prepared, len(prepared.examples))], end)
        rec = {k: v for k, v in rec.items() if k != "line"}
        return {**rec, "id": body.id}

    @app.post("/v1/reward")
    async def reward(body: RewardRequest, request: Request):
        if len(body.pairs) > state.engine.max_queue:
            raise RequestError(f"pairs: {len(body.pairs)} pairs are more than the server's --max-queue "
                               f"{state.engine.max_queue}; send them in smaller requests", param="pairs")
        end = deadline()
        prepared = await prepare(lambda: [state.inputs.pair(p, body.both_orders, f"pairs[{i}].")
                                          for i, p in enumerate(body.pairs)], deadline=end)
        futures = submit_all([("reward", "reward", p, len(p.examples)) for p in prepared])
        recs = await wait(request, futures, end)
        # with both_orders, the order-debiased reward: the mean over (A, B) and (B, A), as the offline judge's
        rewards = [r["combined"]["reward"] if "combined" in r else r["reward"] for r in recs]
        return {"rewards": rewards, "results": recs,
                "scored": "P(A) - P(B) after the forced prefix '{\"better\": \"' (omnirrm_jax/eval/reward.py)"}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        end = deadline()
        max_tokens = body.max_completion_tokens or body.max_tokens or min(256, state.max_tokens)
        if max_tokens > state.max_tokens:
            name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise RequestError(f"{name} {max_tokens} is above the server's --max-tokens {state.max_tokens}",
                               param=name)
        if body.n > state.engine.max_batch:
            raise RequestError(f"n {body.n} is above the server's --max-batch {state.engine.max_batch}", param="n")
        _check_openai_options(body)
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stop) > 4 or not all(stop):
            raise RequestError("stop: at most 4 non-empty strings", param="stop")
        example = await prepare(state.inputs.chat, body, deadline=end)
        # temperature and top_p travel with the item (data of the program, `Runner.rows`); a seeded request gets a
        # batch of its own, so its draw does not depend on who else was waiting
        key = ("chat", state.chat_len(max_tokens), chat_mode(body.temperature, body.top_p),
               None if body.seed is None else (body.seed, uuid.uuid4().hex))
        item = {"example": example, "n": body.n, "max_tokens": max_tokens, "stop": stop,
                "temperature": body.temperature, "top_p": body.top_p}
        choices, = await wait(request, [submit("chat", key, item, body.n)], end)
        prompt_tokens = int(example["cost"][0])
        completion = sum(c["tokens"] for c in choices)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not body.stream:
            return {"id": cid, "object": "chat.completion", "created": created, "model": state.model_name,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": c["text"]},
                                 "finish_reason": c["finish_reason"], "logprobs": None}
                                for i, c in enumerate(choices)],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                              "total_tokens": prompt_tokens + completion}}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                 "total_tokens": prompt_tokens + completion} \
            if body.stream_options and body.stream_options.include_usage else None
        return StreamingResponse(_sse(cid, created, state.model_name, choices, usage=usage),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    return app


def _check_openai_options(body: ChatRequest) -> None:
    """Options standard OpenAI clients send: accepted at their defaults, a 400 naming the field otherwise."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0):
            raise RequestError(f"{name}: only 0 is supported", param=name, code="unsupported_value")
    if body.logprobs or body.top_logprobs:
        name = "logprobs" if body.logprobs else "top_logprobs"
        raise RequestError(f"{name}: log probabilities are not returned (use /v1/judge for verdict probabilities)",
                           param=name, code="unsupported_value")
    if body.response_format is not None and body.response_format.type != "text":
        raise RequestError('response_format: only {"type": "text"} is supported (for schema-constrained '
                           "judgements use /v1/judge)", param="response_format", code="unsupported_value")
    if body.stream_options is not None and not body.stream:
        raise RequestError("stream_options: only with stream: true", param="stream_options")


def _sse(cid: str, created: int, model: str, choices: list, piece: int = 16, usage: dict | None = None):
    """OpenAI `chat.completion.chunk` events: the role, the text in pieces, the finish reason, the usage if asked
    (`stream_options.include_usage`: a last chunk with no choices), then [DONE]."""
    def event(i, delta, finish=None):
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    for i, c in enumerate(choices):
        yield event(i, {"role": "assistant", "content": ""})
        for k in range(0, len(c["text"]), piece):
            yield event(i, {"content": c["text"][k:k + piece]})
        yield event(i, {}, c["finish_reason"])
    if usage is not None:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [],
                 "usage": usage}
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"
