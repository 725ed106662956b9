"""Collect finished runs under a folder into the paper's Tables 2, 3 and 5 (Markdown and CSV).

A run is a folder holding ``metrics.json`` and the resolved ``config.yaml`` that every run writes.
Where several runs share a data set, attack and threat model, the most recently written one
counts; white-box runs of an untargeted attack with one objective alone (eq. 14 or merged,
instead of the stronger of both) are a threat model of their own (``whitebox (eq14)``), so
Table 3 shows each. Each table puts the paper's
number beside ours (``n/a`` where the paper has none). Table 3's rates come with 95% intervals:
``rate [low, high]`` in Markdown, ``<column>_low`` / ``<column>_high`` columns in the CSV.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import yaml

from gcd_lightning.intervals import wilson_interval
from gcd_lightning.paper import TABLE2, TABLE3, TABLE5
from gcd_lightning.report import INDICATORS, with_interval
from gcd_lightning.utils.files import load_json, save_text


@dataclass(frozen=True)
class Run:
    """One finished run: its folder, resolved config and metrics."""

    folder: Path
    config: dict
    metrics: dict[str, float]

    @property
    def key(self) -> tuple[str, str, str]:
        """(data set, attack, threat model); a white-box untargeted run with one objective alone names it."""
        threat, attack = self.config["threat"], self.config["attack"]
        objective = threat.get("untargeted_loss", "eq14")  # runs from before the choice used eq. 14
        if threat["name"] == "whitebox" and not attack.get("targeted", False) and objective != "both":
            return self.config["dataset"]["name"], attack["name"], f"whitebox ({objective})"
        return self.config["dataset"]["name"], attack["name"], threat["name"]


def find_runs(root: Path) -> list[Run]:
    """Every finished run below ``root`` (a folder with ``metrics.json`` and ``config.yaml``), oldest first."""
    runs = []
    for metrics_path in sorted(root.rglob("metrics.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        config_path = metrics_path.parent / "config.yaml"
        if config_path.is_file():
            config = yaml.safe_load(config_path.read_text())
            runs.append(Run(metrics_path.parent, config, load_json(metrics_path, "run metrics")))
    if not runs:
        raise SystemExit(f"no finished runs (metrics.json beside config.yaml) under {root.resolve()}")
    return runs


def latest(runs: Sequence[Run]) -> list[Run]:
    """The most recent run per (data set, attack, threat model), sorted by that key."""
    by_key = {run.key: run for run in runs}
    return [by_key[key] for key in sorted(by_key)]


def cell(value: float | str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return value if isinstance(value, str) else f"{value:.4f}"


def markdown(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


def paper(table: dict, dataset: str, row: str, column: int) -> float | None:
    values = table.get(dataset, {}).get(row)
    return None if values is None else values[column]


def table2(runs: Sequence[Run]) -> tuple[list[str], list[list]]:
    """Grey-box detection AUC and f's accuracy under attack, ours and the paper's."""
    columns = ["dataset", "attack", "F", "F paper", "DET_org", "DET_org paper", "DET_IS", "DET_IS paper", "GCD", "GCD paper"]
    rows = []
    for run in latest(runs):
        dataset, attack, _ = run.key
        m = run.metrics
        if "detector.auc.gcd" not in m or any(r[:2] == [dataset, attack] for r in rows):
            continue
        ours = (m["base.acc.adv"], m["detector.auc.org"], m["detector.auc.is"], m["detector.auc.gcd"])
        rows.append([dataset, attack, *(v for i, o in enumerate(ours) for v in (o, paper(TABLE2, dataset, attack, i)))])
    return columns, rows


@dataclass(frozen=True)
class Rate:
    """One success rate of Table 3: its column, metric key and 95% interval (``<interval>.low`` / ``.high``)."""

    column: str
    key: str
    interval: str
    paper: int | None = None  # its column in paper.TABLE3, printed beside it
    wilson: bool = True  # a share of the ``whitebox.n`` images (Wilson interval); False: a mean over mask draws


TABLE3_RATES = (
    Rate("NoDET", "whitebox.success.nodet", "whitebox.success_ci.nodet", paper=0),
    Rate("DET_IS", "whitebox.success.det_is", "whitebox.success_ci.det_is", paper=1),
    Rate("GCD", "whitebox.success.gcd", "whitebox.success_ci.gcd", paper=2),
    Rate("DET_org", "whitebox.success.det_org", "whitebox.success_ci.det_org"),
    Rate("GCD earlier attacks", "whitebox.success_previous.gcd", "whitebox.success_previous_ci.gcd"),
    Rate("GCD end to end", "whitebox.success.gcd_end_to_end", "whitebox.success.gcd_end_to_end_ci", wilson=False),
    Rate("BPDA+EOT", "whitebox.success.bpda_eot", "whitebox.success_ci.bpda_eot"),
    Rate("BPDA+EOT end to end", "whitebox.success.bpda_eot_end_to_end", "whitebox.success.bpda_eot_end_to_end_ci", wilson=False),
)


def with_wilson(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` plus the Wilson 95% interval of each share of ``whitebox.n`` images in Table 3 that lacks one.

    Older runs reported none, and the stage reports none for GCD's earlier attacks; a rate over
    ``n`` images is ``k / n``, so ``k = round(rate · n)`` and the interval is the stage's own.
    """
    filled = dict(metrics)
    n = metrics["whitebox.n"]
    for rate in TABLE3_RATES:
        value = metrics.get(rate.key)
        if rate.wilson and value is not None and not math.isnan(value) and f"{rate.interval}.low" not in metrics:
            filled[f"{rate.interval}.low"], filled[f"{rate.interval}.high"] = wilson_interval(round(value * n), n)
    return filled


