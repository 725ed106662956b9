"""A data set's fingerprint: one hash of the bytes of its files, so that caches follow the data, not its config.

The fingerprint is a SHA-256 over the sorted (relative name, content hash) pairs of the files, the
names taken relative to the folder that holds them all: the same files give the same fingerprint
wherever they live, and any changed, added, removed or renamed file gives a new one. Hashing a large
data set takes a while, so each file's content hash is memoised in a small JSON file, valid while
the file's resolved path, size and modification time (ns) stay the same; the memo is a shortcut,
never trusted beyond that: a memo file that cannot be read is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gcd_lightning.utils import hashing
from gcd_lightning.utils.files import save_json
from gcd_lightning.utils.locks import entry_lock

log = logging.getLogger(__name__)

SHA256_HEX = 64


def _relative_names(files: list[Path]) -> list[str]:
    """Each file's path relative to the deepest folder holding them all, with ``/`` separators."""
    base = Path(os.path.commonpath([file.parent for file in files]))
    return [file.relative_to(base).as_posix() for file in files]


def _valid_entry(entry: Any) -> bool:
    """Whether ``entry`` has the shape of a memo entry: integer size and mtime_ns, a full SHA-256 hex hash."""
    return (
        isinstance(entry, dict)
        and type(entry.get("size")) is int
        and type(entry.get("mtime_ns")) is int
        and isinstance(entry.get("hash"), str)
        and len(entry["hash"]) == SHA256_HEX
        and all(char in "0123456789abcdef" for char in entry["hash"])
    )


def load_memo(cache_file: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The memoised content hashes in ``cache_file`` (``{resolved path: {size, mtime_ns, hash}}``).

    A missing file gives an empty memo; an unreadable one, or one not of that shape, is logged and
    ignored (empty memo); entries of the wrong shape are dropped.
    """
    path = Path(cache_file)
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("ignoring the unreadable fingerprint memo %s (%s); it will be rebuilt", path, error)
        return {}
    if not isinstance(content, dict):
        log.warning("ignoring the fingerprint memo %s: expected a JSON object; it will be rebuilt", path)
        return {}
    return {key: entry for key, entry in content.items() if _valid_entry(entry)}


def data_fingerprint(
    files: Iterable[str | os.PathLike[str]], cache_file: str | os.PathLike[str], save: bool = True
) -> str:
    """The hex SHA-256 fingerprint of the content of ``files`` (see the module docstring).

    A file's content is hashed only when ``cache_file`` has no entry for its resolved path with its
    current size and mtime; with ``save``, newly hashed files are written to the memo (atomically).

    Raises:
        ValueError: ``files`` is empty.
        FileNotFoundError: a file is missing; the message names it.
    """
    files = [Path(file).absolute() for file in files]
    if not files:
        raise ValueError("data_fingerprint: no data files to fingerprint")
    memo = load_memo(cache_file)
    new: dict[str, dict[str, Any]] = {}
    pairs = []
    for name, file in zip(_relative_names(files), files, strict=True):
        try:
            resolved = file.resolve(strict=True)
            stat = resolved.stat()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"data file {file} not found: the data set's fingerprint needs every one of its files"
            ) from None
        key = str(resolved)
        entry = memo.get(key)
        if entry is None or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            content_hash = hashing.file_hash(resolved, SHA256_HEX)
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": content_hash}
            new[key] = entry
        pairs.append((name, entry["hash"]))
    if new:
        log.info("fingerprint: hashed %d of %d data files (the others were memoised)", len(new), len(files))
        if save:  # merged into the memo as it is now, under its lock, so that parallel runs' hashes all stay
            with entry_lock(cache_file, "fingerprint memo"):
                save_json({**load_memo(cache_file), **new}, cache_file)
    text = json.dumps(sorted(pairs), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
