"""Stage ``baselines`` (with ``baseline=[gnorm,squeeze,mds]``): the baseline detectors of Table 2 beside GCD.

Each entry of ``cfg.baseline`` (``conf/baseline/<name>.yaml``) is a ``Detector`` built with
``classifier=f`` on what GCD's detectors learn from (the clean/adversarial training pairs from
``f``'s validation split): a ``ScoredDetector`` is fitted once (``f``'s training images where a
method needs them, clean held-out pairs for its threshold), a trained one (``SubDetector``, e.g.
``DET_sal``) is trained as ``DET_org`` and ``DET_IS`` are (the ``detector`` group's body, optimizer
and epochs, best validation AUC). Each is cached and scored on the same test pairs as GCD by its
logit gap (adversarial − benign):
``detector.auc.<name>`` on the successful attacks (the paper's setting), ``detector.auc_all.<name>``
on all, and ``detector.tpr_at_fpr.<name>.<fpr>`` at 1% and 5% false positives, the thresholds set
on clean validation images, never on test images.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, stack
from gcd_lightning.cache import Key, Memo, Weights
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.baselines import FitData, ScoredDetector
from gcd_lightning.pipeline.components import build_detector, detection_split, gap_scores, train_detector
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.density import density_identity, provide_density
from gcd_lightning.pipeline.training import seed_stage
from gcd_lightning.scoring import auc, detection_summary

MEMO = Memo("baselines", "baseline memo")


def baseline_key(ctx: RunContext, adv_train_path: Path, classifier_id: str, name: str, detector: Detector) -> Key:
    """The fitted baseline's statistics (or trained weights), keyed by the pairs it learns from, ``f``, its config, the seed and the
    density model it reads (``DET_PD``)."""
    spec = {
        **density_identity(ctx, detector),
        "adversarial": adv_train_path.name,
        "classifier": classifier_id,
        "baseline": ctx.cfg.baseline[name],
        "detector": ctx.cfg.detector,  # the split, and a trained baseline's body, optimizer and epochs
        "trainer": ctx.training_identity(),
        "seed": ctx.cfg.seed,
        **code_version("baselines"),
    }
    return Key(f"{adv_train_path.stem}_{name}", spec)


def memo_key(ctx: RunContext, classifier_id: str, name: str) -> Key:
    """A baseline's per-image ``memo``, keyed by ``f``, its config and the code: shared by every attack's run."""
    spec = {"classifier": classifier_id, "baseline": ctx.cfg.baseline[name], **code_version("baselines")}
    return Key(f"{ctx.cfg.dataset.name}_{name}_memo", spec)


def save_memos(ctx: RunContext, baselines: dict[str, Detector], classifier_id: str) -> None:
    """Add every baseline's ``memo`` to the cache's (rank 0 writes; in a DDP run, the images it scored)."""
    for name, detector in baselines.items():
        if detector.memo is not None:
            ctx.cache.merge(MEMO, memo_key(ctx, classifier_id, name), detector.memo)


def fit_data(ctx: RunContext, clean: torch.Tensor, adv_train: AdversarialSet, rows: tuple[torch.Tensor, torch.Tensor]) -> FitData:
    """The detectors' training pairs (``rows``: split as ``detectors`` splits them) and ``f``'s training split."""
    train_rows, val_rows = rows
    won = train_rows[adv_train.success[train_rows]]
    return FitData(clean=clean[train_rows], adversarial=adv_train.x_adv[won], clean_val=clean[val_rows],
                   train=ctx.datamodule.dataset("train"), batch_size=ctx.cfg.adversarial.batch_size)


def run_baselines_stage(
    ctx: RunContext, classifier: nn.Module, classifier_id: str, adv_train: AdversarialSet, adv_train_path: Path,
    adv_test: AdversarialSet,
) -> tuple[dict[str, Detector], dict[str, float]]:
    """Fit (or load) and score every baseline of ``cfg.baseline``; returns them by name and their metrics."""
    cfg = ctx.cfg
    specs = cfg.get("baseline") or {}
    if not specs:
        return {}, {}
    clean, rows = detection_split(ctx, adv_train)
    data = fit_data(ctx, clean, adv_train, rows)
    clean_test, _ = stack(ctx.datamodule.dataset("test"), adv_test.index)
    won = adv_test.success
    bs = cfg.adversarial.batch_size
    baselines: dict[str, Detector] = {}
    metrics: dict[str, float] = {}
    for name, spec in specs.items():
        seed_stage(cfg.seed, f"baseline {name}")
        detector = build_detector(ctx, spec, classifier).to(ctx.device)
        metrics.update({f"density.{key}": value for key, value in provide_density(ctx, detector).items()})
        if detector.memo is not None:
            detector.memo.update(ctx.cache.read(MEMO, memo_key(ctx, classifier_id, name), {}))
        key = baseline_key(ctx, adv_train_path, classifier_id, name, detector)

        def fit(resume: Path, detector: Detector = detector, name: str = name) -> dict[str, float]:  # bound now
            if not isinstance(detector, ScoredDetector):
                return train_detector(ctx, detector, clean, adv_train, rows, resume, f"baseline {name}")
            start = time.perf_counter()
            return {**detector.fit(data), "train_seconds": time.perf_counter() - start}

        summary, cached = ctx.cache.get_or_build(Weights("baselines", detector, f"baseline {name}"), key, fit)
        baselines[name] = detector.eval().to(ctx.device)
        start = time.perf_counter()
        scores_clean, scores_adv, scores_val = (gap_scores(detector, x, bs, ctx.device) for x in (clean_test, adv_test.x_adv, data.clean_val))
        metrics[f"detector.auc.{name}"], tprs = detection_summary(scores_clean, scores_adv[won], scores_val)
        metrics.update({f"detector.tpr_at_fpr.{name}.{fpr:g}": tpr for fpr, tpr in tprs.items()})
        metrics[f"detector.auc_all.{name}"] = auc(scores_clean, scores_adv)
        metrics[f"baseline.train_seconds.{name}"] = summary["train_seconds"]
        metrics[f"baseline.score_seconds.{name}"] = time.perf_counter() - start
        metrics[f"baseline.cached.{name}"] = float(cached)
    save_memos(ctx, baselines, classifier_id)
    return baselines, metrics
