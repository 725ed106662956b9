"""HopSkipJump (Chen, Jordan & Wainwright 2020): a decision-based walk along the target's boundary toward ``x``.

``BlendSearch`` finds the nearest accepted blend on a few segments; where the gradient attacks fail the
unbounded check (``DET_PD``: its PixelCNN prices every background pixel moved), that point can be far
from ``x``, and a far point says little about how near the target's nearest accepted input of another
class lies. HopSkipJump starts from such a win and walks along the boundary, reading only the target's
final decision ``φ(x') ∈ {won, lost}``. Each iteration ``t``:

1. *bisection* toward ``x``: on the segment (L2) or by shrinking the L∞ box around ``x`` (L∞), to a winning point
   ``x_b`` at distance ``dist``, within ``θ·dist`` of the boundary, the paper's ``θ = d^(−3/2)`` (L2) or
   ``d^(−2)`` (L∞) for ``d`` pixels (``⌈log2 1/θ⌉`` halvings: 15 and 20 on MNIST);
2. *direction*: ``evals_t = min(init_evals·√t, max_evals)`` decisions at ``x_b + δ·u``, ``u`` uniform on the unit
   sphere (L2) or from the cube (L∞) normalised, ``δ = dist/d`` (the paper's ``√d·θ·dist`` and ``d·θ·dist``),
   well beyond the bisection's tolerance; the direction is the baseline-corrected mean
   ``Σ (φ_i − mean φ)·u_i`` (eq. 9 of the paper), normalised (L2) or its sign (L∞);
3. *step*: ``ξ = dist/√t`` along it, halved until the point wins (the geometric progression of the paper).

The attack is minimum-norm: ``perturb`` returns its nearest win (``x`` where the start won nothing), whatever
its size; the white-box stage cuts it at the row's budget (``within_budget``).
"""

from __future__ import annotations

import math

import torch
from gcd_lightning.attacks.base import Attack, Norm
from gcd_lightning.whitebox.blend import BlendSearch, size

HALVINGS = 20  # the step search gives up (the image keeps its point) below dist·2^-20
QUERY_BATCH = 2000  # images per forward pass of a direction estimate (memory; part of what the draws are)


class HopSkipJump(Attack):
    """The walk of the module docstring, from the wins of ``start``, on its target with its decision.

    Args:
        start: a ``BlendSearch`` with an unbounded budget: the walk begins at its wins, and reads the target (its
            model), the judge's decision (``start.wins``) and whether the attack is targeted from it.
        norm: ``"linf"`` or ``"l2"``: the distance the walk shrinks.
        iterations: boundary steps, ≥ 1.
        init_evals, max_evals: decisions per direction estimate at the first step and at most (1 ≤ init ≤ max).
    """

    def __init__(self, start: BlendSearch, norm: str, iterations: int = 10, init_evals: int = 25, max_evals: int = 100) -> None:
        super().__init__(start.model, start.targeted, start.objective)
        if iterations < 1 or not 1 <= init_evals <= max_evals:
            raise ValueError(f"HopSkipJump: need iterations >= 1 and 1 <= init_evals <= max_evals; got {iterations}, {init_evals}, "
                             f"{max_evals}")
        self.start, self.norm = start, Norm(norm)
        self.iterations, self.init_evals, self.max_evals = int(iterations), int(init_evals), int(max_evals)

    def _toward(self, x: torch.Tensor, adv: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The point a fraction ``s`` (N,) of the way from ``x`` to ``adv``: on the segment (L2), or ``adv`` clipped to the
        L∞ box of radius ``s·‖adv − x‖∞`` around ``x`` (L∞; the paper's projection)."""
        shape = (-1, *([1] * (x.dim() - 1)))
        diff = adv - x
        if self.norm is Norm.L2:
            return x + s.view(shape) * diff
        radius = (s * size(x, adv, Norm.LINF)).view(shape)
        return x + torch.maximum(torch.minimum(diff, radius), -radius)

    def bisections(self, d: int) -> int:
        """Halvings that bring a bisection over ``d`` pixels within the paper's ``θ`` (step 1 of the module docstring)."""
        return math.ceil((1.5 if self.norm is Norm.L2 else 2.0) * math.log2(d))

    def _bisect(self, x: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The winning point nearest ``x`` toward ``adv`` (which wins), within ``θ`` times ``adv``'s distance."""
        low, high = torch.zeros(len(x), device=x.device), torch.ones(len(x), device=x.device)
        for _ in range(self.bisections(x[0].numel())):
            middle = (low + high) / 2
            won = self.start.wins(self._toward(x, adv, middle), labels)
            high, low = torch.where(won, middle, high), torch.where(won, low, middle)
        return self._toward(x, adv, high)

    def _direction(self, boundary: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor, evals: int) -> torch.Tensor:
        """The estimated gradient direction of the decision at ``boundary`` (step 2 of the module docstring)."""
        n, shape = len(boundary), boundary.shape[1:]
        chunk = max(1, QUERY_BATCH // n)
        weighted, total_u = torch.zeros_like(boundary), torch.zeros_like(boundary)
        total_phi = torch.zeros(n, device=boundary.device)
        for first in range(0, evals, chunk):
            count = min(chunk, evals - first)
            u = torch.randn(n, count, *shape, device=boundary.device) if self.norm is Norm.L2 else \
                torch.rand(n, count, *shape, device=boundary.device) * 2 - 1
            u = u / u.flatten(2).norm(dim=2).clamp_min(1e-12).view(n, count, *([1] * len(shape)))
            scale = delta.view(n, 1, *([1] * len(shape)))
            probe = (boundary.unsqueeze(1) + scale * u).clamp(0.0, 1.0)
            u = (probe - boundary.unsqueeze(1)) / scale  # what the box left of each probe
            phi = self.start.wins(probe.flatten(0, 1), labels.repeat_interleave(count)).view(n, count).to(boundary.dtype) * 2 - 1
            weighted += (phi.view(n, count, *([1] * len(shape))) * u).sum(1)
            total_u += u.sum(1)
            total_phi += phi.sum(1)
        mean_phi = (total_phi / evals).view(-1, *([1] * len(shape)))
        # all probes agree: the paper's fallback, the mean of the probes signed by the decision
        same = mean_phi.abs() == 1
        grad = torch.where(same, weighted, weighted - mean_phi * total_u) / evals
        if self.norm is Norm.LINF:
            return grad.sign()
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))

    def _perturb(self, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        labels = target if self.targeted else y
        start = self.start.perturb(x, y, target)
        active = self.start.wins(start, labels)
        result = x.clone()
        if not active.any():
            return result
        x, labels = x[active], labels[active]
        shape, d = (-1, *([1] * (x.dim() - 1))), x[0].numel()
        boundary = self._bisect(x, start[active], labels)
        for t in range(1, self.iterations + 1):
            dist = size(x, boundary, self.norm)
            direction = self._direction(boundary, labels, (dist / d).clamp_min(1e-12),
                                        min(int(self.init_evals * math.sqrt(t)), self.max_evals))
            step, found = dist / math.sqrt(t), torch.zeros(len(x), dtype=torch.bool, device=x.device)
            candidate = boundary.clone()
            for _ in range(HALVINGS):
                trial = (boundary + step.view(shape) * direction).clamp(0.0, 1.0)
                take = ~found & self.start.wins(trial, labels)
                candidate[take], found = trial[take], found | take
                if found.all():
                    break
                step = torch.where(found, step, step / 2)
            walked = self._bisect(x, candidate, labels)
            nearer = size(x, walked, self.norm) < dist
            boundary[nearer] = walked[nearer]
        result[active] = boundary
        return result
