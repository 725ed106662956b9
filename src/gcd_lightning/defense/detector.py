"""``SubDetector``: one of the two binary benign/adversarial detectors of GCD (eq. 7-9)."""

from __future__ import annotations

import enum

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from gcd_lightning.defense.ensemble import ADVERSARIAL
from gcd_lightning.defense.sensitivity import input_sensitivity, sensitivity_features
from gcd_lightning.optim import OptimizerFactory, SchedulerFactory, configure_optimizers


class DetectorInput(str, enum.Enum):
    """What a sub-detector looks at."""

    PIXELS = "org"  # DET_org: the image itself (eq. 9)
    SENSITIVITY = "is"  # DET_IS: the scaled input sensitivity G(x, ŷ) of the classifier (eq. 8)


class SubDetector(pl.LightningModule):
    """A binary classifier of its input representation: logit 0 benign (``p⁺``), logit 1 adversarial (``p⁻``).

    Trained with cross entropy on the set of eq. 7: batches ``(x, label)`` of images in [0, 1]
    with ``label`` 0 for benign and 1 for adversarial examples.

    The protected classifier ``f`` of a ``SENSITIVITY`` detector is frozen and kept outside the
    module: it is stored as a plain attribute (not a registered submodule), so it is not among
    ``parameters()`` (never optimised), not in ``state_dict()`` (checkpoints hold the detector
    only), not switched to train mode by ``train()`` (it stays in eval mode), and not in the
    hyperparameters. It still follows ``to()`` / ``double()`` of the detector. To restore a
    checkpoint, pass it again: ``SubDetector.load_from_checkpoint(path, body=..., classifier=f)``.

    Args:
        body: the network on the representation, 2 logits out, e.g. ``SmallCNN(in_channels,
            num_classes=2, ...)``; both kinds take inputs with the image's shape.
        kind: ``DetectorInput`` or its value (``"org"`` / ``"is"``).
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
        scheduler: a partial LR scheduler or ``None``; it is called with ``optimizer=`` and
            ``total_steps=`` and stepped every batch.
        classifier: the protected classifier ``f`` (pixels -> logits); required for
            ``SENSITIVITY``, refused for ``PIXELS``. It is put in eval mode.
    """

    def __init__(
        self,
        body: nn.Module,
        kind: DetectorInput | str,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["body", "classifier"])
        self.kind = DetectorInput(kind)
        if self.kind is DetectorInput.SENSITIVITY and classifier is None:
            raise ValueError("SubDetector: a sensitivity detector (DET_IS) needs the protected classifier f")
        if self.kind is DetectorInput.PIXELS and classifier is not None:
            raise ValueError("SubDetector: a pixel detector (DET_org) does not use a classifier; pass classifier=None")
        if classifier is not None:
            classifier.eval()
        object.__setattr__(self, "classifier", classifier)
        self.body = body
        self.criterion = nn.CrossEntropyLoss()
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_auc = BinaryAUROC()
        self.test_acc = BinaryAccuracy()
        self.test_auc = BinaryAUROC()
        self.val_auc_best = MaxMetric()

    def _apply(self, fn, recurse=True):
        """Move / cast the unregistered classifier together with the detector (``to``, ``double``, ...)."""
        super()._apply(fn, recurse)
        if self.classifier is not None:
            self.classifier._apply(fn)
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's input: the pixels (eq. 9) or ``sensitivity_features(G(x, ŷ))`` (eq. 8).

        ``G`` stays in the autograd graph (double backprop) exactly when ``x`` requires grad and
        grad mode is on, so saliencies and white-box attacks can differentiate through it while
        training on data pays for a single backward pass.
        """
        if self.kind is DetectorInput.PIXELS:
            return x
        create_graph = x.requires_grad and torch.is_grad_enabled()
        return sensitivity_features(input_sensitivity(self.classifier, x, create_graph=create_graph))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.body(self.features(x))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(p⁺, p⁻)`` (N, 2): column 0 benign, column 1 adversarial."""
        return torch.softmax(self(x), dim=1)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, the adversarial probability ``p⁻`` and the labels of a batch."""
        x, label = batch
        logits = self(x)
        return self.criterion(logits, label), torch.softmax(logits, dim=1)[:, ADVERSARIAL], label

    def on_train_start(self):
        self.val_auc_best.reset()

    def training_step(self, batch, batch_idx):
        loss, p_adv, label = self.model_step(batch)
        self.train_loss(loss)
        self.train_acc(p_adv, label)
        self.log("train/loss", self.train_loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, p_adv, label = self.model_step(batch)
        self.val_loss(loss)
        self.val_acc(p_adv, label)
        self.val_auc(p_adv, label)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True)
        self.log("val/auc", self.val_auc, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self):
        self.val_auc_best(self.val_auc.compute())
        self.log("val/auc_best", self.val_auc_best.compute(), prog_bar=True)

    def test_step(self, batch, batch_idx):
        _, p_adv, label = self.model_step(batch)
        self.test_acc(p_adv, label)
        self.test_auc(p_adv, label)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)
        self.log("test/auc", self.test_auc, on_step=False, on_epoch=True)

    def configure_optimizers(self):
        return configure_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)
