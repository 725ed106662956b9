"""The results page (``make results``): every table, curve and timing of the runs under a folder, each stamped.

``results_page(root, page)`` reads the finished runs below ``root`` (``aggregate.find_runs``; the latest per
data set, attack and threat model counts, as in the aggregate) and the outputs of ``python -m
gcd_lightning.evaluate`` there (a ``metrics.json`` with a ``cascade``), and writes ``page`` (``docs/results.md``)
with its figures in ``<page stem>/`` beside it: the paper's tables with our numbers (``tables.laid_out``),
GCD's robust accuracy against ε per row, the ROC curves of each grey-box run, the suite's evaluations, the
benchmarks' tables (``outputs/bench*/*.md``) and the timings. The page links only what it holds (its figures), so
that it renders where the outputs folder is not. Each section says which runs it comes from, and each run its date, commit and machine
(``provenance.json``, which runs write; "not recorded" for runs from before it, dated by their files).
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from gcd_lightning.reporting import figures
from gcd_lightning.reporting.aggregate import RunFolder, find_runs, latest_folders
from gcd_lightning.reporting.tables import laid_out, markdown
from gcd_lightning.utils.files import load_json, save_text
from gcd_lightning.utils.provenance import FILE as PROVENANCE
from gcd_lightning.utils.provenance import provenance

TITLES = {
    "table2": ("Table 2: detection", "AUC of each detector on the successful attacks of the test pairs, the paper's beside ours; "
                                     "baselines where the run had them."),
    "table3": ("Table 3: white-box (adaptive) attack success", "Share of the attacked images on which the adaptive attack "
                                                                "evades the detection and fools the classifier, with Wilson 95% intervals."),
    "table5": ("Table 5: accuracy under attack", "GCD and the rectifier baselines on the adversarial test images."),
    "robustness": ("Fixed-budget robustness", "GCD's white-box success and robust accuracy at each budget, with Tramèr's check."),
    "timing": ("Timings", "Wall seconds per stage in each run (near 0 where the cache served it) and what each component cost "
                          "when it was built."),
}
NOT_RECORDED = "not recorded"


def stamp(folder: Path) -> dict[str, str]:
    """A run's date, commit and machine from its ``provenance.json``, or its files' date where it has none."""
    path = folder / PROVENANCE
    if path.is_file():
        return load_json(path, "run provenance")
    written = datetime.datetime.fromtimestamp((folder / "metrics.json").stat().st_mtime, datetime.timezone.utc)
    return {"date": written.strftime("%Y-%m-%d %H:%M UTC"), "commit": NOT_RECORDED, "machine": NOT_RECORDED}


def evaluations(root: Path) -> list[tuple[Path, dict]]:
    """The output folders of ``python -m gcd_lightning.evaluate`` below ``root`` (``metrics.json`` with a cascade), with
    their metrics."""
    found = ((path.parent, load_json(path, "evaluation metrics")) for path in sorted(root.rglob("metrics.json")))
    return [(folder, metrics) for folder, metrics in found if "cascade" in metrics]


def slug(*parts: str) -> str:
    """A file name from a run's key (an attack-agnostic run's threat has spaces and brackets)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", "_".join(parts)).strip("_")


