"""`create_app(engine, settings)`: the OpenAI-compatible HTTP layer over an :class:`Engine` (no global state).

Routes: ``POST /v1/chat/completions`` (JSON or SSE), ``POST /v1/completions``, ``GET /v1/models`` (the model
plus the persona presets as ``personafuse:<name>``), ``POST /v1/route`` (routing only), ``GET /health`` and the
web chat page at ``/`` (``serve/static/index.html`` when present).

Every error is OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``: 400 for bad parameters
(validation errors included, never 422), 401 bad or missing key, 404 unknown model or route, 413 body too large,
503 + Retry-After when the queue is full or the server is draining, 504 when a request outlives its deadline,
500 when generation itself fails.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from personafuse import __version__
from personafuse.model import conversation_text
from personafuse.serve.engine import (
    Delta,
    Engine,
    EngineOverloaded,
    Failed,
    Finished,
    GenerationJob,
    RequestHandle,
    SamplingParams,
    Started,
)
from personafuse.serve.presets import PRESET_PREFIX, PRESETS, find_preset
from personafuse.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChoiceDelta,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    PersonaChoice,
    PersonaReport,
    RouteRequest,
    RouteResponse,
    RouteResult,
    Usage,
    parse_persona,
    validation_message,
)
from personafuse.serve.settings import ServeSettings
from personafuse.traits import PersonaError

logger = logging.getLogger("personafuse.serve")

STATIC_DIR = Path(__file__).parent / "static"
FINGERPRINT = f"personafuse-{__version__}"


class APIError(Exception):
    """An error the client gets as OpenAI's envelope with ``status``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        """The JSON response of this error."""
        body = ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


class _GuardMiddleware:
    """ASGI middleware: the API key on ``/v1`` routes (constant-time) and the declared body size, before routing.

    Pure ASGI rather than ``BaseHTTPMiddleware``, which would buffer streamed responses and hide disconnects.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        error = None
        if self.api_key is not None and scope["path"].startswith("/v1"):
            given = headers.get("authorization", b"")
            scheme, _, token = given.partition(b" ")
            if not given:
                error = APIError(401, "missing API key; send the header 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")  # fmt: skip
            elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                error = APIError(401, "invalid API key; send the server's key as 'Authorization: Bearer <key>'",
                                 code="invalid_api_key")  # fmt: skip
        length = headers.get("content-length")
        if error is None and length is not None:
            if not length.isdigit():
                error = APIError(400, f"Content-Length {length.decode('latin-1')!r} is not a number")
            elif int(length) > self.max_body_bytes:
                error = _too_large(self.max_body_bytes)
        if error is not None:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body is larger than the server's limit of {limit} bytes; send a shorter "
                         "conversation", code="request_too_large")  # fmt: skip


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes (chunked bodies included), 400 for bad JSON."""
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise _too_large(limit)
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(value, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(value).__name__}", code="invalid_json")
    return value


def _parse(model: type[BaseModel], body: dict[str, Any], path: str) -> Any:
    """Validate ``body`` as ``model``; the first problem becomes a 400 naming the field; unknown fields logged."""
    try:
        parsed = model.model_validate(body)
    except ValidationError as exc:
        message, param = validation_message(exc.errors()[0])
        extra = len(exc.errors()) - 1
        if extra:
            message += f" (and {extra} more problem{'s' if extra > 1 else ''})"
        raise APIError(400, message, param=param) from None
    unknown = sorted(parsed.model_extra or {})
    for index, message in enumerate(getattr(parsed, "messages", None) or []):
        unknown += [f"messages.{index}.{k}" for k in sorted(message.model_extra or {})]
    if unknown:
        logger.info("%s: ignoring unknown field(s) %s", path, unknown)
    ignored = parsed.ignored_fields() if hasattr(parsed, "ignored_fields") else []
    if ignored:
        logger.info("%s: field(s) %s have no effect on this server", path, ignored)
    return parsed


