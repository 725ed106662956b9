"""``GCD``: the whole Guided Complementary Defense at inference time (section 3), over any detectors and rectifier."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gcd_lightning.defense.base import Detector, Rectifier
from gcd_lightning.defense.ensemble import ADVERSARIAL, ensemble, is_flagged
from gcd_lightning.inputs import check_inputs
from gcd_lightning.defense.rectifier import check_images, guided_saliency
from gcd_lightning.defense.sensitivity import input_gradients_enabled


@dataclasses.dataclass
class DetectResult:
    """The detection of a batch of N inputs.

    Attributes:
        p_each: each detector's ``(p⁺, p⁻)`` (N, 2) by name (eq. 8-9).
        p: (N, 2) the adopted probabilities (eq. 11).
        decided: (N,) int64, the index of the detector that decided (``GCD.detector_names``).
        flagged: (N,) bool, the input is adversarial (``p⁺ < p⁻``).
    """

    p_each: dict[str, torch.Tensor]
    p: torch.Tensor
    decided: torch.Tensor
    flagged: torch.Tensor


@dataclasses.dataclass
class Prediction:
    """``GCD.predict``'s answer for a batch of N inputs (all tensors detached).

    Attributes:
        label: (N,) the defended prediction: ``f``'s for benign inputs, the rectifier's for flagged ones.
        logits: (N, L) the logits behind ``label``.
        detection: the ``DetectResult``.
        f_label: (N,) ``f``'s own prediction.
        rectified_label: (N,) the rectifier's prediction where flagged, -1 elsewhere (never computed there).
        nonfinite: (N,) bool, inputs with NaN or infinite values (``predict(nonfinite="flag")``): flagged,
            ``p⁻`` 1, label -1 and NaN logits, as nothing was scored.
    """

    label: torch.Tensor
    logits: torch.Tensor
    detection: DetectResult
    f_label: torch.Tensor
    rectified_label: torch.Tensor
    nonfinite: torch.Tensor | None = None

    @property
    def flagged(self) -> torch.Tensor:
        """(N,) bool: flagged, so the rectifier answered (``f`` answered the others); non-finite inputs are flagged."""
        return self.detection.flagged if self.nonfinite is None else self.detection.flagged | self.nonfinite

    @property
    def adversarial_scores(self) -> dict[str, torch.Tensor]:
        """``p⁻`` (N,) of every detector by name, and of the ensemble as ``"gcd"`` (1 for non-finite inputs)."""
        scores = {name: p[:, ADVERSARIAL] for name, p in self.detection.p_each.items()} | {"gcd": self.detection.p[:, ADVERSARIAL]}
        if self.nonfinite is None:
            return scores
        return {name: score.masked_fill(self.nonfinite, 1.0) for name, score in scores.items()}


class GCD(nn.Module):
    """Detect, then classify benign inputs with ``f`` and hand flagged ones to the rectifier.

    The detectors are combined by the entropy ensemble (eq. 10-11, ``ensemble``); a guided
    rectifier (``GuidedMasking``) gets the saliency ``|∂L_DET/∂x|`` of the detector that decided
    each flagged input (eq. 12). The module is for inference and stays in eval mode.

    Args:
        classifier: the protected classifier ``f`` (pixels -> logits).
        detectors: one ``Detector``, or the two of the ensemble in order (``[DET_org, DET_IS]``:
            a tie of eq. 11 goes to the second).
        rectifier: the ``Rectifier`` of flagged inputs; ``None`` for detection only (``forward``
            and ``predict`` then refuse).
        input_shape: ``(C, H, W)`` the parts were trained for; ``predict`` refuses other shapes
            (``check_inputs``). ``None`` skips that check.
    """

    def __init__(
        self,
        classifier: nn.Module,
        detectors: Sequence[Detector],
        rectifier: Rectifier | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= len(detectors) <= 2:
            raise ValueError(f"GCD: one detector or the two of the entropy ensemble, got {len(detectors)}")
        names = [detector.name for detector in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"GCD: detector names must differ, got {names}")
        self.classifier = classifier
        self.detectors = nn.ModuleList(detectors)
        self.rectifier = rectifier
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.eval()

    @property
    def detector_names(self) -> list[str]:
        return [detector.name for detector in self.detectors]

    def _check_eval(self) -> None:
        if self.training:
            raise RuntimeError("GCD is an inference module; call eval() (train the parts on their own)")

    def combine(self, detector_logits: Sequence[torch.Tensor]) -> DetectResult:
        """The detection from each detector's logits (N, 2), in ``detectors``' order (eq. 10-11)."""
        probabilities = [torch.softmax(logits, dim=1) for logits in detector_logits]
        p, decided = ensemble(probabilities)
        return DetectResult(dict(zip(self.detector_names, probabilities)), p, decided, is_flagged(p))

    def detect(self, x: torch.Tensor) -> DetectResult:
        """Run every detector on ``x`` (N, C, H, W) and combine them; differentiable (white-box attacks use it)."""
        check_images(x)
        self._check_eval()
        return self.combine([detector(x) for detector in self.detectors])

    def saliency(self, x: torch.Tensor, decided: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """``|∂L_DET/∂x|`` of each input from the detector that decided it (section 3.2; ``guided_saliency``)."""
        return guided_saliency(list(self.detectors), x, decided, target)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (N, L): ``f(x)`` for inputs detected benign, the rectifier's for flagged ones."""
        return self.predict(x).logits

    def predict(self, x: torch.Tensor, nonfinite: str = "refuse") -> Prediction:
        """The defended prediction of a batch with everything that led to it.

        One pass of ``f`` with its input gradient gives both ``f``'s prediction and ``G(x, ŷ)``,
        which detectors that read only ``G`` (``DET_IS``) take from there; the rectifier (and the
        saliency that guides it) runs on the flagged inputs only. Inputs pass ``check_inputs``
        first (float images in [0, 1], finite, of ``input_shape``) and are cast to ``f``'s dtype.

        ``nonfinite``: ``"refuse"`` (an input with NaN or infinite values raises), or ``"flag"``:
        such inputs are flagged as adversarial and get no label (``Prediction.nonfinite``), the
        others are answered as usual. Never are they scored as clean.
        """
        if nonfinite not in ("refuse", "flag"):
            raise ValueError(f"GCD.predict: nonfinite={nonfinite!r}; choose 'refuse' or 'flag'")
        bad = None
        if nonfinite == "flag" and isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim() == 4:
            bad = ~torch.isfinite(x).flatten(1).all(dim=1)
            x = torch.where(bad[:, None, None, None], torch.zeros_like(x), x)  # a placeholder, never reported
        prediction = self._predict(x)
        if bad is None:
            return prediction
        bad = bad.to(prediction.label.device)
        no_label = lambda labels: labels.masked_fill(bad, -1)  # noqa: E731
        return Prediction(no_label(prediction.label), prediction.logits.masked_fill(bad[:, None], float("nan")),
                          prediction.detection, no_label(prediction.f_label), no_label(prediction.rectified_label), bad)

    def _predict(self, x: torch.Tensor) -> Prediction:
        check_inputs(x, self.input_shape)
        self._check_eval()
        if self.rectifier is None:
            raise RuntimeError("GCD was built without a rectifier (detection only); use detect()")
        parameter = next(self.classifier.parameters(), None)
        x = x.detach() if parameter is None else x.detach().to(parameter.device, parameter.dtype)
        readers = [detector.reads_sensitivity_of(self.classifier) for detector in self.detectors]
        with input_gradients_enabled():
            inputs = x.clone().requires_grad_(any(readers))
            logits_f = self.classifier(inputs)
            f_label = logits_f.argmax(dim=1)
            if any(readers):
                loss = F.cross_entropy(logits_f, f_label, reduction="sum")
                (sensitivity,) = torch.autograd.grad(loss, inputs)
        logits_f = logits_f.detach()
        with torch.no_grad():
            detector_logits = [
                detector.logits_from_sensitivity(sensitivity) if reads else detector(x)
                for detector, reads in zip(self.detectors, readers)
            ]
            detection = self.combine(detector_logits)
        rectified_label = torch.full_like(f_label, -1)
        flagged = detection.flagged
        if not flagged.any():
            return Prediction(f_label, logits_f, detection, f_label, rectified_label)
        logits = logits_f.clone()
        suspect = x[flagged]
        saliency = self.saliency(suspect, detection.decided[flagged]) if self.rectifier.guided else None
        with torch.no_grad():
            logits_rec = self.rectifier(suspect, saliency)
        logits[flagged] = logits_rec.to(logits.dtype)
        rectified_label[flagged] = logits_rec.argmax(dim=1)
        return Prediction(logits.argmax(dim=1), logits, detection, f_label, rectified_label)
