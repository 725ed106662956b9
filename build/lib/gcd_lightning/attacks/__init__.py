"""Adversarial attacks in pixel space, behind one contract (:class:`Attack`) and a name registry.

FGSM, PGD and CW wrap advertorch (imported only through :mod:`.advertorch_compat`); DeepFool and
DDN are implemented here. Hydra configs: ``conf/attack/*.yaml``.
"""

from gcd_lightning.attacks.base import Attack, Norm, random_targets
from gcd_lightning.attacks.cw import CW
from gcd_lightning.attacks.ddn import DDN
from gcd_lightning.attacks.deepfool import DeepFool
from gcd_lightning.attacks.fgsm import FGSM
from gcd_lightning.attacks.pgd import PGD
from gcd_lightning.attacks.runner import run_attack

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM,
    "pgd": PGD,
    "deepfool": DeepFool,
    "cw": CW,
    "ddn": DDN,
}

__all__ = [
    "ATTACKS",
    "CW",
    "DDN",
    "Attack",
    "DeepFool",
    "FGSM",
    "Norm",
    "PGD",
    "random_targets",
    "run_attack",
]
