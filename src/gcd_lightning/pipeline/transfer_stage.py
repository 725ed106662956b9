"""Stage ``transfer`` (``evaluate.transfer_attacks=[...]``): detection of attacks the detectors never saw.

A deployed detector does not know the attack. The run's detectors (GCD's, its ensemble, every
baseline), trained or fitted on this run's attack, are scored on the test sets of other attacks
against the same ``f`` (built or loaded from the cache by the attack stage, the driver's job):
``transfer.auc.<detector>.<attack>`` on each attack's successful test pairs and
``transfer.tpr_at_fpr.<detector>.<attack>.<fpr>``, the thresholds set on the clean images of the
detectors' held-out validation pairs, never on test images. One run per training attack gives one
row of each detector's transfer matrix; ``scripts/aggregate.py`` assembles the matrices.
"""

from __future__ import annotations

import torch

from gcd_lightning.adversarial import AdversarialSet, stack
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.pipeline.components import detection_scores, detection_split
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.scoring import detection_summary


def run_transfer_stage(
    ctx: RunContext, gcd: GCD, baselines: dict[str, Detector], adv_train: AdversarialSet, test_sets: dict[str, AdversarialSet]
) -> dict[str, float]:
    """Score every detector on each attack's test pairs of ``test_sets`` (by attack name); flat metrics."""
    cfg = ctx.cfg
    bs = cfg.adversarial.batch_size
    clean, (_, val_rows) = detection_split(ctx, adv_train)
    on_val = detection_scores(gcd, baselines, clean[val_rows], bs)
    test = ctx.datamodule.dataset("test")
    metrics: dict[str, float] = {}
    for attack, adv in test_sets.items():
        won = adv.success
        clean, _ = stack(test, adv.index)
        on_clean = detection_scores(gcd, baselines, clean, bs)
        on_adv = detection_scores(gcd, baselines, adv.x_adv[won], bs) if won.any() else {n: torch.zeros(0) for n in on_val}
        metrics[f"transfer.n_successful.{attack}"] = float(won.sum())
        for name in on_val:
            metrics[f"transfer.auc.{name}.{attack}"], tprs = detection_summary(on_clean[name], on_adv[name], on_val[name])
            metrics.update({f"transfer.tpr_at_fpr.{name}.{attack}.{fpr:g}": tpr for fpr, tpr in tprs.items()})
    return metrics
