"""Write an export into a temporary folder beside its target, then rename it into place (never half-written)."""

from __future__ import annotations

import os
from pathlib import Path

from personafuse.atomic_io import staged_folder

__all__ = ["check_target", "staged_folder"]


def check_target(out: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder, refused when it already holds files and ``overwrite`` is false.

    Raises:
        UserError: ``out`` is a file, or a non-empty folder without ``overwrite``.
    """
    from personafuse.errors import UserError

    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {target} is a file; give a folder path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"--out {target} already exists and is not empty; choose a new folder or pass --overwrite")
    return target