def relative(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start`` with ``/`` separators, as links on GitHub need."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def provenance_line(stamps: Iterable[dict[str, str]]) -> str:
    """One line naming the dates, commits and machines of the given runs."""
    stamps = list(stamps)

    def values(key: str) -> str:
        return ", ".join(sorted({s.get(key, NOT_RECORDED) for s in stamps}))

    dates = sorted(s["date"] for s in stamps)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return f"_{len(stamps)} run(s), measured {when}; commit {values('commit')}; machine {values('machine')}._"


def robustness_points(folder: RunFolder) -> dict[str, list[tuple[float, float]]]:
    """GCD's robust accuracy over the attacked images at each budget of a white-box run, by norm, ε ascending."""
    points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for key, value in folder.metrics.items():
        parts = key.split(".")
        if key.startswith("whitebox.robust_") and parts[-1] == "robust_acc" and len(parts) == 5:
            points[parts[1].removeprefix("robust_")].append((float(f"{parts[2]}.{parts[3]}"), value))
    return {norm: sorted(values) for norm, values in sorted(points.items())}


def evaluation_rows(evaluated: Sequence[tuple[Path, dict]], root: Path) -> tuple[list[str], list[list]]:
    """One row per evaluation: where it is, the suite, what was attacked, the budget, success and robust accuracy with
    intervals, the attacks that won images, failed checks, time and provenance."""
    columns = ["output", "suite", "target", "detectors", "norm", "ε", "targeted", "n", "success [95%]", "robust accuracy [95%]",
               "attacks that won images", "failed checks", "seconds", "date", "commit", "machine"]
    rows = []
    for folder, m in evaluated:
        won = ", ".join(f"{a['name']} ({a['won']})" for a in m["cascade"] if a["won"])
        failed = ", ".join(name for name, check in m.get("checks", {}).items() if check.get("failed")) or "none"
        s = stamp(folder)

        def rate(key: str) -> str:
            low, high = m[f"{key}_ci"]
            return f"{m[key]:.2f} [{low:.2f}, {high:.2f}]"

        rows.append([f"`{relative(folder, root)}`", m.get("suite", "n/a"), m["target"], ", ".join(m["detectors"]) or "none",
                     m["norm"], f"{m['eps']:g}", "yes" if m["targeted"] else "no", str(int(m["n"])), rate("success"),
                     rate("robust_accuracy"), won or "none", failed, f"{m['seconds']:.0f}", s["date"], s["commit"], s["machine"]])
    return columns, rows


def results_page(root: Path, page: Path) -> Path:
    """Write the results page for the runs and evaluations below ``root`` (module docstring); returns its path."""
    root, page = Path(root), Path(page)
    assets = page.with_suffix("")
    shutil.rmtree(assets, ignore_errors=True)  # figures of runs no longer present go
    assets.mkdir(parents=True)
    folders = latest_folders(find_runs(root))
    stamps = {folder.folder: stamp(folder.folder) for folder in folders}
    now = provenance()
    lines = [
        "# Results",
        "",
        f"Generated by `make results` (`python scripts/results.py {root.as_posix()} --page {page.as_posix()}`) on {now['date']}, "
        f"commit {now['commit']}, from the runs and evaluations below `{root.as_posix()}/`. Do not edit it by hand: rerun "
        "`make results` after new runs. Every run records its date, commit and machine in `provenance.json`; runs from "
        "before that show \"not recorded\" and the date of their files.",
        "",
        "## Runs",
        "",
        "The latest run per data set, attack and threat model; the tables below read these.",
        "",
        markdown(["dataset", "attack", "threat", "run", "date", "commit", "machine"],
                 [[f.run.dataset, f.run.label, f.run.threat, f"`{relative(f.folder, root)}`", stamps[f.folder]["date"],
                   stamps[f.folder]["commit"], stamps[f.folder]["machine"]] for f in folders]),
    ]
    numbers = laid_out([f.run for f in folders], cells=True)
    tables_of = {f.folder: laid_out([f.run]) for f in folders}  # which runs give each table its rows
    for name, (columns, rows) in numbers.items():
        title, meaning = TITLES.get(name, (f"Transfer matrix: {name.removeprefix('transfer_')}", "AUC and TPR of a detector "
                                           "trained on one attack (row) and tested on others (columns)."))
        used = [stamps[f.folder] for f in folders if name in tables_of[f.folder]]
        lines += ["", f"## {title}", "", meaning, "", provenance_line(used), "", markdown(columns, rows)]
    white = [(f, points) for f in folders if (points := robustness_points(f))]
    if white:
        lines += ["", "## Robust accuracy against ε", "", "GCD's white-box robust accuracy over the attacked images at each "
                  "budget of `threat.robustness`, per row.", "", provenance_line(stamps[f.folder] for f, _ in white), ""]
        for folder, points in white:
            name = f"robustness_{slug(folder.run.dataset, folder.run.label)}.png"
            figures.robustness_curves(points, f"{folder.run.dataset} {folder.run.label}", assets / name)
            lines += [f"![robust accuracy against ε, {folder.run.label}]({assets.name}/{name})", ""]
    roc = [f for f in folders if (f.folder / "roc.png").is_file()]
    if roc:
        lines += ["", "## ROC curves", "", "Each detector's ROC on the grey-box test pairs of a run.", "",
                  provenance_line(stamps[f.folder] for f in roc), ""]
        for folder in roc:
            name = f"roc_{slug(folder.run.dataset, folder.run.label, folder.run.threat)}.png"
            shutil.copyfile(folder.folder / "roc.png", assets / name)
            lines += [f"![ROC, {folder.run.label}]({assets.name}/{name})", ""]
    evaluated = evaluations(root)
    if evaluated:
        lines += ["", "## White-box evaluations (`python -m gcd_lightning.evaluate`)", "",
                  "Each evaluation below the outputs folder: its suite's success and robust accuracy, the attacks of its cascade "
                  "that won images (how many), and the checks that failed; its `report.md` has the rest.", "",
                  markdown(*evaluation_rows(evaluated, root))]
    benches = sorted(path for path in root.glob("bench*/*.md"))
    if benches:
        lines += ["", "## Benchmarks", "", "What the `make bench*` targets wrote (each table as written, with its machine)."]
        for path in benches:
            lines += ["", f"### `{relative(path, root)}`", "", path.read_text().strip()]
    return save_text("\n".join(lines).rstrip() + "\n", page)
