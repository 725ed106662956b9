"""Content hashes that key the caches: the same inputs give the same key, any change a new one."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
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


def tensor_hash(tensor: torch.Tensor, length: int = 16) -> str:
    """Hex SHA-256 of a tensor's dtype, shape and values (as ``state_dict_hash`` reads each entry)."""
    digest = hashlib.sha256()
    update_with_tensor(digest, tensor)
    return digest.hexdigest()[:length]


def update_with_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and values, on the CPU, into ``digest``."""
    value = tensor.detach().cpu().contiguous()
    digest.update(f"{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def state_dict_hash(module: torch.nn.Module, length: int = 16) -> str:
    """Hex SHA-256 of a module's weights: every state-dict entry's name, dtype, shape and values, in name order.

    Independent of how the weights were stored (file format, device); the same network with the
    same weights gives the same hash, any changed value a new one.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|".encode())
        update_with_tensor(digest, tensor)
    return digest.hexdigest()[:length]
