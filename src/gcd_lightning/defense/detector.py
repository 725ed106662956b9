"""``SubDetector``: one of the two binary benign/adversarial detectors of GCD (eq. 7-9)."""

from __future__ import annotations

import enum

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.ensemble import ADVERSARIAL
from gcd_lightning.defense.sensitivity import input_sensitivity, logit_saliency, sensitivity_features
from gcd_lightning.optim import OptimizerFactory, SchedulerFactory, configure_optimizers


class DetectorInput(str, enum.Enum):
    """What a sub-detector looks at."""

    PIXELS = "org"  # DET_org: the image itself (eq. 9)
    SENSITIVITY = "is"  # DET_IS: the scaled input sensitivity G(x, ŷ) of the classifier (eq. 8)
    SALIENCY = "sal"  # DET_sal (Zhang et al. 2018, a Table 2 baseline): the saliency map ∂z_ŷ/∂x of the classifier


class SubDetector(pl.LightningModule, Detector):
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
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``; ``None``
            for a detector that is only loaded for inference.
        scheduler: a partial LR scheduler or ``None``; it is called with ``optimizer=`` and
            ``total_steps=`` and stepped every batch.
        classifier: the protected classifier ``f`` (pixels -> logits); required for
            ``SENSITIVITY`` (it is put in eval mode); a ``PIXELS`` detector does not look at it
            and keeps none, so every detector can be built with the same arguments.
    """

    def __init__(
        self,
        body: nn.Module,
        kind: DetectorInput | str,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        classifier: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["body", "classifier"])
        self.kind = DetectorInput(kind)
        if self.kind is not DetectorInput.PIXELS and classifier is None:
            raise ValueError(f"SubDetector: a {self.kind.name.lower()} detector (kind={self.kind.value}) needs the protected classifier f")
        if self.kind is DetectorInput.PIXELS:
            classifier = None
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
        return self.representation(self.gradient_map(self.classifier, x, create_graph=create_graph))

    def gradient_map(self, model: nn.Module, x: torch.Tensor, y_hat: torch.Tensor | None = None,
                     create_graph: bool = False) -> torch.Tensor:
        """The input gradient of ``model`` this detector reads: ``G`` (``DET_IS``) or the saliency map (``DET_sal``)."""
        if self.kind is DetectorInput.SALIENCY:
            return logit_saliency(model, x, y_hat, create_graph=create_graph)
        if self.kind is DetectorInput.SENSITIVITY:
            return input_sensitivity(model, x, y_hat, create_graph=create_graph)
        raise ValueError("gradient_map: DET_org reads the pixels, no gradient of the classifier")

    def representation(self, gradient: torch.Tensor) -> torch.Tensor:
        """What the body reads of the gradient map: ``sensitivity_features(G)`` (eq. 8), the saliency map as it is."""
        return sensitivity_features(gradient) if self.kind is DetectorInput.SENSITIVITY else gradient

    @property
    def name(self) -> str:
        """``"org"`` (``DET_org``) or ``"is"`` (``DET_IS``)."""
        return self.kind.value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.body(self.features(x))

    def reads_sensitivity_of(self, classifier: nn.Module) -> bool:
        """``DET_IS`` reads only ``G`` of its classifier: true for that classifier."""
        return self.kind is DetectorInput.SENSITIVITY and classifier is self.classifier

    def logits_from_sensitivity(self, sensitivity: torch.Tensor) -> torch.Tensor:
        """``DET_IS``'s logits from ``G(x, ŷ)`` computed elsewhere (``GCD.predict``)."""
        if self.kind is not DetectorInput.SENSITIVITY:
            raise ValueError("logits_from_sensitivity: DET_org reads the images, not the sensitivity")
        return self.body(sensitivity_features(sensitivity))

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
        if self.hparams.optimizer is None:
            raise ValueError("SubDetector: built without an optimizer (inference only); pass optimizer= to train it")
        return configure_optimizers(self, self.hparams.optimizer, self.hparams.scheduler)
