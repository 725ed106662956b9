"""``ScoredDetector``: a detector that is a score and a threshold, fitted once rather than trained.

The baselines of Table 2 that are statistics (the plain ``‖G‖₂`` threshold, feature squeezing,
Mahalanobis) share this shape: a differentiable score per image, large for adversarial inputs,
and a threshold set on clean validation images at a chosen false-positive rate. Their logits are
``(0, (score - threshold) / scale)``, so ``p⁻ > 0.5`` exactly above the threshold, and every
evaluation and white-box attack of a ``Detector`` applies to them unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Dataset

from gcd_lightning.adversarial import stack
from gcd_lightning.defense.base import Detector
from gcd_lightning.scoring import threshold_at_fpr


@dataclasses.dataclass
class FitData:
    """What a fitted detector may learn from; never a test image.

    Attributes:
        clean: clean images of the detectors' training pairs (from ``f``'s validation split).
        adversarial: the successful adversarial images of those pairs.
        clean_val: clean images of the held-out pairs, for thresholds (their false-positive rate).
        train: ``f``'s training split, ``(image, label)`` items (class-conditional statistics).
        batch_size: batch size of every pass.
    """

    clean: torch.Tensor
    adversarial: torch.Tensor
    clean_val: torch.Tensor
    train: Dataset
    batch_size: int

    def train_batches(self, n: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``n`` (at most all) training images and labels, a batch at a time."""
        n = min(n, len(self.train))
        for start in range(0, n, self.batch_size):
            yield stack(self.train, torch.arange(start, min(start + self.batch_size, n)))


def in_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` of ``x`` a batch at a time on ``device``, concatenated on the CPU, no graph kept (a
    statistic that needs an input gradient takes it itself, ``input_gradients_enabled``)."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


class ScoredDetector(Detector):
    """A score, large for adversarial inputs, and a threshold set on clean validation images at ``fpr``.

    Subclasses define ``score`` (differentiable in ``x``) and may override ``fit_statistics``
    (what the score itself learns, before the threshold is set).

    Args:
        fpr: false-positive rate of the decision threshold on clean validation images.
    """

    def __init__(self, fpr: float = 0.05) -> None:
        super().__init__()
        if not 0 < fpr < 1:
            raise ValueError(f"{type(self).__name__}: fpr must lie in (0, 1), got {fpr}")
        self.fpr = fpr
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the detection statistic; larger is more adversarial."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_score(self.score(x))

    def logits_from_score(self, s: torch.Tensor) -> torch.Tensor:
        """``(0, (score − threshold) / scale)``: ``p⁻ > 0.5`` exactly above the threshold."""
        return torch.stack([torch.zeros_like(s), (s - self.threshold) / self.scale], dim=1)

    def fit_statistics(self, data: FitData) -> dict[str, float]:
        """Fit what the score depends on (nothing for a training-free score); returns a summary."""
        return {}

    def scores(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """``score`` of every image, in batches, detached, on the CPU."""
        return in_batches(self.score, x, batch_size, self.threshold.device)

    def fit(self, data: FitData) -> dict[str, float]:
        """Fit the score's statistics, then the threshold at ``fpr`` on ``data.clean_val``; returns a summary."""
        summary = self.fit_statistics(data)
        return {**summary, **self.calibrate(self.scores(data.clean_val, data.batch_size))}

    def calibrate(self, clean: torch.Tensor) -> dict[str, float]:
        """The threshold at ``fpr`` of the clean validation scores ``clean``, and their spread as the logits' scale."""
        self.threshold.fill_(threshold_at_fpr(clean, self.fpr))
        spread = clean.double().std().item() if len(clean) > 1 else 1.0
        self.scale.fill_(spread if spread > 0 else 1.0)
        return {"threshold": self.threshold.item(), "scale": self.scale.item()}
