"""Table 3 and GCD's fixed-budget cells of two ``make whitebox`` outputs side by side, per row (not part of the tests).

Each folder holds one run per row (``<folder>/mnist_<attack>/metrics.json``, as ``make whitebox`` writes them); a row or
cell that one of them lacks is ``n/a``. ``after − before`` is the change; the issue's bar is ``≥ −0.02`` on the same
images. Example::

    python scripts/whitebox_before_after.py outputs/whitebox_old outputs/whitebox > outputs/whitebox/before_after.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGETS = ("nodet", "det_is", "det_org", "gcd", "bpda_eot", "gcd_end_to_end")


def cells(metrics: dict[str, float]) -> dict[str, float]:
    """A run's Table 3 success rates and GCD's fixed-budget success, by name."""
    found = {f"success {t}": metrics[f"whitebox.success.{t}"] for t in TARGETS if f"whitebox.success.{t}" in metrics}
    for key, value in metrics.items():
        parts = key.split(".")
        if key.startswith("whitebox.robust_") and key.endswith(".success") and len(parts) == 5:
            found[f"GCD success at {parts[1].removeprefix('robust_')} {float(parts[2] + '.' + parts[3]):g}"] = value
    return found


def rows(before: Path, after: Path) -> list[str]:
    lines = ["| row | cell | before | after | after − before |", "|---|---|---:|---:|---:|"]
    for run in sorted({p.parent.name for p in [*before.glob("*/metrics.json"), *after.glob("*/metrics.json")]}):
        old, new = ({} if not (folder / run / "metrics.json").is_file() else cells(json.loads((folder / run / "metrics.json").read_text()))
                    for folder in (before, after))
        for name in sorted(set(old) | set(new)):
            a, b = old.get(name), new.get(name)
            change = "n/a" if a is None or b is None else f"{b - a:+.2f}"
            lines.append(f"| {run} | {name} | {'n/a' if a is None else f'{a:.2f}'} | {'n/a' if b is None else f'{b:.2f}'} | {change} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args(argv)
    print("\n".join(rows(args.before, args.after)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
