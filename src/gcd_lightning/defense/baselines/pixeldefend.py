"""PixelDefend (Song et al., "PixelDefend: Leveraging Generative Models to Understand and Defend against
Adversarial Examples", ICLR 2018) on a ``PixelCNN`` trained on the clean training images.

* ``PixelCNNLikelihood`` (``DET_PD``, Table 2): Song et al. test an input by the p-value of its PixelCNN
  likelihood, its rank among the likelihoods of clean training images. The rank is a monotone function
  of the bits per dimension, so our score is the bits per dimension itself: its threshold at a
  false-positive rate on clean validation images is the p-value test at that level, and every AUC is
  the same. The likelihood is interpolated between grey levels (``PixelCNN.log_likelihood``), so the
  score is differentiable and white-box attacks reach through it.
* ``PixelDefend`` (Table 5's "PD"): Algorithm 1, the purification. Pixel by pixel in raster order (and
  channel by channel), the value is replaced by the most likely grey level under the PixelCNN, given
  the already purified pixels, within ``eps`` of the input's value. One pass of the PixelCNN per pixel
  value (H·W·C passes per batch), each over the rows the pixel's logits depend on only (exact, and 3×
  cheaper on MNIST). Song et al. pick ε_defend per data set (16/255 against ε = 8/255 on
  CIFAR-10); our MNIST default is the L∞ attack budget, 0.3.

The PixelCNN is trained once per data set and shared: a component built with ``density=None`` gets
the run's trained one (``pipeline.density.provide_density``), by reference, not as a submodule, so
that its weights stay in their own cache entry.
"""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.defense.baselines.scored import ScoredDetector
from gcd_lightning.defense.rectifier import check_fraction, check_images
from gcd_lightning.models.pixelcnn import PixelCNN


def require_density(density: PixelCNN | None, who: str) -> PixelCNN:
    """``density``, or a ``RuntimeError`` saying that no PixelCNN was given yet."""
    if density is None:
        raise RuntimeError(f"{who}: no PixelCNN yet; pass density= or let the pipeline provide the trained one")
    return density


class PixelCNNLikelihood(ScoredDetector):
    """``DET_PD``: flags inputs whose PixelCNN bits per dimension exceed a clean threshold (see the module docstring).

    Args:
        density: the trained PixelCNN, or ``None`` to be provided (``provide_density``).
        fpr: false-positive rate of the threshold on clean validation images.
    """

    name = "pd"

    def __init__(self, density: PixelCNN | None = None, fpr: float = 0.05) -> None:
        super().__init__(fpr)
        object.__setattr__(self, "density", density)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return require_density(self.density, "DET_PD").bits_per_dim(x)


@torch.no_grad()
def purify(density: PixelCNN, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Song et al.'s Algorithm 1: each pixel value in turn becomes the most likely grey level within ``eps``.

    ``x`` (N, C, H, W) in [0, 1]; returns the purified images, on the density's grey levels. Song et al.'s
    images are on the levels already; ours may lie between (CW's), so the interval ``[x − eps, x + eps]``
    is rounded to the nearest levels at both ends: ``eps = 0`` quantises, and a value moves by at most
    ``eps`` plus half a level.
    """
    check_images(x)
    top = density.levels - 1
    levels = torch.arange(density.levels, device=x.device)
    low, high = ((x - eps) * top).round().clamp(0, top), ((x + eps) * top).round().clamp(0, top)  # level indices
    purified = x.clone()
    _, channels, height, width = x.shape
    for i in range(height):
        top_row = max(0, i - density.context_rows)  # the rows row i's logits depend on (``PixelCNN.context_rows``)
        for j in range(width):
            for c in range(channels):
                logits = density(purified[:, :, top_row : i + 1])[:, c, :, -1, j]  # (N, levels), given the pixels before
                feasible = (levels[None, :] >= low[:, c, i, j, None]) & (levels[None, :] <= high[:, c, i, j, None])
                choice = logits.masked_fill(~feasible, float("-inf")).argmax(dim=1)
                purified[:, c, i, j] = choice.to(x.dtype) / top
    return purified


class PixelDefend(nn.Module):
    """PixelDefend's purification as an input transformation (``purify``); not differentiable.

    Args:
        density: the trained PixelCNN, or ``None`` to be provided (``provide_density``).
        eps: ε_defend, the largest change of a pixel value, in [0, 1].
    """

    def __init__(self, density: PixelCNN | None = None, eps: float = 0.3) -> None:
        super().__init__()
        check_fraction(eps, "PixelDefend: eps")
        object.__setattr__(self, "density", density)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return purify(require_density(self.density, "PixelDefend"), x, self.eps)
