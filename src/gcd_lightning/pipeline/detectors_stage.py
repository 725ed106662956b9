"""Stage ``detectors``: ``DET_org`` (eq. 9) and ``DET_IS`` (eq. 8) trained on clean/adversarial pairs (eq. 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, stack
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.defense.ensemble import ADVERSARIAL, entropy_select, is_flagged
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.training import fit_best, seed_stage
from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.hashing import spec_hash

log = logging.getLogger(__name__)


def pair_split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (train, val) rows of an adversarial set; a clean image and its attack stay together."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def detection_pairs(clean: torch.Tensor, adv: AdversarialSet, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The data set of eq. 7: clean images (label 0) and the successful attacks on them (label 1).

    Unsuccessful attacks are left out: a minimal-norm attack that fails returns the clean image,
    which would then carry both labels.
    """
    won = rows[adv.success[rows]]
    x = torch.cat([clean[rows], adv.x_adv[won]])
    label = torch.cat([torch.zeros(len(rows)), torch.ones(len(won))]).long()
    return x, label


def build_detector(ctx: RunContext, kind: DetectorInput, classifier: nn.Module) -> SubDetector:
    cfg = ctx.cfg.detector
    return SubDetector(
        body=hydra.utils.instantiate(cfg.body),
        kind=kind,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        classifier=classifier if kind is DetectorInput.SENSITIVITY else None,
    )


def detectors_dir(ctx: RunContext, adv_train_path: Path, classifier_id: str) -> Path:
    spec = {
        "adversarial": adv_train_path.name,
        "classifier": classifier_id,
        "detector": ctx.cfg.detector,
        "seed": ctx.cfg.seed,
    }
    return ctx.cache_dir / "detectors" / f"{adv_train_path.stem}_{spec_hash(spec)}"


def run_detectors_stage(
    ctx: RunContext, classifier: nn.Module, classifier_id: str, adv_train: AdversarialSet, adv_train_path: Path
) -> tuple[dict[DetectorInput, SubDetector], Path, dict[str, float]]:
    """Train (or load) both sub-detectors; validation AUC picks the epoch. Returns them, their folder, metrics."""
    cfg = ctx.cfg
    folder = detectors_dir(ctx, adv_train_path, classifier_id)
    clean, _ = stack(ctx.datamodule.dataset(ctx.source_split("train")), adv_train.index)
    train_rows, val_rows = pair_split(len(adv_train), cfg.detector.val_fraction, cfg.seed)
    detectors: dict[DetectorInput, SubDetector] = {}
    metrics: dict[str, float] = {}
    for kind in DetectorInput:
        seed_stage(cfg.seed, f"detector {kind.value}")
        detector = build_detector(ctx, kind, classifier)
        weights, summary_path = folder / f"{kind.value}.pt", folder / f"{kind.value}.json"
        cached = distributed.broadcast(weights.is_file() and summary_path.is_file())  # rank 0's look, for all
        if cached:
            log.info("detector %s: cache hit %s", kind.value, weights)
            detector.load_state_dict(load_torch(weights, f"cached detector {kind.value}"))
            summary = load_json(summary_path, f"cached detector {kind.value} summary")
        else:
            log.info("detector %s: cache miss, training into %s", kind.value, folder)
            best, seconds = fit_best(
                ctx,
                detector,
                detection_pairs(clean, adv_train, train_rows),
                detection_pairs(clean, adv_train, val_rows),
                max_epochs=cfg.detector.max_epochs,
                batch_size=cfg.detector.batch_size,
                monitor="val/auc",
            )
            summary = {"val_auc": best, "train_seconds": seconds}
            distributed.write_on_rank_zero(save_torch, detector.state_dict(), weights)
            distributed.write_on_rank_zero(save_json, summary, summary_path)
        detectors[kind] = detector.eval().to(ctx.device)
        metrics[f"detector.val_auc.{kind.value}"] = summary["val_auc"]
        metrics[f"detector.train_seconds.{kind.value}"] = summary["train_seconds"]
        metrics[f"detector.cached.{kind.value}"] = float(cached)
    metrics.update(validate_ensemble(detectors, *detection_pairs(clean, adv_train, val_rows), cfg.adversarial.batch_size))
    return detectors, folder, metrics


@torch.no_grad()
def validate_ensemble(
    detectors: dict[DetectorInput, SubDetector], x: torch.Tensor, label: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """The ensemble (eq. 10-11) on the validation pairs: AUC, flagged share of attacks and of clean images.

    These are the figures to choose detector settings by; the test pairs are for reporting only.
    """
    det_org, det_is = detectors[DetectorInput.PIXELS], detectors[DetectorInput.SENSITIVITY]
    device = next(det_org.parameters()).device
    p = distributed.map_batches(
        lambda _, rows: entropy_select(det_org.probabilities(x[rows].to(device)), det_is.probabilities(x[rows].to(device)))[0].cpu(),
        len(x),
        batch_size,
    )
    flagged = is_flagged(p)
    return {
        "detector.val_auc.gcd": binary_auroc(p[:, ADVERSARIAL], label).item(),
        "detector.val_tpr.gcd": flagged[label == 1].float().mean().item(),
        "detector.val_fpr.gcd": flagged[label == 0].float().mean().item(),
    }
