"""How a detector's scores on clean and adversarial inputs are summarised: AUROC and TPR at a fixed FPR."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc


def auc(score_clean: torch.Tensor, score_adv: torch.Tensor) -> float:
    """AUROC of telling adversarial (positive) from clean inputs by a score."""
    scores = torch.cat([score_clean, score_adv])
    labels = torch.cat([torch.zeros(len(score_clean)), torch.ones(len(score_adv))]).long()
    return binary_auroc(scores, labels).item()


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float) -> float:
    """The score above which a share ``fpr`` of clean scores lies (their ``1 - fpr`` quantile)."""
    if not 0 < fpr < 1:
        raise ValueError(f"threshold_at_fpr: fpr must lie in (0, 1), got {fpr}")
    if len(clean_scores) == 0:
        raise ValueError("threshold_at_fpr: no clean scores to set the threshold on")
    return torch.quantile(clean_scores.double(), 1 - fpr).item()


def tpr_at_fpr(score_clean_val: torch.Tensor, score_adv: torch.Tensor, fpr: float) -> float:
    """The share of adversarial inputs scored above the threshold that lets a share ``fpr`` of the
    clean *validation* scores through (the threshold is never set on test images)."""
    threshold = threshold_at_fpr(score_clean_val, fpr)
    return (score_adv.double() > threshold).double().mean().item() if len(score_adv) else float("nan")


REPORTED_FPRS = (0.01, 0.05)


def detection_summary(
    score_clean: torch.Tensor, score_adv: torch.Tensor, score_clean_val: torch.Tensor
) -> tuple[float, dict[float, float]]:
    """The AUC of clean against adversarial test scores, and the TPR at each of ``REPORTED_FPRS`` (thresholds
    on the clean validation scores) by FPR; nan where there is no adversarial score."""
    area = auc(score_clean, score_adv) if len(score_adv) else float("nan")
    return area, {fpr: tpr_at_fpr(score_clean_val, score_adv, fpr) for fpr in REPORTED_FPRS}
