"""``BaseClassifier``: trains the protected classifier ``f`` (any architecture of ``models``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from gcd_lightning.optim import OptimizerFactory, SchedulerFactory, configure_optimizers


class BaseClassifier(pl.LightningModule):
    """Cross-entropy training of a classifier on pixels in [0, 1].

    Args:
        model: the classifier, normalisation inside (``models.normalized(net, mean, std)``).
        num_classes: number of classes, for the accuracy metrics.
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
        scheduler: a partial LR scheduler or ``None`` (see ``optim.configure_optimizers``).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        # networks are not hyperparameters ("classifier" is RectifierFineTune's name for f)
        self.save_hyperparameters(logger=False, ignore=["model", "classifier"])
        self.model = model
        self.criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
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
        loss, preds, y = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(preds, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        self.val_acc_best(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        _, preds, y = self.model_step(batch)
        self.test_acc(preds, y)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return configure_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)
