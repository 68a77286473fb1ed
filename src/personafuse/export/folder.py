"""Write an export into a temporary folder beside its target, then rename it into place (never half-written)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``target``; on success it replaces ``target``, on error it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
