"""`personafuse info`: versions, devices and where the models are."""

from __future__ import annotations

import typer

from personafuse.cli.common import JSON_OPTION, console, print_json


def info(as_json: bool = JSON_OPTION) -> None:
    """Print package versions, devices, the cache folder and the built-in model paths."""
    import importlib.metadata
    import platform

    import torch

    from personafuse import __version__
    from personafuse.errors import ModelLoadError
    from personafuse.loading import shipped_router_weights
    from personafuse.models.aliases import BASE_ALIASES, ENCODER_ALIASES, personafuse_home, wheel_file

    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    def where(model) -> str:
        try:
            return str(wheel_file(model))
        except ModelLoadError as exc:
            return str(exc)

    data = {
        "personafuse": __version__,
        "python": platform.python_version(),
        "packages": {n: version(n) for n in ("torch", "transformers", "peft", "trl", "accelerate",
                                             "sentence-transformers", "fastapi", "openai")},  # fmt: skip
        "devices": {
            "cuda": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "cpu_threads": torch.get_num_threads(),
        },
        "home": str(personafuse_home()),
        "base_aliases": {name: where(m) for name, m in BASE_ALIASES.items()},
        "encoder_aliases": {name: where(m) for name, m in ENCODER_ALIASES.items()},
        "shipped_router": {name: str(shipped_router_weights(name)) for name in ENCODER_ALIASES},
    }
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            console.print(f"[bold]{key}[/]")
            for sub, item in value.items():
                console.print(f"  {sub}: {item}")
        else:
            console.print(f"[bold]{key}[/]: {value}")


def register(app: typer.Typer) -> None:
    """Add the command to ``app``."""
    app.command("info")(info)
