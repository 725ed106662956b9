"""The paper's Tables 2, 3 and 5 and GCD's fixed-budget robustness, laid out once from a list of runs.

Each table is ``(columns, rows)``: one row per run (Table 5: per attack, after a ``clean`` row
per data set), the paper's number beside ours (``None``, ``n/a`` in Markdown, where it has
none). The aggregate passes the latest run per data set, attack and threat model
(``aggregate.latest``); a run's ``report.md`` and its W&B tables pass a list of one. A rate with
a 95% interval is three columns, ``<column>``, ``<column>_low`` and ``<column>_high`` (the CSV
and W&B), or one Markdown cell ``rate [low, high]`` (``cells=True``). ``markdown`` and
``to_csv`` write a table as text.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gcd_lightning.intervals import wilson_interval
from gcd_lightning.reporting.paper import (
    BASELINE_COLUMNS,
    DETECTORS,
    RECTIFIER_COLUMNS,
    TABLE2,
    TABLE2_BASELINES,
    TABLE3,
    TABLE5,
    TABLE5_BASELINES,
    detector_label,
)

Table = tuple[list[str], list[list]]
"""A table's columns and its rows."""

TRAINED_ON = " (trained on "
"""What ``run_key`` appends to the threat model of attack-agnostic runs, and ``Run.label`` to their attack."""


@dataclass(frozen=True)
class Run:
    """One run as the tables read it: data set, attack, threat model (``run_key``) and metrics."""

    dataset: str
    attack: str
    threat: str
    metrics: dict[str, float]

    @property
    def key(self) -> tuple[str, str, str]:
        """(data set, attack, threat model): a run of the same key replaces it in the aggregate."""
        return self.dataset, self.attack, self.threat

    @property
    def label(self) -> str:
        """The attack as Tables 2 and 5 and the transfer matrices name the row: with what the detectors were
        trained on when that was not the attack alone (``defense.train_attacks``, see ``run_key``)."""
        _, trained, rest = self.threat.partition(TRAINED_ON)
        return f"{self.attack}{TRAINED_ON}{rest}" if trained else self.attack



def run_key(config: Mapping) -> tuple[str, str, str]:
    """(data set, attack, threat model) of a run's resolved config.

    White-box runs under a suite other than the standard one are a threat model of their own (``whitebox (paper)``),
    so Table 3 shows each; so are detectors trained on several attacks (``defense.train_attacks``): ``greybox (trained on 8
    attacks)``, or ``(trained on 7 others)`` when the run's attack is left out.
    """
    threat, attack = config["threat"], config["attack"]
    name, suite = threat["name"], Path(str(threat.get("suite", "standard"))).stem
    if name == "whitebox" and suite != "standard":
        name = f"whitebox ({suite})"
    trained_on = (config.get("defense") or {}).get("train_attacks") or []
    if trained_on:  # attack-agnostic training: the union of all attacks, or leave-one-out, is a row of its own
        name += f"{TRAINED_ON}{len(trained_on)} {'attacks' if attack['name'] in trained_on else 'others'})"
    return config["dataset"]["name"], attack["name"], name


def fmt(value: float, digits: int = 4) -> str:
    """A rate or norm with ``digits`` decimals; whole-number counts pass ``digits=0``."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def with_interval(m: dict[str, float], key: str, interval: str) -> str:
    """``rate [low, high]``: a rate and its 95% interval (``<interval>.low`` / ``.high``) when reported."""
    if f"{interval}.low" not in m:
        return fmt(m[key])
    return f"{fmt(m[key])} [{fmt(m[f'{interval}.low'], 3)}, {fmt(m[f'{interval}.high'], 3)}]"


def cell(value: float | str | None) -> str:
    """A Markdown cell: text as it is, a number with four decimals, ``n/a`` for none or NaN."""
    if value is None:
        return "n/a"
    return value if isinstance(value, str) else fmt(value)


def markdown(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The table in Markdown, ending with a newline."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """The table as CSV text, a header line first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def paper(table: dict, dataset: str, row: str, column: int) -> float | None:
    """The paper's number in ``table`` (``paper.TABLE*``); None where it has none."""
    values = table.get(dataset, {}).get(row)
    return None if values is None else values[column]


def in_order(names: set[str], order: Sequence[str]) -> list[str]:
    """``names``, those of ``order`` first in its order, the others after them by name."""
    order = list(order)
    return sorted(names, key=lambda name: (order.index(name) if name in order else len(order), name))


