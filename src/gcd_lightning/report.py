"""A run's results for people: ``metrics.json`` (flat dotted keys) and ``report.md`` (tables)."""

from __future__ import annotations

import math
from pathlib import Path

from gcd_lightning.paper import TABLE2, TABLE5
from gcd_lightning.utils.files import save_json, save_text


def fmt(value: float, digits: int = 4) -> str:
    """A rate or norm with ``digits`` decimals; whole-number counts pass ``digits=0``."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def paper_cell(table: dict, dataset: str, row: str, column: int) -> str:
    values = table.get(dataset, {}).get(row)
    return "n/a" if values is None else f"{values[column]:.2f}"


def defense_tables(metrics: dict[str, float], dataset: str, attack: str) -> list[str]:
    """The paper's Table 2 row (detection AUC) and Table 5 columns (accuracy), ours beside theirs."""
    m = metrics
    return [
        "## Detection (Table 2, grey-box AUC)",
        "",
        f"AUC on {fmt(m['eval.n_successful'], 0)} successful attacks of {fmt(m['eval.n_pairs'], 0)} correctly classified "
        "test images and their clean originals (on all pairs, unsuccessful attacks included: "
        f"GCD {fmt(m['detector.auc_all.gcd'])}). F is f's accuracy under attack, over all pairs.",
        "",
        "| | F | DET_org | DET_IS | GCD |",
        "|---|---:|---:|---:|---:|",
        f"| ours | {fmt(m['base.acc.adv'])} | {fmt(m['detector.auc.org'])} | {fmt(m['detector.auc.is'])} | "
        f"{fmt(m['detector.auc.gcd'])} |",
        "| paper | " + " | ".join(paper_cell(TABLE2, dataset, attack, i) for i in range(4)) + " |",
        "",
        f"Clean test images flagged (false-positive rate): {fmt(m['detector.fpr.clean'])} of "
        f"{fmt(m['eval.n_clean'], 0)}; successful attacks flagged: {fmt(m['detector.tpr.adv'])}; "
        f"decided by DET_org: {fmt(m['detector.org_share.adv'])}.",
        "",
        "## Accuracy (Table 5)",
        "",
        "| images | GCD (ours) | F (ours) | GCD (paper) | F (paper) |",
        "|---|---:|---:|---:|---:|",
        f"| clean | {fmt(m['gcd.acc.clean'])} | {fmt(m['base.acc.clean'])} | {paper_cell(TABLE5, dataset, 'clean', 0)} | "
        f"{paper_cell(TABLE5, dataset, 'clean', 1)} |",
        f"| {attack} | {fmt(m['gcd.acc.adv'])} | {fmt(m['base.acc.adv'])} | {paper_cell(TABLE5, dataset, attack, 0)} | "
        f"{paper_cell(TABLE5, dataset, attack, 1)} |",
        "",
        f"Rectifier α = {m['rectifier.alpha']}, validation accuracy on masked adversarial examples "
        f"{fmt(m['rectifier.val_acc'])}.",
        "",
    ]


def render(metrics: dict[str, float], title: str, dataset: str = "", attack: str = "") -> str:
    """Markdown: the classifier line, one row per adversarial split, then the defense tables."""
    lines = [f"# {title}", ""]
    if "classifier.test_acc" in metrics:
        cached = " (cached)" if metrics.get("classifier.cached") else ""
        lines += [
            "## Classifier f",
            "",
            f"Test accuracy {fmt(metrics['classifier.test_acc'])}, trained in "
            f"{fmt(metrics['classifier.train_seconds'], 1)} s{cached}.",
            "",
        ]
    splits = [s for s in ("train", "test") if f"attack.{s}.n" in metrics]
    if splits:
        lines += [
            "## Attack on f (grey-box)",
            "",
            "Correctly classified images only; misclassified ones are skipped and counted. "
            "Median L2 over successful examples.",
            "",
            "| split | n | skipped | success rate | median L2 | max L∞ | seconds | cached |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in splits:
            m = {k.removeprefix(f"attack.{s}."): v for k, v in metrics.items() if k.startswith(f"attack.{s}.")}
            lines.append(
                f"| {s} | {fmt(m['n'], 0)} | {fmt(m['n_skipped_misclassified'], 0)} | {fmt(m['success_rate'])} | "
                f"{fmt(m['l2_median'])} | {fmt(m['linf_max'])} | {fmt(m['seconds'], 1)} | {'yes' if m['cached'] else 'no'} |"
            )
        lines.append("")
    if "detector.auc.gcd" in metrics:
        lines += defense_tables(metrics, dataset, attack)
    return "\n".join(lines)


def write_report(metrics: dict[str, float], output_dir: Path, title: str, dataset: str, attack: str) -> None:
    """Write ``metrics.json`` and ``report.md`` into the run's folder, atomically."""
    save_json(metrics, output_dir / "metrics.json")
    save_text(render(metrics, title, dataset, attack), output_dir / "report.md")
