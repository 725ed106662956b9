"""Where a number came from: the date, the code's commit and the machine, written beside every run's metrics.

``provenance()`` is what a run (``provenance.json`` in its folder) and ``python -m gcd_lightning.evaluate``
(the same file in ``out``) record, and what the results page (``make results``) stamps each table with.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

FILE = "provenance.json"
CHECKOUT = Path(__file__).resolve().parents[3]  # the repository root, when the package runs from a checkout


def commit(root: Path = CHECKOUT) -> str:
    """The checkout's commit (``<sha>+dirty`` with uncommitted changes to tracked files), or the installed version."""
    installed = f"gcd-lightning {metadata.version('gcd-lightning')} (installed, not a checkout)"
    if not (root / "src" / "gcd_lightning").is_dir():
        return installed
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return installed
    return f"{sha}+dirty" if dirty else sha


def machine() -> str:
    """The processor or GPU and the cores: what a timing was measured on."""
    cpu = platform.processor() or platform.machine()
    cores = f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, {cores}"
    return f"{cpu}, {cores}, no GPU"


def provenance() -> dict[str, Any]:
    """The date (UTC), commit, machine, and the versions of Python and torch."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