def failed_indicators(metrics: dict[str, float]) -> str | None:
    """The indicators of attack failure (Pintor et al. 2022) that failed, e.g. ``unbounded, incomplete``; ``none``.

    None (``n/a``) for runs from before the indicators.
    """
    found = [name for name in INDICATORS if f"whitebox.indicator.{name}.failed" in metrics]
    if not found:
        return None
    return ", ".join(name for name in found if metrics[f"whitebox.indicator.{name}.failed"]) or "none"


def table3(runs: Sequence[Run], cells: bool = False) -> tuple[list[str], list[list]]:
    """White-box success rates against f, f + DET_IS, GCD and f + DET_org, ours and the paper's; ours end to end too.

    Each image counts the strongest of the stage's attacks; ``GCD earlier attacks`` is GCD's success
    under the stage's attacks before the adaptive evaluation alone. ``BPDA+EOT`` attacks the whole
    randomised GCD, judged end to end under one draw of its masks; the ``end to end`` columns are
    the means over ``threat.judge_draws`` draws. Every rate comes with its 95% interval (``rate_interval``
    / ``mean_interval`` of the stage, Wilson's from the rate where a run did not report one:
    ``with_wilson``): with ``cells=False`` (the CSV) as ``<column>_low`` / ``<column>_high`` columns
    after the rate, with ``cells=True`` (the Markdown) in the rate's cell, ``rate [low, high]``
    (``report.with_interval``). ``failed indicators``: ``failed_indicators``. Metrics a run lacks
    (runs from before them) give ``n/a``.
    """
    columns = ["dataset", "attack", "threat", "n"]
    for rate in TABLE3_RATES:
        columns.append(rate.column)
        columns += [] if cells else [f"{rate.column}_low", f"{rate.column}_high"]
        columns += [] if rate.paper is None else [f"{rate.column} paper"]
    columns += ["L2 NoDET", "L2 GCD", "failed indicators"]
    rows = []
    for run in latest(runs):
        dataset, attack, threat = run.key
        if "whitebox.success.gcd" not in run.metrics:
            continue
        m = with_wilson(run.metrics)
        row = [dataset, attack, threat, str(int(m["whitebox.n"]))]
        for rate in TABLE3_RATES:
            if cells:
                row.append(with_interval(m, rate.key, rate.interval) if rate.key in m else None)
            else:
                row += [m.get(rate.key), m.get(f"{rate.interval}.low"), m.get(f"{rate.interval}.high")]
            row += [] if rate.paper is None else [paper(TABLE3, dataset, attack, rate.paper)]
        rows.append([*row, m.get("whitebox.l2_median.nodet"), m.get("whitebox.l2_median.gcd"), failed_indicators(m)])
    return columns, rows


