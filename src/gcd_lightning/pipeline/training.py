"""Fitting a LightningModule, resumable after an interruption, and keeping its best validation weights."""

from __future__ import annotations

import copy
import logging
import time
import zlib
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from gcd_lightning import distributed
from gcd_lightning.pipeline.context import RunContext

log = logging.getLogger(__name__)
RESUME_FILE = "last.ckpt"


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

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_tie_break": self.best_tie_break, "state": self.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best, self.best_tie_break, self.state = state_dict["best"], state_dict["best_tie_break"], state_dict["state"]

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value, tie_break = distributed.broadcast(
            (float(trainer.callback_metrics[self.monitor]), float(trainer.callback_metrics[self.tie_break]))
        )
        if value > self.best or (value == self.best and tie_break < self.best_tie_break):
            self.best, self.best_tie_break = value, tie_break
            self.state = copy.deepcopy(module.state_dict())


class ElapsedTime(pl.Callback):
    """A training's wall time, carried over an interruption in the resume checkpoint (``ResumePoint``).

    ``seconds``: the time since this callback was made plus what the checkpoint it resumed from had
    counted (up to that checkpoint: the unsaved part of an interrupted epoch is not counted).
    """

    def __init__(self) -> None:
        self.start, self.before = time.perf_counter(), 0.0

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict["seconds"])


class ResumePoint(ModelCheckpoint):
    """``<folder>/last.ckpt``, rewritten after every epoch: what an interrupted training resumes from.

    It holds the weights, the optimizer's and scheduler's state, the epoch and the callbacks' state
    (``KeepBest``'s best epoch so far), and no hyperparameters (they hold optimizer factories, which
    ``weights_only=True`` cannot load). The cache (``Cache.get_or_build``) deletes the folder
    once the trained weights are cached.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__(dirpath=folder, filename=Path(RESUME_FILE).stem, save_top_k=1, enable_version_counter=False)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        for key in ("hyper_parameters", "hparams_name", "datamodule_hyper_parameters", "datamodule_hparams_name"):
            checkpoint.pop(key, None)


def resume_point(folder: Path | None, what: str) -> Path | None:
    """The checkpoint in ``folder`` to resume from, or None; an unreadable one is deleted (training restarts)."""
    path = None if folder is None else folder / RESUME_FILE
    if path is None or not distributed.broadcast(path.is_file()):
        return None
    try:
        epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception as err:  # a torn write: the resume point is a convenience, never a result
        log.warning("%s: the resume checkpoint %s is unreadable (%s); training from the start", what, path, err)
        distributed.write_on_rank_zero(path.unlink, missing_ok=True)
        return None
    log.info("%s: resuming an interrupted training after epoch %d from %s", what, epoch + 1, path)
    return path


def fit(
    ctx: RunContext, module: pl.LightningModule, resume: Path | None, what: str, max_epochs: int,
    callbacks: list[pl.Callback] = (), trainer_args: dict | None = None, **data: Any,
) -> tuple[pl.Trainer, float]:
    """Fit ``module`` with the configured trainer; with ``resume`` (a folder), from its checkpoint when
    there is one, saving one after every epoch (``ResumePoint``). Returns the trainer and the seconds
    (``ElapsedTime``: a resumed training counts the time before the interruption too)."""
    elapsed = ElapsedTime()
    trainer: pl.Trainer = hydra.utils.instantiate(
        ctx.cfg.trainer,
        max_epochs=max_epochs,
        logger=ctx.loggers or False,
        enable_checkpointing=resume is not None,
        callbacks=[*callbacks, elapsed, *([ResumePoint(resume)] if resume is not None else [])],
        **(trainer_args or {}),
    )
    trainer.fit(module, ckpt_path=resume_point(resume, what), weights_only=True, **data)
    return trainer, elapsed.seconds


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
    resume: Path | None = None,
    what: str = "training",
) -> tuple[float, float]:
    """Train ``module`` for ``max_epochs``, load its best-``monitor`` weights; returns (best value, seconds).

    ``resume``: the folder of the checkpoint to resume from and to save to (see ``fit``). With
    ``trainer=ddp`` every rank calls this with the same tensors; Lightning's distributed sampler
    gives each rank its share of the batches, and every rank ends with the same weights.
    """
    keep = KeepBest(monitor)
    _, seconds = fit(
        ctx, module, resume, what, max_epochs, callbacks=[keep], trainer_args={"num_sanity_val_steps": 0},
        train_dataloaders=loader(train, batch_size, shuffle=True, seed=ctx.cfg.seed),
        val_dataloaders=loader(val, batch_size, shuffle=False, seed=ctx.cfg.seed),
    )
    module.load_state_dict(keep.state)
    return keep.best, seconds
