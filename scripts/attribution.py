"""The attribution table of the adaptive suite: which attack of a cascade won which images that no earlier one did.

Reads the ``metrics.json`` that ``python -m gcd_lightning.evaluate`` wrote for each row (``<root>/<row>/metrics.json``)
and writes ``<root>/attribution.md``: per row, the images each attack won first and the robust accuracy after
it (AutoAttack's log), and per attack the rows where it won anything first. An attack earns its place in the
``standard`` suite when it wins images nothing before it wins, on some row, or when a check needs it.

    python scripts/attribution.py outputs/attribution
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gcd_lightning.utils.files import save_text


def attribution(root: Path) -> str:
    runs = {path.parent.name: json.loads(path.read_text()) for path in sorted(root.glob("*/metrics.json"))}
    if not runs:
        raise SystemExit(f"attribution: no */metrics.json under {root}; run python -m gcd_lightning.evaluate ... out={root}/<row> first")
    attacks: list[str] = []
    for metrics in runs.values():
        for record in metrics["cascade"]:
            if record["name"] not in attacks:
                attacks.append(record["name"])
    lines = [f"# Which attack earned its place ({', '.join(sorted({m['suite'] for m in runs.values()}))} suite)", "",
             "Each cell: the images the attack won that no earlier attack of the cascade won, then the robust accuracy "
             "after it; `-`: it did not run (every image already won, or its note says why).", "",
             "| row | target | budget | n | clean wins | " + " | ".join(attacks) + " | success | robust accuracy | seconds |",
             "|" + "---|" * (len(attacks) + 8)]
    first_wins = {name: 0 for name in attacks}
    for row, m in runs.items():
        cells = {}
        for record in m["cascade"]:
            ran = record["attacked"] > 0
            cells[record["name"]] = f"{record['won']} → {record['robust_after']:.2f}" if ran else "-"
            first_wins[record["name"]] += record["won"]
        lines.append(f"| {row} | {m['target']} | {m['norm']} {m['eps']:g}{' T' if m['targeted'] else ''} | {m['n']} | {m.get('won_clean', 0)} | "
                     + " | ".join(cells.get(name, "") for name in attacks)
                     + f" | {m['success']:.2f} | {m['robust_accuracy']:.2f} | {m['seconds']:.0f} |")
    lines += ["", "| attack | images won first, all rows | rows where it won first |", "|---|---|---|"]
    for name in attacks:
        rows = [row for row, m in runs.items() if any(r["name"] == name and r["won"] > 0 for r in m["cascade"])]
        lines.append(f"| {name} | {first_wins[name]} | {', '.join(rows) or 'none'} |")
    failed = {row: [c for c, v in m["checks"].items() if v["failed"]] for row, m in runs.items()}
    lines += ["", "Checks that failed: " + ("; ".join(f"{row}: {', '.join(c)}" for row, c in failed.items() if c) or "none") + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "outputs/attribution")
    text = attribution(root)
    save_text(text, root / "attribution.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
