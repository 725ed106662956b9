"""The paper's figures as PNG files (matplotlib, headless): ROC curves, ‖G‖₂ histograms, α sweeps.

Each function takes plain tensors or rows, writes one PNG atomically and returns its path; the
report links them. Fig. 3 (L2 attacks) and Fig. 4 (L∞ attacks) of the paper are the histograms of
the input sensitivity ``‖G(x, ŷ)‖₂`` (eq. 1) of clean and adversarial images; Fig. 6 is GCD's
accuracy against the rectifier's α.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torchmetrics.functional.classification import binary_auroc, binary_roc  # noqa: E402

from gcd_lightning.reporting.paper import detector_label  # noqa: E402
from gcd_lightning.utils.files import atomic_write  # noqa: E402

STYLES = (("-", 3.0), ("--", 2.0), ("-.", 1.5), (":", 1.5))


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Render ``fig`` to PNG in memory and write it atomically; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))


def roc_curves(clean: Mapping[str, torch.Tensor], adv: Mapping[str, torch.Tensor], title: str, path: Path) -> Path:
    """ROC of each detector's adversarial score ``p⁻`` (clean = negative, adversarial = positive), AUC in the legend.

    The line styles differ, so that curves on top of each other (two detectors at AUC 1) stay visible.
    """
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for k, name in enumerate(clean):  # each detector of the defense, then "gcd"
        label, (style, width) = "GCD (ensemble)" if name == "gcd" else detector_label(name), STYLES[k % len(STYLES)]
        scores = torch.cat([clean[name], adv[name]])
        target = torch.cat([torch.zeros(len(clean[name])), torch.ones(len(adv[name]))]).long()
        fpr, tpr, _ = binary_roc(scores, target)
        area = binary_auroc(scores, target).item()
        ax.plot(fpr.numpy(), tpr.numpy(), linestyle=style, linewidth=width, label=f"{label}, AUC {area:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false-positive rate (clean flagged)", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def robustness_curves(points: Mapping[str, Sequence[tuple[float, float]]], title: str, path: Path) -> Path:
    """Robust accuracy against the budget ε, one panel per norm (``points``: norm -> (ε, robust accuracy) pairs)."""
    fig, axes = plt.subplots(1, len(points), figsize=(4.0 * len(points), 3.2), squeeze=False)
    for ax, (norm, pairs) in zip(axes[0], points.items()):
        eps, acc = zip(*pairs)
        ax.plot(eps, acc, marker="o")
        ax.set(xlabel=f"{'L∞' if norm == 'linf' else 'L2'} ε", ylabel="robust accuracy", ylim=(-0.02, 1.02), title=title)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def sensitivity_histogram(g_clean: torch.Tensor, g_adv: torch.Tensor, title: str, path: Path) -> Path:
    """Histograms of ``log10 ‖G‖₂`` (eq. 1) of clean and adversarial images (the paper's Fig. 3 / 4)."""
    tiny = torch.finfo(torch.float32).tiny
    logs = {"clean": g_clean.clamp_min(tiny).log10(), "adversarial": g_adv.clamp_min(tiny).log10()}
    low = min(v.min().item() for v in logs.values())
    high = max(v.max().item() for v in logs.values())
    bins = torch.linspace(low, high + 1e-6, 41).numpy()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, values in logs.items():
        ax.hist(values.numpy(), bins=bins, alpha=0.6, label=f"{name} (n={len(values)})")
    ax.set(xlabel="log10 ‖G(x, ŷ)‖₂", ylabel="images", title=title)
    ax.legend()
    return save_figure(fig, path)


def alpha_sweep(rows: Sequence[Mapping[str, float]], title: str, path: Path) -> Path:
    """GCD accuracy on adversarial and clean test images against α (the paper's Fig. 6)."""
    rows = sorted(rows, key=lambda row: row["rectifier.alpha"])
    alphas = [row["rectifier.alpha"] for row in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("gcd.acc.adv", "adversarial"), ("gcd.acc.clean", "clean")):
        ax.plot(alphas, [row[key] for row in rows], marker="o", label=label)
    ax.set(xlabel="α (eq. 12)", ylabel="GCD accuracy", title=title, ylim=(0, 1.02))
    ax.legend()
    return save_figure(fig, path)


def transfer_heatmap(columns: Sequence[str], rows: Sequence[Sequence], title: str, path: Path) -> Path:
    """The AUC rows of a transfer matrix (``tables.transfer``) as a heat map: trained on (rows) × tested on (columns)."""
    auc_rows = [row for row in rows if row[2] == "AUC"]
    values = [[float("nan") if v is None else float(v) for v in row[3:]] for row in auc_rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(columns[3:]) + 2, 0.6 * len(auc_rows) + 1.5))
    image = ax.imshow(values, vmin=0.5, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(columns) - 3), columns[3:], rotation=45, ha="right")
    ax.set_yticks(range(len(auc_rows)), [row[1] for row in auc_rows])
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, "n/a" if value != value else f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    ax.set(xlabel="tested on", ylabel="trained on", title=title)
    fig.colorbar(image, ax=ax, label="AUC")
    return save_figure(fig, path)

