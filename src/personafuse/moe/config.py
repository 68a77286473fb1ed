"""Configuration of the persona experts: LoRA shape and where they go."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_LINEAR = "all-linear"


@dataclass
class ExpertConfig:
    """LoRA shape shared by the ten persona experts."""

    rank: int = 8
    """LoRA rank r of each expert; a turn's mix is one LoRA of rank at most 10·r."""
    alpha: float = 16.0
    """LoRA alpha; each expert's delta is scaled by alpha / rank, as in PEFT."""
    dropout: float = 0.0
    """Dropout on the adapter input during training (PEFT's lora_dropout)."""
    target_modules: list[str] | str = field(default_factory=lambda: ALL_LINEAR)
    """Module-name suffixes to adapt, or "all-linear" for every linear layer except the output head."""

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            problems.append(f"rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            problems.append(f"alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.target_modules, str):
            if self.target_modules != ALL_LINEAR:
                self.target_modules = [self.target_modules]
        elif not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            problems.append(
                f"target_modules must be 'all-linear' or a non-empty list of names, got {self.target_modules!r}"
            )
        if problems:
            from personafuse.errors import ConfigError

            raise ConfigError("; ".join(problems))

    @property
    def scaling(self) -> float:
        """alpha / rank."""
        return float(self.alpha) / self.rank
