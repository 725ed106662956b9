"""The Guided Complementary Defense (section 3) as components: detectors, the entropy ensemble, rectifiers."""

from gcd_lightning.defense.base import Detector, Rectifier
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.defense.ensemble import ADVERSARIAL, BENIGN, binary_entropy, ensemble, entropy_select, is_flagged
from gcd_lightning.defense.gcd import GCD, DetectResult, Prediction
from gcd_lightning.defense.guided_masking import GuidedMasking
from gcd_lightning.defense.rectifier import (
    detector_saliency,
    guided_saliency,
    masked_duplicates,
    random_mask,
    saliency_threshold,
    zero_most_salient,
)
from gcd_lightning.defense.rectifier_module import RectifierFineTune
from gcd_lightning.defense.sensitivity import input_sensitivity, sensitivity_features

__all__ = [
    "ADVERSARIAL",
    "BENIGN",
    "GCD",
    "DetectResult",
    "Detector",
    "DetectorInput",
    "GuidedMasking",
    "Prediction",
    "Rectifier",
    "RectifierFineTune",
    "SubDetector",
    "binary_entropy",
    "detector_saliency",
    "ensemble",
    "entropy_select",
    "guided_saliency",
    "input_sensitivity",
    "is_flagged",
    "masked_duplicates",
    "random_mask",
    "saliency_threshold",
    "sensitivity_features",
    "zero_most_salient",
]
