"""The config checked before any work: every bad value fails in the first second, naming the key, the value and the range.

``check_config`` runs first in ``run``: the settings below with their types and ranges, the
attack built once on a stand-in model (so each attack's own constructor checks its budget and
steps), and the white-box settings (``whitebox_stage.check_threat``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import hydra
from omegaconf import DictConfig, OmegaConf
from torch import nn

from gcd_lightning.pipeline.context import TRAIN_SOURCES
from gcd_lightning.pipeline.whitebox_stage import check_threat

Check = Callable[[object], bool]


def integer(low: int) -> tuple[Check, str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low), f"an integer >= {low}"


def number(low: float, high: float, low_open: bool = False, high_open: bool = False) -> tuple[Check, str]:
    def ok(v: object) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return ok, f"a number in {interval}"


def one_of(*choices: object) -> tuple[Check, str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


def optional(rule: tuple[Check, str]) -> tuple[Check, str]:
    check, text = rule
    return (lambda v: v is None or check(v)), f"null or {text}"


RULES: dict[str, tuple[Check, str]] = {
    "seed": integer(0),
    "adversarial.train_split": one_of(*TRAIN_SOURCES),
    "adversarial.n_train": integer(1),
    "adversarial.n_test": integer(1),
    "adversarial.batch_size": integer(1),
    "evaluate.n_clean": optional(integer(1)),
    "evaluate.mask_draws": integer(1),
    "dataset.linf_eps": number(0, 1, low_open=True),
    "detector.max_epochs": integer(1),
    "detector.batch_size": integer(1),
    "detector.val_fraction": number(0, 1, low_open=True, high_open=True),
    "rectifier.alpha": number(0, 1),
    "rectifier.p": number(0, 1),
    "rectifier.k": integer(1),
    "rectifier.max_epochs": integer(1),
    "rectifier.batch_size": integer(1),
}


def check_config(cfg: DictConfig) -> None:
    """Raise a ``ValueError`` naming the first bad setting: key, value, what it must be."""
    for key, (ok, text) in RULES.items():
        value = OmegaConf.select(cfg, key)
        if not ok(value):
            raise ValueError(f"{key}={value!r} is not allowed: it must be {text}")
    if not cfg.model.get("external", False):
        ok, text = integer(1)
        if not ok(cfg.classifier.max_epochs):
            raise ValueError(f"classifier.max_epochs={cfg.classifier.max_epochs!r} is not allowed: it must be {text}")
    try:
        hydra.utils.instantiate(cfg.attack.attack)(model=nn.Identity())
    except (ValueError, TypeError) as err:
        raise ValueError(f"attack={cfg.attack.name}: {err} (attack.* / dataset.linf_eps, pgd_step, pgd_steps)") from err
    if cfg.threat.name == "whitebox":
        check_threat(cfg.threat)
