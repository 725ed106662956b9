"""Fast Gradient Sign Method, through advertorch's ``GradientSignAttack``."""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.attacks.advertorch_compat import GradientSignAttack
from gcd_lightning.attacks.base import Attack, Norm, check_setting
from gcd_lightning.attacks.objective import PLAIN, Objective, summed_loss


class FGSM(Attack):
    """FGSM (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015).

    One signed-gradient step of the cross-entropy loss J (Section 4):
    ``x_adv = clip(x + eps * sign(grad_x J(x, y)), 0, 1)``; the targeted variant descends the loss
    of the target instead, ``x - eps * sign(grad_x J(x, t))``.

    Distance measure: L∞, ``||x_adv - x||_inf <= eps``.

    Arguments:
        model (nn.Module): classifier in eval mode, pixels in [0, 1] -> logits.
        eps (float): L∞ budget. Default: 0.3.
        targeted (bool): reach ``target`` instead of leaving ``y``. Default: False.
        objective (Objective): the loss J of the model's outputs (``attacks.objective``). Default: cross entropy.

    Shape:
        - x: (N, C, H, W) float in [0, 1]; y, target: (N,) int64.
        - output: (N, C, H, W) float in [0, 1].

    Examples::
        >>> attack = FGSM(model, eps=0.3)
        >>> x_adv = attack.perturb(x, y)
    """

    norm = Norm.LINF

    def __init__(self, model: nn.Module, eps: float = 0.3, targeted: bool = False, objective: Objective = PLAIN) -> None:
        super().__init__(model, targeted, objective)
        check_setting("FGSM", "eps", eps, 0.0, 1.0)
        self.eps = float(eps)
        self._advertorch = GradientSignAttack(
            model, loss_fn=summed_loss(objective), eps=self.eps, clip_min=0.0, clip_max=1.0, targeted=targeted
        )

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._advertorch.perturb(x, target if self.targeted else y)
