"""``FeatureSqueezing`` (Xu, Evans & Qi 2018): the L1 change of ``f``'s softmax when the input is squeezed.

Squeezers, as the authors' MNIST setting: bit-depth reduction to 1 bit and a 2x2 median filter.
The score is the largest L1 distance between ``softmax f(x)`` and ``softmax f(squeeze(x))`` over
the squeezers; the threshold is set on clean validation images at the configured false-positive
rate (the authors' 5%). Training-free. Bit-depth reduction rounds, whose gradient is zero: it
passes the gradient straight through (BPDA, as He et al. 2017 attacked it), so that white-box
attacks see the squeezed path too; the median filter is differentiable as it is (the gradient
flows to the median pixel of each window).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gcd_lightning.defense.baselines.scored import ScoredDetector


def reduce_bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Pixels in [0, 1] rounded to ``2**bits`` levels; the backward pass is the identity (BPDA)."""
    if bits < 1:
        raise ValueError(f"reduce_bit_depth: bits must be at least 1, got {bits}")
    levels = 2**bits - 1
    squeezed = torch.round(x * levels) / levels
    return x + (squeezed - x).detach()


def median_filter(x: torch.Tensor, size: int) -> torch.Tensor:
    """The median of each ``size`` x ``size`` window, per channel, same spatial shape (the lower
    median of an even window; padding on the right and bottom for even sizes, reflect padding)."""
    if size < 1:
        raise ValueError(f"median_filter: size must be at least 1, got {size}")
    if size == 1:
        return x
    left, right = (size - 1) // 2, size // 2
    padded = F.pad(x, (left, right, left, right), mode="reflect")
    n, c, h, w = x.shape
    windows = F.unfold(padded, size).view(n, c, size * size, h * w)
    return windows.median(dim=2).values.view(n, c, h, w)


class FeatureSqueezing(ScoredDetector):
    """Max over squeezers of ``‖softmax f(x) − softmax f(squeeze(x))‖₁``.

    Args:
        classifier: the protected classifier ``f`` (by reference, not a submodule).
        bits: bit depth of the bit-depth squeezer (1 for MNIST in the paper; null: none).
        median: window of the median-filter squeezer (2 for MNIST; null: none).
        fpr: false-positive rate of the threshold on clean validation images.
    """

    name = "squeeze"

    def __init__(self, classifier: nn.Module, bits: int | None = 1, median: int | None = 2, fpr: float = 0.05) -> None:
        super().__init__(fpr)
        if bits is None and median is None:
            raise ValueError("FeatureSqueezing: give at least one squeezer (bits or median)")
        object.__setattr__(self, "classifier", classifier.eval())
        self.bits, self.median = bits, median

    def squeezed(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        if self.bits is not None:
            out.append(reduce_bit_depth(x, self.bits))
        if self.median is not None:
            out.append(median_filter(x, self.median))
        return out

    def score(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.classifier(x), dim=1)
        distances = [(p - torch.softmax(self.classifier(s), dim=1)).abs().sum(dim=1) for s in self.squeezed(x)]
        return torch.stack(distances).amax(dim=0)