def table5(runs: Sequence[Run]) -> tuple[list[str], list[list]]:
    """GCD's and f's accuracy on clean and on adversarial test images, ours and the paper's.

    Each attack trains its own detectors and ``f_rec``, so GCD's clean accuracy differs by attack:
    every attack row carries its own (``GCD clean``), and a data set's ``clean`` row gives the
    lowest of them, with the number of runs it is taken over. ``GCD`` and ``F`` are over the
    attacked images (all classified correctly by f, the paper's setting); ``GCD all examined`` and
    ``F all examined`` (``*.robust_acc.all``) over every test image examined to find them, the
    misclassified ones counted as errors (``n/a`` for runs from before these metrics).
    """
    columns = ["dataset", "images", "GCD", "GCD paper", "F", "F paper", "GCD clean", "GCD all examined", "F all examined"]
    attack_rows: dict[str, list[list]] = {}
    f_clean: dict[tuple[str, str], float] = {}
    for run in latest(runs):
        dataset, attack, _ = run.key
        m = run.metrics
        rows = attack_rows.setdefault(dataset, [])
        if "gcd.acc.adv" not in m or any(row[1] == attack for row in rows):
            continue
        rows.append([dataset, attack, m["gcd.acc.adv"], paper(TABLE5, dataset, attack, 0),
                     m["base.acc.adv"], paper(TABLE5, dataset, attack, 1), m["gcd.acc.clean"],
                     m.get("gcd.robust_acc.all"), m.get("base.robust_acc.all")])
        f_clean[dataset, attack] = m["base.acc.clean"]
    table = []
    for dataset, rows in attack_rows.items():
        if not rows:
            continue
        table.append([dataset, f"clean (lowest of {len(rows)})", min(row[6] for row in rows), paper(TABLE5, dataset, "clean", 0),
                      min(f_clean[dataset, row[1]] for row in rows), paper(TABLE5, dataset, "clean", 1), None, None, None])
        table += rows
    return columns, table


def robustness(runs: Sequence[Run], cells: bool = False) -> tuple[list[str], list[list]]:
    """GCD's fixed-budget robustness in white-box runs: one row per run, norm and budget (``whitebox.robust_*``).

    Attack success with its Wilson 95% interval (as Table 3 shows it), robust accuracy over the
    attacked images and over every examined test image, and Tramèr's (2022) check: the accuracy a
    classifier robust at ε/2 would have, and whether it stays at or below the best published one.
    """
    columns = ["dataset", "attack", "threat", "norm", "eps", "success", *([] if cells else ["success_low", "success_high"]),
               "robust acc", "robust acc all examined", "Tramèr radius", "best published", "plausible"]
    rows = []
    for run in latest(runs):
        dataset, attack, threat = run.key
        m = run.metrics
        keys = sorted({".".join(k.split(".")[:4]) for k in m if k.startswith("whitebox.robust_")})
        for key in keys:
            norm, eps = key.split(".")[1].removeprefix("robust_"), float(".".join(key.split(".")[2:4]))
            success = ([with_interval(m, f"{key}.success", f"{key}.success_ci")] if cells
                       else [m[f"{key}.success"], m[f"{key}.success_ci.low"], m[f"{key}.success_ci.high"]])
            plausible = m[f"{key}.tramer.plausible"]
            rows.append([dataset, attack, threat, norm, f"{eps:g}", *success, m[f"{key}.robust_acc"], m[f"{key}.robust_acc_all"],
                         f"{m[f'{key}.tramer.radius']:g}", m[f"{key}.tramer.reference"],
                         None if math.isnan(plausible) else ("yes" if plausible else "no")])
    return columns, rows


TABLES = {"table2": table2, "table3": table3, "table5": table5, "robustness": robustness}
"""Each table's builder: the CSV's columns and rows."""
MARKDOWN_TABLES = {**TABLES, "table3": partial(table3, cells=True), "robustness": partial(robustness, cells=True)}
"""The Markdown's: rates and their intervals in one cell."""


def write_tables(root: Path, out_dir: Path) -> dict[str, str]:
    """Write ``<name>.md`` and ``<name>.csv`` for each table that has rows; returns the Markdown by name."""
    runs = find_runs(root)
    written = {}
    for name, build in TABLES.items():
        columns, rows = build(runs)
        if rows:
            written[name] = markdown(*MARKDOWN_TABLES[name](runs))
            save_text(written[name], out_dir / f"{name}.md")
            save_text(to_csv(columns, rows), out_dir / f"{name}.csv")
    return written
