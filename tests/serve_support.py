"""Helpers of the serving tests: one tiny PersonaFuse per test session, engines over it, a real uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

CONV = [{"role": "user", "content": "my cat died and I am sad"}]

_PF_CACHE: dict[str, object] = {}


def shared_tiny_pf(tiny_base: str):
    """The tiny PersonaFuse (random experts), built once per test process: loading MiniLM costs seconds."""
    if tiny_base not in _PF_CACHE:
        from personafuse import PersonaFuse

        _PF_CACHE[tiny_base] = PersonaFuse.create(base=tiny_base, encoder="minilm-l6", device="cpu", rank=4,
                                                  init_b="random")  # fmt: skip
    return _PF_CACHE[tiny_base]


def make_engine(pf, **kwargs):
    """An HFEngine over ``pf`` named ``tiny``."""
    from personafuse.serve import HFEngine

    kwargs.setdefault("max_batch", 8)
    kwargs.setdefault("queue_size", 64)
    kwargs.setdefault("batch_wait_ms", 2.0)
    return HFEngine(pf, "tiny", **kwargs)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(app, graceful_timeout: int = 10) -> Iterator[tuple[str, object]]:
    """Run ``app`` under uvicorn on 127.0.0.1 in a background thread; yield (base URL, uvicorn.Server)."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            timeout_graceful_shutdown=graceful_timeout)  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