def create_app(engine: Engine, settings: ServeSettings) -> FastAPI:
    """Build the FastAPI app serving ``engine`` under ``settings`` (the engine starts and stops with the app).

    Args:
        engine: what generates (``HFEngine`` over a PersonaFuse, or a test double).
        settings: limits, timeout, API key.

    Returns:
        The app; run it with uvicorn (``personafuse serve`` does).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:  # uvicorn has let in-flight requests finish; now drain whatever the engine still holds
            await run_in_threadpool(engine.shutdown, settings.graceful_timeout_s)

    app = FastAPI(title="personafuse", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible PersonaFuse server with per-request persona routing")  # fmt: skip
    app.state.engine = engine
    app.state.settings = settings
    app.add_middleware(_GuardMiddleware, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)
    _add_error_handlers(app)
    created = int(time.time())

    def overloaded(reason: str) -> APIError:
        return APIError(503, f"{reason}; retry after {settings.retry_after_s}s", type="server_error",
                        code="overloaded", headers={"Retry-After": str(settings.retry_after_s)})  # fmt: skip

    def persona_for(model: str, choice: PersonaChoice, persona_given: bool) -> PersonaChoice:
        if model == engine.model_name:
            return choice
        preset = find_preset(model) if model.startswith(PRESET_PREFIX) else None
        if preset is None:
            known = [engine.model_name] + [p.model_id for p in PRESETS.values()]
            raise APIError(404, f"model {model!r} does not exist; this server has {', '.join(known)}",
                           param="model", code="model_not_found")  # fmt: skip
        if persona_given:
            raise APIError(400, f"model {model!r} fixes the persona; omit `persona` or use model "
                                f"{engine.model_name!r}", param="persona")  # fmt: skip
        return PersonaChoice("preset", gates=preset.gates, preset=preset.name)

    def sampling(req: Any, prompt_len: int) -> SamplingParams:
        room = engine.max_context - prompt_len
        if room < 1:
            raise APIError(400, f"the prompt has {prompt_len} tokens but the model's context is "
                                f"{engine.max_context}; shorten the conversation", param="messages",
                           code="context_length_exceeded")  # fmt: skip
        if req.max_tokens is None:
            max_tokens = min(settings.default_max_tokens, room)
        elif req.max_tokens > settings.max_tokens_limit:
            raise APIError(400, f"max_tokens={req.max_tokens} exceeds this server's limit of "
                                f"{settings.max_tokens_limit}; lower it", param="max_tokens")  # fmt: skip
        elif req.max_tokens > room:
            raise APIError(400, f"prompt ({prompt_len} tokens) + max_tokens ({req.max_tokens}) exceeds the model's "
                                f"context of {engine.max_context} tokens; lower max_tokens to {room} or shorten "
                                "the conversation", param="max_tokens", code="context_length_exceeded")  # fmt: skip
        else:
            max_tokens = req.max_tokens
        if req.n > engine.max_batch:
            raise APIError(400, f"n={req.n} exceeds this server's max batch of {engine.max_batch}; lower n",
                           param="n")  # fmt: skip
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p, seed=req.seed,
                              stop=req.stop_sequences(), n=req.n)  # fmt: skip

    def submit(jobs: list[GenerationJob]) -> RequestHandle:
        try:
            return engine.submit(jobs)
        except EngineOverloaded as exc:
            raise overloaded(str(exc)) from None

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> JSONResponse:
        info = engine.health()
        draining = bool(info.get("draining"))
        body = {"status": "draining" if draining else "ok", "model": engine.model_name, **info}
        return JSONResponse(body, status_code=503 if draining else 200)

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> dict[str, Any]:
        cards = [ModelCard(id=engine.model_name, created=created, root=engine.model_name)]
        for preset in PRESETS.values():
            cards.append(ModelCard(id=preset.model_id, created=created, root=engine.model_name,
                                   parent=engine.model_name,
                                   persona={"preset": preset.name, "description": preset.description,
                                            "gates": preset.gates.as_dict()}))  # fmt: skip
        return ModelList(data=cards).model_dump()

    @app.post("/v1/route", response_model=RouteResponse)
    async def route(request: Request) -> dict[str, Any]:
        req: RouteRequest = _parse(RouteRequest, await _read_json(request, settings.max_body_bytes), "/v1/route")
        choice = parse_persona(req.persona)
        if req.model is not None:
            choice = persona_for(req.model, choice, req.persona is not None)
        if req.messages is not None:
            if len(req.messages) > settings.max_messages:
                raise APIError(400, f"{len(req.messages)} messages exceed the limit of {settings.max_messages}",
                               param="messages")  # fmt: skip
            texts = [conversation_text([m.as_template_message() for m in req.messages])]
        else:
            texts = [req.input] if isinstance(req.input, str) else list(req.input or [])
            if len(texts) > settings.max_prompts:
                raise APIError(400, f"{len(texts)} inputs exceed the limit of {settings.max_prompts}", param="input")
        if choice.source == "auto":
            for index, text in enumerate(texts):
                if not text.strip():
                    raise APIError(400, f"input {index} has no text; routing reads the conversation's text",
                                   param="input" if req.input is not None else "messages")  # fmt: skip
        reports = await run_in_threadpool(engine.route, texts, [choice] * len(texts))
        return RouteResponse(data=[RouteResult(index=i, persona=r) for i, r in enumerate(reports)]).model_dump()

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(request: Request):
        deadline = time.monotonic() + settings.timeout_s
        path = "/v1/chat/completions"
        req: ChatCompletionRequest = _parse(ChatCompletionRequest, await _read_json(request, settings.max_body_bytes),
                                            path)  # fmt: skip
        if len(req.messages) > settings.max_messages:
            raise APIError(400, f"{len(req.messages)} messages exceed the limit of {settings.max_messages}; "
                                "send a shorter conversation", param="messages")  # fmt: skip
        persona = persona_for(req.model, req.persona_choice(), req.persona is not None)
        messages = req.template_messages()
        text = conversation_text(messages)
        if persona.source == "auto" and not text.strip():
            raise APIError(400, "the conversation has no text to route; send a non-empty user message",
                           param="messages")  # fmt: skip
        prompt_ids = await run_in_threadpool(engine.encode_chat, messages)
        params = sampling(req, len(prompt_ids))
        job = GenerationJob(prompt_ids, text, persona, params, stream=req.stream)
        handle = submit([job])
        request_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            started = await _first_started(handle, deadline, request)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _chat_stream(handle, started, request_id, req.model, params.n, len(prompt_ids), deadline,
                                  include_usage)  # fmt: skip
            return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        reports, results = await _collect(handle, deadline, request)
        choices = [ChatChoice(index=c, message=AssistantMessage(content=r.text), finish_reason=r.finish_reason)
                   for (_, c), r in sorted(results.items())]  # fmt: skip
        completion = sum(r.completion_tokens for r in results.values())
        body = ChatCompletionResponse(
            id=request_id,
            model=req.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=len(prompt_ids), completion_tokens=completion, total_tokens=len(prompt_ids) + completion
            ),  # fmt: skip
            persona=reports[0],
            system_fingerprint=FINGERPRINT,
        )
        return JSONResponse(body.model_dump())

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(request: Request):
        deadline = time.monotonic() + settings.timeout_s
        req: CompletionRequest = _parse(CompletionRequest, await _read_json(request, settings.max_body_bytes),
                                        "/v1/completions")  # fmt: skip
        prompts = req.prompts()
        if len(prompts) > settings.max_prompts:
            raise APIError(400, f"{len(prompts)} prompts exceed the limit of {settings.max_prompts}", param="prompt")
        persona = persona_for(req.model, req.persona_choice(), req.persona is not None)
        for index, prompt in enumerate(prompts):
            if not prompt.strip():
                raise APIError(400, f"prompt {index} is empty; send some text", param="prompt")
        jobs, prompt_tokens = [], 0
        for prompt in prompts:
            ids = await run_in_threadpool(engine.encode_text, prompt)
            jobs.append(GenerationJob(ids, prompt, persona, sampling(req, len(ids)), stream=req.stream))
            prompt_tokens += len(ids)
        handle = submit(jobs)
        request_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        if req.stream:
            started = await _first_started(handle, deadline, request)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = _text_stream(handle, started, request_id, req.model, req.n, prompt_tokens, deadline,
                                  include_usage)  # fmt: skip
            return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        reports, results = await _collect(handle, deadline, request)
        choices = [CompletionChoice(index=j * req.n + c, text=r.text, finish_reason=r.finish_reason)
                   for (j, c), r in sorted(results.items())]  # fmt: skip
        completion = sum(r.completion_tokens for r in results.values())
        body = CompletionResponse(
            id=request_id,
            model=req.model,
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
            ),  # fmt: skip
            persona=reports[0] if len(reports) == 1 else [reports[i] for i in range(len(reports))],
            system_fingerprint=FINGERPRINT,
        )
        return JSONResponse(body.model_dump())

    @app.get("/", include_in_schema=False)
    async def index():
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise APIError(404, "no web page is installed (serve/static/index.html); the API is under /v1",
                           code="not_found")  # fmt: skip
        return FileResponse(page)

    if STATIC_DIR.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return app


# ---------------------------------------------------------------------------------------------------- plumbing

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PersonaError)
    async def persona_error(request: Request, exc: PersonaError) -> JSONResponse:
        return APIError(400, str(exc), param="persona").response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors()[0]) if exc.errors() else ("invalid request", None)
        return APIError(400, message, param=param).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; the API is under /v1 (see /docs)"
        else:
            message = str(exc.detail)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return APIError(exc.status_code, message, type=kind, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return APIError(500, f"internal server error: {type(exc).__name__}", type="server_error").response()


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _timeout(handle: RequestHandle) -> APIError:
    handle.cancel()
    return APIError(504, "the request did not finish within the server's timeout; retry, or lower max_tokens",
                    type="server_error", code="timeout")  # fmt: skip


async def _watch_disconnect(request: Request, handle: RequestHandle) -> None:
    """Cancel the request's rows when its client goes away (non-streaming requests keep no open stream)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            handle.cancel()
            handle.queue.put_nowait(Failed("client disconnected"))
            return


