"""The synthesis run's configuration: one typed dataclass, validated as a whole at construction."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from personafuse.data.schema import DOMAINS
from personafuse.errors import ConfigError

__all__ = ["API_KEY_PLACEHOLDER", "DOMAIN_DESCRIPTIONS", "SynthesisConfig", "parse_domains"]

API_KEY_PLACEHOLDER = "no-key"
"""Sent as the key when none is set: local servers (vLLM, llama.cpp, Ollama) ignore it, the SDK needs one."""

DOMAIN_DESCRIPTIONS: dict[str, str] = {
    "grief_loss": "grief and loss: a death, a pet put down, a miscarriage, a divorce, a lost home or job",
    "mental_health": "mental-health support: anxiety, low mood, loneliness, burnout, panic, self-doubt",
    "customer_service": (
        "customer reviews and complaints that a business answers: a late order, a rude waiter, a broken product, "
        "a glowing review, a refund demand"
    ),
    "workplace_conflict": "workplace conflict: a credit-stealing colleague, an unfair manager, a team dispute",
    "good_news": "good news the user wants to share: a new job, an engagement, a passed exam, a first marathon",
    "creative_brainstorming": "creative brainstorming: names, story ideas, party themes, product ideas, gifts",
    "technical_help": "technical help: a bug, an error message, a configuration, a spreadsheet, a broken device",
    "factual_questions": "factual questions: science, history, geography, health facts, how something works",
    "planning": "planning: a trip, a move, a study schedule, a wedding budget, a week of meals",
    "critique_negotiation": (
        "requests for blunt critique or help negotiating: review my essay honestly, a salary talk, a landlord dispute"
    ),
    "emergency_safety": (
        "emergencies and safety: a burn, a gas smell, a child who swallowed something, a scam in progress, "
        "a friend in danger"
    ),
    "casual_chat": "casual chat: small talk, jokes, a boring day, a favourite show, a random thought",
}
"""The prompt's description of each built-in domain (:data:`personafuse.data.schema.DOMAINS`)."""

_DOMAIN_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ID_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")


def parse_domains(specs: tuple[str, ...] | list[str]) -> tuple[dict[str, str], list[str]]:
    """Resolve domain specs to ``{name: description}``; a spec is a built-in name or ``name:description``.

    Args:
        specs: domain names or ``name:description`` pairs; comma-separated lists are split.

    Returns:
        The resolved domains in the given order (duplicates dropped) and a list of problems (empty when all is well).
    """
    resolved: dict[str, str] = {}
    problems: list[str] = []
    for raw in specs:
        for spec in (part.strip() for part in raw.split(",")):
            if not spec:
                continue
            name, sep, description = spec.partition(":")
            name, description = name.strip(), description.strip()
            if sep:
                if not _DOMAIN_NAME.match(name) or not description:
                    problems.append(
                        f"--domains: custom domain {spec!r} must be 'snake_case_name:description of the situations'"
                    )
                    continue
                resolved.setdefault(name, description)
            elif name in DOMAIN_DESCRIPTIONS:
                resolved.setdefault(name, DOMAIN_DESCRIPTIONS[name])
            else:
                problems.append(
                    f"--domains: unknown domain {name!r}; use any of {', '.join(DOMAINS)}, "
                    f"or describe a new one as '{name}:what its situations are about'"
                )
    if not resolved and not problems:
        problems.append("--domains: no domain given; name at least one, e.g. --domains grief_loss,planning")
    return resolved, problems


