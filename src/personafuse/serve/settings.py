"""`ServeSettings`: every knob of `personafuse serve`, validated at construction (all problems at once)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, fields

from personafuse.errors import ConfigError

API_KEY_ENV = "PERSONAFUSE_API_KEY"
"""Environment variable read when ``--api-key`` is not given."""

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: addresses only this machine can reach."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServeSettings:
    """Settings of the server (the app's limits, the engine's batching, the socket)."""

    model: str = "smollm2-135m-instruct"
    """Checkpoint folder or base-model alias / folder / hub id to serve."""
    model_name: str | None = None
    """The id listed by ``/v1/models`` and expected in requests (default: the last part of ``model``)."""
    host: str = "127.0.0.1"
    """Address to bind; anything but loopback needs ``api_key``."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Bearer key required on every ``/v1`` route (default: ``$PERSONAFUSE_API_KEY``; None = no auth)."""
    device: str | None = None
    """torch device (default: cuda when available, else cpu)."""
    max_batch: int = 8
    """Rows per forward batch at most (a request's ``n`` counts as n rows)."""
    queue_size: int = 64
    """Queued jobs at most; beyond, requests get 503 with Retry-After."""
    batch_wait_ms: float = 5.0
    """How long the worker waits after a first arrival for others to join its batch."""
    timeout_s: float = 60.0
    """Per-request deadline (queue + generation); past it the request gets 504 and its rows stop."""
    retry_after_s: int = 1
    """The Retry-After value sent with 503."""
    max_body_bytes: int = 1_000_000
    """Request bodies larger than this get 413."""
    max_messages: int = 256
    """Messages per chat request at most."""
    max_prompts: int = 16
    """Prompts per /v1/completions request (and texts per /v1/route request) at most."""
    max_tokens_limit: int = 4096
    """Largest ``max_tokens`` a request may ask for (the context window limits it further)."""
    default_max_tokens: int = 256
    """``max_tokens`` when a request omits it (capped by what the context window leaves)."""
    graceful_timeout_s: float = 30.0
    """On shutdown, how long in-flight requests may take to finish."""
    log_level: str = "info"
    """uvicorn / personafuse.serve log level."""

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        problems = []
        positive = ("port", "max_batch", "queue_size", "timeout_s", "max_body_bytes", "max_messages", "max_prompts",
                    "max_tokens_limit", "default_max_tokens")  # fmt: skip
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
        for name in ("batch_wait_ms", "retry_after_s", "graceful_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {value!r}")
        if isinstance(self.port, int) and not 0 < self.port < 65536:
            problems.append(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and (
            len(self.api_key) < 8 or not self.api_key.isprintable() or " " in self.api_key
        ):
            problems.append("--api-key must be at least 8 printable characters without spaces")
        if not is_loopback(self.host) and not self.api_key:
            problems.append(
                f"--host {self.host} is reachable from other machines; set --api-key (or ${API_KEY_ENV}) "
                "or bind 127.0.0.1"
            )
        if self.log_level not in ("critical", "error", "warning", "info", "debug"):
            problems.append(f"--log-level must be critical, error, warning, info or debug, got {self.log_level!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def served_name(self) -> str:
        """The model id clients send (``model_name``, else the last path part of ``model``)."""
        if self.model_name:
            return self.model_name
        return os.path.basename(os.path.normpath(os.path.expanduser(self.model))) or self.model

    def to_dict(self) -> dict[str, object]:
        """The settings as a dict, the API key masked."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["api_key"] = "***" if self.api_key else None
        return out
