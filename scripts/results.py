"""Regenerate the results page from the runs under an output folder.

    python scripts/results.py outputs [--page docs/results.md]

Refreshes ``<root>/aggregate`` (Tables 2, 3, 5, robustness, timing as Markdown and CSV, like
``scripts/aggregate.py``) and writes the page with its figures in ``docs/results/``
(``gcd_lightning.reporting.results``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gcd_lightning.reporting.aggregate import write_tables
from gcd_lightning.reporting.results import results_page


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder searched recursively for runs and evaluations")
    parser.add_argument("--page", type=Path, default=Path("docs/results.md"), help="the page to write (default: docs/results.md)")
    args = parser.parse_args(argv)
    write_tables(args.root, args.root / "aggregate")
    page = results_page(args.root, args.page)
    print(f"wrote {page} and its figures in {page.with_suffix('')}/")
    return page


if __name__ == "__main__":
    main()
