"""GCD and its parts as differentiable modules for adaptive attacks (section 4.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gcd_lightning.bpda import bpda_eot_probabilities
from gcd_lightning.defense.baselines.robust_training import Preprocessed
from gcd_lightning.defense.ensemble import ADVERSARIAL, BENIGN
from gcd_lightning.defense.gcd import GCD


class GuardedClassifier(nn.Module):
    """``f`` and any detectors side by side, for the hinge attacks: outputs (N, L + 2K).

    ``f``'s L logits, then the two logits ``(benign, adversarial)`` of each detector, in order.
    A detector is any ``nn.Module`` from images in [0, 1] to (N, 2) logits that stays
    differentiable (``DET_org``, ``DET_IS``, a baseline, or a baseline's ``surrogate()``);
    one detector decides alone, two are GCD's entropy ensemble ``[DET_org, DET_IS]`` (eq. 10-11,
    ``objectives.ensemble_flags``); none leaves ``f`` alone (NoDET), attacked by the same PGD.
    """

    def __init__(self, classifier: nn.Module, detectors: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(detectors) > 2:
            raise ValueError(f"GuardedClassifier: none, one detector or GCD's two, got {len(detectors)}")
        self.classifier = classifier
        self.detectors = nn.ModuleList(detectors)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier(x), *(detector(x) for detector in self.detectors)], dim=1)


def log_probabilities(p: torch.Tensor) -> torch.Tensor:
    """``log p``, with zeros lifted to the smallest positive float, so that cross entropy and margins apply unchanged."""
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


class PurifiedClassifier(nn.Module):
    """A classifier behind an input purifier (TVM, PixelDefend: Table 5's ``Preprocessed``) for BPDA + EOT.

    The log of ``(1/K)·Σ_k softmax(network(p_k(x)))`` over ``K`` draws of the purifier ``p`` (TVM's random
    pixel dropout; PixelDefend is deterministic), each passed with BPDA (``bpda_eot_probabilities``): the
    purifier is neither differentiable (TVM's solver, PixelDefend's greedy argmax) nor meant to be, and
    Athalye et al. (2018) broke both this way. Success is judged on the real defended classifier.

    Args:
        defense: ``network(preprocess(x))`` with a ``preprocess``.
        eot_samples: ``K``, purifier draws averaged per forward pass.
    """

    def __init__(self, defense: Preprocessed, eot_samples: int) -> None:
        super().__init__()
        if defense.preprocess is None:
            raise ValueError("PurifiedClassifier: the defended classifier has no purifier; attack its network itself")
        if eot_samples < 1:
            raise ValueError(f"PurifiedClassifier: eot_samples must be at least 1, got {eot_samples}")
        self.defense = defense
        self.eot_samples = int(eot_samples)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            purified = self.defense.preprocess(x.detach().repeat(self.eot_samples, *([1] * (x.dim() - 1))))
        return log_probabilities(bpda_eot_probabilities(self.defense.network, x, purified, self.eot_samples))


class RandomizedGCD(nn.Module):
    """The whole GCD, rectifier path included, as log-probabilities over the L classes for BPDA + EOT.

    GCD answers ``f(x)`` when the ensemble calls ``x`` benign and the rectifier's answer when it flags
    it. The smooth surrogate attacked here is the expected answer

        P(i | x) = p⁺(x)·softmax(f(x))_i + p⁻(x)·E[softmax(rectifier(x))_i]

    with the ensemble's probabilities (eq. 10-11) and the rectifier's expectation over ``K`` draws of
    its randomness (EOT), differentiated as the rectifier says (``Rectifier.expected_probabilities``:
    GCD's guided masking passes each random mask ``m_k`` with BPDA, ``∂m_k(x)/∂x := I``, Athalye et al.
    2018; any other rectifier through its own graph). Its log is returned, so that the attacks' cross
    entropy and margins apply unchanged. Success is judged on the real GCD (hard decision, one random
    draw), not on this surrogate.

    Args:
        gcd: the trained GCD (eval mode) with a rectifier.
        eot_samples: ``K``, draws averaged per forward pass (one for a rectifier that is not random).
    """

    def __init__(self, gcd: GCD, eot_samples: int) -> None:
        super().__init__()
        if eot_samples < 1:
            raise ValueError(f"RandomizedGCD: eot_samples must be at least 1, got {eot_samples}")
        if gcd.rectifier is None:
            raise ValueError("RandomizedGCD: the defense has no rectifier (detection only); attack its detectors instead")
        self.gcd = gcd
        self.eot_samples = int(eot_samples)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.gcd.detect(x)
        rectifier = self.gcd.rectifier
        saliency = self.gcd.saliency(x.detach(), result.decided) if rectifier.guided else None
        rec = rectifier.expected_probabilities(x, saliency, self.eot_samples)
        clean = torch.softmax(self.gcd.classifier(x), dim=1)
        return log_probabilities(result.p[:, BENIGN, None] * clean + result.p[:, ADVERSARIAL, None] * rec)


class Seeded(nn.Module):
    """A random classifier (TVM's pixel dropout) made one fixed function of its input: every forward pass draws its
    randomness after seeding ``seed`` (``indicators.JUDGE_SEED``, which no attack uses), so a judge that reads it
    gives one answer per input, and the decision-based attacks walk along one decision."""

    def __init__(self, model: nn.Module, seed: int) -> None:
        super().__init__()
        self.model, self.seed = model, int(seed)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            torch.manual_seed(self.seed)
            return self.model(x)
