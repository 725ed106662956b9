"""``RectifierFineTune``: fine-tunes a copy of ``f`` into the rectifier ``f_rec`` (section 3.2)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class RectifierFineTune(pl.LightningModule):
    """Cross-entropy fine-tuning of ``f_rec``, initialised as a copy of ``f``, on ``X_ran``.

    The batches are ``(x_masked, y_true)``: randomly masked duplicates of adversarial examples
    with the true labels of their originals, as ``masked_duplicates`` builds them. The given
    classifier is deep-copied and never modified; the copy (``self.model``, switched to train
    mode and trainable) is the rectifier and is what the state dict and checkpoints hold. To restore a checkpoint, pass an instance of the
    same architecture: ``RectifierFineTune.load_from_checkpoint(path, classifier=f)``.

    Args:
        classifier: the protected classifier ``f`` (pixels -> logits, normalisation inside).
        num_classes: number of classes, for the accuracy metrics.
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
        scheduler: a partial LR scheduler or ``None``; it is called with ``optimizer=`` and
            ``total_steps=`` and stepped every batch.
    """

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["classifier"])
        self.model = copy.deepcopy(classifier).train().requires_grad_(True)
        self.criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc_best = MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return self.criterion(logits, y), logits.argmax(dim=1), y

    def on_train_start(self):
        self.val_acc_best.reset()

    def training_step(self, batch, batch_idx):
        loss, preds, y = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(preds, y)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        _, preds, y = self.model_step(batch)
        self.val_acc(preds, y)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        _, preds, y = self.model_step(batch)
        self.test_acc(preds, y)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        optimizer = self.hparams.optimizer(params=self.parameters())
        if self.hparams.scheduler is None:
            return optimizer
        scheduler = self.hparams.scheduler(optimizer=optimizer, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
