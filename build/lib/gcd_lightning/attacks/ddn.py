"""Decoupled Direction and Norm (DDN) L2 attack."""

from __future__ import annotations

import math

import torch
from torch import nn

from gcd_lightning.attacks.base import Attack, Norm, check_setting
from gcd_lightning.attacks.objective import PLAIN, Objective


def cosine_step_sizes(steps: int, start: float = 1.0, end: float = 0.01) -> list[float]:
    """Step sizes annealed from ``start`` (first step) to ``end`` (last step) along a half cosine."""
    if steps == 1:
        return [start]
    return [end + (start - end) * (1 + math.cos(math.pi * k / (steps - 1))) / 2 for k in range(steps)]


class DDN(Attack):
    """DDN-L2 (Rony et al., "Decoupled Direction and Norm: Efficient Gradient-Based L2 Adversarial
    Attacks and Defenses", CVPR 2019), Algorithm 1.

    Each step takes the cross-entropy gradient ``g`` at ``x + delta`` (ascent on the loss of ``y``,
    or descent on the loss of the target), normalised per example to unit L2 norm (a zero gradient
    is replaced by a random direction), and moves ``delta <- delta + alpha_k * g / ||g||_2``; the
    step size ``alpha_k`` is cosine-annealed from 1 to 0.01. The norm ``eps`` decouples from the
    direction: ``eps <- (1 - gamma) * eps`` when the current point is adversarial and
    ``(1 + gamma) * eps`` otherwise, and ``delta`` is projected onto the sphere of radius ``eps``,
    then ``x + delta`` is quantised to ``levels`` grey levels (optional) and clipped to [0, 1].
    Among the points visited, the adversarial one closest to ``x`` in L2 is returned; examples for
    which none was found are returned unchanged. One forward and one backward per step.

    With ``max_norm``, ``eps`` never exceeds ``max_norm`` and only adversarials within
    ``max_norm`` count: the attack then returns either such an adversarial or ``x``.

    A zero gradient draws its random direction from PyTorch's global generator: seed it
    (``torch.manual_seed``) before ``perturb`` for reproducible outputs in that rare case.

    Distance measure: L2 (minimised).

    Arguments:
        model (nn.Module): classifier in eval mode, pixels in [0, 1] -> logits.
        steps (int): number of steps. Default: 100.
        gamma (float): factor of the norm update. Default: 0.05.
        init_norm (float): initial norm ``eps_0``. Default: 1.0.
        quantize (bool): round ``x + delta`` to ``levels`` levels at every step. Default: True.
        levels (int): number of levels (256 for 8-bit images). Default: 256.
        max_norm (float | None): L2 budget; ``None`` for an unbounded minimal-norm attack. Default: None.
        targeted (bool): reach ``target`` instead of leaving ``y``. Default: False.
        objective (Objective): the loss and success of the model's outputs (``attacks.objective``).
            Default: cross entropy, argmax.

    Shape:
        - x: (N, C, H, W) float in [0, 1]; y, target: (N,) int64.
        - output: (N, C, H, W) float in [0, 1].

    Examples::
        >>> attack = DDN(model, steps=100)
        >>> x_adv = attack.perturb(x, y)
    """

    norm = Norm.L2

    def __init__(
        self,
        model: nn.Module,
        steps: int = 100,
        gamma: float = 0.05,
        init_norm: float = 1.0,
        quantize: bool = True,
        levels: int = 256,
        max_norm: float | None = None,
        targeted: bool = False,
        objective: Objective = PLAIN,
    ) -> None:
        super().__init__(model, targeted, objective)
        check_setting("DDN", "steps", steps, 1, low_inclusive=True)
        check_setting("DDN", "gamma", gamma, 0.0, 1.0, high_inclusive=False)
        check_setting("DDN", "init_norm", init_norm, 0.0)
        check_setting("DDN", "levels", levels, 2, low_inclusive=True)
        if max_norm is not None:
            check_setting("DDN", "max_norm", max_norm, 0.0)
        self.steps = int(steps)
        self.gamma = float(gamma)
        self.init_norm = float(init_norm)
        self.quantize = bool(quantize)
        self.levels = int(levels)
        self.max_norm = None if max_norm is None else float(max_norm)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        labels = target if self.targeted else y
        n = x.shape[0]
        per_example = (n,) + (1,) * (x.dim() - 1)
        direction = -1.0 if self.targeted else 1.0
        delta = torch.zeros_like(x, requires_grad=True)
        eps = torch.full((n,), self.init_norm, dtype=x.dtype, device=x.device)
        best_l2 = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        best_delta = torch.zeros_like(x)
        grey = self.levels - 1
        for alpha in cosine_step_sizes(self.steps):
            outputs = self.model(x + delta)
            (grad,) = torch.autograd.grad(self.objective.loss(outputs, labels).sum(), delta)
            with torch.no_grad():
                is_adv = self.objective.success(outputs, labels, self.targeted)
                l2 = delta.flatten(1).norm(dim=1)
                better = is_adv & (l2 < best_l2)
                if self.max_norm is not None:
                    better &= l2 <= self.max_norm
                best_l2 = torch.where(better, l2, best_l2)
                best_delta = torch.where(better.view(per_example), delta, best_delta)

                eps.mul_(torch.where(is_adv, 1.0 - self.gamma, 1.0 + self.gamma))
                if self.max_norm is not None:
                    eps.clamp_(max=self.max_norm)

                grad_norm = grad.flatten(1).norm(dim=1)
                vanished = grad_norm == 0
                if vanished.any():
                    grad[vanished] = torch.randn_like(grad[vanished])
                    grad_norm[vanished] = grad[vanished].flatten(1).norm(dim=1)
                delta.addcmul_(grad, (direction * alpha / grad_norm).view(per_example))
                delta.mul_((eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(per_example))
                x_new = x + delta
                if self.quantize:
                    x_new.mul_(grey).round_().div_(grey)
                delta.copy_(x_new.clamp_(0.0, 1.0).sub_(x))
        return x + best_delta
