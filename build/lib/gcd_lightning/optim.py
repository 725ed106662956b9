"""Optimizers and schedulers from partial configs (``_partial_: true``), shared by every LightningModule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def configure_optimizers(
    module: pl.LightningModule, optimizer: OptimizerFactory, scheduler: SchedulerFactory | None
) -> Any:
    """What ``configure_optimizers`` returns: ``optimizer(params=...)`` and, when given, a scheduler
    built with ``optimizer=`` and ``total_steps=`` (the trainer's optimisation steps), stepped every batch."""
    built = optimizer(params=module.parameters())
    if scheduler is None:
        return built
    lr_scheduler = scheduler(optimizer=built, total_steps=module.trainer.estimated_stepping_batches)
    return {"optimizer": built, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}
