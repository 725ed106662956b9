"""BPDA + EOT (Athalye et al. 2018): how white-box attacks differentiate through a random, non-differentiable step."""

from __future__ import annotations

import torch
from torch import nn


def bpda_eot_probabilities(network: nn.Module, x: torch.Tensor, transformed: torch.Tensor, samples: int) -> torch.Tensor:
    """``(1/K)·Σ_k softmax(network(t_k(x)))`` (N, L): ``transformed`` holds the ``K = samples`` draws ``t_k(x)``
    (K·N rows, draw-major), each passed with BPDA, ``∂t_k(x)/∂x := I``: ``x + (t_k(x) − x).detach()``; the mean
    over draws is EOT's."""
    x_rep = x.repeat(samples, *([1] * (x.dim() - 1)))
    bpda = x_rep + (transformed - x_rep).detach()
    return torch.softmax(network(bpda), dim=1).view(samples, len(x), -1).mean(dim=0)
