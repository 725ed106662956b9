"""Stage ``evaluate``: the grey-box rows of the paper's Table 2 (detection AUC) and Table 5 (accuracy).

Counting: the test pairs are the images ``f`` classifies correctly and their attacks. AUCs are
given on the pairs whose attack succeeded (``detector.auc.*``, the paper's setting) and on all
pairs (``detector.auc_all.*``); accuracies under attack are over all pairs, and over the
successful ones (``*.acc.adv_successful``). Clean accuracy and the false-positive rate are over
the clean test split (its first ``evaluate.n_clean`` images; all by default).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from gcd_lightning.adversarial import AdversarialSet, predict, stack
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.defense.ensemble import ADVERSARIAL
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.pipeline.context import RunContext


def run_gcd(gcd: GCD, x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """GCD's labels, the three adversarial scores ``p⁻`` (org, is, ensemble), flags and routing, batch by batch."""
    device = next(gcd.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in ("label", "org", "is", "gcd", "flagged", "use_org")}
    for chunk in x.split(batch_size):
        labels, result = gcd.predict(chunk.to(device))
        for name, value in (
            ("label", labels),
            ("org", result.p_org[:, ADVERSARIAL]),
            ("is", result.p_is[:, ADVERSARIAL]),
            ("gcd", result.p[:, ADVERSARIAL]),
            ("flagged", result.flagged),
            ("use_org", result.use_org),
        ):
            parts[name].append(value.detach().cpu())
    return {name: torch.cat(values) for name, values in parts.items()}


def build_gcd(
    ctx: RunContext, classifier: nn.Module, rectifier: nn.Module, detectors: dict[DetectorInput, SubDetector]
) -> GCD:
    """The GCD inference module of a run, its random masks seeded by ``cfg.seed``."""
    return GCD(
        classifier,
        rectifier,
        detectors[DetectorInput.PIXELS],
        detectors[DetectorInput.SENSITIVITY],
        alpha=ctx.cfg.rectifier.alpha,
        p=ctx.cfg.rectifier.p,
        generator=torch.Generator(ctx.device).manual_seed(ctx.cfg.seed),
    )


def auc(score_clean: torch.Tensor, score_adv: torch.Tensor) -> float:
    """AUROC of telling adversarial (positive) from clean inputs by a score."""
    scores = torch.cat([score_clean, score_adv])
    labels = torch.cat([torch.zeros(len(score_clean)), torch.ones(len(score_adv))]).long()
    return binary_auroc(scores, labels).item()


def run_evaluate_stage(
    ctx: RunContext,
    classifier: nn.Module,
    rectifier: nn.Module,
    detectors: dict[DetectorInput, SubDetector],
    adv_test: AdversarialSet,
) -> dict[str, float]:
    """Detection AUCs, accuracies of ``f`` and of GCD on clean and adversarial test images."""
    cfg = ctx.cfg
    bs = cfg.adversarial.batch_size
    gcd = build_gcd(ctx, classifier, rectifier, detectors)
    test = ctx.datamodule.dataset("test")
    clean_pairs, y = stack(test, adv_test.index)
    on_clean, on_adv = run_gcd(gcd, clean_pairs, bs), run_gcd(gcd, adv_test.x_adv, bs)
    won = adv_test.success
    metrics = {"eval.n_pairs": float(len(adv_test)), "eval.n_successful": float(won.sum())}
    for name in ("org", "is", "gcd"):
        metrics[f"detector.auc.{name}"] = auc(on_clean[name], on_adv[name][won])
        metrics[f"detector.auc_all.{name}"] = auc(on_clean[name], on_adv[name])
    metrics["detector.tpr.adv"] = on_adv["flagged"][won].float().mean().item()
    metrics["detector.org_share.adv"] = on_adv["use_org"][won].float().mean().item()
    base_adv = predict(classifier, adv_test.x_adv, bs) == y
    gcd_adv = on_adv["label"] == y
    metrics["base.acc.adv"] = base_adv.float().mean().item()
    metrics["base.acc.adv_successful"] = base_adv[won].float().mean().item()
    metrics["gcd.acc.adv"] = gcd_adv.float().mean().item()
    metrics["gcd.acc.adv_successful"] = gcd_adv[won].float().mean().item()

    n_clean = cfg.evaluate.n_clean or len(test)
    base_right = gcd_right = flagged = 0
    for rows in torch.arange(n_clean).split(bs):
        x, y_rows = stack(test, rows)
        on_rows = run_gcd(gcd, x, bs)
        base_right += int((predict(classifier, x, bs) == y_rows).sum())
        gcd_right += int((on_rows["label"] == y_rows).sum())
        flagged += int(on_rows["flagged"].sum())
    metrics["eval.n_clean"] = float(n_clean)
    metrics["base.acc.clean"] = base_right / n_clean
    metrics["gcd.acc.clean"] = gcd_right / n_clean
    metrics["detector.fpr.clean"] = flagged / n_clean
    return metrics
