"""Input sensitivity ``G(x, ŷ)`` of the protected classifier (eq. 1 and 8) and its detector scaling.

``G`` is the gradient of the cross entropy of ``f`` at its own prediction with respect to the
input pixels; eq. 1 defines the input sensitivity as its L2 norm, eq. 8 feeds the whole map to
``DET_IS``. Clean images sit far from the decision boundary and have tiny gradients, L2
adversarial examples sit close to it and have large ones (Insight I and II of the paper).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

SENSITIVITY_SCALE = 1e-4
"""``τ`` of ``sensitivity_features``: gradient entries below it are kept linear, above it log-compressed."""


@contextlib.contextmanager
def input_gradients_enabled() -> Iterator[None]:
    """Enable autograd for the duration, also inside ``torch.no_grad()`` or ``torch.inference_mode()``.

    Lightning runs validation and test under inference mode, and evaluation code often runs
    under ``no_grad``; the sensitivity and the detector saliency still need input gradients there.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def input_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    y_hat: torch.Tensor | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """The gradient map ``G(x, ŷ) = ∂CE(f(x), ŷ)/∂x`` of every example (eq. 8; eq. 1 is its L2 norm).

    The loss is summed over the batch, so that each example's gradient is its own (the examples
    do not interact in ``f`` in eval mode). Only the input gradient is computed: the parameters'
    ``.grad`` are left untouched.

    Args:
        model: the protected classifier ``f`` (pixels -> logits), in eval mode (else RuntimeError).
        x: a batch (N, ...) of inputs; it may or may not require grad.
        y_hat: (N,) labels at which the loss is taken; by default ``f``'s own prediction
            ``argmax f(x)``, as in eq. 1.
        create_graph: keep the graph of the gradient (double backprop), so that a function of
            ``G`` can be differentiated with respect to ``x`` (white-box attacks, ``DET_IS``
            saliency). Then ``x`` itself is differentiated when it requires grad.

    Returns:
        ``G`` with the shape of ``x``; detached unless ``create_graph``.
    """
    if x.dim() < 2:
        raise ValueError(f"input_sensitivity: expected a batch (N, ...), got shape {tuple(x.shape)}")
    if y_hat is not None and y_hat.shape != (x.shape[0],):
        raise ValueError(f"input_sensitivity: y_hat must have shape ({x.shape[0]},), got {tuple(y_hat.shape)}")
    if model.training:
        raise RuntimeError("input_sensitivity: the model is in train mode (batch statistics mix examples); call eval()")
    with input_gradients_enabled():
        if create_graph and x.requires_grad:
            inputs = x
        else:
            inputs = x.detach().clone().requires_grad_(True)
        logits = model(inputs)
        labels = logits.argmax(dim=1) if y_hat is None else y_hat
        loss = F.cross_entropy(logits, labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, inputs, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def logit_saliency(
    model: nn.Module, x: torch.Tensor, y_hat: torch.Tensor | None = None, create_graph: bool = False
) -> torch.Tensor:
    """The saliency map ``∂z_ŷ(x)/∂x`` of ``f``'s logit for its own prediction ``ŷ`` (Simonyan et al. 2014),
    the input of ``DET_sal`` (Zhang, Yang & Ye 2018). Unlike ``G`` (eq. 8) it does not vanish where ``f``
    is confident. ``y_hat`` and ``create_graph`` as in ``input_sensitivity``."""
    if model.training:
        raise RuntimeError("logit_saliency: the model is in train mode (batch statistics mix examples); call eval()")
    with input_gradients_enabled():
        inputs = x if create_graph and x.requires_grad else x.detach().clone().requires_grad_(True)
        logits = model(inputs)
        labels = logits.argmax(dim=1) if y_hat is None else y_hat
        top = logits.gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(top, inputs, create_graph=create_graph)
    return grad if create_graph else grad.detach()


def sensitivity_features(g: torch.Tensor, tau: float = SENSITIVITY_SCALE) -> torch.Tensor:
    """The input of ``DET_IS`` (eq. 8): the signed log scaling ``asinh(G / τ)``, elementwise.

    Why this scaling: the L2 norm of ``G`` spans orders of magnitude (on MNIST about 1e-6..1e-3
    for clean images and 1e-1..10 for L2 adversarial ones), which a network cannot digest raw.
    ``asinh(G/τ) = sign(G)·log(|G|/τ + sqrt((G/τ)² + 1))`` is linear for ``|G| ≪ τ`` and
    ``≈ sign(G)·log(2|G|/τ)`` for ``|G| ≫ τ``, so

    * it is a fixed function of ``G`` alone: no statistics of a data set or of a batch, so the
      detector sees the same features at training, at inference and under attack;
    * it keeps both the pattern (sign, location) and the magnitude that eq. 1 measures: with
      ``τ = 1e-4`` the entries of clean MNIST gradients (norm ≲1e-3 over 784 pixels, entries
      ≲1e-4) map to ≲0.9 and those of adversarial ones (entries about 1e-3..1) to about 3..10,
      an O(1) range that trains stably;
    * unlike ``sign(G)·log1p(|G|/τ)`` it is smooth at 0 (derivative ``1/sqrt(τ² + G²)``), so
      double backprop through it is well behaved for white-box attacks;
    * it keeps the channel count of the image, so both sub-detectors share one body config.
    """
    if tau <= 0:
        raise ValueError(f"sensitivity_features: tau must be positive, got {tau}")
    return torch.asinh(g / tau)
