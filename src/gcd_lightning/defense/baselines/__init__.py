"""The paper's baseline detectors (Table 2) and training-free references, each a ``Detector``.

Statistics fitted once (``ScoredDetector``): ``SensitivityNorm`` (the plain ``‖G‖₂`` threshold of
eq. 1), ``FeatureSqueezing`` (Xu et al. 2018), ``Mahalanobis`` (``DET_MDS``, Lee et al. 2018),
``TurningWeakness`` (``DET_TWS``, Hu et al. 2019) and ``PixelCNNLikelihood`` (``DET_PD``, Song et al. 2018).
Each is a class here plus a YAML file in ``conf/baseline/``; the baselines stage fits, caches and
scores them on the same test pairs as GCD.

The rectifier baselines of Table 5 are defended classifiers (``RobustRecipe``, ``conf/rectifier_baseline/``):
adversarial training, and ``TotalVariationMinimization`` (TVM, Guo et al. 2018) or ``PixelDefend``'s
purification (Song et al. 2018) in front of a classifier.
"""

from gcd_lightning.defense.baselines.gnorm import SensitivityNorm
from gcd_lightning.defense.baselines.mahalanobis import Mahalanobis
from gcd_lightning.defense.baselines.pixeldefend import PixelCNNLikelihood, PixelDefend, purify
from gcd_lightning.defense.baselines.robust_training import (
    AdversarialExamples,
    Preprocessed,
    Preprocessing,
    RobustRecipe,
    RobustTraining,
)
from gcd_lightning.defense.baselines.scored import FitData, ScoredDetector
from gcd_lightning.defense.baselines.squeezing import FeatureSqueezing
from gcd_lightning.defense.baselines.tvm import TotalVariationMinimization, total_variation, tvm_reconstruct
from gcd_lightning.defense.baselines.tws import TurningWeakness

__all__ = [
    "AdversarialExamples",
    "FeatureSqueezing",
    "FitData",
    "Mahalanobis",
    "PixelCNNLikelihood",
    "PixelDefend",
    "Preprocessed",
    "Preprocessing",
    "RobustRecipe",
    "RobustTraining",
    "ScoredDetector",
    "SensitivityNorm",
    "TotalVariationMinimization",
    "TurningWeakness",
    "purify",
    "total_variation",
    "tvm_reconstruct",
]