async def _guarded(handle: RequestHandle, request: Request, work: Callable[[], Awaitable[Any]]) -> Any:
    watcher = asyncio.create_task(_watch_disconnect(request, handle))
    try:
        return await work()
    finally:
        watcher.cancel()


async def _first_started(handle: RequestHandle, deadline: float, request: Request) -> Started:
    """Wait until the request's first batch starts (so queue timeouts are still a 504, not a broken stream)."""

    async def wait() -> Started:
        try:
            event = await handle.next_event(_remaining(deadline))
        except asyncio.TimeoutError:
            raise _timeout(handle) from None
        if isinstance(event, Failed):
            handle.cancel()
            raise APIError(500, event.message, type="server_error")
        assert isinstance(event, Started), f"first event must be Started, got {event}"
        return event

    return await _guarded(handle, request, wait)


async def _collect(handle: RequestHandle, deadline: float,
                   request: Request) -> tuple[dict[int, PersonaReport], dict[tuple[int, int], Finished]]:  # fmt: skip
    """Wait for every choice of every job; (routing per job, result per (job, choice))."""
    expected = sum(job.params.n for job in handle.jobs)
    reports: dict[int, PersonaReport] = {}
    results: dict[tuple[int, int], Finished] = {}

    async def wait() -> None:
        while len(results) < expected:
            try:
                event = await handle.next_event(_remaining(deadline))
            except asyncio.TimeoutError:
                raise _timeout(handle) from None
            if isinstance(event, Started):
                reports[event.job] = event.persona
            elif isinstance(event, Finished):
                results[(event.job, event.choice)] = event
            elif isinstance(event, Failed):
                handle.cancel()
                raise APIError(500, event.message, type="server_error")

    await _guarded(handle, request, wait)
    return reports, results


