"""Stage ``detectors``: the detectors of ``defense.detectors`` (GCD: ``DET_org``, eq. 9, and ``DET_IS``, eq. 8) trained on clean/adversarial pairs (eq. 7)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, detection_pairs
from gcd_lightning.cache import Key, Weights
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.ensemble import ADVERSARIAL
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.pipeline.components import build_detector, detection_split, train_detector
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.training import seed_stage


def detectors_group(ctx: RunContext, adv_train_path: Path, classifier_id: str) -> str:
    """The cache folder of the run's detectors (under ``detectors/``); its name keys the rectifier and the white-box caches."""
    spec = {
        "adversarial": adv_train_path.name,
        "classifier": classifier_id,
        "detector": ctx.cfg.detector,
        "trainer": ctx.training_identity(),
        "seed": ctx.defense_seed,
        **code_version("detectors"),
    }
    return Key(adv_train_path.stem, spec).id


def run_detectors_stage(
    ctx: RunContext, classifier: nn.Module, classifier_id: str, adv_train: AdversarialSet, adv_train_path: Path
) -> tuple[dict[str, Detector], str, dict[str, float]]:
    """Train (or load) every detector; validation AUC picks the epoch. Returns them by name, their cache group
    (``detectors_group``; each detector's entry in it is keyed by its entry of ``defense.detectors``), metrics."""
    cfg = ctx.cfg
    group = detectors_group(ctx, adv_train_path, classifier_id)
    clean, (train_rows, val_rows) = detection_split(ctx, adv_train)
    detectors: dict[str, Detector] = {}
    metrics: dict[str, float] = {}
    for name in cfg.defense.detectors:
        seed_stage(ctx.defense_seed, f"detector {name}")  # before the detector's random initialisation
        detector = detectors[name] = build_detector(ctx, cfg.defense.detectors[name], classifier)
        if detector.name != name:
            raise ValueError(f"defense.detectors.{name} builds a detector named {detector.name!r}; name the entry {detector.name!r}")
        key = Key(name, {"detector": cfg.defense.detectors[name]}, group)

        def train(resume: Path, detector: Detector = detector, name: str = name) -> dict[str, float]:  # bound now
            return train_detector(ctx, detector, clean, adv_train, (train_rows, val_rows), resume, f"detector {name}")

        summary, cached = ctx.cache.get_or_build(Weights("detectors", detector, f"detector {name}"), key, train)
        detector.eval().to(ctx.device)
        metrics[f"detector.val_auc.{name}"] = summary["val_auc"]
        metrics[f"detector.train_seconds.{name}"] = summary["train_seconds"]
        metrics[f"detector.cached.{name}"] = float(cached)
    gcd = GCD(classifier, list(detectors.values()))
    metrics.update(validate_ensemble(gcd, *detection_pairs(clean, adv_train, val_rows), cfg.adversarial.batch_size))
    return detectors, group, metrics


@torch.no_grad()
def validate_ensemble(gcd: GCD, x: torch.Tensor, label: torch.Tensor, batch_size: int) -> dict[str, float]:
    """The defense's detection (eq. 10-11 for GCD) on the validation pairs: AUC, flagged share of attacks and of clean images.

    These are the figures to choose detector settings by; the test pairs are for reporting only.
    """
    device = next(gcd.parameters()).device

    def detect(_: int, rows: slice) -> dict[str, torch.Tensor]:
        result = gcd.detect(x[rows].to(device))
        return {"p_adv": result.p[:, ADVERSARIAL].cpu(), "flagged": result.flagged.cpu()}

    answers = distributed.map_batches(detect, len(x), batch_size)
    flagged = answers["flagged"]
    return {
        "detector.val_auc.gcd": binary_auroc(answers["p_adv"], label).item(),
        "detector.val_tpr.gcd": flagged[label == 1].float().mean().item(),
        "detector.val_fpr.gcd": flagged[label == 0].float().mean().item(),
    }
