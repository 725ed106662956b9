"""``SensitivityNorm``: eq. 1 with no detector network, the plain ``‖G(x, ŷ)‖₂`` threshold.

The training-free reference ``DET_IS`` must be read beside: if a threshold on the input
sensitivity's norm separates an attack, the CNN on the whole map adds little there. It needs no
adversarial example to fit, only clean validation images for its threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from gcd_lightning.defense.baselines.scored import ScoredDetector
from gcd_lightning.defense.sensitivity import input_sensitivity


def log_sensitivity_norm(g: torch.Tensor) -> torch.Tensor:
    """(N,) ``log ‖G‖₂`` of each example's gradient map (eq. 1 on a log scale: it spans orders of magnitude)."""
    return torch.log(g.flatten(1).norm(dim=1).clamp_min(1e-30))


class SensitivityNorm(ScoredDetector):
    """Flags inputs whose ``log ‖G(x, ŷ)‖₂`` (eq. 1, ``f``'s own prediction ``ŷ``) exceeds a clean threshold.

    Args:
        classifier: the protected classifier ``f`` (kept by reference, not a submodule: its
            weights are ``f``'s, saved with ``f``).
        fpr: false-positive rate of the threshold on clean validation images.
    """

    name = "gnorm"

    def __init__(self, classifier: nn.Module, fpr: float = 0.05) -> None:
        super().__init__(fpr)
        object.__setattr__(self, "classifier", classifier.eval())

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return log_sensitivity_norm(input_sensitivity(self.classifier, x, create_graph=x.requires_grad))

    def reads_sensitivity_of(self, classifier: nn.Module) -> bool:
        return classifier is self.classifier

    def logits_from_sensitivity(self, sensitivity: torch.Tensor) -> torch.Tensor:
        return self.logits_from_score(log_sensitivity_norm(sensitivity))