def _sse(payload: BaseModel | dict[str, Any]) -> str:
    """One server-sent event; as OpenAI's chunks, null ``persona`` / ``usage`` and null delta fields left out."""
    data = payload.model_dump() if isinstance(payload, BaseModel) else payload
    for key in ("persona", "usage"):
        if key in data and data[key] is None:
            del data[key]
    for choice in data.get("choices", ()):
        if "delta" in choice:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _stream_error(message: str, code: str) -> str:
    return _sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})


async def _chat_stream(handle: RequestHandle, started: Started, request_id: str, model: str, n: int,
                       prompt_tokens: int, deadline: float, include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    created = int(time.time())

    def chunk(choices: list[ChunkChoice], **extra: Any) -> str:
        return _sse(ChatCompletionChunk(id=request_id, created=created, model=model, choices=choices,
                                        system_fingerprint=FINGERPRINT, **extra))  # fmt: skip

    finished, completion = 0, 0
    try:
        for c in range(n):  # the role first, as OpenAI does; the first chunk also carries the routing used
            role = ChunkChoice(index=c, delta=ChoiceDelta(role="assistant", content=""))
            yield chunk([role], persona=started.persona if c == 0 else None)
        while finished < n:
            try:
                event = await handle.next_event(_remaining(deadline))
            except asyncio.TimeoutError:
                yield _stream_error("the request did not finish within the server's timeout", "timeout")
                return
            if isinstance(event, Delta):
                yield chunk([ChunkChoice(index=event.choice, delta=ChoiceDelta(content=event.text))])
            elif isinstance(event, Finished):
                finished += 1
                completion += event.completion_tokens
                yield chunk([ChunkChoice(index=event.choice, delta=ChoiceDelta(), finish_reason=event.finish_reason)])
            elif isinstance(event, Failed):
                yield _stream_error(event.message, "generation_failed")
                return
        if include_usage:
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                          total_tokens=prompt_tokens + completion)  # fmt: skip
            yield chunk([], usage=usage)
        yield "data: [DONE]\n\n"
    finally:
        if finished < n:  # client gone, timeout or failure: stop this request's rows at their next token
            handle.cancel()


