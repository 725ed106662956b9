"""The aggregate report: every run under a folder into Tables 2, 3 and 5 with the paper's numbers."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import yaml

from conftest import REPO
from gcd_lightning.aggregate import find_runs, table2, table3, table5

spec = importlib.util.spec_from_file_location("aggregate_script", REPO / "scripts" / "aggregate.py")
aggregate_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate_script)

GREY = {
    "base.acc.adv": 0.0, "base.acc.clean": 0.99, "gcd.acc.adv": 0.93, "gcd.acc.clean": 0.98,
    "detector.auc.org": 0.97, "detector.auc.is": 1.0, "detector.auc.gcd": 0.999,
}
WHITE = {
    "whitebox.n": 50.0, "whitebox.success.nodet": 1.0, "whitebox.success.det_is": 0.5, "whitebox.success.gcd": 0.25,
    "whitebox.success.gcd_end_to_end": 0.3, "whitebox.success.bpda_eot": 0.9,
    "whitebox.l2_median.nodet": 1.4, "whitebox.l2_median.gcd": 2.5,
}


def write_run(folder, dataset, attack, threat, metrics, mtime, untargeted_loss="both"):
    folder.mkdir(parents=True)
    config = {"experiment_name": f"{dataset}_{attack}", "dataset": {"name": dataset},
              "attack": {"name": attack, "targeted": attack.endswith("_targeted")},
              "threat": {"name": threat, "untargeted_loss": untargeted_loss}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    os.utime(folder / "metrics.json", (mtime, mtime))


def test_tables_take_the_latest_run_per_experiment_and_put_the_paper_beside_it(tmp_path, capsys):
    write_run(tmp_path / "old" / "cw", "mnist", "cw_untargeted", "greybox", {**GREY, "detector.auc.gcd": 0.5}, 1_000)
    write_run(tmp_path / "new" / "cw", "mnist", "cw_untargeted", "greybox",
              {**GREY, "gcd.robust_acc.all": 0.9207, "base.robust_acc.all": 0.0}, 2_000)
    write_run(tmp_path / "new" / "ddn", "mnist", "ddn_untargeted", "whitebox", {**GREY, **WHITE, "gcd.acc.clean": 0.97}, 3_000)
    write_run(tmp_path / "merged" / "ddn", "mnist", "ddn_untargeted", "whitebox", {**GREY, **WHITE, "whitebox.success.gcd": 0.75},
              4_000, untargeted_loss="merged")
    (tmp_path / "unfinished").mkdir()
    runs = find_runs(tmp_path)
    assert len(runs) == 4

    columns, rows = table2(runs)
    cw = rows[0]
    assert cw[:2] == ["mnist", "cw_untargeted"]
    assert cw[columns.index("GCD")] == 0.999 and cw[columns.index("GCD paper")] == 1.00
    assert cw[columns.index("DET_org paper")] == 0.99
    assert len(rows) == 2

    columns, rows = table3(runs)
    ddn, ddn_merged = rows  # the merged objective does not replace eq. 14's row
    assert ddn[columns.index("GCD")] == 0.25 and ddn[columns.index("GCD paper")] == 0.941
    assert ddn[columns.index("n")] == "50" and ddn[columns.index("threat")] == "whitebox"
    assert ddn_merged[columns.index("threat")] == "whitebox (merged)" and ddn_merged[columns.index("GCD")] == 0.75

    columns, rows = table5(runs)
    assert [row[1] for row in rows] == ["clean (lowest of 2)", "cw_untargeted", "ddn_untargeted"]
    clean, cw, ddn = rows
    assert clean[columns.index("GCD")] == 0.97 and clean[columns.index("GCD paper")] == 0.91  # the lower of the two
    assert cw[columns.index("GCD clean")] == 0.98 and ddn[columns.index("GCD clean")] == 0.97
    assert cw[columns.index("GCD")] == 0.93 and cw[columns.index("F paper")] == 0.00
    assert (cw[columns.index("GCD all examined")], cw[columns.index("F all examined")]) == (0.9207, 0.0)
    assert ddn[columns.index("GCD all examined")] is None  # a run from before the metric: n/a
    assert clean[columns.index("F all examined")] is None and clean[columns.index("F")] == 0.99

    aggregate_script.main([str(tmp_path), "--out", str(tmp_path / "tables")])
    printed = capsys.readouterr().out
    for name in ("table2", "table3", "table5"):
        assert (tmp_path / "tables" / f"{name}.md").read_text() in printed
        assert (tmp_path / "tables" / f"{name}.csv").read_text().count("\n") >= 2
    assert "| mnist | cw_untargeted | 0.0000 | 0.0000 |" in (tmp_path / "tables" / "table2.md").read_text()
    table5_md = (tmp_path / "tables" / "table5.md").read_text()
    assert "| GCD clean | GCD all examined | F all examined |" in table5_md
    assert "| 0.9800 | 0.9207 | 0.0000 |" in table5_md and "| 0.9700 | n/a | n/a |" in table5_md


def test_aggregate_without_runs_says_what_it_expected(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        find_runs(tmp_path)
