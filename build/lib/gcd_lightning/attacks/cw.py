"""Carlini & Wagner L2 attack, through advertorch's ``CarliniWagnerL2Attack``."""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.attacks.advertorch_compat import CarliniWagnerL2Attack
from gcd_lightning.attacks.base import Attack, Norm, check_setting
from gcd_lightning.attacks.objective import PLAIN, Objective


class _ObjectiveCW(CarliniWagnerL2Attack):
    """advertorch's CW-L2 reading the model's outputs through an ``Objective``.

    The margin term of the loss is taken on ``objective.margins`` instead of the raw outputs,
    and an output counts as adversarial (for the best-result bookkeeping and the binary search
    over ``c``) when ``objective`` says so (``confidence`` must then be 0). The plain objective
    uses advertorch's class itself.
    """

    def __init__(self, *args, objective: Objective, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective

    def _loss_fn(self, output, y_onehot, l2distsq, const):
        labels = y_onehot.argmax(dim=1)
        scores = self.objective.margins(output, labels)
        onehot = torch.nn.functional.one_hot(labels, scores.shape[1]).to(scores.dtype)
        return super()._loss_fn(scores, onehot, l2distsq, const)

    def _is_successful(self, output, label, is_logits):
        if not is_logits:
            pred = torch.as_tensor(output).view(-1)
            valid = pred >= 0  # advertorch's INVALID_LABEL (-1): nothing found yet
            label = torch.as_tensor(label).view(-1).to(pred.device)
            return valid & self.objective.predictions_succeed(pred.clamp_min(0), label, self.targeted)
        return self.objective.success(output.detach(), label, self.targeted)


class CW(Attack):
    """CW-L2 (Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017).

    Section V.A: with the change of variables ``x_adv = (tanh(w) + 1) / 2`` (box constraint),
    minimise ``||x_adv - x||_2^2 + c * f(x_adv)`` by Adam, where
    ``f(x') = max(Z(x')_y - max_{i != y} Z(x')_i, -kappa)`` (untargeted) or
    ``f(x') = max(max_{i != t} Z(x')_i - Z(x')_t, -kappa)`` (targeted, objective f6) on the logits Z;
    the constant ``c`` is tuned per example by binary search. Examples for which no adversarial
    was found are returned unchanged.

    Distance measure: L2 (minimised).

    Arguments:
        model (nn.Module): classifier in eval mode, pixels in [0, 1] -> logits.
        num_classes (int): number of classes.
        confidence (float): margin kappa. Default: 0.
        learning_rate (float): Adam step size. Default: 0.01.
        binary_search_steps (int): rounds of the search over ``c``. Default: 9.
        max_iterations (int): Adam steps per round. Default: 10000.
        abort_early (bool): stop a round when the loss stalls. Default: True.
        initial_const (float): first ``c``. Default: 1e-3.
        targeted (bool): reach ``target`` instead of leaving ``y``. Default: False.
        objective (Objective): margins ``Z`` and success of the model's outputs (``attacks.objective``).
            Default: the logits.

    Shape:
        - x: (N, C, H, W) float in [0, 1]; y, target: (N,) int64.
        - output: (N, C, H, W) float in [0, 1].

    Examples::
        >>> attack = CW(model, num_classes=10, binary_search_steps=5, max_iterations=200)
        >>> x_adv = attack.perturb(x, y)
    """

    norm = Norm.L2

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        confidence: float = 0.0,
        learning_rate: float = 0.01,
        binary_search_steps: int = 9,
        max_iterations: int = 10000,
        abort_early: bool = True,
        initial_const: float = 1e-3,
        targeted: bool = False,
        objective: Objective = PLAIN,
    ) -> None:
        super().__init__(model, targeted, objective)
        check_setting("CW", "confidence", confidence, 0.0, low_inclusive=True)
        check_setting("CW", "learning_rate", learning_rate, 0.0)
        check_setting("CW", "binary_search_steps", binary_search_steps, 1, low_inclusive=True)
        check_setting("CW", "max_iterations", max_iterations, 1, low_inclusive=True)
        check_setting("CW", "initial_const", initial_const, 0.0)
        self.num_classes = int(num_classes)
        if objective is not PLAIN and confidence != 0:
            raise ValueError("CW: a custom objective decides success itself; use confidence=0")
        extra = {} if objective is PLAIN else {"objective": objective}
        self._advertorch = (CarliniWagnerL2Attack if objective is PLAIN else _ObjectiveCW)(
            model,
            **extra,
            num_classes=self.num_classes,
            confidence=float(confidence),
            targeted=targeted,
            learning_rate=float(learning_rate),
            binary_search_steps=int(binary_search_steps),
            max_iterations=int(max_iterations),
            abort_early=bool(abort_early),
            initial_const=float(initial_const),
            clip_min=0.0,
            clip_max=1.0,
        )

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return self._advertorch.perturb(x, target if self.targeted else y)
