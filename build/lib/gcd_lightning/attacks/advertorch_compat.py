"""The one entry point to advertorch 0.2.3 on current PyTorch.

advertorch 0.2.3 does ``from torch.autograd.gradcheck import zero_gradients`` at import time
(in ``advertorch/attacks/fast_adaptive_boundary.py``, imported by ``advertorch.attacks``); later PyTorch
releases removed that helper, so a plain ``import advertorch`` fails with ``ImportError``. This module
installs an equivalent ``zero_gradients`` into the ``torch.autograd.gradcheck`` module when it is
missing and only then imports advertorch. Every other module of the package imports advertorch
through here.

Note: ``torch.autograd.gradcheck`` as an *attribute* is the ``gradcheck`` function, not the module
(``import torch.autograd.gradcheck as m`` binds the function), so the module is fetched with
``importlib.import_module``.

The wrapped attacks need nothing else: GradientSignAttack, LinfPGDAttack, CarliniWagnerL2Attack
and DDNL2Attack run unchanged on this PyTorch (``tests/test_advertorch_compat.py`` runs each once).
DDNL2Attack steps its learning-rate scheduler before the optimiser, which PyTorch reports with a
``UserWarning`` (the schedule starts one step late, which is harmless);
:func:`import_advertorch` filters exactly that message from that module.
"""

from __future__ import annotations

import collections.abc
import importlib
import types
import warnings

import torch

_GRADCHECK_MODULE = "torch.autograd.gradcheck"


def zero_gradients(x: torch.Tensor | collections.abc.Iterable) -> None:
    """Zero, in place, the ``.grad`` of a tensor or of every tensor in a (nested) iterable.

    Same behaviour as the helper PyTorch < 1.9 shipped: the gradient is detached from any graph
    first, tensors without a gradient are left alone.
    """
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    elif isinstance(x, collections.abc.Iterable):
        for element in x:
            zero_gradients(element)


def install_zero_gradients() -> bool:
    """Put :func:`zero_gradients` into ``torch.autograd.gradcheck`` if it is absent.

    Returns ``True`` when the patch was installed, ``False`` when PyTorch already provides one.
    """
    gradcheck_module = importlib.import_module(_GRADCHECK_MODULE)
    if hasattr(gradcheck_module, "zero_gradients"):
        return False
    gradcheck_module.zero_gradients = zero_gradients
    return True


def import_advertorch() -> types.ModuleType:
    """Patch PyTorch if needed, then import and return ``advertorch.attacks``."""
    install_zero_gradients()
    warnings.filterwarnings(
        "ignore",
        message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`",
        category=UserWarning,
        module=r"advertorch\.attacks\.decoupled_direction_norm",
    )
    return importlib.import_module("advertorch.attacks")


_attacks = import_advertorch()

GradientSignAttack = _attacks.GradientSignAttack
LinfPGDAttack = _attacks.LinfPGDAttack
CarliniWagnerL2Attack = _attacks.CarliniWagnerL2Attack
DDNL2Attack = _attacks.DDNL2Attack

__all__ = [
    "CarliniWagnerL2Attack",
    "DDNL2Attack",
    "GradientSignAttack",
    "LinfPGDAttack",
    "import_advertorch",
    "install_zero_gradients",
    "zero_gradients",
]