@dataclass
class SynthesisConfig:
    """Everything a synthesis run needs. Invalid values raise one :class:`ConfigError` listing every problem."""

    base_url: str
    """OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8000/v1`` (``--base-url``)."""
    model: str
    """Model name the endpoint serves (``--model``)."""
    out_dir: Path
    """Folder of the stage files and ``records.jsonl``; reusing it resumes the run (``--out``)."""
    api_key: str = API_KEY_PLACEHOLDER
    """API key; local servers usually need none, so a placeholder is the default."""
    domains: tuple[str, ...] = DOMAINS
    """Built-in domain names or ``name:description`` specs (``--domains``)."""
    per_domain: int = 10
    """Situations to synthesise per domain (``--per-domain``)."""
    batch_size: int = 5
    """Situations asked for per request in stage 1 (``--batch-size``)."""
    concurrency: int = 8
    """Requests in flight at once (``--concurrency``)."""
    max_retries: int = 4
    """Retries of one request on 429, 5xx, timeouts and connection errors (``--max-retries``)."""
    timeout: float = 120.0
    """Seconds before one request counts as timed out (``--timeout``)."""
    max_repairs: int = 2
    """Times an invalid JSON reply is sent back with its error before the item is rejected (``--max-repairs``)."""
    temperature: float = 0.9
    """Sampling temperature (``--temperature``)."""
    seed: int | None = 0
    """Base of the per-request seeds sent to the server; ``None`` sends none (``--seed``)."""
    max_tokens: int | None = None
    """Completion-token cap per request; ``None`` leaves it to the server (``--max-tokens``)."""
    json_mode: bool = False
    """Send ``response_format={"type": "json_object"}`` (OpenAI, vLLM, llama.cpp and Ollama support it)."""
    dedup_threshold: float = 0.5
    """Character-shingle Jaccard similarity at or above which a situation is a near-duplicate (``--dedup-threshold``)."""
    dedup_opening_words: int = 5
    """Situations of one domain may not share this many opening words; 0 turns the check off."""
    backoff_initial: float = 1.0
    """Seconds before the first retry; doubled per retry, with jitter."""
    backoff_max: float = 30.0
    """Cap of one backoff wait, also of a server's Retry-After."""
    id_prefix: str = "syn"
    """Record ids are ``<id_prefix>-<domain>-<nnnn>`` (``--id-prefix``)."""
    prompt_version: str = "v1"
    """Version of the prompt files ``data/prompts/<stage>.<version>.txt``."""
    retry_rejected: bool = False
    """Ask again for items that an earlier run rejected (``--retry-rejected``); by default they stay rejected."""
    domain_descriptions: dict[str, str] = field(init=False, repr=False)
    """Resolved ``{domain: description}``, filled from ``domains``."""

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if isinstance(self.domains, str):
            self.domains = (self.domains,)
        self.domains = tuple(self.domains)
        self.domain_descriptions, problems = parse_domains(self.domains)
        problems += self._check_endpoint()
        problems += self._check_numbers()
        if not _ID_PREFIX.match(self.id_prefix):
            problems.append(f"--id-prefix {self.id_prefix!r} may hold only letters, digits and _ . : -")
        if not re.match(r"^v\d+$", self.prompt_version):
            problems.append(f"prompt_version {self.prompt_version!r} must look like 'v1'")
        if self.out_dir.exists() and not self.out_dir.is_dir():
            problems.append(f"--out {str(self.out_dir)!r} exists and is not a folder; give a folder path")
        if problems:
            raise ConfigError("; ".join(problems))

    def _check_endpoint(self) -> list[str]:
        problems = []
        url = urlparse(self.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            problems.append(
                f"--base-url {self.base_url!r} is not an http(s) URL; give the server's OpenAI-compatible root, "
                "e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1"
            )
        if not self.model.strip():
            problems.append("--model is empty; give the model name the server serves (see its /v1/models)")
        if not self.api_key:
            problems.append("the API key is empty; set the environment variable named by --api-key-env")
        return problems

    def _check_numbers(self) -> list[str]:
        problems = []
        positive = {
            "--per-domain": self.per_domain,
            "--batch-size": self.batch_size,
            "--concurrency": self.concurrency,
        }
        for flag, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{flag} must be a whole number >= 1, got {value!r}")
        for flag, value in {"--max-retries": self.max_retries, "--max-repairs": self.max_repairs}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.append(f"{flag} must be a whole number >= 0, got {value!r}")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            problems.append(f"--timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not (math.isfinite(self.temperature) and 0.0 <= self.temperature <= 2.0):
            problems.append(f"--temperature must be in [0, 2], got {self.temperature!r}")
        if self.max_tokens is not None and self.max_tokens < 16:
            problems.append(f"--max-tokens must be >= 16 (JSON replies need room), got {self.max_tokens!r}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            problems.append(f"--dedup-threshold must be in (0, 1], got {self.dedup_threshold!r}")
        if self.dedup_opening_words < 0:
            problems.append(f"dedup_opening_words must be >= 0, got {self.dedup_opening_words!r}")
        if not (self.backoff_initial >= 0 and self.backoff_max >= self.backoff_initial):
            problems.append(
                f"backoff_initial ({self.backoff_initial!r}) must be >= 0 and <= backoff_max ({self.backoff_max!r})"
            )
        return problems

    @property
    def max_rounds_per_domain(self) -> int:
        """Stage-1 requests per domain before giving up on filling it: twice the batches needed, plus two."""
        return 2 * math.ceil(self.per_domain / self.batch_size) + 2

    def record_id(self, domain: str, index: int) -> str:
        """The id of the ``index``-th (1-based) situation of ``domain``: ``syn-grief_loss-0007``."""
        return f"{self.id_prefix}-{domain}-{index:04d}"

    def public_dict(self) -> dict[str, object]:
        """The config as JSON-ready values, without the API key (written to ``runs.jsonl``)."""
        return {
            "base_url": self.base_url,
            "model": self.model,
            "out_dir": str(self.out_dir),
            "domains": dict(self.domain_descriptions),
            "per_domain": self.per_domain,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            "max_retries": self.max_retries,
            "timeout": self.timeout,
            "max_repairs": self.max_repairs,
            "temperature": self.temperature,
            "seed": self.seed,
            "max_tokens": self.max_tokens,
            "json_mode": self.json_mode,
            "dedup_threshold": self.dedup_threshold,
            "dedup_opening_words": self.dedup_opening_words,
            "id_prefix": self.id_prefix,
            "prompt_version": self.prompt_version,
            "retry_rejected": self.retry_rejected,
        }
