"""Collect finished runs under a folder into the paper's Tables 2, 3 and 5 and GCD's robustness (Markdown and CSV).

A run is a folder holding ``metrics.json`` and the resolved ``config.yaml`` that every run writes.
Where several runs share a data set, attack and threat model (``tables.run_key``), the most
recently written one counts. ``tables`` lays the tables out, each with the paper's number beside
ours (``n/a`` where the paper has none); Table 3's rates come with 95% intervals:
``rate [low, high]`` in Markdown, ``<column>_low`` / ``<column>_high`` columns in the CSV.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from gcd_lightning.reporting import figures
from gcd_lightning.reporting.tables import Run, laid_out, markdown, run_key, to_csv
from gcd_lightning.utils.files import load_json, save_text


@dataclass(frozen=True)
class RunFolder:
    """A finished run's folder, its resolved config and metrics."""

    folder: Path
    config: dict
    metrics: dict[str, float]

    @property
    def run(self) -> Run:
        """The run as the tables read it (its key from the config: ``tables.run_key``)."""
        return Run(*run_key(self.config), self.metrics)


EVALUATED = ("evaluate", "all")
"""The stages of runs that measured something (a run that stops at ``stage=rectifier`` only trained)."""


def find_runs(root: Path) -> list[RunFolder]:
    """Every finished run below ``root`` that evaluated (a folder with ``metrics.json`` and ``config.yaml`` whose
    ``stage`` is in ``EVALUATED``), oldest first."""
    runs = []
    for metrics_path in sorted(root.rglob("metrics.json"), key=lambda p: (p.stat().st_mtime, str(p))):
        config_path = metrics_path.parent / "config.yaml"
        if config_path.is_file():
            config = yaml.safe_load(config_path.read_text())
            if config.get("stage", "all") in EVALUATED:
                runs.append(RunFolder(metrics_path.parent, config, load_json(metrics_path, "run metrics")))
    if not runs:
        raise SystemExit(f"no finished runs that evaluated (metrics.json beside config.yaml, stage=evaluate or all) under {root.resolve()}")
    return runs


def latest_folders(folders: Sequence[RunFolder]) -> list[RunFolder]:
    """The most recent run folder per (data set, attack, threat model) among ``folders`` (oldest first), sorted by that key."""
    by_key = {folder.run.key: folder for folder in folders}
    return [by_key[key] for key in sorted(by_key)]


def latest(folders: Sequence[RunFolder]) -> list[Run]:
    """The runs of ``latest_folders``."""
    return [folder.run for folder in latest_folders(folders)]


def write_tables(root: Path, out_dir: Path) -> dict[str, str]:
    """Write ``<name>.md`` and ``<name>.csv`` for each table that has rows; returns the Markdown by name."""
    runs = latest(find_runs(root))
    numbers = laid_out(runs)
    written = {}
    for name, table in laid_out(runs, cells=True).items():
        written[name] = markdown(*table)
        save_text(written[name], out_dir / f"{name}.md")
        save_text(to_csv(*numbers[name]), out_dir / f"{name}.csv")
        if name.startswith("transfer_"):
            figures.transfer_heatmap(*numbers[name], f"transfer, {name.removeprefix('transfer_')}", out_dir / f"{name}.png")
    return written
