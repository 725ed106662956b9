"""The cache of every artefact a run builds: ``Cache(root).get_or_build(kind, key, build)``.

An entry lives at ``<root>/<kind.folder>/[<key.group>/]<key.name>_<hash of key.spec><kind.suffix>``. The
spec holds everything that determines the artefact (the data, the classifier by its weights' hash, the
config, the seed, the code's version), so a rerun or a sweep finds the entry and a changed input never
does; the spec is written beside the entry (``<entry>.spec.json``) for people to read.

``get_or_build`` holds the entry's lock (``utils.locks``) while it looks, builds and writes: two runs that
miss an entry at once build it once, and the OS frees the lock of a process that dies. In a DDP run rank 0
looks for every rank, every rank builds (a build may shard its work) and rank 0 alone writes. Every file
is written atomically, the one that completes the entry last, so a hit always finds a whole entry and an
interrupted build leaves none. A build that trains keeps its checkpoint in ``<name>_<hash>.resume/`` (its
argument) and resumes from it after an interruption; the folder is removed once the entry is written.

A kind says where its entries live and how they are read and written: ``Weights`` (a trained network's
state dict and its training summary), ``Summary`` (a JSON result), ``Sets`` (adversarial sets, in
``adversarial``) and ``Memo`` (per-image results that runs add to, ``Cache.merge``).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.hashing import spec_hash
from gcd_lightning.utils.locks import entry_lock

log = logging.getLogger(__name__)

T = TypeVar("T")


class Kind(abc.ABC, Generic[T]):
    """What a cache entry holds: its folder, its files and how its value is read and written."""

    folder: str  # the cache's sub-folder for this kind
    suffix: str  # the entry file's suffix
    what: str  # names the artefact in log lines and errors

    def files(self, path: Path) -> tuple[Path, ...]:
        """The files an entry at ``path`` is made of, the one written last last: the entry is whole when all exist."""
        return (path,)

    @abc.abstractmethod
    def load(self, path: Path) -> T:
        """The value of the entry at ``path``."""

    @abc.abstractmethod
    def save(self, value: T, path: Path) -> None:
        """Write ``value`` as the entry at ``path``, each file atomically, in the order of ``files``."""


@dataclasses.dataclass(frozen=True)
class Key:
    """Which entry: a readable ``name``, the ``spec`` its hash covers, and an optional ``group`` sub-folder."""

    name: str
    spec: Mapping[str, Any]
    group: str = ""

    @property
    def id(self) -> str:
        """The entry's stem, ``<name>_<hash of spec>``: unique per spec, readable, and an id later keys may cite."""
        return f"{self.name}_{spec_hash(self.spec)}"


@dataclasses.dataclass(frozen=True)
class Cache:
    """The cache under ``root`` (``paths.cache_dir``)."""

    root: Path

    def path(self, kind: Kind[Any], key: Key) -> Path:
        """The entry's main file."""
        folder = self.root / kind.folder
        return (folder / key.group if key.group else folder) / f"{key.id}{kind.suffix}"

    def write_spec(self, kind: Kind[Any], key: Key) -> None:
        """The key's spec beside the entry (``<name>_<hash>.spec.json``), for people to read."""
        save_json(key.spec, self.path(kind, key).with_name(f"{key.id}.spec.json"))

    def get_or_build(self, kind: Kind[T], key: Key, build: Callable[[Path], T]) -> tuple[T, bool]:
        """The entry's value, loaded, or built by ``build(resume)`` and cached (module docstring); and whether it was a hit.

        ``resume`` is ``<name>_<hash>.resume/`` beside the entry, where a build that trains keeps its checkpoint after
        every epoch.
        """
        path = self.path(kind, key)
        with entry_lock(path, kind.what):
            if distributed.broadcast(all(file.is_file() for file in kind.files(path))):
                log.info("%s: cache hit %s", kind.what, path)
                return kind.load(path), True
            log.info("%s: cache miss, building %s", kind.what, path)
            resume = path.with_suffix(".resume")
            value = build(resume)
            distributed.write_on_rank_zero(self.write_spec, kind, key)
            distributed.write_on_rank_zero(kind.save, value, path)
            distributed.write_on_rank_zero(shutil.rmtree, resume, ignore_errors=True)
            return value, False

    def read(self, kind: Kind[T], key: Key, default: T) -> T:
        """The entry's value, or ``default`` when there is none (nothing is built)."""
        path = self.path(kind, key)
        return kind.load(path) if distributed.broadcast(path.is_file()) else default

    def merge(self, kind: Memo, key: Key, memo: dict[str, tuple[float, ...]]) -> None:
        """Add ``memo``'s results to the entry (rank 0, under its lock, so two runs' additions both survive)."""
        distributed.write_on_rank_zero(self._merge, kind, key, memo)

    def _merge(self, kind: Memo, key: Key, memo: dict[str, tuple[float, ...]]) -> None:
        path = self.path(kind, key)
        with entry_lock(path, kind.what):
            merged = kind.load(path) if path.is_file() else {}
            if memo.keys() <= merged.keys():
                return
            merged.update(memo)
            self.write_spec(kind, key)
            kind.save(merged, path)


@dataclasses.dataclass(frozen=True)
class Weights(Kind[dict]):
    """A trained ``network``'s state dict (``<entry>.pt``, loaded with ``weights_only=True``) and its training
    summary (``<entry>.json``, written last). The value is the summary; a hit loads the weights into ``network``."""

    folder: str
    network: nn.Module
    what: str
    suffix: str = ".pt"

    def files(self, path: Path) -> tuple[Path, ...]:
        return path, path.with_suffix(".json")

    def load(self, path: Path) -> dict:
        self.network.load_state_dict(load_torch(path, f"cached {self.what} weights"))
        return load_json(path.with_suffix(".json"), f"cached {self.what} summary")

    def save(self, value: dict, path: Path) -> None:
        save_torch(self.network.state_dict(), path)
        save_json(value, path.with_suffix(".json"))


@dataclasses.dataclass(frozen=True)
class Summary(Kind[dict]):
    """A JSON result (a clean accuracy, the user's ``f``'s test summary)."""

    folder: str
    what: str
    suffix: str = ".json"

    def load(self, path: Path) -> dict:
        return load_json(path, f"cached {self.what}")

    def save(self, value: dict, path: Path) -> None:
        save_json(value, path)


@dataclasses.dataclass(frozen=True)
class Memo(Kind[dict]):
    """Per-image results by the image's bytes, which every run that scores new images adds to (``Cache.merge``)."""

    folder: str
    what: str
    suffix: str = ".pt"

    def load(self, path: Path) -> dict[str, tuple[float, ...]]:
        saved = load_torch(path, f"cached {self.what}")
        return dict(zip(saved["keys"], map(tuple, saved["values"].tolist())))

    def save(self, value: dict[str, tuple[float, ...]], path: Path) -> None:
        save_torch({"keys": list(value), "values": torch.tensor(list(value.values()), dtype=torch.float64)}, path)
