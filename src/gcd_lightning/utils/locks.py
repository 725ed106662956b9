"""One lock per cache entry, so that runs sharing a cache build each artefact once.

Two runs that miss the same entry at once would both build it (two trainings of ``f`` that differ in their
last bits, two adversarial sets keyed by different ``f``s). ``entry_lock(path)`` holds an OS file lock
(``filelock``: ``flock`` / ``LockFileEx``) on ``<path>.lock`` while a process looks at the entry, builds it
and writes it: the first process builds, the others wait, then find the hit. The OS releases the lock of a
process that dies, so a killed holder never blocks the next run. In a DDP run rank 0 takes the lock for
its run (the other ranks follow rank 0's look at the cache).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def rank_zero() -> bool:
    """Whether this process is rank 0 of its process group, or has none. A process that never imported
    ``torch.distributed`` has none: taking a lock there loads neither torch nor Lightning (``distributed`` imports both)."""
    if "torch.distributed" not in sys.modules:
        return True
    from gcd_lightning import distributed

    return distributed.is_rank_zero()


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock of the cache entry at ``path`` (module docstring); a log line says when another process holds it."""
    if not rank_zero():
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process is building %s; waiting for it (pid %d)", what, path, os.getpid())
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
