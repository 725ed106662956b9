"""The adaptive attacker's objectives: GCD as an L+1-class classifier (C&W 2017a), eq. 14, and hinge losses.

The second half of the module (``HingeEvasion``) reads ``f``'s logits and each detector's two
logits side by side (``models.GuardedClassifier``) and puts a hinge on ``f``'s margin and on
every detector's logit gap; ``ensemble_flags`` is the real decision of eq. 10-11 on those logits.
The first half:

A detected classifier is turned into one classifier with an extra class, "adversarial". With the
classifier's logits ``Z`` (N, L) and the detector's log-probabilities ``(log p⁺, log p⁻)``, the
L+1 outputs are

    z_i = log p⁺ + Z_i − max_j Z_j   (i < L),        z_L = log p⁻.

The top natural class scores exactly ``log p⁺``, so ``argmax z`` is the adversarial class iff
``p⁻ > p⁺`` (the detector flags the input; ties are benign as in section 3.1) and otherwise the
classifier's own label: the L+1 prediction is exactly the detected classifier's decision.
Because ``z`` is a shift of ``Z`` by one number per example, ``z[:, :L]`` has the same
cross entropy and the same margins as ``Z``, and ``log p⁺ = max_i z_i`` over the natural
classes; every loss below is therefore a function of ``z`` alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gcd_lightning.attacks.objective import Objective
from gcd_lightning.defense.ensemble import ADVERSARIAL, BENIGN, ensemble, is_flagged


def detector_log_probabilities(detector_logits: list[torch.Tensor]) -> torch.Tensor:
    """``(log p⁺, log p⁻)`` (N, 2) of one detector, or of GCD's entropy ensemble of two (``defense.ensemble``).

    With two detectors (``[DET_org, DET_IS]`` logits) the more confident one is adopted per
    example; the choice is piecewise constant, and the gradient flows through the adopted one.
    """
    log_p = torch.stack([F.log_softmax(logits, dim=1) for logits in detector_logits])  # (K, N, 2)
    _, decided = ensemble(list(log_p.exp()))
    return log_p[decided, torch.arange(log_p.shape[1], device=log_p.device)]


def detector_as_class_logits(class_logits: torch.Tensor, detector_log_p: torch.Tensor) -> torch.Tensor:
    """The L+1 outputs ``z`` (N, L+1) of a detected classifier (module docstring; C&W 2017a, section 5)."""
    if class_logits.dim() != 2 or detector_log_p.shape != (class_logits.shape[0], 2):
        raise ValueError(
            f"detector_as_class_logits: expected logits (N, L) and detector log-probabilities (N, 2), "
            f"got {tuple(class_logits.shape)} and {tuple(detector_log_p.shape)}"
        )
    shifted = class_logits - class_logits.amax(dim=1, keepdim=True)
    return torch.cat([shifted + detector_log_p[:, BENIGN, None], detector_log_p[:, 1:]], dim=1)


def detector_loss(z: torch.Tensor) -> torch.Tensor:
    """``L_GCD`` (N,) of eq. 14: the detector's cross entropy at "benign", ``−log p⁺ = −max_{i<L} z_i``."""
    return -z[:, :-1].amax(dim=1)


