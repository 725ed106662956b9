"""Total variation minimisation (TVM, Guo et al., "Countering Adversarial Images using Input
Transformations", ICLR 2018, section 3.3), batched in torch.

Each image is reconstructed from a random subset of its pixels: a Bernoulli mask ``X`` keeps a pixel
with probability ``keep_prob`` and the reconstruction ``z`` solves, per image and channel,

    min_z ‖X ⊙ (z − x)‖₂ + λ · TV_p(z),
    TV_p(z) = Σ_i ‖z[i, :] − z[i−1, :]‖_p + Σ_j ‖z[:, j] − z[:, j−1]‖_p,

the total variation of Guo et al.'s eq. (3) over rows ``i`` and columns ``j``. The problems of a batch are
independent, so their sum is minimised at once by L-BFGS (``torch.optim.LBFGS``, strong-Wolfe line
search): one solver for the whole batch instead of ART's SciPy loop over images and channels
(``scripts/bench_tvm.py`` compares the two). The unconstrained minimiser lies in [0, 1] (clipping ``z`` to
the range of ``x`` lowers both terms), so clipping the last iterate to [0, 1] replaces L-BFGS-B's bounds.

Choices the paper leaves open, documented here: ``p = 2``, λ = 0.5 and ``keep_prob`` = 0.3 are ART's
defaults (``TotalVarMin``); ART runs 10 L-BFGS-B iterations per image and channel, and 30 iterations of
one L-BFGS over a batch of MNIST images reach a lower objective than those (the batch shares one line
search, so it needs more iterations than one image alone: ``scripts/bench_tvm.py``). The norms carry a
tiny constant under the square root (1e-12) so that a constant row, column or a perfectly fitted image
has a gradient.
"""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.defense.rectifier import check_fraction, check_images
from gcd_lightning.defense.sensitivity import input_gradients_enabled

EPS = 1e-12  # under every square root: the norms stay differentiable at 0


def smooth_norm(v: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """``‖v‖_p`` along ``dim``, with ``EPS`` under the root for ``p = 2`` (``p = 1``: the plain sum of ``|v|``)."""
    if p == 1:
        return v.abs().sum(dim=dim)
    return (v.pow(2).sum(dim=dim) + EPS).sqrt()


def total_variation(z: torch.Tensor, p: int = 2) -> torch.Tensor:
    """``TV_p(z)`` of Guo et al.'s eq. (3) per image and channel: (N, C).

    Rows ``z[:, :, i, :]`` and columns ``z[:, :, :, j]`` are vectors; the variation is the sum of the
    ``p``-norms of the differences of neighbouring rows and of neighbouring columns.
    """
    check_images(z, "z")
    rows = smooth_norm(z[:, :, 1:, :] - z[:, :, :-1, :], dim=3, p=p).sum(dim=2)
    cols = smooth_norm(z[:, :, :, 1:] - z[:, :, :, :-1], dim=2, p=p).sum(dim=2)
    return rows + cols


def tvm_objective(z: torch.Tensor, x: torch.Tensor, keep: torch.Tensor, weight: float, p: int = 2) -> torch.Tensor:
    """``‖keep ⊙ (z − x)‖₂ + λ·TV_p(z)`` per image and channel (N, C): the problem TVM solves (section 3.3)."""
    fidelity = (keep * (z - x).pow(2)).flatten(2).sum(dim=2).add(EPS).sqrt()
    return fidelity + weight * total_variation(z, p)


def check_settings(where: str, keep_prob: float, weight: float, steps: int, p: int) -> None:
    """Raise a ``ValueError`` naming the setting unless ``keep_prob`` ∈ [0, 1], ``weight`` ≥ 0, ``steps`` ≥ 1, ``p`` ∈ {1, 2}."""
    check_fraction(keep_prob, f"{where}: keep_prob")
    if weight < 0 or steps < 1 or p not in (1, 2):
        raise ValueError(f"{where}: need weight >= 0, steps >= 1 and p in (1, 2); got weight={weight}, steps={steps}, p={p}")


def tvm_solve(x: torch.Tensor, keep: torch.Tensor, weight: float = 0.5, steps: int = 30, p: int = 2) -> torch.Tensor:
    """The minimiser of ``tvm_objective`` for the pixels ``keep`` (0/1, the shape of ``x``): L-BFGS from ``x``,
    ``steps`` iterations for the whole batch at once, clipped to [0, 1]; detached."""
    check_images(x)
    if keep.shape != x.shape:
        raise ValueError(f"tvm_solve: keep {tuple(keep.shape)} must have the shape of x {tuple(x.shape)}")
    with input_gradients_enabled():
        target, keep = x.detach().clone(), keep.detach().to(x.dtype)
        z = target.clone().requires_grad_(True)
        solver = torch.optim.LBFGS([z], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            solver.zero_grad()
            loss = tvm_objective(z, target, keep, weight, p).sum()
            loss.backward()
            return loss

        solver.step(closure)
    return z.detach().clamp_(0.0, 1.0)


def tvm_reconstruct(
    x: torch.Tensor,
    keep_prob: float = 0.3,
    weight: float = 0.5,
    steps: int = 30,
    p: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The TVM reconstruction of each image from a random ``keep_prob`` share of its pixels (``tvm_solve``).

    Args:
        x: (N, C, H, W) images in [0, 1].
        keep_prob: the probability that a pixel is kept (Guo et al.'s pixel dropout keeps the rest out).
        weight: λ, the weight of the total variation.
        steps: L-BFGS iterations, for the whole batch at once.
        p: the norm of the total variation (1 or 2).
        generator: the random source of the masks; the global one when ``None``.
    """
    check_images(x)
    check_settings("tvm_reconstruct", keep_prob, weight, steps, p)
    keep = torch.rand(x.shape, generator=generator, device=x.device) < keep_prob
    return tvm_solve(x, keep, weight, steps, p)


class TotalVariationMinimization(nn.Module):
    """TVM as an input transformation (``tvm_reconstruct`` with its settings); random, not differentiable.

    Args: those of ``tvm_reconstruct``; ``generator`` is the random source of the masks.
    """

    def __init__(self, keep_prob: float = 0.3, weight: float = 0.5, steps: int = 30, p: int = 2,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        check_settings("TotalVariationMinimization", keep_prob, weight, steps, p)
        self.keep_prob, self.weight, self.steps, self.p = float(keep_prob), float(weight), int(steps), int(p)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tvm_reconstruct(x, self.keep_prob, self.weight, self.steps, self.p, self.generator)
