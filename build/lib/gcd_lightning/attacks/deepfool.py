"""DeepFool-L2: batched minimal-norm attack by iterative linearisation of the decision boundaries."""

from __future__ import annotations

import logging

import torch
from torch import nn

from gcd_lightning.attacks.base import Attack, Norm, check_setting
from gcd_lightning.attacks.objective import PLAIN, Objective

log = logging.getLogger(__name__)

_STEP_MARGIN = 1e-4  # L2 added to each step so that a step lands past the linearised boundary


class DeepFool(Attack):
    """DeepFool-L2 (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool
    deep neural networks", CVPR 2016), multi-class case, Algorithm 2.

    At iterate ``x_i`` and for every candidate class ``k != y``, with ``w'_k = grad f_k(x_i) - grad f_y(x_i)``
    and ``f'_k = f_k(x_i) - f_y(x_i)`` on the logits f, the closest linearised boundary is
    ``l = argmin_k |f'_k| / ||w'_k||_2`` and the step is ``r_i = |f'_l| / ||w'_l||_2^2 * w'_l``
    (plus ``1e-4`` in L2 norm to cross the boundary). The steps accumulate in ``r_tot``; the iterate is
    ``x_i = clip(x + (1 + overshoot) * r_tot, 0, 1)`` (overshoot, Section 4). The attack runs batched:
    one forward and one backward per candidate class per iteration (per-example gradients by summing
    over the batch, the examples being independent in eval mode); an example stops as soon as its
    iterate leaves ``y`` and keeps that result. Output: ``clip(x + (1 + overshoot) * r_tot, 0, 1)``;
    examples the model already misclassifies are returned unchanged.

    Distance measure: L2 (minimised). Untargeted only.

    Arguments:
        model (nn.Module): classifier in eval mode, pixels in [0, 1] -> logits.
        num_classes (int): number of classes.
        overshoot (float): factor eta of the final ``(1 + eta) * r_tot``. Default: 0.02.
        max_iter (int): maximum number of iterations. Default: 50.
        nb_candidate (int | None): classes considered, the true class and the ``nb_candidate - 1``
            others with the largest logits at ``x``; ``None`` for all classes. Default: None.
        targeted (bool): must be False. Default: False.
        objective (Objective): the class scores f and the success of the model's outputs
            (``attacks.objective``). Default: the logits, argmax.

    Shape:
        - x: (N, C, H, W) float in [0, 1]; y: (N,) int64.
        - output: (N, C, H, W) float in [0, 1].

    Examples::
        >>> attack = DeepFool(model, num_classes=10)
        >>> x_adv = attack.perturb(x, y)
    """

    norm = Norm.L2

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        overshoot: float = 0.02,
        max_iter: int = 50,
        nb_candidate: int | None = None,
        targeted: bool = False,
        objective: Objective = PLAIN,
    ) -> None:
        if targeted:
            raise ValueError("DeepFool: only the untargeted attack exists; set targeted=false")
        super().__init__(model, targeted=False, objective=objective)
        self.num_classes = int(num_classes)
        self.nb_candidate = self.num_classes if nb_candidate is None else int(nb_candidate)
        if not 2 <= self.nb_candidate <= self.num_classes:
            raise ValueError(f"DeepFool: nb_candidate must lie in [2, {self.num_classes}], got {self.nb_candidate}")
        check_setting("DeepFool", "overshoot", overshoot, 0.0, low_inclusive=True)
        check_setting("DeepFool", "max_iter", max_iter, 1, low_inclusive=True)
        self.overshoot = float(overshoot)
        self.max_iter = int(max_iter)

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        scale = 1.0 + self.overshoot
        with torch.no_grad():
            outputs = self.model(x)
            scores = self.objective.margins(outputs, y)
        others = scores.scatter(1, y[:, None], float("-inf")).topk(self.nb_candidate - 1, dim=1).indices
        r_tot = torch.zeros_like(x)
        active = (~self.objective.success(outputs, y, targeted=False)).nonzero().squeeze(1)
        for _ in range(self.max_iter):
            if active.numel() == 0:
                break
            x_i = (x[active] + scale * r_tot[active]).clamp_(0.0, 1.0).requires_grad_(True)
            outputs = self.model(x_i)
            z = self.objective.margins(outputs, y[active])
            still = ~self.objective.success(outputs, y[active], targeted=False)
            if not still.all():
                active, z = active[still], z[still]
                if active.numel() == 0:
                    break
            f = z.gather(1, others[active]) - z.gather(1, y[active, None])
            r_tot[active] += self._step(f, x_i, still).view(-1, *x.shape[1:])
        left = active.numel()
        if left:
            log.debug("DeepFool: %d of %d examples still classified as y after %d iterations", left, len(x), self.max_iter)
        return (x + scale * r_tot).clamp_(0.0, 1.0)

    @staticmethod
    def _step(f: torch.Tensor, x_i: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The step ``r_i`` (n, D) towards the closest linearised boundary; ``f`` (n, K-1) are the
        logit differences ``f'_k`` of the rows ``rows`` of ``x_i``, whose graph they share."""
        n_other = f.shape[1]
        w = torch.empty(f.shape[0], n_other, x_i[0].numel(), dtype=x_i.dtype, device=x_i.device)
        for k in range(n_other):
            (grad,) = torch.autograd.grad(f[:, k].sum(), x_i, retain_graph=k < n_other - 1)
            w[:, k] = grad[rows].flatten(1)
        f = f.detach().abs()
        w_norm = w.norm(dim=2).clamp_min_(1e-12)
        dist = f / w_norm
        closest = dist.argmin(1)
        rows_n = torch.arange(f.shape[0], device=f.device)
        w_l = w[rows_n, closest]
        step_len = dist[rows_n, closest] + _STEP_MARGIN
        return w_l * (step_len / w_norm[rows_n, closest])[:, None]
