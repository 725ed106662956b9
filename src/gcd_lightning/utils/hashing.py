"""Content hashes that key the caches: the same inputs give the same key, any change a new one."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(value: Any) -> Any:
    """A resolved, JSON-able copy of an OmegaConf node (other values pass through)."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def spec_hash(spec: Mapping[str, Any], length: int = 16) -> str:
    """Hex SHA-256 of the canonical JSON of ``spec`` (keys sorted), cut to ``length`` characters."""
    text = json.dumps(to_plain(dict(spec)), sort_keys=True, default=to_plain, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    """Hex SHA-256 of a file's bytes, cut to ``length`` characters."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
