"""A PixelCNN density model (van den Oord et al., "Pixel Recurrent Neural Networks", ICML 2016, section 3.5),
the likelihood behind PixelDefend's detector and purifier (Song et al. 2018).

Each pixel value ``x[c, i, j]`` (one of ``levels`` grey levels) gets a categorical distribution
conditioned on every pixel before it in raster order and, at the same position, on the channels
before ``c``. Masked convolutions enforce this: the first layer (mask A) sees no input at the centre
of its kernel other than the earlier channels; the later ones (mask B) also see their own channel
group there. Hidden channels are split into one group per input channel (group ``c`` carries what
the logits of channel ``c`` may depend on), so colour images are autoregressive over channels too.
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from gcd_lightning.optim import OptimizerFactory, configure_optimizers


def causal_mask(out_channels: int, in_channels: int, kernel: int, groups: int, include_centre: bool) -> torch.Tensor:
    """(out, in, k, k) 0/1 mask: rows above the centre, the centre row left of it, and at the centre the
    channel groups before the output's own (and its own with ``include_centre``, mask B)."""
    mask = torch.zeros(out_channels, in_channels, kernel, kernel)
    centre = kernel // 2
    mask[:, :, :centre, :] = 1
    mask[:, :, centre, :centre] = 1
    out_group = torch.arange(out_channels) * groups // out_channels
    in_group = torch.arange(in_channels) * groups // in_channels
    allowed = in_group[None, :] <= out_group[:, None] if include_centre else in_group[None, :] < out_group[:, None]
    mask[:, :, centre, centre] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    """A same-padded convolution whose kernel only sees earlier pixels (``causal_mask``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int, include_centre: bool) -> None:
        super().__init__(in_channels, out_channels, kernel, padding=kernel // 2)
        self.register_buffer("mask", causal_mask(out_channels, in_channels, kernel, groups, include_centre))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNN(nn.Module):
    """A PixelCNN over images in [0, 1]: logits (N, C, levels, H, W) of each pixel's grey level.

    Args:
        in_channels: image channels ``C``.
        levels: grey levels per channel (256 for 8-bit images).
        hidden: feature channels per image channel (the network is ``hidden · C`` wide).
        layers: masked 3×3 residual layers after the first 7×7 one (mask A).
    """

    def __init__(self, in_channels: int = 1, levels: int = 256, hidden: int = 32, layers: int = 5) -> None:
        super().__init__()
        if in_channels < 1 or levels < 2 or hidden < 1 or layers < 0:
            raise ValueError(f"PixelCNN: need in_channels >= 1, levels >= 2, hidden >= 1, layers >= 0; got "
                             f"{in_channels}, {levels}, {hidden}, {layers}")
        self.in_channels, self.levels = in_channels, levels
        width = hidden * in_channels
        self.first = MaskedConv2d(in_channels, width, 7, in_channels, include_centre=False)
        self.hidden = nn.ModuleList(MaskedConv2d(width, width, 3, in_channels, include_centre=True) for _ in range(layers))
        self.out = MaskedConv2d(width, in_channels * levels, 1, in_channels, include_centre=True)

    @property
    def context_rows(self) -> int:
        """How many rows above a pixel its logits can depend on: 3 through the 7×7 layer, 1 per 3×3 layer.

        So the logits of row ``i`` computed on the rows ``i − context_rows … i`` alone are exact: every
        activation they depend on lies inside those rows (the zero padding above them is out of reach).
        """
        return self.first.kernel_size[0] // 2 + len(self.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.first(x * 2 - 1))
        for layer in self.hidden:
            h = h + F.relu(layer(h))
        n, _, height, width = x.shape
        return self.out(h).view(n, self.in_channels, self.levels, height, width)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) ``log p(x)`` in nats, differentiable in ``x``: each pixel's log-probability interpolated linearly
        between its two neighbouring grey levels (exact on the levels, where 8-bit images lie)."""
        log_p = F.log_softmax(self(x), dim=2)
        position = x.clamp(0, 1) * (self.levels - 1)
        low = position.detach().floor().clamp(max=self.levels - 2).long()
        t = position - low
        at = lambda k: log_p.gather(2, k.unsqueeze(2)).squeeze(2)  # noqa: E731
        return ((1 - t) * at(low) + t * at(low + 1)).flatten(1).sum(dim=1)

    def bits_per_dim(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) ``−log₂ p(x)`` per pixel value: the usual score of a density model (lower is more likely)."""
        return -self.log_likelihood(x) / (x[0].numel() * math.log(2))


class DensityTraining(pl.LightningModule):
    """Maximum-likelihood training of a ``PixelCNN`` on images (labels ignored); logs ``train/bpd`` and ``val/bpd``.

    Args:
        model: the PixelCNN, trained in place.
        optimizer: a partial optimizer (``_partial_: true``), called with ``params=``.
    """

    def __init__(self, model: PixelCNN, optimizer: OptimizerFactory) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False, ignore=["model"])
        self.model = model

    def training_step(self, batch, batch_idx):
        bpd = self.model.bits_per_dim(batch[0]).mean()
        self.log("train/bpd", bpd, on_step=True, on_epoch=True, prog_bar=True)
        return bpd

    def validation_step(self, batch, batch_idx):
        self.log("val/bpd", self.model.bits_per_dim(batch[0]).mean(), on_epoch=True, prog_bar=True)

    def configure_optimizers(self):
        return configure_optimizers(self, self.hparams.optimizer, None)
