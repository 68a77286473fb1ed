"""Benchmark settings."""

from __future__ import annotations

from dataclasses import dataclass, field

DECODE_MODES = ("base", "dense", "top3", "merged", "naive_loop", "xlora")


@dataclass
class BenchConfig:
    """What `personafuse bench` measures and how hard."""

    model: str = "smollm2-135m-instruct"
    """Base LLM (alias, HF folder or id); experts are random (speed does not depend on trained values)."""
    encoder: str = "minilm-l6"
    """Sentence encoder for the routing-latency measurement."""
    rank: int = 8
    """LoRA rank of each of the ten experts."""
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    """Batch sizes for decode throughput; batches > 1 use a distinct mix per row."""
    new_tokens: int = 32
    """Decoded tokens per measurement."""
    prompt_tokens: int = 64
    """Prompt length in tokens."""
    repeats: int = 3
    """Interleaved repetitions; the median is reported."""
    modes: list[str] = field(default_factory=lambda: list(DECODE_MODES))
    """Decode modes to compare with the base."""
    dtype: str = "float32"
    """Model dtype (bfloat16 on GPUs)."""
    device: str | None = None
    """torch device; default cuda when available."""
    train_steps: int = 3
    """Training steps timed per variant (stage-1 vs single LoRA)."""

    def __post_init__(self) -> None:
        from personafuse.errors import ConfigError

        problems = []
        unknown = [m for m in self.modes if m not in DECODE_MODES]
        if unknown:
            problems.append(f"unknown bench mode(s) {unknown}; choose from {', '.join(DECODE_MODES)}")
        for name in ("rank", "new_tokens", "prompt_tokens", "repeats", "train_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                problems.append(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes):
            problems.append(f"--batch-sizes must be positive integers, got {self.batch_sizes!r}")
        if self.new_tokens < 2:
            problems.append("--new-tokens must be at least 2 (decode time = N tokens minus the first)")
        if problems:
            raise ConfigError("; ".join(problems))
