"""Files: writes that never leave a half-written file (temp file, then rename) and checked loads."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gcd_lightning.utils.hashing import to_plain


def umask_mode(mode: int) -> int:
    """``mode`` less the process's umask: what ``open`` / ``mkdir`` would have given (``mkstemp`` gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` only if it succeeded.

    The temporary file lives in the target's folder (same file system, so ``os.replace`` is
    atomic) and is removed on any failure, including ``KeyboardInterrupt``. The file gets the
    user's umask (0644 under the usual 022), so a shared cache or results folder stays readable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write JSON (sorted keys, indented; OmegaConf nodes resolved) atomically."""
    return save_text(json.dumps(obj, indent=2, sort_keys=True, default=to_plain) + "\n", path)


def load_torch(path: str | os.PathLike, what: str) -> Any:
    """``torch.load(weights_only=True)`` with an error that names ``what`` and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path.resolve()}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RuntimeError(f"{what} at {path} is corrupt or unreadable; delete it and rerun to rebuild it ({err})") from err


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file with an error that names ``what`` and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path.resolve()}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RuntimeError(f"{what} at {path} is corrupt; delete it and rerun to rebuild it ({err})") from err
