"""The one cache-or-train step of every trained stage: load the cached weights, or train and cache them."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gcd_lightning import distributed
from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.locks import entry_lock

log = logging.getLogger(__name__)


def load_or_train(
    network: nn.Module, weights: Path, summary_path: Path, train: Callable[[Path], dict[str, Any]], what: str
) -> tuple[dict[str, Any], bool]:
    """Put the cached weights into ``network``, or run ``train(resume)`` (which trains ``network`` in place) and cache them.

    ``train`` returns the summary (metrics of the training) cached beside the weights. ``resume``
    (``<weights>.resume/``, keyed like the weights) is where the training keeps its checkpoint after
    every epoch and resumes from after an interruption (``training.fit``); it is deleted once the
    weights are cached. Rank 0 looks at the cache for every rank of a DDP run, and only rank 0
    writes; both files are written atomically, the summary last, so a hit always finds complete weights. The
    entry's lock (``utils.locks``) is held throughout: a second run that misses it at the same time waits and
    gets the hit.

    Returns:
        ``(summary, hit)``.
    """
    with entry_lock(weights, what):
        hit = distributed.broadcast(weights.is_file() and summary_path.is_file())
        if hit:
            log.info("%s: cache hit %s", what, weights)
            network.load_state_dict(load_torch(weights, f"cached {what} weights"))
            return load_json(summary_path, f"cached {what} summary"), True
        log.info("%s: cache miss, training into %s", what, weights)
        resume = weights.with_suffix(".resume")
        summary = train(resume)
        distributed.write_on_rank_zero(save_torch, network.state_dict(), weights)
        distributed.write_on_rank_zero(save_json, summary, summary_path)
        distributed.write_on_rank_zero(shutil.rmtree, resume, ignore_errors=True)
        return summary, False
