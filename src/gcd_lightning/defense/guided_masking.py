"""``GuidedMasking``: GCD's rectifier, guided random masking (eq. 12-13) followed by ``f_rec`` (section 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.bpda import bpda_eot_probabilities
from gcd_lightning.defense.base import Rectifier
from gcd_lightning.defense.rectifier import check_fraction, random_mask, saliency_threshold


class GuidedMasking(Rectifier):
    """Mask each flagged input's most detector-salient pixels at random, then classify it with ``f_rec``.

    The suspects of an input are the pixels of its saliency ``|∂L_DET/∂x|`` above the threshold
    of eq. 12; each is replaced with probability ``p`` by a random value (eq. 13). The masks are
    random (``generator``, the global one when ``None``) and not differentiable: white-box
    attacks pass them with BPDA (``gcd_lightning.whitebox.models.RandomizedGCD``).

    Args:
        network: ``f_rec``, pixels -> logits (a fine-tuned copy of ``f``, ``RectifierFineTune``).
        alpha: the threshold share of eq. 12, in [0, 1].
        p: the replacement probability of eq. 13, in [0, 1].
        generator: random source of the masks.
    """

    guided = True
    randomized = True

    def __init__(self, network: nn.Module, alpha: float, p: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_fraction(alpha, "GuidedMasking: alpha")
        check_fraction(p, "GuidedMasking: p")
        self.network = network
        self.alpha = float(alpha)
        self.p = float(p)
        self.generator = generator
        self.eval()

    def mask(self, x: torch.Tensor, saliency: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """``samples`` random masks of every input (eq. 12-13): (samples·N, C, H, W), one draw after the other."""
        suspect = saliency_threshold(saliency, self.alpha)
        return torch.cat([random_mask(x.detach(), suspect, self.p, self.generator) for _ in range(samples)])

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        return self.network(self.mask(x, self.needs(saliency)))

    def expected_probabilities(self, x: torch.Tensor, saliency: torch.Tensor | None, samples: int) -> torch.Tensor:
        """``f_rec`` over ``samples`` random masks of ``x``, each passed with BPDA (``∂mask(x)/∂x := I``), averaged (EOT)."""
        return bpda_eot_probabilities(self.network, x, self.mask(x, self.needs(saliency), samples), samples)

    @staticmethod
    def needs(saliency: torch.Tensor | None) -> torch.Tensor:
        if saliency is None:
            raise ValueError("GuidedMasking needs the saliency of the detector that flagged each input (GCD passes it)")
        return saliency
