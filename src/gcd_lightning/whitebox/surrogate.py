"""A smooth surrogate of ``f`` for the backward pass through ``DET_IS`` (BPDA, Athalye et al. 2018).

``DET_IS`` reads ``G(x) = ∂CE(f(x), ŷ)/∂x``. Differentiating it again (double backprop) through a
ReLU network is exact, but ReLU's second derivative is zero almost everywhere: the attack sees how
``G`` moves within one activation pattern and nothing of the patterns it could switch to. The
surrogate keeps the exact forward value and takes the backward pass through a copy of ``f`` with
every ReLU replaced by ``softplus(β·t)/β``, whose curvature is spread around each kink.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from gcd_lightning.defense.detector import DetectorInput, SubDetector


def softplus_copy(model: nn.Module, beta: float) -> nn.Module:
    """A deep copy of ``model`` (eval mode, frozen) with every ``nn.ReLU`` module replaced by ``nn.Softplus(beta)``.

    Only ReLU modules are replaced; a network without them (or one calling ``F.relu`` itself)
    comes back as an exact copy, so the surrogate then equals the model.
    """
    if beta <= 0:
        raise ValueError(f"softplus_copy: beta must be positive, got {beta} (threat.surrogate_beta)")
    smooth = copy.deepcopy(model).eval()
    for module in list(smooth.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, child_name, nn.Softplus(beta=beta))
    for parameter in smooth.parameters():
        parameter.requires_grad_(False)
    return smooth


class SurrogateGradient(nn.Module):
    """A detector that reads an input gradient of ``f`` (``DET_IS``, ``DET_sal``) with its exact outputs
    and the input gradient of a smooth surrogate of ``f``.

    The body reads the representation (``asinh(G/τ)`` for ``DET_IS``) of ``G_s + (G − G_s).detach()``:
    the forward value is the exact gradient map ``G`` of ``f``, the gradient that of ``G_s``, the map
    of ``softplus_copy(f)``, both at ``f``'s own prediction ``ŷ``.

    Args:
        detector: a trained ``SubDetector`` of kind ``"is"`` or ``"sal"``.
        beta: the softplus sharpness; larger is closer to ReLU.
    """

    def __init__(self, detector: SubDetector, beta: float) -> None:
        super().__init__()
        if detector.kind is DetectorInput.PIXELS:
            raise ValueError("SurrogateGradient: DET_org reads the pixels, not the classifier's gradient")
        self.detector = detector
        self.smooth = softplus_copy(detector.classifier, beta)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (x.requires_grad and torch.is_grad_enabled()):
            return self.detector(x)  # no backward pass to replace: DET_IS itself
        classifier = self.detector.classifier
        with torch.no_grad():
            y_hat = classifier(x).argmax(dim=1)  # both sensitivities at f's own prediction
        exact = self.detector.gradient_map(classifier, x, y_hat)
        smooth = self.detector.gradient_map(self.smooth, x, y_hat, create_graph=True)
        return self.detector.body(self.detector.representation(smooth + (exact - smooth).detach()))
