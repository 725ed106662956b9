"""``GCD``: the whole Guided Complementary Defense at inference time (section 3)."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from gcd_lightning.defense.ensemble import entropy_select, is_flagged
from gcd_lightning.defense.rectifier import (
    check_fraction,
    check_images,
    guided_saliency,
    random_mask,
    saliency_threshold,
)


@dataclasses.dataclass
class DetectResult:
    """The detection of a batch of N inputs.

    Attributes:
        p_org: (N, 2) ``(p⁺, p⁻)`` of ``DET_org`` (eq. 9).
        p_is: (N, 2) ``(p⁺, p⁻)`` of ``DET_IS`` (eq. 8).
        p: (N, 2) the adopted probabilities (eq. 11).
        use_org: (N,) bool, ``DET_org`` decided (``H_o < H_s``, eq. 10-11).
        flagged: (N,) bool, the input is adversarial (``p⁺ < p⁻``).
    """

    p_org: torch.Tensor
    p_is: torch.Tensor
    p: torch.Tensor
    use_org: torch.Tensor
    flagged: torch.Tensor


class GCD(nn.Module):
    """Detect, then classify benign inputs with ``f`` and rectify flagged ones with ``f_rec``.

    A flagged input is masked under the guidance of the sub-detector that decided it: its saliency
    ``|∂L_DET/∂x|`` selects suspect pixels (eq. 12) which are randomly replaced (eq. 13) before
    ``f_rec`` classifies it. The module is for inference and stays in eval mode; the masks are
    random (seeded by ``generator``).

    Args:
        classifier: the protected classifier ``f`` (pixels -> logits).
        rectifier: the fine-tuned copy ``f_rec`` (pixels -> logits over the same classes).
        det_org: ``DET_org``, images -> 2 logits (benign, adversarial), e.g. a ``SubDetector``.
        det_is: ``DET_IS``, images -> 2 logits; it computes the sensitivity of ``f`` itself.
        alpha: the threshold share of eq. 12, in [0, 1].
        p: the replacement probability of eq. 13, in [0, 1].
        generator: random source of the masks; the global one when ``None``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        rectifier: nn.Module,
        det_org: nn.Module,
        det_is: nn.Module,
        alpha: float,
        p: float,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_fraction(alpha, "GCD: alpha")
        check_fraction(p, "GCD: p")
        self.classifier = classifier
        self.rectifier = rectifier
        self.det_org = det_org
        self.det_is = det_is
        self.alpha = alpha
        self.p = p
        self.generator = generator
        self.eval()

    def _check_eval(self) -> None:
        if self.training:
            raise RuntimeError("GCD is an inference module; call eval() (train the parts on their own)")

    def detect(self, x: torch.Tensor) -> DetectResult:
        """Run both sub-detectors on ``x`` (N, C, H, W) and combine them (eq. 10-11)."""
        check_images(x)
        self._check_eval()
        p_org = torch.softmax(self.det_org(x), dim=1)
        p_is = torch.softmax(self.det_is(x), dim=1)
        p, use_org = entropy_select(p_org, p_is)
        return DetectResult(p_org=p_org, p_is=p_is, p=p, use_org=use_org, flagged=is_flagged(p))

    def rectify(self, x: torch.Tensor, result: DetectResult) -> torch.Tensor:
        """``x`` with its flagged examples randomly masked (eq. 12-13); benign ones are unchanged."""
        check_images(x)
        flagged = result.flagged
        if not flagged.any():
            return x
        out = x.clone()
        out[flagged] = self.mask(x[flagged], result.use_org[flagged])
        return out

    def mask(self, x: torch.Tensor, use_org: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """``samples`` random masks of every input (eq. 12-13), guided by the detector ``use_org`` names.

        Returns (samples·N, C, H, W), the masks of one draw after each other; the saliency is
        computed once. The result is detached: masking is not differentiable (white-box
        attacks pass it with BPDA, ``gcd_lightning.whitebox``).
        """
        suspect = saliency_threshold(guided_saliency(self.det_org, self.det_is, x, use_org), self.alpha)
        return torch.cat([random_mask(x, suspect, self.p, self.generator) for _ in range(samples)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, L): ``f(x)`` for inputs detected benign, ``f_rec(masked x)`` for flagged ones."""
        logits, _ = self._classify(x)
        return logits

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, DetectResult]:
        """Predicted classes (N,) and the detection that routed each input."""
        logits, result = self._classify(x)
        return logits.argmax(dim=1), result

    def _classify(self, x: torch.Tensor) -> tuple[torch.Tensor, DetectResult]:
        result = self.detect(x)
        logits_f = self.classifier(x)
        logits_rec = self.rectifier(self.rectify(x, result))
        return torch.where(result.flagged[:, None], logits_rec, logits_f), result
