"""Collect finished runs under a folder into the paper's Tables 2, 3 and 5 (Markdown and CSV).

A run is a folder holding ``metrics.json`` and the resolved ``config.yaml`` that every run writes.
Where several runs share a data set, attack and threat model, the most recently written one
counts; white-box runs of an untargeted attack with one objective alone (eq. 14 or merged,
instead of the stronger of both) are a threat model of their own (``whitebox (eq14)``), so
Table 3 shows each. Each table puts the paper's
number beside ours (``n/a`` where the paper has none).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gcd_lightning.paper import TABLE2, TABLE3, TABLE5
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


def table3(runs: Sequence[Run]) -> tuple[list[str], list[list]]:
    """White-box success rates against f, f + DET_IS and GCD, ours and the paper's; ours end to end too."""
    columns = ["dataset", "attack", "threat", "n", "NoDET", "NoDET paper", "DET_IS", "DET_IS paper", "GCD", "GCD paper",
               "GCD end to end", "BPDA+EOT end to end", "L2 NoDET", "L2 GCD"]
    rows = []
    for run in latest(runs):
        dataset, attack, threat = run.key
        m = run.metrics
        if "whitebox.success.gcd" not in m:
            continue
        ours = [m[f"whitebox.success.{name}"] for name in ("nodet", "det_is", "gcd")]
        rows.append([
            dataset, attack, threat, str(int(m["whitebox.n"])),
            *(v for i, o in enumerate(ours) for v in (o, paper(TABLE3, dataset, attack, i))),
            m["whitebox.success.gcd_end_to_end"], m["whitebox.success.bpda_eot"],
            m["whitebox.l2_median.nodet"], m["whitebox.l2_median.gcd"],
        ])
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


TABLES = {"table2": table2, "table3": table3, "table5": table5}


def write_tables(root: Path, out_dir: Path) -> dict[str, str]:
    """Write ``<name>.md`` and ``<name>.csv`` for each table that has rows; returns the Markdown by name."""
    runs = find_runs(root)
    written = {}
    for name, build in TABLES.items():
        columns, rows = build(runs)
        if rows:
            written[name] = markdown(columns, rows)
            save_text(written[name], out_dir / f"{name}.md")
            save_text(to_csv(columns, rows), out_dir / f"{name}.csv")
    return written