def defense_detectors(runs: Sequence[Run]) -> list[str]:
    """The detectors of the runs' defenses (``defense.detectors``; a run reports ``detector.val_auc.<name>`` for
    each), the paper's ``org`` and ``is`` first; GCD's two for runs that report none (metrics of another origin)."""
    found = {key.removeprefix("detector.val_auc.") for run in runs for key in run.metrics
             if key.startswith("detector.val_auc.")} - {"gcd"}  # the ensemble's own is reported beside them
    return in_order(found, tuple(DETECTORS)) if found else list(DETECTORS)


def baseline_names(runs: Sequence[Run], prefix: str, suffix: str = "", order: Sequence[str] = tuple(BASELINE_COLUMNS)) -> list[str]:
    """The baselines in any of ``runs``: the ``<name>`` of metric keys ``<prefix><name><suffix>`` other than the
    defense's own detectors and ``gcd``, those of ``order`` (the paper's) first."""
    found = {key[len(prefix):len(key) - len(suffix)] for run in runs for key in run.metrics
             if key.startswith(prefix) and key.endswith(suffix)}
    return in_order(found - {*defense_detectors(runs), "gcd"}, order)


def table2(runs: Sequence[Run]) -> Table:
    """Grey-box detection AUC and f's accuracy under attack, ours and the paper's; a row per data set and attack.

    A pair of columns per detector of the defense (the paper's ``DET_org`` and ``DET_IS``, or the defense's own),
    then GCD's; after them one pair per baseline detector scored in any run (``baseline=[...]``).
    """
    names = baseline_names(runs, "detector.auc.")
    detectors = defense_detectors(runs)
    columns = ["dataset", "attack", "F", "F paper",
               *(c for d in detectors for c in (detector_label(d), f"{detector_label(d)} paper")), "GCD", "GCD paper"]
    for name in names:
        column = BASELINE_COLUMNS.get(name, name)
        columns += [column, f"{column} paper"]
    rows = []
    for run in runs:
        dataset, attack, m = run.dataset, run.attack, run.metrics
        if "detector.auc.gcd" not in m or any(r[:2] == [dataset, run.label] for r in rows):
            continue
        row = [dataset, run.label, m["base.acc.adv"], paper(TABLE2, dataset, attack, 0)]
        for d in detectors:
            row += [m.get(f"detector.auc.{d}"), paper(TABLE2, dataset, attack, 1 + list(DETECTORS).index(d)) if d in DETECTORS else None]
        row += [m["detector.auc.gcd"], paper(TABLE2, dataset, attack, 3)]
        for name in names:
            row += [m.get(f"detector.auc.{name}"), TABLE2_BASELINES.get(dataset, {}).get(attack, {}).get(name)]
        rows.append(row)
    return columns, rows


@dataclass(frozen=True)
class Rate:
    """One success rate of Table 3: its column, metric key and 95% interval (``<interval>.low`` / ``.high``)."""

    column: str
    key: str
    interval: str
    paper: int | None = None  # its column in paper.TABLE3, printed beside it
    wilson: bool = True  # a share of the ``whitebox.n`` images (Wilson interval); False: a mean over mask draws


def table3_rates(detectors: Sequence[str]) -> tuple[Rate, ...]:
    """Table 3's rates for a defense with ``detectors``: NoDET, ``DET_IS`` and GCD with the paper's numbers, then
    the defense's other detectors, then GCD end to end and through BPDA + EOT."""

    def own(d: str) -> Rate:
        return Rate(detector_label(d), f"whitebox.success.det_{d}", f"whitebox.success_ci.det_{d}", paper=1 if d == "is" else None)

    first = [own(d) for d in detectors if d == "is"]
    return (Rate("NoDET", "whitebox.success.nodet", "whitebox.success_ci.nodet", paper=0), *first,
            Rate("GCD", "whitebox.success.gcd", "whitebox.success_ci.gcd", paper=2),
            *(own(d) for d in detectors if d != "is"), *GCD_RATES)


GCD_RATES = (
    Rate("GCD end to end", "whitebox.success.gcd_end_to_end", "whitebox.success.gcd_end_to_end_ci", wilson=False),
    Rate("BPDA+EOT", "whitebox.success.bpda_eot", "whitebox.success_ci.bpda_eot"),
    Rate("BPDA+EOT end to end", "whitebox.success.bpda_eot_end_to_end", "whitebox.success.bpda_eot_end_to_end_ci", wilson=False),
)


