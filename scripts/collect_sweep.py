"""Collect the runs of a Hydra sweep into one table (the paper's Fig. 6: GCD accuracy against α).

    python scripts/collect_sweep.py outputs/multirun/mnist_cw_targeted/greybox/<time> [--out sweep.md]

Each run folder holds ``config.yaml`` (resolved) and ``metrics.json``; the table has one row per
run, sorted by ``rectifier.alpha``, and is printed and written as Markdown and CSV.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import yaml

from gcd_lightning.utils.files import load_json, save_text

COLUMNS = ("rectifier.alpha", "gcd.acc.adv", "gcd.acc.clean", "rectifier.val_acc", "detector.auc.gcd", "base.acc.adv")


def collect(sweep_dir: Path) -> list[dict[str, float]]:
    """One row per run folder below ``sweep_dir`` that has finished (has ``metrics.json``)."""
    rows = []
    for metrics_path in sorted(sweep_dir.glob("*/metrics.json")):
        metrics = load_json(metrics_path, "run metrics")
        config = yaml.safe_load((metrics_path.parent / "config.yaml").read_text())
        row = {"run": metrics_path.parent.name, "experiment": config["experiment_name"]}
        row.update({key: metrics.get(key, float("nan")) for key in COLUMNS})
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished runs (*/metrics.json) under {sweep_dir.resolve()}; is it a Hydra multirun folder?")
    return sorted(rows, key=lambda row: row["rectifier.alpha"])


def markdown(rows: list[dict]) -> str:
    header = ["run", "experiment", *COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row[k] if isinstance(row[k], str) else f"{row[k]:.4f}" for k in header]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", "experiment", *COLUMNS])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: <sweep_dir>/sweep.md)")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    out = args.out or args.sweep_dir / "sweep.md"
    save_text(markdown(rows), out)
    save_text(to_csv(rows), out.with_suffix(".csv"))
    sys.stdout.write(markdown(rows))


if __name__ == "__main__":
    main()
