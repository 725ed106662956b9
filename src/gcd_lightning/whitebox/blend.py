"""A decision-based attack: a line search toward clean images of another class that the target accepts.

Every attack of the white-box stage but this one follows a gradient, and a defence can defeat a
gradient without being robust (Athalye et al. 2018). ``BlendSearch`` reads only the target's final
decision, as the decision-based attacks do from their starting point (Brendel et al. 2018; Chen et
al. 2020, HopSkipJump): for an image ``x`` it takes the ``candidates`` nearest *donors*, clean images
(of the attacker's own data, nearest in L2) that the target classifies as the attack wants and does not flag, and
searches the segment ``x + t·(d − x)``, ``0 ≤ t ≤ t_max``, for the smallest ``t`` that still wins
(``steps`` bisections; ``t_max = min(1, ε / ‖d − x‖)`` keeps it in the budget). The nearest win over
the donors is the result.

With an unbounded budget (L∞ ε = 1) every donor is inside the ball, so the search wins wherever one
donor is accepted: how far along the segment it must go says how the target's accepted inputs lie. A
density detector (``DET_PD``) accepts clean digits and flags the blends between two of them, so its
wins sit near ``t = 1``; a gradient attack that starts at ``x`` must cross that flagged region.
"""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.adversarial import perturbation_norms
from gcd_lightning.attacks.base import Attack, Norm
from gcd_lightning.whitebox.objectives import HingeEvasion


def size(x: torch.Tensor, x_adv: torch.Tensor, norm: Norm) -> torch.Tensor:
    """(N,) the size of each perturbation ``x_adv − x`` in ``norm`` (``perturbation_norms``)."""
    l2, linf = perturbation_norms(x, x_adv)
    return linf if norm is Norm.LINF else l2


class BlendSearch(Attack):
    """Bisection on the segment from ``x`` to its nearest accepted donors (module docstring).

    Args:
        model: the target as the judge sees it: a ``GuardedClassifier`` (``f``'s logits, then each detector's two).
        objective: the judge's ``HingeEvasion`` (its ``success`` is the target's real decision).
        donors: (D, C, H, W) clean images in [0, 1], the attacker's pool.
        norm: ``"linf"`` or ``"l2"``, the budget's norm (the donors are ranked by L2 distance, where the L∞ distance
            of two MNIST digits is about 1 for every pair).
        eps: the budget, > 0.
        candidates: donors searched per image (the nearest accepted ones), ≥ 1.
        steps: bisections per donor, ≥ 1: the found ``t`` is within ``t_max / 2^steps`` of a boundary.
        targeted: reach ``target`` (must match the objective).
    """

    def __init__(self, model: nn.Module, objective: HingeEvasion, donors: torch.Tensor, norm: str, eps: float,
                 candidates: int = 5, steps: int = 12, targeted: bool = False) -> None:
        super().__init__(model, targeted, objective)
        if objective.targeted != bool(targeted):
            raise ValueError(f"BlendSearch: targeted={targeted} but the objective has targeted={objective.targeted}")
        if donors.dim() != 4 or len(donors) == 0 or not donors.is_floating_point():
            raise ValueError(f"BlendSearch: donors must be a non-empty float (D, C, H, W) batch, got {tuple(donors.shape)} "
                             f"{donors.dtype}")
        if not eps > 0 or candidates < 1 or steps < 1:
            raise ValueError(f"BlendSearch: need eps > 0, candidates >= 1, steps >= 1; got {eps}, {candidates}, {steps}")
        self.donors = donors
        self.norm, self.eps, self.candidates, self.steps = Norm(norm), float(eps), int(candidates), int(steps)
        self._donor_outputs: torch.Tensor | None = None

    def wins(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the target's real decision on ``x`` is the attack's win (also ``HopSkipJump``'s decision)."""
        with torch.no_grad():
            return self.objective.success(self.model(x), labels, self.targeted)

    def accepted(self, labels: torch.Tensor) -> torch.Tensor:
        """(N, D) bool: donor ``j`` wins for label ``labels[i]`` (classified as wanted, not flagged)."""
        if self._donor_outputs is None:
            with torch.no_grad():
                self._donor_outputs = self.model(self.donors.to(self.device))
        out = self._donor_outputs
        return torch.stack([self.objective.success(out, label.expand(len(out)), self.targeted) for label in labels])

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if self.donors.shape[1:] != x.shape[1:]:
            raise ValueError(f"BlendSearch: donors of shape {tuple(self.donors.shape[1:])} for images of shape {tuple(x.shape[1:])}")
        labels = target if self.targeted else y
        donors = self.donors.to(x.device, x.dtype)
        distance = torch.cdist(x.flatten(1), donors.flatten(1))  # (N, D), L2
        distance = torch.where(self.accepted(labels), distance, torch.inf)
        nearest = distance.topk(min(self.candidates, len(donors)), dim=1, largest=False)
        best, best_size = x.clone(), torch.full((len(x),), torch.inf, device=x.device, dtype=x.dtype)
        shape = (-1, *([1] * (x.dim() - 1)))
        for rank in range(nearest.indices.shape[1]):
            diff = donors[nearest.indices[:, rank]] - x
            high = (self.eps / size(x, x + diff, self.norm).clamp_min(1e-12)).clamp(max=1.0)
            usable = nearest.values[:, rank].isfinite() & self.wins(x + high.view(shape) * diff, labels)
            low = torch.zeros_like(high)
            for _ in range(self.steps):
                middle = (low + high) / 2
                won = self.wins(x + middle.view(shape) * diff, labels)
                high, low = torch.where(won, middle, high), torch.where(won, low, middle)
            point = (x + high.view(shape) * diff).clamp(0.0, 1.0)
            point_size = size(x, point, self.norm)
            better = usable & (point_size < best_size)
            best[better], best_size[better] = point[better], point_size[better]
        return best
