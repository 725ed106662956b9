"""``RectifierFineTune``: fine-tunes a copy of ``f`` into the rectifier ``f_rec`` (section 3.2)."""

from __future__ import annotations

import copy

from torch import nn

from gcd_lightning.classifier import BaseClassifier
from gcd_lightning.optim import OptimizerFactory, SchedulerFactory


class RectifierFineTune(BaseClassifier):
    """Cross-entropy fine-tuning of ``f_rec``, initialised as a copy of ``f`` (or of another network), on ``X_ran``.

    The batches are ``(x_masked, y_true)``: randomly masked duplicates of adversarial examples
    with the true labels of their originals, as ``masked_duplicates`` builds them. The given
    classifier is deep-copied and never modified; the copy (``self.model``, trainable) is the
    rectifier and is what the state dict holds.

    Args:
        classifier: the network ``f_rec`` starts from: the protected classifier ``f``, or another
            one over the same classes (pixels -> logits, normalisation inside).
        num_classes: number of classes, for the accuracy metrics.
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
        scheduler: a partial LR scheduler or ``None`` (see ``optim.configure_optimizers``).
    """

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__(copy.deepcopy(classifier).train().requires_grad_(True), num_classes, optimizer, scheduler)
