"""The rectifier baselines of Table 5 as stand-alone defended classifiers: a network, optionally behind an
input transformation, optionally fine-tuned on transformed training images.

* adversarial training (PGD: Madry et al. 2018; DDN: Rony et al. 2019): ``f`` fine-tuned on the
  attack's examples against the network being trained (``AdversarialExamples``), no transformation;
* TVM (Guo et al. 2018): the total-variation reconstruction in front of ``f`` fine-tuned on
  reconstructed training images (``Preprocessed``; Guo et al. train on transformed images too);
* PixelDefend (Song et al. 2018): the purification (``PixelDefend``) in front of ``f`` itself (no training).

``RobustRecipe`` is what a ``conf/rectifier_baseline/<name>.yaml`` entry instantiates to; the
``rectifier_baselines`` stage trains (or loads) the network and evaluates ``recipe.defense(network)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from gcd_lightning.attacks.base import Attack
from gcd_lightning.defense.base import Rectifier
from gcd_lightning.defense.rectifier_module import RectifierFineTune
from gcd_lightning.optim import OptimizerFactory, SchedulerFactory

Transform = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(network, x, y) -> x'``: what a training batch becomes before the network learns from it."""


class Preprocessed(Rectifier):
    """``network(preprocess(x))``: a classifier behind an input transformation (``preprocess=None``: none).

    Args:
        network: pixels -> logits, normalisation inside.
        preprocess: images -> images in [0, 1] (``TotalVariationMinimization``, a purifier), or ``None``.
    """

    def __init__(self, network: nn.Module, preprocess: nn.Module | None = None) -> None:
        super().__init__()
        self.network = network
        self.preprocess = preprocess
        self.eval()

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(x if self.preprocess is None else self.preprocess(x))


class AdversarialExamples:
    """The inputs of adversarial training: the attack's (untargeted) examples against the network being trained.

    The network is attacked in eval mode and returned to the mode it was in; the attack freezes its
    parameters meanwhile, so only the training loss that follows reaches them.

    Args:
        attack: a partial ``Attack`` (``_partial_: true``), called with the network.
    """

    def __init__(self, attack: Callable[[nn.Module], Attack]) -> None:
        self.attack = attack

    def __call__(self, network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        training = network.training
        network.eval()
        try:
            return self.attack(network).perturb(x, y)
        finally:
            network.train(training)


class Preprocessing:
    """The inputs of a classifier trained for a preprocessing defence: the transformed images."""

    def __init__(self, preprocess: nn.Module) -> None:
        self.preprocess = preprocess

    def __call__(self, network: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.preprocess(x)


class RobustTraining(RectifierFineTune):
    """Fine-tunes a copy of ``f`` on transformed training batches (``transform``); validation and test see clean images.

    Args:
        classifier: the network to start from (deep-copied, never modified).
        num_classes: number of classes, for the accuracy metrics.
        transform: ``(network, x, y) -> x'`` applied to every training batch.
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
        scheduler: a partial LR scheduler or ``None``.
    """

    def __init__(self, classifier: nn.Module, num_classes: int, transform: Transform, optimizer: OptimizerFactory,
                 scheduler: SchedulerFactory | None = None) -> None:
        super().__init__(classifier, num_classes, optimizer, scheduler)
        self.transform = transform

    def training_step(self, batch, batch_idx):
        x, y = batch
        return super().training_step((self.transform(self.model, x, y), y), batch_idx)


@dataclasses.dataclass
class RobustRecipe:
    """How a Table 5 baseline is built (a ``conf/rectifier_baseline/`` entry instantiates to this).

    Attributes:
        preprocess: the input transformation in front of the network at test time, or ``None``.
        attack: a partial ``Attack``: adversarial training on its examples; ``None`` for none.
        max_epochs: epochs of fine-tuning ``f`` (0: ``f`` itself, as PixelDefend uses it). Without
            ``attack`` the training images pass through ``preprocess`` (Guo et al.).
        limit_train_batches: the share (≤ 1.0) or number of training batches per epoch (CPU budgets);
            ``None``: the trainer's setting.
        optimizer: a partial optimizer for the fine-tuning.
        max_images: evaluate on at most this many clean test images and adversarial pairs (the first
            ones), for a costly ``preprocess`` (PixelDefend: one PixelCNN pass per pixel); ``None``: all.
    """

    preprocess: nn.Module | None = None
    attack: Callable[[nn.Module], Attack] | None = None
    max_epochs: int = 0
    limit_train_batches: float | int | None = None
    optimizer: OptimizerFactory | None = None
    max_images: int | None = None

    def __post_init__(self) -> None:
        if self.max_epochs < 0:
            raise ValueError(f"rectifier baseline: max_epochs must be >= 0, got {self.max_epochs}")
        if self.max_epochs and self.optimizer is None:
            raise ValueError("rectifier baseline: fine-tuning (max_epochs > 0) needs an optimizer")
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"rectifier baseline: max_images must be >= 1 or null, got {self.max_images}")
        if self.max_epochs and self.attack is None and self.preprocess is None:
            raise ValueError("rectifier baseline: fine-tuning needs an attack or a preprocess to train on")

    def transform(self) -> Transform:
        """What the fine-tuning trains on: the attack's examples, else the preprocessed images."""
        return AdversarialExamples(self.attack) if self.attack is not None else Preprocessing(self.preprocess)

    def defense(self, network: nn.Module) -> Preprocessed:
        """The defended classifier: ``network`` behind ``preprocess``."""
        return Preprocessed(network, self.preprocess)