def with_wilson(metrics: dict[str, float], rates: Sequence[Rate]) -> dict[str, float]:
    """``metrics`` plus the Wilson 95% interval of each share of ``whitebox.n`` images in Table 3 that lacks one.

    Older runs reported none; a rate over ``n`` images is ``k / n``, so ``k = round(rate · n)`` and the interval is
    the stage's own.
    """
    filled = dict(metrics)
    n = metrics["whitebox.n"]
    for rate in rates:
        value = metrics.get(rate.key)
        if rate.wilson and value is not None and not math.isnan(value) and f"{rate.interval}.low" not in metrics:
            filled[f"{rate.interval}.low"], filled[f"{rate.interval}.high"] = wilson_interval(round(value * n), n)
    return filled


INDICATORS = {
    "silent": "images whose first gradient was zero or not finite (gradient masking)",
    "incomplete": "the suite's first attack: relative fall of its loss over the last 10% of the steps, on the images it lost",
    "unbounded": "success at L∞ ε = 1: the budget's wins, then the suite's gradient attacks in turn on the rest "
                 "(must reach ~1: every image is reachable)",
    "noise": "clean images whose decision (label, flag) changes under ±1e-3 uniform noise",
    "random": "the detected classifier answers the same input differently (AutoAttack's check)",
}
"""Pintor et al.'s (2022) indicators of attack failure (``whitebox.indicator.<name>``) and what each measures."""


def target_indicators(metrics: dict[str, float]) -> list[tuple[str, str, float, bool]]:
    """The indicators run on each single-detector target (``whitebox.target_indicator.<target>.<name>``):
    ``(label "<name> (<target>)", name, value, failed)`` each."""
    found = []
    for key, value in metrics.items():
        if key.startswith("whitebox.target_indicator.") and not key.endswith(".failed"):
            target, name = key.removeprefix("whitebox.target_indicator.").rsplit(".", 1)
            found.append((f"{name} ({target})", name, value, bool(metrics[f"{key}.failed"])))
    return found


def failed_indicators(metrics: dict[str, float]) -> str | None:
    """The indicators of attack failure (Pintor et al. 2022) that failed, e.g. ``unbounded, incomplete``; ``none``.

    GCD's go by name, a single-detector target's with it, e.g. ``unbounded (det_pd)``.
    None (``n/a``) for runs from before the indicators.
    """
    found = [name for name in INDICATORS if f"whitebox.indicator.{name}.failed" in metrics]
    if not found:
        return None
    failed = [name for name in found if metrics[f"whitebox.indicator.{name}.failed"]]
    failed += [label for label, _, _, bad in target_indicators(metrics) if bad]
    return ", ".join(failed) or "none"


def table3(runs: Sequence[Run], cells: bool = False) -> Table:
    """White-box success rates against f, f + each detector of the defense (the paper's f + DET_IS, f + DET_org)
    and GCD, ours and the paper's; ours end to end too.

    Each image counts its first win in the suite's cascade (``threat.suite``). ``BPDA+EOT`` attacks the whole
    randomised GCD (``threat.rand_suite``), won where its answer is fooled in most draws of its masks; the
    ``end to end`` columns are
    the means over ``threat.judge_draws`` draws. Every rate comes with its 95% interval (``rate_interval``
    / ``mean_interval`` of the stage, Wilson's from the rate where a run did not report one:
    ``with_wilson``): with ``cells=False`` (the CSV, W&B) as ``<column>_low`` / ``<column>_high`` columns
    after the rate, with ``cells=True`` (Markdown) in the rate's cell, ``rate [low, high]``
    (``with_interval``). ``failed indicators``: ``failed_indicators``. Metrics a run lacks
    (runs from before them) give ``n/a``. A baseline detector attacked in any run (``det_<name>``)
    adds its rate after GCD's, and so does a Table 5 baseline (``rec_<name>``, e.g. ``TVM classifier``).
    """
    rates = [*table3_rates(defense_detectors(runs)), *(Rate(BASELINE_COLUMNS.get(name, name), f"whitebox.success.det_{name}",
                                   f"whitebox.success_ci.det_{name}") for name in baseline_names(runs, "whitebox.success.det_")),
             *(Rate(f"{RECTIFIER_COLUMNS.get(name, name)} classifier", f"whitebox.success.rec_{name}", f"whitebox.success_ci.rec_{name}")
               for name in baseline_names(runs, "whitebox.success.rec_", order=tuple(RECTIFIER_COLUMNS)))]
    columns = ["dataset", "attack", "threat", "n"]
    for rate in rates:
        columns.append(rate.column)
        columns += [] if cells else [f"{rate.column}_low", f"{rate.column}_high"]
        columns += [] if rate.paper is None else [f"{rate.column} paper"]
    columns += ["L2 NoDET", "L2 GCD", "failed indicators"]
    rows = []
    for run in runs:
        if "whitebox.success.gcd" not in run.metrics:
            continue
        m = with_wilson(run.metrics, rates)
        row = [run.dataset, run.attack, run.threat, str(int(m["whitebox.n"]))]
        for rate in rates:
            if cells:
                row.append(with_interval(m, rate.key, rate.interval) if rate.key in m else None)
            else:
                row += [m.get(rate.key), m.get(f"{rate.interval}.low"), m.get(f"{rate.interval}.high")]
            row += [] if rate.paper is None else [paper(TABLE3, run.dataset, run.attack, rate.paper)]
        rows.append([*row, m.get("whitebox.l2_median.nodet"), m.get("whitebox.l2_median.gcd"), failed_indicators(m)])
    return columns, rows


