"""L∞ Projected Gradient Descent, through advertorch's ``LinfPGDAttack``."""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.attacks.advertorch_compat import LinfPGDAttack
from gcd_lightning.attacks.base import Attack, Norm, check_setting
from gcd_lightning.attacks.objective import PLAIN, Objective, summed_loss


class PGD(Attack):
    """L∞ PGD (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018).

    Projected signed-gradient ascent on the cross-entropy loss L, Eq. (2):
    ``x^{t+1} = Π_{x+S}(x^t + eps_iter * sign(grad_x L(x^t, y)))`` with ``S`` the L∞ ball of radius
    ``eps`` (intersected with [0, 1]) and, with ``rand_init``, a uniform random start in ``S``.
    The targeted variant descends the loss of the target.

    The random start draws from PyTorch's global generator: seed it (``torch.manual_seed``)
    before ``perturb`` for reproducible outputs.

    Distance measure: L∞, ``||x_adv - x||_inf <= eps``.

    Arguments:
        model (nn.Module): classifier in eval mode, pixels in [0, 1] -> logits.
        eps (float): L∞ budget. Default: 0.3.
        nb_iter (int): number of steps. Default: 40.
        eps_iter (float): step size. Default: 0.01.
        rand_init (bool): start from a uniform random point of the ball. Default: True.
        targeted (bool): reach ``target`` instead of leaving ``y``. Default: False.
        objective (Objective): the loss L of the model's outputs (``attacks.objective``). Default: cross entropy.

    Shape:
        - x: (N, C, H, W) float in [0, 1]; y, target: (N,) int64.
        - output: (N, C, H, W) float in [0, 1].

    Examples::
        >>> attack = PGD(model, eps=0.3, nb_iter=40, eps_iter=0.01)
        >>> x_adv = attack.perturb(x, y)
    """

    norm = Norm.LINF

    def __init__(
        self,
        model: nn.Module,
        eps: float = 0.3,
        nb_iter: int = 40,
        eps_iter: float = 0.01,
        rand_init: bool = True,
        targeted: bool = False,
        objective: Objective = PLAIN,
    ) -> None:
        super().__init__(model, targeted, objective)
        check_setting("PGD", "eps", eps, 0.0, 1.0)
        check_setting("PGD", "eps_iter", eps_iter, 0.0, 1.0)
        check_setting("PGD", "nb_iter", nb_iter, 1, low_inclusive=True)
        self.eps = float(eps)
        self.nb_iter = int(nb_iter)
        self.eps_iter = float(eps_iter)
        self.rand_init = bool(rand_init)
        self._advertorch = LinfPGDAttack(
            model,
            loss_fn=summed_loss(objective),
            eps=self.eps,
            nb_iter=self.nb_iter,
            eps_iter=self.eps_iter,
            rand_init=self.rand_init,
            clip_min=0.0,
            clip_max=1.0,
            targeted=targeted,
        )

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._advertorch.perturb(x, target if self.targeted else y)
