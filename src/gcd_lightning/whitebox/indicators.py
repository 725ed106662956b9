"""Indicators of attack failure (Pintor et al. 2022) and the figures that read a white-box result.

Each indicator is a number and a verdict: ``failed`` means the evaluation, not the defense, is in
doubt, and the report prints it as a warning. Thresholds are module constants, named here once.
"""

from __future__ import annotations

import dataclasses

import torch

SILENT_MAX = 0.01
"""Share of images whose first gradient may be zero or not finite (gradient masking) before we warn."""
INCOMPLETE_MAX = 0.01
"""Relative fall of the mean loss over the last ``TAIL`` of the steps, on the images the attack lost, before we warn."""
TAIL = 0.1
UNBOUNDED_MIN = 0.99
"""An attack with an unbounded budget (L∞ ε = 1 reaches every image) must win at least this share."""
NOISE_MAX = 0.01
"""Share of clean images whose defended decision may change under tiny noise before we warn."""
NOISE = 1e-3
"""The noise of the ``noise`` check: uniform in ±``NOISE`` per pixel."""
# judging seeds: draw d of a random defense's randomness (GCD's masks) seeds batch i with JUDGE_SEED + d·JUDGE_STRIDE + i,
# never a seed an attack uses (seed + i for a few thousand batches at most)
JUDGE_SEED, JUDGE_STRIDE = 10**9, 10**6


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of an evaluation (Pintor et al. 2022's indicators, AutoAttack's, Tramèr's): its value and verdict.

    ``failed`` means the evaluation, not the defense, is in doubt: a report prints it as a warning.
    """

    name: str
    value: float
    failed: bool
    meaning: str


def silent_share(silent: torch.Tensor) -> float:
    """Share of images whose first gradient was zero or not finite while the loss was positive."""
    return silent.float().mean().item() if silent.numel() else 0.0


def incomplete_optimisation(loss: torch.Tensor, success: torch.Tensor) -> float:
    """How much the loss still fell at the end, on the images not won (``success`` False).

    ``loss`` (N, T+1) is the attack's loss at every iterate (``AdaptivePGD.run``); the result is
    ``(L̄(t₀) − L̄(T)) / |L̄(t₀)|`` with ``L̄`` the mean over the lost images and ``t₀`` the step
    ``TAIL`` of the way before the end: a loss still falling means more steps would win more.
    0 when every image was won.
    """
    lost = loss[~success]
    if len(lost) == 0:
        return 0.0
    steps = loss.shape[1] - 1
    start = lost[:, max(0, steps - max(1, round(TAIL * steps)))].mean()
    end = lost[:, -1].mean()
    return ((start - end) / start.abs().clamp_min(1e-12)).item()


def decision_changes(decision: torch.Tensor, noisy_decision: torch.Tensor) -> float:
    """Share of images whose decision (label and flag, one integer each) differs between two passes."""
    return (decision != noisy_decision).float().mean().item()


def defended_decision(outputs: torch.Tensor, num_classes: int, flagged: torch.Tensor) -> torch.Tensor:
    """One integer per image: ``f``'s label, or ``num_classes`` where the detector flags it."""
    return torch.where(flagged, num_classes, outputs[:, :num_classes].argmax(dim=1))


def tramer_check(robust: float, eps: float, references: list[tuple[str, float, float]]) -> dict[str, float | str]:
    """Tramèr (2022): a detector robust at ε with accuracy R implies an (inefficient) classifier robust at ε/2 with accuracy R.

    ``references`` lists robust classifiers as ``(name, radius, accuracy)``, each evaluated at its radius. The
    claim is compared with what is known at ε/2 itself: only references evaluated there count. One evaluated
    at a larger radius would understate what it reaches at ε/2 (it does at least as well there), and a claim
    above it would be called implausible when it is not. Returns the implied radius, the best reference
    evaluated there, and ``plausible``: 1 when R does not exceed it (the claim asks for no classifier better
    than known ones), 0 when it does (a claim to attack harder), nan when no reference was evaluated at ε/2.
    """
    half = eps / 2
    covering = [(accuracy, name) for name, radius, accuracy in references if abs(radius - half) <= 1e-9 * max(1.0, half)]
    if not covering:
        return {"radius": half, "reference": float("nan"), "reference_name": "", "plausible": float("nan")}
    best, name = max(covering)
    return {"radius": half, "reference": best, "reference_name": name, "plausible": float(robust <= best)}
