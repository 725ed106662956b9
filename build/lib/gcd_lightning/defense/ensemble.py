"""The entropy ensemble of the two sub-detectors (eq. 10-11) and the benign/adversarial decision.

Detector outputs are (N, 2) probability tensors ``(p⁺, p⁻)``: column ``BENIGN`` (0) is the
probability of a benign input, column ``ADVERSARIAL`` (1) that of an adversarial one (eq. 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

BENIGN = 0
ADVERSARIAL = 1


def check_detector_probabilities(p: torch.Tensor, name: str = "p") -> None:
    """Raise a ``ValueError`` unless ``p`` has the (N, 2) shape of ``(p⁺, p⁻)`` rows."""
    if p.dim() != 2 or p.shape[1] != 2:
        raise ValueError(f"{name}: expected detector probabilities of shape (N, 2) = (p+, p-), got {tuple(p.shape)}")


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H = -[p⁺ log2 p⁺ + p⁻ log2 p⁻]`` of each row of ``p`` (N, 2) -> (N,) (eq. 10).

    ``0 log 0 = 0``: the logarithm's argument is clamped to the smallest positive float, so
    probabilities of exactly 0 or 1 give a finite value and a finite gradient.
    """
    check_detector_probabilities(p)
    tiny = torch.finfo(p.dtype).tiny
    return -(p * torch.log(p.clamp_min(tiny))).sum(dim=1) / math.log(2.0)


def entropy_select(p_org: torch.Tensor, p_is: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adopt the more confident sub-detector per example (eq. 11).

    Returns ``(p, use_org)``: ``p`` (N, 2) is ``p_org`` where ``H_o < H_s`` and ``p_is``
    otherwise (a tie goes to ``DET_IS``); ``use_org`` (N,) is the boolean choice. ``p`` is
    differentiable with respect to the chosen probabilities.
    """
    check_detector_probabilities(p_org, "p_org")
    check_detector_probabilities(p_is, "p_is")
    if p_org.shape != p_is.shape:
        raise ValueError(f"entropy_select: p_org {tuple(p_org.shape)} and p_is {tuple(p_is.shape)} differ in shape")
    use_org = binary_entropy(p_org) < binary_entropy(p_is)
    return torch.where(use_org[:, None], p_org, p_is), use_org


def ensemble(probabilities: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decision of one detector, or of GCD's two combined by eq. 10-11: the one place the ensemble is formed.

    Args:
        probabilities: each detector's ``(p⁺, p⁻)`` (N, 2), in the defense's order (``[DET_org,
            DET_IS]`` for GCD: ties go to the second, ``entropy_select``).

    Returns:
        ``(p, decided)``: the adopted probabilities (N, 2), differentiable with respect to the
        adopted detector's, and (N,) int64 the index of the detector that decided each example.
    """
    if len(probabilities) == 1:
        (p,) = probabilities
        check_detector_probabilities(p)
        return p, torch.zeros(len(p), dtype=torch.long, device=p.device)
    if len(probabilities) != 2:
        raise ValueError(f"ensemble: one detector or the two of GCD's entropy ensemble, got {len(probabilities)}")
    p, use_first = entropy_select(*probabilities)
    return p, (~use_first).long()


def is_flagged(p: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the input is adversarial, ``p⁺ < p⁻``; ``p⁺ ≥ p⁻`` counts as benign (section 3.1)."""
    check_detector_probabilities(p)
    return p[:, BENIGN] < p[:, ADVERSARIAL]
