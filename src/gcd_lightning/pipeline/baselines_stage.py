"""Stage ``baselines`` (with ``baseline=[gnorm,squeeze,mds]``): the baseline detectors of Table 2 beside GCD.

Each entry of ``cfg.baseline`` (``conf/baseline/<name>.yaml``) is a ``ScoredDetector`` built with
``classifier=f``, fitted once on what GCD's detectors learn from (the clean/adversarial training
pairs from ``f``'s validation split, ``f``'s training images where a method needs them, clean
held-out pairs for its threshold), cached, and scored on the same test pairs as GCD:
``detector.auc.<name>`` on the successful attacks (the paper's setting), ``detector.auc_all.<name>``
on all, and ``detector.tpr_at_fpr.<name>.<fpr>`` at 1% and 5% false positives, the thresholds set
on clean validation images, never on test images.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, pair_split, stack
from gcd_lightning.defense.baselines import FitData, ScoredDetector
from gcd_lightning.pipeline.cache import load_or_train
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.training import seed_stage
from gcd_lightning.scoring import auc, tpr_at_fpr
from gcd_lightning.utils.hashing import spec_hash

REPORTED_FPRS = (0.01, 0.05)


def baseline_file(ctx: RunContext, adv_train_path: Path, classifier_id: str, name: str) -> Path:
    """The fitted baseline's statistics, keyed by the pairs it learns from, ``f``, its config and the seed."""
    spec = {
        "adversarial": adv_train_path.name,
        "classifier": classifier_id,
        "baseline": ctx.cfg.baseline[name],
        "split": ctx.cfg.detector.val_fraction,
        "seed": ctx.cfg.seed,
        **code_version("baselines"),
    }
    return ctx.cache_dir / "baselines" / f"{adv_train_path.stem}_{name}_{spec_hash(spec)}.pt"


def fit_data(ctx: RunContext, adv_train: AdversarialSet) -> FitData:
    """The detectors' training pairs (split as ``detectors`` splits them) and ``f``'s training split."""
    cfg = ctx.cfg
    clean, _ = stack(ctx.datamodule.dataset(ctx.source_split("train")), adv_train.index)
    train_rows, val_rows = pair_split(len(adv_train), cfg.detector.val_fraction, cfg.seed)
    won = train_rows[adv_train.success[train_rows]]
    return FitData(clean=clean[train_rows], adversarial=adv_train.x_adv[won], clean_val=clean[val_rows],
                   train=ctx.datamodule.dataset("train"), batch_size=cfg.adversarial.batch_size)


def run_baselines_stage(
    ctx: RunContext, classifier: nn.Module, classifier_id: str, adv_train: AdversarialSet, adv_train_path: Path,
    adv_test: AdversarialSet,
) -> tuple[dict[str, ScoredDetector], dict[str, float]]:
    """Fit (or load) and score every baseline of ``cfg.baseline``; returns them by name and their metrics."""
    cfg = ctx.cfg
    specs = cfg.get("baseline") or {}
    if not specs:
        return {}, {}
    data = fit_data(ctx, adv_train)
    clean_test, _ = stack(ctx.datamodule.dataset("test"), adv_test.index)
    won = adv_test.success
    bs = cfg.adversarial.batch_size
    baselines: dict[str, ScoredDetector] = {}
    metrics: dict[str, float] = {}
    for name, spec in specs.items():
        seed_stage(cfg.seed, f"baseline {name}")
        detector = hydra.utils.instantiate(spec, classifier=classifier).to(ctx.device)
        path = baseline_file(ctx, adv_train_path, classifier_id, name)

        def fit(_resume: Path, detector: ScoredDetector = detector) -> dict[str, float]:  # fitted in one go: no resume
            start = time.perf_counter()
            return {**detector.fit(data), "fit_seconds": time.perf_counter() - start}

        summary, cached = load_or_train(detector, path, path.with_suffix(".json"), fit, f"baseline {name}")
        baselines[name] = detector.eval()
        start = time.perf_counter()
        clean, adv, clean_val = (detector.scores(x, bs) for x in (clean_test, adv_test.x_adv, data.clean_val))
        metrics[f"detector.auc.{name}"] = auc(clean, adv[won])
        metrics[f"detector.auc_all.{name}"] = auc(clean, adv)
        for fpr in REPORTED_FPRS:
            metrics[f"detector.tpr_at_fpr.{name}.{fpr:g}"] = tpr_at_fpr(clean_val, adv[won], fpr)
        metrics[f"baseline.fit_seconds.{name}"] = summary["fit_seconds"]
        metrics[f"baseline.score_seconds.{name}"] = time.perf_counter() - start
        metrics[f"baseline.cached.{name}"] = float(cached)
    return baselines, metrics