def table5(runs: Sequence[Run]) -> Table:
    """GCD's, the rectifier baselines' and f's accuracy on clean and on adversarial test images, ours and the paper's.

    Each attack trains its own detectors and ``f_rec``, so GCD's clean accuracy differs by attack:
    every attack row carries its own (``GCD clean``), and a data set's ``clean`` row gives the
    lowest of them, with the number of runs it is taken over. ``GCD``, each rectifier baseline
    (``rectifier_baseline=[...]``: the paper's PD, DDN, PGD, TVM) and ``F`` are over the attacked
    images (all classified correctly by f, the paper's setting; grey-box: attacked through f alone);
    ``GCD all examined`` and ``F all examined`` (``*.robust_acc.all``) over every test image examined to
    find them, the misclassified ones counted as errors (``n/a`` for runs from before these metrics).
    """
    names = baseline_names(runs, "rectifier_baseline.", ".acc.adv", order=tuple(RECTIFIER_COLUMNS))
    columns = ["dataset", "images", "GCD", "GCD paper"]
    for name in names:
        column = RECTIFIER_COLUMNS.get(name, name)
        columns += [column, f"{column} paper"]
    columns += ["F", "F paper", "GCD clean", "GCD all examined", "F all examined"]

    def papers(dataset: str, images: str) -> list[float | None]:
        return [TABLE5_BASELINES.get(dataset, {}).get(images, {}).get(name) for name in names]

    def baselines(m: dict[str, float], dataset: str, attack: str) -> list:
        ours = [m.get(f"rectifier_baseline.{name}.acc.adv") for name in names]
        return [v for pair in zip(ours, papers(dataset, attack)) for v in pair]

    attack_rows: dict[str, list[list]] = {}
    clean_rows: dict[str, list[list]] = {}
    for run in runs:
        dataset, attack, m = run.dataset, run.attack, run.metrics
        rows = attack_rows.setdefault(dataset, [])
        if "gcd.acc.adv" not in m or any(row[1] == run.label for row in rows):
            continue
        rows.append([dataset, run.label, m["gcd.acc.adv"], paper(TABLE5, dataset, attack, 0), *baselines(m, dataset, attack),
                     m["base.acc.adv"], paper(TABLE5, dataset, attack, 1), m["gcd.acc.clean"],
                     m.get("gcd.robust_acc.all"), m.get("base.robust_acc.all")])
        clean_rows.setdefault(dataset, []).append(
            [m["gcd.acc.clean"], *(m.get(f"rectifier_baseline.{name}.acc.clean") for name in names), m["base.acc.clean"]])
    table = []
    for dataset, rows in attack_rows.items():
        if not rows:
            continue
        lowest = [min((v for v in values if v is not None), default=None) for values in zip(*clean_rows[dataset])]
        published = [paper(TABLE5, dataset, "clean", 0), *papers(dataset, "clean"), paper(TABLE5, dataset, "clean", 1)]
        table.append([dataset, f"clean (lowest of {len(rows)})", *(v for pair in zip(lowest, published) for v in pair), None, None, None])
        table += rows
    return columns, table


