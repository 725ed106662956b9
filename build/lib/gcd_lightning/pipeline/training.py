"""Fitting a LightningModule on in-memory tensors and keeping its best validation weights."""

from __future__ import annotations

import copy
import time
import zlib

import hydra
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from gcd_lightning import distributed
from gcd_lightning.pipeline.context import RunContext


def seed_stage(seed: int, name: str) -> None:
    """Seed every generator for the training of ``name`` (``seed`` plus a stable offset per name).

    A stage then starts from the same random state whether or not the stages before it came
    from the cache (training a classifier or building an attack consumes random numbers).
    """
    pl.seed_everything(seed + zlib.crc32(name.encode()) % 10_000, workers=True, verbose=False)


class KeepBest(pl.Callback):
    """Remember the module's weights at the epoch where ``monitor`` was highest (early-stopping choice).

    Ties go to the epoch with the lower ``tie_break`` (the validation loss): a saturated metric
    such as an AUC of 1.0 is often reached while the detector is still uncalibrated (every
    score on the benign side of 0.5), and the later, better calibrated epoch must win.

    In a DDP run every rank judges rank 0's numbers, so all ranks keep the same epoch (the
    modules log their metrics as torchmetrics objects, which are synchronised anyway).
    """

    def __init__(self, monitor: str, tie_break: str = "val/loss") -> None:
        self.monitor = monitor
        self.tie_break = tie_break
        self.best = -float("inf")
        self.best_tie_break = float("inf")
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value, tie_break = distributed.broadcast(
            (float(trainer.callback_metrics[self.monitor]), float(trainer.callback_metrics[self.tie_break]))
        )
        if value > self.best or (value == self.best and tie_break < self.best_tie_break):
            self.best, self.best_tie_break = value, tie_break
            self.state = copy.deepcopy(module.state_dict())


def loader(tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


def fit_best(
    ctx: RunContext,
    module: pl.LightningModule,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    max_epochs: int,
    batch_size: int,
    monitor: str,
) -> tuple[float, float]:
    """Train ``module`` for ``max_epochs``, load its best-``monitor`` weights; returns (best value, seconds).

    With ``trainer=ddp`` every rank calls this with the same tensors; Lightning's distributed
    sampler gives each rank its share of the batches, and every rank ends with the same weights.
    """
    keep = KeepBest(monitor)
    trainer: pl.Trainer = hydra.utils.instantiate(
        ctx.cfg.trainer,
        max_epochs=max_epochs,
        logger=ctx.loggers or False,
        enable_checkpointing=False,
        callbacks=[keep],
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(
        module,
        train_dataloaders=loader(train, batch_size, shuffle=True, seed=ctx.cfg.seed),
        val_dataloaders=loader(val, batch_size, shuffle=False, seed=ctx.cfg.seed),
    )
    module.load_state_dict(keep.state)
    return keep.best, time.perf_counter() - start