def combined_loss(z: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 14 (N,): ``L_com = L_adv + β·L_GCD`` with ``L_adv = −CE(f(x), y)``, to be minimised.

    Returned with the sign flipped (``CE(f(x), y) − β·L_GCD``), as the quantity an untargeted
    gradient attack ascends: leave ``y`` while keeping the detector's benign probability high.
    """
    return F.cross_entropy(z[:, :-1], y, reduction="none") - beta * detector_loss(z)


def combined_margins(z: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """Class scores (N, L) for margin attacks (CW, DeepFool) under eq. 14.

    ``z[:, :L]`` with ``β·L_GCD`` added to the true class: the margin of ``y`` over any class
    ``k``, ``v_y − v_k = (Z_y − Z_k) + β·L_GCD``, is the classifier's margin plus the weighted
    detector loss, so driving it below zero fools ``f`` and lowers the detector's suspicion.
    """
    scores = z[:, :-1].clone()
    rows = torch.arange(len(y), device=z.device)
    scores[rows, y] = scores[rows, y] + beta * detector_loss(z)
    return scores


class DetectorEvasion(Objective):
    """The objective of an attack on the L+1 outputs ``z`` of a detected classifier (section 4.2).

    Targeted (C&W 2017a): the plain cross entropy and margins of ``z`` at the target, over all
    L+1 classes, which push the adversarial class down with the others. Untargeted: the paper's eq. 14
    (gradient attacks ascend ``combined_loss``, margin attacks work on ``combined_margins``, weight
    ``beta``). Success in every case, as C&W 2017a
    and section 4.2 count it: the L+1 prediction is a natural class, the target or anything but
    ``y``: ``f`` is fooled and the detector does not flag the input.

    Args:
        num_classes: L, the number of natural classes; index L of ``z`` is "adversarial".
        beta: the weight of the detector loss in eq. 14 (untargeted).
        targeted: the attack reaches a target class.
    """

    def __init__(self, num_classes: int, beta: float, targeted: bool) -> None:
        if beta < 0:
            raise ValueError(f"DetectorEvasion: beta must be >= 0, got {beta}")
        self.num_classes = int(num_classes)
        self.beta = float(beta)
        self.targeted = bool(targeted)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            return super().loss(outputs, labels)
        return combined_loss(outputs, labels, self.beta)

    def margins(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            return outputs
        return combined_margins(outputs, labels, self.beta)

    def predictions_succeed(self, pred: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        return super().predictions_succeed(pred, labels, targeted) & (pred != self.num_classes)


DETECTOR_TERMS = ("each", "sum")


def classifier_margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """(N,) how far ``f`` is from being fooled; ``f`` is fooled once it is negative (ties aside).

    Untargeted: ``Z_y − max_{k≠y} Z_k``; targeted: ``max_{k≠t} Z_k − Z_t`` (C&W 2017b's f₆).
    """
    rows = torch.arange(len(labels), device=logits.device)
    own = logits[rows, labels]
    others = logits.clone()
    others[rows, labels] = -torch.inf
    best_other = others.amax(dim=1)
    return best_other - own if targeted else own - best_other


def detector_gaps(detector_logits: torch.Tensor) -> torch.Tensor:
    """(N, K) each detector's logit gap ``l⁻ − l⁺`` from its (N, 2K) logits: positive flags the input."""
    pairs = detector_logits.unflatten(1, (-1, 2))
    return pairs[..., ADVERSARIAL] - pairs[..., BENIGN]


def ensemble_flags(detector_logits: torch.Tensor) -> torch.Tensor:
    """(N,) bool, the real decision of one detector, or of GCD's ensemble of two (eq. 10-11), from (N, 2K) logits.

    The same softmax, ``defense.ensemble`` and ``p⁺ < p⁻`` rule as ``GCD.detect``; no detector flags nothing.
    """
    if detector_logits.shape[1] == 0:
        return torch.zeros(len(detector_logits), dtype=torch.bool, device=detector_logits.device)
    probabilities = torch.softmax(detector_logits.unflatten(1, (-1, 2)), dim=2)
    return is_flagged(ensemble(list(probabilities.unbind(1)))[0])


def detector_hinge(detector_logits: torch.Tensor, kappa: float, term: str) -> torch.Tensor:
    """(N,) the detector part of the hinge loss: zero once the detectors are evaded with margin ``kappa``.

    ``"each"``: ``Σ_d max(gap_d + κ, 0)``, every detector pushed to "benign" until it is
    confidently there; a detector that eq. 11 does not select still gets a gradient.
    ``"sum"``: ``max(Σ_d gap_d + κ, 0)``. With two detectors this is the ensemble's own boundary:
    eq. 10-11 adopt the detector of larger ``|gap|`` (the binary entropy falls as ``|gap|``
    grows), and the adopted gap is negative exactly when ``gap_org + gap_is < 0`` (ties aside),
    so either route to evasion, a benign vote or a more confident benign one, lowers it.
    """
    gaps = detector_gaps(detector_logits)
    if term == "each":
        return F.relu(gaps + kappa).sum(dim=1)
    if term == "sum":
        return F.relu(gaps.sum(dim=1) + kappa)
    raise ValueError(f"detector_hinge: unknown detector term {term!r}; choose one of {DETECTOR_TERMS}")


class HingeEvasion(Objective):
    """Hinge losses on ``f``'s margin and on the detectors' logit gaps (C&W 2017a/b; Bryniarski et al. 2022).

    Outputs are those of ``GuardedClassifier``: ``f``'s L logits, then each detector's two
    logits (N, L + 2K). The loss to minimise is

        max(m_f + κ, 0) + β · detector_hinge(κ)

    with ``m_f`` the ``classifier_margin``: both terms stop pushing once satisfied with margin κ,
    so neither can run away from the other as an unbounded cross entropy can. The attacks of
    the registry ascend the loss of untargeted attacks, so it is returned negated for them.
    Success is the real decision: ``f`` fooled and the input not flagged (``ensemble_flags``).

    Args:
        num_classes: L.
        kappa: confidence κ ≥ 0 of both hinges.
        beta: weight β ≥ 0 of the detector term.
        targeted: the attack reaches a target class.
        term: ``"each"`` or ``"sum"`` (``detector_hinge``).
    """

    def __init__(self, num_classes: int, kappa: float, beta: float, targeted: bool, term: str = "each") -> None:
        if kappa < 0 or beta < 0:
            raise ValueError(f"HingeEvasion: kappa and beta must be >= 0, got kappa={kappa}, beta={beta}")
        if term not in DETECTOR_TERMS:
            raise ValueError(f"HingeEvasion: unknown detector term {term!r}; choose one of {DETECTOR_TERMS}")
        self.num_classes = int(num_classes)
        self.kappa = float(kappa)
        self.beta = float(beta)
        self.targeted = bool(targeted)
        self.term = term

    def split(self, outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f``'s logits (N, L) and the detectors' logits (N, 2K)."""
        return outputs[:, : self.num_classes], outputs[:, self.num_classes :]

    def class_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) ``max(m_f + κ, 0)``, to be minimised."""
        return F.relu(classifier_margin(self.split(outputs)[0], labels, self.targeted) + self.kappa)

    def detector_loss(self, outputs: torch.Tensor) -> torch.Tensor:
        """(N,) the weighted detector hinge, to be minimised."""
        return self.beta * detector_hinge(self.split(outputs)[1], self.kappa, self.term)

    def total_loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) the hinge loss to be minimised."""
        return self.class_loss(outputs, labels) + self.detector_loss(outputs)

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = self.total_loss(outputs, labels)
        return total if self.targeted else -total

    def margins(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Class scores (N, L) for margin attacks: the label's score moved by the detector hinge.

        Untargeted: ``Z_y + detector hinge``; targeted: ``Z_t − detector hinge``. The margin the
        attack drives below zero is then ``m_f`` plus the detector hinge: both fooled and evaded.
        """
        logits, detectors = self.split(outputs)
        scores = logits.clone()
        rows = torch.arange(len(labels), device=outputs.device)
        penalty = self.beta * detector_hinge(detectors, self.kappa, self.term)
        scores[rows, labels] = scores[rows, labels] + (-penalty if self.targeted else penalty)
        return scores

    def fooled(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) bool, ``f`` alone is fooled."""
        return super().predictions_succeed(self.split(outputs)[0].argmax(dim=1), labels, self.targeted)

    def success(self, outputs: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        return self.fooled(outputs, labels) & ~ensemble_flags(self.split(outputs)[1])
