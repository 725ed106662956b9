"""A run's results for people: ``metrics.json`` (flat dotted keys) and ``report.md`` (tables)."""

from __future__ import annotations

import math
from pathlib import Path

from gcd_lightning.paper import TABLE2, TABLE3, TABLE4, TABLE5
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
        f"GCD on {attack}: the mean over {fmt(m['eval.mask_draws'], 0)} draws of its random masks (std "
        f"{fmt(m['gcd.acc.adv_std'])}, from {fmt(m['gcd.acc.adv_min'])} to {fmt(m['gcd.acc.adv_max'])}). "
        f"Rectifier α = {m['rectifier.alpha']}, validation accuracy on masked adversarial examples "
        f"{fmt(m['rectifier.val_acc'])}.",
        "",
        "## Figures",
        "",
        "ROC curves of the detectors, and the input sensitivity ‖G‖₂ of clean and adversarial test images "
        "(the paper's Fig. 3 for L2 attacks, Fig. 4 for L∞ ones):",
        "",
        "![ROC curves](roc.png) ![input sensitivity](sensitivity.png)",
        "",
        "## Saliency check (Table 1)",
        "",
        f"Success of the {fmt(m['table1.n'], 0)} successful test attacks on f after zeroing the pixels of highest "
        "detector saliency |∂L_DET/∂x|, and, as a control, as many random pixels (before: 1.0000).",
        "",
        "| pixels zeroed | top saliency | random |",
        "|---|---:|---:|",
        *(f"| {p}% | {fmt(m[f'table1.success.top{p}'])} | {fmt(m[f'table1.success.random{p}'])} |" for p in (5, 10)),
        "",
    ]


def whitebox_tables(metrics: dict[str, float], dataset: str, attack: str) -> list[str]:
    """Table 3's row (white-box success) and Table 4's norms, ours beside the paper's, and the sanity checks."""
    m = metrics
    paper3 = TABLE3.get(dataset, {}).get(attack)
    paper4 = TABLE4.get(attack)
    curves = {
        norm: sorted((float(k.removeprefix(f"whitebox.budget_{norm}.gcd.")), v) for k, v in m.items() if k.startswith(f"whitebox.budget_{norm}.gcd."))
        for norm in ("linf", "l2")
    }
    norm = "linf" if curves["linf"] else "l2"
    how = "the attack rerun with ε (and step) scaled" if norm == "linf" else "successes within each L2 norm"
    budget_row = ", ".join(f"{fmt(b, 3)}: {fmt(v)}" for b, v in curves[norm])
    objectives = [
        text for key, text in (
            ("whitebox.objective.eq14", f"eq. 14 with β = {m['whitebox.beta']}"),
            ("whitebox.objective.merged", "the merged L+1 loss ({y, adversarial} as one class)"),
        )
        if m.get(key)
    ]
    objective = (
        " and ".join(objectives) + (", the stronger per image" if len(objectives) > 1 else "")
        if objectives
        else "L+1 classes, cross entropy at the target"
    )
    return [
        "## White-box attacks (Table 3: success rate, smaller is better)",
        "",
        f"{fmt(m['whitebox.n'], 0)} test images; a success fools f and is not flagged (objective: {objective}). "
        "\"end to end\" judges GCD's final answer "
        "(f_rec on a random mask for flagged inputs).",
        "",
        "| | NoDET | DET_IS | GCD | GCD end to end | BPDA+EOT on GCD, end to end |",
        "|---|---:|---:|---:|---:|---:|",
        f"| ours | {fmt(m['whitebox.success.nodet'])} | {fmt(m['whitebox.success.det_is'])} | {fmt(m['whitebox.success.gcd'])} | "
        f"{fmt(m['whitebox.success.gcd_end_to_end'])} | {fmt(m['whitebox.success.bpda_eot'])} |",
        "| paper | " + (" | ".join(f"{v:.3f}" for v in paper3) if paper3 else "n/a | n/a | n/a") + " | n/a | n/a |",
        "",
        f"BPDA+EOT ({fmt(m['whitebox.eot_samples'], 0)} masks per gradient): its images evade the detector in "
        f"{fmt(m['whitebox.success.bpda_eot_evades'])} of cases.",
        "",
        "## Cost and perturbation (Table 4)",
        "",
        "| target | median L2 of successes | max L∞ | seconds per image |",
        "|---|---:|---:|---:|",
        *(
            f"| {name} | {fmt(m[f'whitebox.l2_median.{name}'])} | {fmt(m[f'whitebox.linf_max.{name}'])} | "
            f"{fmt(m[f'whitebox.seconds_per_image.{name}'], 3)} |"
            for name in ("nodet", "det_is", "gcd", "bpda_eot")
        ),
        "",
        "Paper, Table 4 (median L2 without / with GCD): "
        + (f"{paper4[0]} / {paper4[1]}." if paper4 else "not reported for this attack."),
        "",
        "## Sanity checks (Athalye et al. 2018; Tramèr et al. 2020)",
        "",
        f"- Attacker's loss on GCD (L+1 outputs) at the clean images {fmt(m['whitebox.loss.gcd.clean'])}, "
        f"after the attack {fmt(m['whitebox.loss.gcd.adv'])} (targeted: cross entropy at the target, should fall; "
        "untargeted: eq. 14 or the merged loss, should rise).",
        f"- White-box vs grey-box success on the same images: GCD {fmt(m['whitebox.success.gcd'])} vs "
        f"{fmt(m['whitebox.greybox.success.gcd'])}; end to end {fmt(m['whitebox.success.gcd_end_to_end'])} vs "
        f"{fmt(m['whitebox.greybox.success.end_to_end'])}.",
        f"- Success on GCD by {'L∞' if norm == 'linf' else 'L2'} budget ({how}): {budget_row}.",
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
    if "whitebox.success.gcd" in metrics:
        lines += whitebox_tables(metrics, dataset, attack)
    return "\n".join(lines)


def write_report(metrics: dict[str, float], output_dir: Path, title: str, dataset: str, attack: str) -> None:
    """Write ``metrics.json`` and ``report.md`` into the run's folder, atomically."""
    save_json(metrics, output_dir / "metrics.json")
    save_text(render(metrics, title, dataset, attack), output_dir / "report.md")
