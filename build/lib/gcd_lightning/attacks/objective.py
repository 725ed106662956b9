"""What an attack optimises on a model's outputs, and when it has succeeded.

Every attack of the registry reads the model's outputs through an ``Objective``. The default,
``Objective()``, is the plain classifier: the attack's own loss on the logits (cross entropy
for FGSM, PGD and DDN; logit margins for CW and DeepFool) and success when the prediction
leaves ``y`` (untargeted) or reaches ``target`` (targeted). An adaptive white-box attack on a
defended model swaps in another objective (``gcd_lightning.whitebox``) and leaves the update
rules of the attacks untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Objective:
    """The plain classifier objective: outputs are class logits (N, L)."""

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) loss of each example that gradient attacks ascend (untargeted, ``labels`` = y)
        or descend (targeted, ``labels`` = target): the cross entropy."""
        return F.cross_entropy(outputs, labels, reduction="none")

    def margins(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N, L) class scores whose differences margin attacks (CW, DeepFool) work on: the logits."""
        return outputs

    def predictions_succeed(self, pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        """(N,) bool: predicted classes ``pred`` are a success against ``labels``."""
        return pred == labels if targeted else pred != labels

    def success(self, outputs: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        """(N,) bool: the outputs are a success (the argmax prediction, see ``predictions_succeed``)."""
        return self.predictions_succeed(outputs.argmax(dim=1), labels, targeted)


PLAIN = Objective()


def summed_loss(objective: Objective):
    """The objective's loss summed over the batch, as advertorch's ``loss_fn(outputs, labels)`` expects."""

    def loss_fn(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return objective.loss(outputs, labels).sum()

    return loss_fn
