"""Errors raised when a data set is absent or unreadable.

Both errors carry one message that says what was looked for, where (absolute path) and what to do
about it, so that a failing run explains itself without a stack-trace dive.
"""

from __future__ import annotations

import os
from collections.abc import Iterable


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk (and could not be fetched).

    Args:
        name: human-readable data set name, e.g. ``"CIFAR-10"``.
        location: the directory that was searched; reported as an absolute path.
        expected: the files or folders expected under ``location``.
        how_to: how to provide the data.
        reason: optional detail (e.g. which files are missing, why a download failed).
    """

    def __init__(
        self,
        name: str,
        location: str | os.PathLike[str],
        expected: Iterable[str],
        how_to: str,
        reason: str | None = None,
    ) -> None:
        self.name = name
        self.location = os.path.abspath(location)
        self.expected = tuple(expected)
        self.how_to = how_to
        self.reason = reason
        message = f"{name} not found in {self.location} (expected: {', '.join(self.expected)})."
        if reason:
            message += f" {reason}"
        message += f" To provide it: {how_to}"
        super().__init__(message)

    def __reduce__(self):  # keep the error picklable (e.g. across DataLoader workers)
        return type(self), (self.name, self.location, self.expected, self.how_to, self.reason)


class DatasetCorruptError(ValueError):
    """A data set file exists but cannot be read or has the wrong content.

    Args:
        path: the offending file; reported as an absolute path.
        problem: what is wrong with it.
        how_to: how to repair it (typically: delete it and prepare the data again).
    """

    def __init__(self, path: str | os.PathLike[str], problem: str, how_to: str) -> None:
        self.path = os.path.abspath(path)
        self.problem = problem
        self.how_to = how_to
        super().__init__(f"corrupt data file {self.path}: {problem}. {how_to}")

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.how_to)
