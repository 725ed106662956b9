"""A run's results for people: ``metrics.json`` (flat dotted keys) and ``report.md`` (tables).

Tables 2, 3 and 5 and the robustness table are ``tables``' layout of a list of one run; around
them stands what only one run's report says: what each number is counted over, the classifier and
the attack on it, each white-box attack's success, Table 1 and Table 4, and the warnings of failed
indicators and checks.
"""

from __future__ import annotations

import math
from pathlib import Path

from gcd_lightning.reporting.paper import BASELINE_COLUMNS, RECTIFIER_COLUMNS, TABLE4, detector_label
from gcd_lightning.reporting.tables import (INDICATORS, Run, baseline_names, defense_detectors, fmt, markdown, robustness, table2,
                                           table3, table5, target_indicators)
from gcd_lightning.utils.files import save_json, save_text


def defense_tables(run: Run) -> list[str]:
    """Table 2 (detection AUC) and Table 5 (accuracy), ours beside the paper's, and what each is counted over."""
    m, attack = run.metrics, run.attack
    return [
        "## Detection (Table 2, grey-box AUC)",
        "",
        f"AUC on {fmt(m['eval.n_successful'], 0)} successful attacks of {fmt(m['eval.n_pairs'], 0)} correctly classified "
        "test images and their clean originals (on all pairs, unsuccessful attacks included: "
        f"GCD {fmt(m['detector.auc_all.gcd'])}). F is f's accuracy under attack, over all pairs.",
        "",
        markdown(*table2([run])),
        f"Clean test images flagged (false-positive rate): {fmt(m['detector.fpr.clean'])} of "
        f"{fmt(m['eval.n_clean'], 0)}; successful attacks flagged: {fmt(m['detector.tpr.adv'])}; decided by "
        + ", ".join(f"{detector_label(d)}: {fmt(m[f'detector.{d}_share.adv'])}" for d in defense_detectors([run])
                    if f"detector.{d}_share.adv" in m) + ".",
        "",
        "## Accuracy (Table 5)",
        "",
        markdown(*table5([run])),
        f"The {attack} row is over the {fmt(m['eval.n_pairs'], 0)} attacked test images, all classified correctly by f "
        f"(the paper's setting); the \"all examined\" columns are the robust accuracy over the {fmt(m['eval.n_examined'], 0)} test "
        f"images examined to find them, the {fmt(m['eval.n_examined'] - m['eval.n_pairs'], 0)} clean images f "
        "misclassifies (not attacked) counted as errors, of GCD's too.",
        "",
        f"GCD on {attack}: the mean over {fmt(m['eval.mask_draws'], 0)} draws of its random masks (std "
        f"{fmt(m['gcd.acc.adv_std'])}, from {fmt(m['gcd.acc.adv_min'])} to {fmt(m['gcd.acc.adv_max'])}). "
        f"Rectifier α = {m['rectifier.alpha']}, validation accuracy on masked adversarial examples "
        f"{fmt(m['rectifier.val_acc'])}.",
        "",
        "## Figures",
        "",
        "ROC curves of the detectors, and the input sensitivity ‖G‖₂ (computed in float64) of clean and adversarial "
        "test images (the paper's Fig. 3 for L2 attacks, Fig. 4 for L∞ ones):",
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


def rectifier_baseline_lines(m: dict[str, float]) -> list[str]:
    """Table 5's defended classifiers attacked white-box (``rec_<name>``): accuracy clean, white-box, grey-box; none: []."""
    names = sorted({k.split(".")[2] for k in m if k.startswith("whitebox.rectifier_baseline.")})
    if not names:
        return []
    return [
        "### Table 5's defended classifiers under white-box attack",
        "",
        "Each attacked by the suite as NoDET is, through BPDA + EOT "
        f"({fmt(m['whitebox.eot_samples'], 0)} draws per gradient) where a purifier stands in front; accuracy on the same "
        "images, the purifier's randomness drawn from the judging seed. Grey-box: Table 5's cell (attacked through f alone, "
        "over its own pairs).",
        "",
        "| defended classifier | clean | white-box | grey-box |",
        "|---|---:|---:|---:|",
        *(f"| {RECTIFIER_COLUMNS.get(name, name)} | {fmt(m[f'whitebox.rectifier_baseline.{name}.acc.clean'])} | "
          f"{fmt(m[f'whitebox.rectifier_baseline.{name}.acc.adv'])} | {fmt(m.get(f'rectifier_baseline.{name}.acc.adv', math.nan))} |"
          for name in names),
        "",
    ]


def whitebox_targets(run: Run) -> dict[str, str]:
    """A white-box run's targets in the report's order, with their names: NoDET, each detector of the defense
    (``DET_IS`` before GCD, the paper's order; the others after it), GCD, BPDA+EOT, then each baseline detector and
    Table 5 classifier the run attacked."""
    detectors = defense_detectors([run])
    order = ["nodet", *(f"det_{d}" for d in detectors if d == "is"), "gcd", *(f"det_{d}" for d in detectors if d != "is")]
    labels = {"nodet": "NoDET", "gcd": "GCD", **{f"det_{d}": detector_label(d) for d in detectors}}
    return {**{t: labels[t] for t in order}, "bpda_eot": "BPDA+EOT",
            **{f"det_{name}": BASELINE_COLUMNS.get(name, name) for name in baseline_names([run], "whitebox.success.det_")},
            **{f"rec_{name}": f"{RECTIFIER_COLUMNS.get(name, name)} classifier"
               for name in baseline_names([run], "whitebox.success.rec_", order=tuple(RECTIFIER_COLUMNS))}}


def whitebox_tables(run: Run) -> list[str]:
    """Table 3 (white-box success, 95% intervals), each attack's share, fixed-budget robustness, failure indicators, Table 4."""
    m = run.metrics
    paper4 = TABLE4.get(run.attack)
    names = whitebox_targets(run)
    targets = [t for t in names if t == "nodet" or t == "gcd" or t.removeprefix("det_") in defense_detectors([run])]
    attacked = list(names)  # GCD's targets, then each baseline detector and defended classifier the run attacked
    suite = next((k.removeprefix("whitebox.suite.") for k in m if k.startswith("whitebox.suite.")), "?")
    order = {k.removeprefix("whitebox.attack_order."): v for k, v in m.items() if k.startswith("whitebox.attack_order.")}
    ran = [k.split(".", 3)[2:] for k in m if k.startswith("whitebox.won_by.")]
    attacks = sorted({a for t, a in ran if t != "bpda_eot"}, key=lambda a: order.get(a, math.inf))
    rand = sorted({a for t, a in ran if t == "bpda_eot"}, key=lambda a: order.get(a, math.inf))

    def won_by(target: str, attack: str) -> str:
        key = f"whitebox.won_by.{target}.{attack}"
        return fmt(m[key]) if key in m else ""

    cascaded = [t for t in attacked if t != "bpda_eot"]
    lines = [
        "## White-box attacks (Table 3: success rate, smaller is better)",
        "",
        f"{fmt(m['whitebox.n'], 0)} test images, suite `{suite}` at the row's budget, "
        f"{'L2' if m.get('whitebox.norm.l2') else 'L∞'} ε = {fmt(m['whitebox.eps'], 3)}. "
        "A success fools f and is not flagged by the detector(s), judged by the real decision rule (eq. 10-11 for GCD). "
        "[low, high]: Wilson 95% interval. BPDA+EOT: the whole randomised GCD under the `rand` suite, won where its answer "
        "is fooled in most draws of its masks; end to end: GCD's final answer (f_rec on random masks for flagged inputs) at "
        f"the examples found, the mean over {fmt(m['whitebox.judge_draws'], 0)} mask draws with seeds disjoint from the "
        "attacks', with a 95% interval over the images.",
        "",
        markdown(*table3([run], cells=True)),
        "### The cascade: which attack earned its place",
        "",
        "The share of the images each attack of the suite won that no attack before it had won (an image leaves the cascade "
        "at its first win; blank: it did not run).",
        "",
        "| attack | " + " | ".join(names[t] for t in cascaded) + " |",
        "|---|" + "---:|" * len(cascaded),
        *(f"| {a} | " + " | ".join(won_by(t, a) for t in cascaded) + " |" for a in attacks),
        *([] if not rand else ["", "BPDA+EOT (`rand`): " + ", ".join(f"{a} {won_by('bpda_eot', a)}" for a in rand) + "."]),
        "",
    ]
    lines += rectifier_baseline_lines(m) + robustness_lines(run) + indicator_lines(m)
    lines += [
        "## Cost and perturbation (Table 4)",
        "",
        "| target | median L2 of successes | max L∞ | seconds per image (the whole cascade) |",
        "|---|---:|---:|---:|",
        *(
            f"| {names[name]} | {fmt(m[f'whitebox.l2_median.{name}'])} | {fmt(m[f'whitebox.linf_max.{name}'])} | "
            f"{fmt(m[f'whitebox.seconds_per_image.{name}'], 3)} |"
            for name in (*targets, "bpda_eot")
        ),
        "",
        "Paper, Table 4 (median L2 without / with GCD): "
        + (f"{paper4[0]} / {paper4[1]}." if paper4 else "not reported for this attack."),
        "",
        "## Sanity checks (Athalye et al. 2018; Tramèr et al. 2020)",
        "",
        f"- Hinge loss on GCD at the clean images {fmt(m['whitebox.loss.gcd.clean'])}, at the attacked ones "
        f"{fmt(m['whitebox.loss.gcd.adv'])} (should fall).",
        f"- White-box vs grey-box success on the same images: GCD {fmt(m['whitebox.success.gcd'])} vs "
        f"{fmt(m['whitebox.greybox.success.gcd'])}; end to end {fmt(m['whitebox.success.gcd_end_to_end'])} vs "
        f"{fmt(m['whitebox.greybox.success.end_to_end'])}.",
        f"- BPDA+EOT ({fmt(m['whitebox.eot_samples'], 0)} masks per gradient): its images evade the detector in "
        f"{fmt(m['whitebox.success.bpda_eot_evades'])} of cases.",
    ]
    return [*lines, ""]


def robustness_lines(run: Run) -> list[str]:
    """Fixed-budget robustness of GCD and Tramèr's (2022) check, one row per norm and budget; a failed check is a warning."""
    columns, rows = robustness([run], cells=True)
    if not rows:
        return []
    lines = [
        "## Fixed-budget robustness of GCD",
        "",
        "The suite at each budget; an image counts as won at a budget when any of GCD's evaluations won it inside that "
        "ball. Robust accuracy: the clean image "
        f"is not flagged (flagged: {fmt(run.metrics['whitebox.flagged_clean.gcd'])} of the attacked images) and the attack "
        "fails; over the attacked images, and over all test images looked at (f's errors count as errors). Tramèr (2022): "
        "a detector robust at ε implies a classifier robust at ε/2 (the Tramèr radius) with the same accuracy (over all "
        "examined); the last columns compare it with the best published robust classifier evaluated at ε/2 "
        "(`paper.ROBUST_CLASSIFIERS`) and with the run's own Table 5 classifiers evaluated there by the suite on the same "
        "images (against robust acc).",
        "",
        markdown(columns, rows),
    ]
    failed = [row for row in (dict(zip(columns, values)) for values in rows) if row["plausible"] == "no"]
    warnings = [f"**WARNING** Tramèr's check fails at {row['norm']} ε = {row['eps']}: the implied classifier's accuracy "
                f"{fmt(row['robust acc all examined'])} exceeds the published classifiers' {fmt(row['best published'])}."
                for row in failed]
    return [*lines, *warnings, ""] if warnings else lines


def indicator_lines(m: dict[str, float]) -> list[str]:
    """Pintor et al.'s (2022) indicators of attack failure; a failed one is a warning."""
    found = [name for name in INDICATORS if f"whitebox.indicator.{name}" in m]
    if not found:
        return []
    lines = ["## Indicators of attack failure (Pintor et al. 2022)", ""]
    targets = target_indicators(m)
    rows = [(name, name, m[f"whitebox.indicator.{name}"], m[f"whitebox.indicator.{name}.failed"]) for name in found]
    for label, name, value, failed in rows + targets:
        lines.append(f"- {'**WARNING** ' if failed else 'ok: '}{label}: {fmt(value)} ({INDICATORS[name]})")
    if m.get("whitebox.indicator.random_end_to_end"):
        lines.append("- note: GCD end to end is random (its masks); it is attacked with EOT and judged over several draws.")
    if any(failed for *_, failed in targets):
        lines += ["", "**An indicator failed on another target: that target's Table 3 cell may understate the attacker.**"]
    if any(m[f"whitebox.indicator.{name}.failed"] for name in found):
        lines += ["", "**Some indicators failed: the attacks above may understate the attacker; read Table 3 as an upper bound "
                  "on robustness.**"]
    return [*lines, ""]


CHANCE_FACTOR = 2.0
"""A classifier below this many times chance accuracy (1 / classes) is flagged: it learnt next to nothing."""


def chance_warning(metrics: dict[str, float]) -> list[str]:
    """A WARNING line when ``f``'s test accuracy is near chance (an untrained or broken classifier, cached or not)."""
    classes = metrics.get("classifier.num_classes")
    if not classes or metrics["classifier.test_acc"] >= CHANCE_FACTOR / classes:
        return []
    return [
        f"**WARNING** f's test accuracy {fmt(metrics['classifier.test_acc'])} is below {CHANCE_FACTOR:g}× chance "
        f"(1/{fmt(classes, 0)}): every later figure is about a classifier that learnt next to nothing. Check the "
        "classifier settings and data, and delete its cache entry to retrain.",
        "",
    ]


def render(metrics: dict[str, float], title: str, dataset: str = "", attack: str = "") -> str:
    """Markdown: the classifier line, one row per adversarial split, then the defense tables.

    The tables read the run as ``tables.Run``: its threat model is the one its metrics show, white-box
    runs reporting ``whitebox.*`` (``whitebox (<suite>)`` under a suite other than the standard one).
    """
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
        lines += chance_warning(metrics)
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
    suite = next((k.removeprefix("whitebox.suite.") for k in metrics if k.startswith("whitebox.suite.")), "standard")
    threat = ("whitebox" if suite == "standard" else f"whitebox ({suite})") if "whitebox.success.gcd" in metrics else "greybox"
    run = Run(dataset, attack, threat, metrics)  # a suite other than the standard one is a threat model of its own (tables.run_key)
    if "detector.auc.gcd" in metrics:
        lines += defense_tables(run)
    if "whitebox.success.gcd" in metrics:
        lines += whitebox_tables(run)
    return "\n".join(lines)


def write_report(metrics: dict[str, float], output_dir: Path, title: str, dataset: str, attack: str) -> None:
    """Write ``metrics.json`` and ``report.md`` into the run's folder, atomically."""
    save_json(metrics, output_dir / "metrics.json")
    save_text(render(metrics, title, dataset, attack), output_dir / "report.md")