def robustness(runs: Sequence[Run], cells: bool = False) -> Table:
    """GCD's fixed-budget robustness in white-box runs: one row per run, norm and budget (``whitebox.robust_*``).

    Attack success with its Wilson 95% interval (as Table 3 shows it), robust accuracy over the
    attacked images and over every examined test image, ``f`` alone's under the same suite on the same images
    (``robust acc f``), and Tramèr's (2022) check: the accuracy a
    classifier robust at ε/2 (``Tramèr radius``) would have (``robust acc all examined``), the best
    published one evaluated there (``paper.ROBUST_CLASSIFIERS``), the best of the run's Table 5 classifiers evaluated
    there by the suite on the same images (against ``robust acc``), and whether it stays at or below both (``plausible``).
    """
    columns = ["dataset", "attack", "threat", "norm", "eps", "success", *([] if cells else ["success_low", "success_high"]),
               "robust acc", "robust acc all examined", "robust acc f", "Tramèr radius", "best published", "best own classifier", "plausible"]
    rows = []
    for run in runs:
        m = run.metrics
        keys = sorted({".".join(k.split(".")[:4]) for k in m if k.startswith("whitebox.robust_")})
        for key in keys:
            norm, eps = key.split(".")[1].removeprefix("robust_"), float(".".join(key.split(".")[2:4]))
            success = ([with_interval(m, f"{key}.success", f"{key}.success_ci")] if cells
                       else [m[f"{key}.success"], m[f"{key}.success_ci.low"], m[f"{key}.success_ci.high"]])
            plausible = m[f"{key}.tramer.plausible"]
            rows.append([run.dataset, run.attack, run.threat, norm, f"{eps:g}", *success, m[f"{key}.robust_acc"],
                         m[f"{key}.robust_acc_all"], m.get(f"{key}.robust_acc_f"), f"{m[f'{key}.tramer.radius']:g}", m[f"{key}.tramer.reference"],
                         m.get(f"{key}.tramer.own_reference"), None if math.isnan(plausible) else ("yes" if plausible else "no")])
    return columns, rows


TRANSFER_MEASURES = (("AUC", "transfer.auc.{detector}.{attack}"), ("TPR@1%", "transfer.tpr_at_fpr.{detector}.{attack}.0.01"),
                     ("TPR@5%", "transfer.tpr_at_fpr.{detector}.{attack}.0.05"))


def transfer(runs: Sequence[Run]) -> dict[str, Table]:
    """Each detector's transfer matrix (``transfer_<detector>``): a row per training attack and measure (AUC, TPR
    at 1% and 5% FPR, thresholds on clean validation images), a column per attack it was tested on."""
    keys = [key.split(".") for run in runs for key in run.metrics if key.startswith("transfer.auc.")]
    detectors = sorted({parts[2] for parts in keys})
    tested = sorted({parts[3] for parts in keys})
    tables = {}
    for detector in detectors:
        rows = []
        for run in runs:
            if not any(key.startswith(f"transfer.auc.{detector}.") for key in run.metrics):
                continue
            for measure, key in TRANSFER_MEASURES:
                rows.append([run.dataset, run.label, measure,
                             *(run.metrics.get(key.format(detector=detector, attack=attack)) for attack in tested)])
        tables[f"transfer_{detector}"] = (["dataset", "trained on", "measure", *tested], rows)
    return tables


STAGE_ORDER = ("classifier", "attack", "detectors", "rectifier", "evaluate", "baselines", "rectifier_baselines", "transfer",
               "whitebox")


def timing(runs: Sequence[Run]) -> Table:
    """What each run cost, in whole seconds: the wall time of each stage in that run (``stage_seconds.<stage>``, near 0
    where the cache served it) and their total, then what each component cost when it was built (``*seconds*``
    metrics: training, fitting, scoring; a cached component reports its original cost). Per-image white-box times
    are left out."""
    stage_keys = [key for key in (f"stage_seconds.{stage}" for stage in STAGE_ORDER) if any(key in run.metrics for run in runs)]
    component_keys = sorted({key for run in runs for key in run.metrics
                             if "seconds" in key and not key.startswith(("stage_seconds.", "whitebox."))})
    columns = ["dataset", "attack", "threat", *stage_keys, "stage_seconds.total", *component_keys]  # the metrics' names
    rows = []

    def whole(value: float | None) -> str | None:
        return None if value is None else f"{value:.0f}"

    for run in runs:
        if not any(key in run.metrics for key in stage_keys):
            continue
        stages = [run.metrics.get(key) for key in stage_keys]
        rows.append([run.dataset, run.label, run.threat, *map(whole, stages), whole(sum(v for v in stages if v is not None)),
                     *(whole(run.metrics.get(key)) for key in component_keys)])
    return columns, rows


def laid_out(runs: Sequence[Run], cells: bool = False) -> dict[str, Table]:
    """Every table that has rows, by name (``table2``, ``table3``, ``table5``, ``robustness``, ``transfer_<detector>``,
    ``timing``).

    ``cells=False``: one number a cell (the CSV, W&B); ``cells=True``: a rate and its interval in one cell (Markdown).
    """
    tables = {"table2": table2(runs), "table3": table3(runs, cells), "table5": table5(runs), "robustness": robustness(runs, cells),
              **transfer(runs), "timing": timing(runs)}
    return {name: table for name, table in tables.items() if table[1]}