async def _text_stream(handle: RequestHandle, first: Started, request_id: str, model: str, n: int,
                       prompt_tokens: int, deadline: float, include_usage: bool) -> AsyncIterator[str]:  # fmt: skip
    created = int(time.time())
    expected = sum(job.params.n for job in handle.jobs)

    def chunk(choices: list[CompletionChoice], **extra: Any) -> str:
        return _sse(CompletionResponse(id=request_id, created=created, model=model, choices=choices,
                                       system_fingerprint=FINGERPRINT, **extra))  # fmt: skip

    finished, completion = 0, 0
    pending: list[Started] = [first]
    try:
        while finished < expected:
            try:
                event = pending.pop() if pending else await handle.next_event(_remaining(deadline))
            except asyncio.TimeoutError:
                yield _stream_error("the request did not finish within the server's timeout", "timeout")
                return
            if isinstance(event, Started):  # each prompt's routing, in a first chunk of its own
                yield chunk(
                    [CompletionChoice(index=event.job * n, text="", finish_reason=None)], persona=event.persona
                )
            elif isinstance(event, Delta):
                index = event.job * n + event.choice
                yield chunk([CompletionChoice(index=index, text=event.text, finish_reason=None)])
            elif isinstance(event, Finished):
                finished += 1
                completion += event.completion_tokens
                index = event.job * n + event.choice
                yield chunk([CompletionChoice(index=index, text="", finish_reason=event.finish_reason)])
            elif isinstance(event, Failed):
                yield _stream_error(event.message, "generation_failed")
                return
        if include_usage:
            yield chunk([], usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                                        total_tokens=prompt_tokens + completion))  # fmt: skip
        yield "data: [DONE]\n\n"
    finally:
        if finished < expected:
            handle.cancel()


__all__ = ["APIError", "create_app"]
