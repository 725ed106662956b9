"""The contract every attack of the registry fulfils.

An attack works in pixel space: inputs are float tensors of shape (N, C, H, W) in [0, 1], the
model carries its own normalisation and returns logits. ``perturb(x, y, target)`` returns
adversarial images of the same shape, clipped to [0, 1]. Untargeted attacks try to leave the
true label ``y``; targeted attacks try to reach ``target`` (one class per example, never ``y``).
``perturb`` runs with autograd enabled (also inside ``torch.no_grad()``) and the model's
parameters frozen, so that backward passes compute input gradients only.
"""

from __future__ import annotations

import abc
import contextlib
import enum
import math
from collections.abc import Iterator

import torch
from torch import nn

from gcd_lightning.attacks.objective import PLAIN, Objective
from gcd_lightning.inputs import check_inputs


class Norm(str, enum.Enum):
    """The distance an attack bounds or minimises."""

    L2 = "l2"
    LINF = "linf"


class Attack(abc.ABC):
    """Base class: holds the model, the targeted flag and the objective; subclasses implement ``_perturb``.

    ``objective`` says how the attack reads the model's outputs (its loss, its margins and when
    it has succeeded); the default is the plain classifier (see ``attacks.objective``).
    """

    norm: Norm

    def __init__(self, model: nn.Module, targeted: bool = False, objective: Objective = PLAIN) -> None:
        self.model = model
        self.targeted = targeted
        self.objective = objective

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Adversarial versions of ``x`` (N, C, H, W) in [0, 1] for labels ``y`` (N,).

        ``target`` (N,) is required for a targeted attack and must be ``None`` otherwise.
        """
        check_attack_inputs(x, y, target, self.targeted)
        if self.model.training:
            raise RuntimeError("attack: the model is in train mode; call model.eval() before attacking")
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "attack: gradient attacks cannot run under torch.inference_mode(); "
                "use Trainer(inference_mode=False) or torch.inference_mode(False)"
            )
        with torch.enable_grad(), input_gradients_only(self.model):
            x_adv = self._perturb(x, y, target)
        return x_adv.detach().clamp_(0.0, 1.0)

    @abc.abstractmethod
    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Attack-specific work; inputs are already validated."""


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Switch off ``requires_grad`` of the model's parameters for the duration, then restore it.

    Attacks need gradients with respect to the input only: backward passes then skip the weight
    gradients (less work) and leave the parameters' ``.grad`` untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def check_setting(
    attack: str, name: str, value: float, low: float, high: float = math.inf, low_inclusive: bool = False, high_inclusive: bool = True
) -> None:
    """Raise a ``ValueError`` naming the setting unless ``value`` lies between ``low`` and ``high`` (NaN never does)."""
    v = float(value)
    above = v >= low if low_inclusive else v > low
    below = v <= high if high_inclusive else v < high
    if math.isnan(v) or not (above and below):
        closed_high = high_inclusive and math.isfinite(high)
        interval = f"{'[' if low_inclusive else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
        raise ValueError(f"{attack}: {name} must lie in {interval}, got {value}")


def check_attack_inputs(x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, targeted: bool) -> None:
    """Raise a ``ValueError`` naming the problem when the inputs break the contract above (``inputs.check_inputs``)."""
    try:
        check_inputs(x)
    except ValueError as err:
        raise ValueError(f"attack: {err}; do not normalise the input, the model carries its own normalisation") from None
    if y.shape != (x.shape[0],):
        raise ValueError(f"attack: labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if targeted:
        if target is None:
            raise ValueError("attack: a targeted attack needs target classes; pass target=")
        if target.shape != y.shape:
            raise ValueError(f"attack: targets must have shape {tuple(y.shape)}, got {tuple(target.shape)}")
        if (target == y).any():
            raise ValueError("attack: a target equals the true label; draw targets with random_targets()")
    elif target is not None:
        raise ValueError("attack: target= was given to an untargeted attack; set targeted=true in the attack config")


def random_targets(y: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """One seeded random target class per example, uniform over the classes other than ``y``."""
    offset = torch.randint(1, num_classes, y.shape, generator=generator, device="cpu").to(y.device)
    return (y + offset) % num_classes
