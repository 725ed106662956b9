"""Collect the runs of a Hydra sweep into one table (the paper's Fig. 6: GCD accuracy against α).

    python scripts/collect_sweep.py outputs/multirun/mnist_cw_targeted/greybox/<time> [--out sweep.md]

Each run folder holds ``config.yaml`` (resolved) and ``metrics.json``; the table has one row per
run, sorted by ``rectifier.alpha``, and is printed and written as Markdown and CSV, with the
plot of GCD's accuracy against α beside them (PNG); ``--wandb`` also logs them as a W&B run
(offline, under ``<sweep_dir>/wandb``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcd_lightning.reporting.aggregate import find_runs
from gcd_lightning.reporting.figures import alpha_sweep
from gcd_lightning.reporting.tables import markdown, to_csv
from gcd_lightning.reporting.wandb import log_sweep
from gcd_lightning.utils.files import save_text

COLUMNS = ("rectifier.alpha", "gcd.acc.adv", "gcd.acc.clean", "rectifier.val_acc", "detector.auc.gcd", "base.acc.adv")


def collect(sweep_dir: Path) -> list[dict]:
    """One row per finished run below ``sweep_dir``, sorted by α."""
    rows = []
    for run in find_runs(sweep_dir):
        row = {"run": run.folder.name, "experiment": run.config["experiment_name"]}
        row.update({key: run.metrics.get(key, float("nan")) for key in COLUMNS})
        rows.append(row)
    return sorted(rows, key=lambda row: row["rectifier.alpha"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="Markdown file (default: <sweep_dir>/sweep.md)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and a line plot as a W&B run (offline)")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    out = args.out or args.sweep_dir / "sweep.md"
    columns = ["run", "experiment", *COLUMNS]
    cells = [[row[c] for c in columns] for row in rows]
    table = markdown(columns, cells)
    save_text(table, out)
    save_text(to_csv(columns, cells), out.with_suffix(".csv"))
    alpha_sweep(rows, f"GCD accuracy vs α, {rows[0]['experiment']}", out.with_suffix(".png"))
    if args.wandb:
        log_sweep(rows, args.sweep_dir, rows[0]["experiment"])
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
