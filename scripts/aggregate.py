"""Collect every run under an output folder into the paper's Tables 2, 3 and 5 (Markdown and CSV).

    python scripts/aggregate.py outputs [--out outputs/aggregate]

Grey-box runs fill Tables 2 and 5, white-box runs (``threat=whitebox``) Table 3; the paper's
numbers stand beside ours. The tables are printed and written as ``<out>/table{2,3,5}.{md,csv}``,
with ``robustness`` and, for runs with ``evaluate.transfer_attacks``, each detector's transfer
matrix ``transfer_<detector>.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gcd_lightning.reporting.aggregate import write_tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder searched recursively for runs (metrics.json + config.yaml)")
    parser.add_argument("--out", type=Path, default=None, help="folder for the tables (default: <root>/aggregate)")
    args = parser.parse_args(argv)
    written = write_tables(args.root, args.out or args.root / "aggregate")
    for name, table in written.items():
        sys.stdout.write(f"## {name}\n\n{table}\n")


if __name__ == "__main__":
    main()
