"""The two interfaces a defense is built from: ``Detector`` and ``Rectifier``.

A new detector (a baseline, a statistical test) or a new rectifier is a subclass plus a YAML file
in ``conf/defense/``; ``GCD`` and the white-box attacks use only what is declared here.
"""

from __future__ import annotations

import torch
from torch import nn


class Detector(nn.Module):
    """A benign/adversarial detector: images (N, C, H, W) in [0, 1] -> logits (N, 2) ``(benign, adversarial)``.

    ``forward`` must stay differentiable with respect to its input (never run under
    ``no_grad`` inside), so that white-box attacks reach through it. How a detector is fitted
    is its own business: the CNN detectors are LightningModules (``SubDetector``); statistical
    ones can offer a plain ``fit``.

    Attributes:
        name: short name, used in metric keys, file names and ``predict``'s columns.
        differentiable: whether gradient attacks can reach through ``forward`` (False for a detector
            built on counts or random draws; the white-box stage attacks its ``surrogate()`` instead,
            or leaves it out when it has none).
        memo: per-image results by the image's bytes (a dict of float tuples), or None: for a detector
            whose costly per-image statistics depend on nothing but the image, ``f`` and its constructor
            settings (not on what it is fitted to). The pipeline keeps it in the cache, so every run
            with the same ``f`` and settings reuses it (``pipeline.baselines_stage.memo_key``).
    """

    name: str
    differentiable: bool = True
    memo: dict[str, tuple[float, ...]] | None = None

    def surrogate(self) -> Detector | None:
        """A differentiable stand-in for a detector that is not (``differentiable`` False), or None.

        White-box attacks reach through the stand-in (BPDA, with EOT over its randomness) while the
        real detector judges every result; a non-differentiable detector without one is left out.
        """
        return None

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``(p⁺, p⁻)`` (N, 2): column 0 benign, column 1 adversarial."""
        return torch.softmax(self(x), dim=1)

    def reads_sensitivity_of(self, classifier: nn.Module) -> bool:
        """Whether the detector reads nothing but ``G(x, ŷ)`` of ``classifier`` at its own prediction.

        ``GCD.predict`` computes that ``G`` once per batch with ``f``'s prediction and hands it to
        such detectors (``logits_from_sensitivity``), which save their own pass through ``f``.
        """
        return False

    def logits_from_sensitivity(self, sensitivity: torch.Tensor) -> torch.Tensor:
        """Logits (N, 2) from ``G(x, ŷ)``; only for detectors that ``reads_sensitivity_of`` the classifier."""
        raise NotImplementedError(f"{type(self).__name__} reads the images, not the classifier's sensitivity")


class Rectifier(nn.Module):
    """Class logits (N, L) for inputs that a defense flagged.

    Attributes:
        guided: the rectifier wants the saliency ``|∂L_DET/∂x|`` of the detector that flagged
            each input (``GCD`` computes it only then, and only for the flagged inputs).
        randomized: the rectifier answers the same input differently from draw to draw (random masks);
            white-box attacks average its answers over draws (EOT).
    """

    guided: bool = False
    randomized: bool = False

    def forward(self, x: torch.Tensor, saliency: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def expected_probabilities(self, x: torch.Tensor, saliency: torch.Tensor | None, samples: int) -> torch.Tensor:
        """``(1/K)·Σ_k softmax(rectifier(x))`` (N, L) over ``K = samples`` draws (one for a rectifier that is not
        ``randomized``), differentiable in ``x``: what white-box attacks on the whole defense follow (BPDA + EOT,
        ``whitebox.models.RandomizedGCD``). By default the rectifier's own graph; a rectifier with a step that is not
        differentiable (GCD's random masks) overrides it and passes that step with BPDA (Athalye et al. 2018)."""
        draws = samples if self.randomized else 1
        return torch.stack([torch.softmax(self(x, saliency), dim=1) for _ in range(draws)]).mean(dim=0)
