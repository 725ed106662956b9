"""The sweep collector turns a multirun folder into one table sorted by α."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("collect_sweep", REPO / "scripts" / "collect_sweep.py")
collect_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collect_sweep)


def test_sweep_table_has_a_row_per_run_sorted_by_alpha(tmp_path, capsys):
    for job, alpha in enumerate((0.9, 0.1, 0.5)):
        run = tmp_path / str(job)
        run.mkdir()
        (run / "config.yaml").write_text("experiment_name: mnist_cw_targeted\nrectifier:\n  alpha: %s\n" % alpha)
        (run / "metrics.json").write_text(json.dumps({"rectifier.alpha": alpha, "gcd.acc.adv": 1 - alpha}))
    (tmp_path / "3").mkdir()  # an unfinished run is skipped
    collect_sweep.main([str(tmp_path)])
    table = (tmp_path / "sweep.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "mnist" in line]
    assert [row.split(" | ")[2] for row in rows] == ["0.1000", "0.5000", "0.9000"]
    assert "0.9000" in rows[0] and "n/a" in rows[0]
    assert (tmp_path / "sweep.csv").read_text().count("\n") == 4
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out == table


@pytest.mark.slow
def test_sweep_logs_a_wandb_line_plot_offline(tmp_path):
    for job, alpha in enumerate((0.3, 0.7)):
        run = tmp_path / str(job)
        run.mkdir()
        (run / "config.yaml").write_text("experiment_name: mnist_cw_targeted\n")
        (run / "metrics.json").write_text(json.dumps({"rectifier.alpha": alpha, "gcd.acc.adv": 0.9, "gcd.acc.clean": 0.99}))
    # in a process of its own: wandb.init leaves process-wide state behind that later loggers would inherit
    subprocess.run([sys.executable, str(REPO / "scripts" / "collect_sweep.py"), str(tmp_path), "--wandb"], check=True,
                   capture_output=True)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    tables = list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
    assert tables and json.loads(tables[0].read_text())["data"] == [[0.3, 0.9, 0.99], [0.7, 0.9, 0.99]]


def test_sweep_without_runs_says_what_it_expected(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        collect_sweep.collect(tmp_path)
