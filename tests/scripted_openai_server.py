"""A scripted OpenAI-compatible chat server for tests, served by uvicorn on 127.0.0.1 in a background thread.

A test scripts it in two ways:

* ``server.model`` answers a request body with reply text (sync or async): the "model" hook. The default,
  :func:`fake_model`, recognises the synthesis stage from the JSON shape its prompt asks for and returns a
  valid, deterministic reply; the slow test puts a real transformers model behind it.
* ``server.faults`` is a queue of faults for the next requests, and ``server.rule`` may return a fault for a
  given request (e.g. "the first annotate request of syn-x-0002"): ``"429"``, ``"500"``, ``"400"``, ``"malformed"``
  (a reply that is not JSON), ``"slow"`` (sleep ``slow_seconds`` before answering), or any reply text.

Every request body is kept in ``server.requests``, with the fault it got in ``server.log``.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

POLES = ("O+", "O-", "C+", "C-", "E+", "E-", "A+", "A-", "N+", "N-")
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass(frozen=True)
class ModelReply:
    """What a model hook may return instead of bare text: the text with real token counts."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"


Model = Callable[[dict[str, Any]], "str | ModelReply | Awaitable[str | ModelReply]"]
Rule = Callable[[dict[str, Any], int], "str | None"]


def stage_of(body: dict[str, Any]) -> str:
    """The synthesis stage a request belongs to, from the JSON shape its first user turn asks for."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    for stage, marker in (
        ("situations", '{"situations"'),
        ("annotate", '{"analysis"'),
        ("poles", '{"responses"'),
        ("ideal", '{"ideal"'),
    ):
        if marker in first_user:
            return stage
    return "unknown"


def conversation_of(body: dict[str, Any]) -> str:
    """The situation text quoted in a stage 2-4 prompt (between 'Conversation' and the instructions)."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    match = re.search(
        r"Conversation \(domain \"[a-z_]+\"\):\n(.*?)\n\n(?:Annotate|Write|Annotation)", first_user, re.S
    )
    return match.group(1) if match else ""


def _words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(n))


def fake_model(body: dict[str, Any]) -> str:
    """A valid reply for any synthesis stage, deterministic in the request (so runs are reproducible)."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    rng = random.Random(hashlib.sha256(json.dumps(body["messages"]).encode()).hexdigest())
    stage = stage_of(body)
    if stage == "situations":
        count = int(re.search(r"Write (\d+) new situations", first_user).group(1))
        items = [{"messages": [{"role": "user", "content": _words(rng, 18) + "?"}]} for _ in range(count)]
        return json.dumps({"situations": items})
    if stage == "annotate":
        activation = {t: round(rng.choice([-0.8, -0.5, 0.0, 0.1, 0.5, 0.8]), 2) for t in "OCEAN"}
        return json.dumps(
            {
                "analysis": {"cues": [_words(rng, 3), _words(rng, 4)], "rationale": "Because " + _words(rng, 12)},
                "activation": activation,
            }
        )
    if stage == "poles":
        return json.dumps({"responses": {p: f"{p} reply: {_words(rng, 10)}." for p in POLES}})
    if stage == "ideal":
        return json.dumps({"ideal": "Ideal: " + _words(rng, 12), "rejected": "Rejected: " + _words(rng, 12)})
    return "I do not know this prompt."


@dataclass
class ScriptedServer:
    """The app's state; see the module docstring."""

    model: Model = fake_model
    faults: deque[str] = field(default_factory=deque)
    rule: Rule | None = None
    slow_seconds: float = 2.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self, model: Model = fake_model) -> None:
        """Back to valid replies from ``model``, no faults, empty log."""
        with self.lock:
            self.model = model
            self.faults.clear()
            self.rule = None
            self.requests.clear()
            self.log.clear()

    def fail_next(self, *faults: str) -> None:
        """Queue faults for the next requests, in order."""
        with self.lock:
            self.faults.extend(faults)

    def count(self, stage: str, fault: str | None = None) -> int:
        """Requests of ``stage`` seen so far (with that fault, if given; ``"ok"`` = no fault)."""
        return sum(1 for s, f in self.log if s == stage and (fault is None or f == fault))

    def create_app(self) -> FastAPI:
        """The FastAPI app: ``POST /v1/chat/completions`` and ``GET /v1/models``."""
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "tests"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            try:
                body = await request.json()
            except ClientDisconnect:  # a client that gave up (timeout, Ctrl-C) before sending its body
                return Response(status_code=499)
            with self.lock:
                index = len(self.requests)
                self.requests.append(body)
                fault = self.faults.popleft() if self.faults else None
                if fault is None and self.rule is not None:
                    fault = self.rule(body, index)
                self.log.append((stage_of(body), fault or "ok"))
            if fault == "429":
                return _error(429, "rate limited, slow down", "rate_limit_exceeded", {"retry-after": "0"})
            if fault == "500":
                return _error(500, "the scripted server broke", "server_error")
            if fault == "400":
                return _error(400, "this request is not acceptable", "invalid_request_error")
            if fault == "slow":
                await asyncio.sleep(self.slow_seconds)
                fault = None
            if fault == "malformed":
                text = '{"this is": not JSON'
            elif fault is not None:
                text = fault
            else:
                reply = self.model(body)
                reply = await reply if inspect.isawaitable(reply) else reply
                if isinstance(reply, ModelReply):
                    return _completion(body, reply.text, reply)
                text = reply
            return _completion(body, text)

        return app


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    envelope = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return JSONResponse(envelope, status_code=status, headers=headers)


def _completion(body: dict[str, Any], text: str, reply: ModelReply | None = None) -> dict[str, Any]:
    # without real counts, whitespace-split words stand in for tokens (tests check that the summary adds them up)
    prompt_tokens = reply.prompt_tokens if reply else sum(len(m["content"].split()) for m in body["messages"])
    completion_tokens = reply.completion_tokens if reply else len(text.split())
    return {
        "id": f"chatcmpl-{hashlib.sha1(text.encode()).hexdigest()[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "scripted"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": reply.finish_reason if reply else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@contextmanager
def serve(app: FastAPI, port: int = 0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (at a free port by default) in a background thread; yields the ``/v1`` base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit TCP_NODELAY on Linux; without it every keep-alive reply waits ~40 ms for the
    # client's delayed ACK (Nagle), which made each request 20x slower than the work it does.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the scripted server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
