"""The aggregate report: every run under a folder into Tables 2, 3 and 5 with the paper's numbers; one run's tables."""

from __future__ import annotations

import csv
import importlib.util
import json
import os

import pytest
import torch
import yaml

from conftest import REPO
from gcd_lightning.intervals import wilson_interval
from gcd_lightning.reporting.figures import roc_curves
from gcd_lightning.reporting.report import indicator_lines, render, whitebox_targets
from gcd_lightning.reporting.aggregate import find_runs, latest
from gcd_lightning.reporting.tables import (
    INDICATORS, Run, failed_indicators, laid_out, robustness, run_key, table2, table3, table5, timing,
)

spec = importlib.util.spec_from_file_location("aggregate_script", REPO / "scripts" / "aggregate.py")
aggregate_script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate_script)

GREY = {
    "base.acc.adv": 0.0, "base.acc.clean": 0.99, "gcd.acc.adv": 0.93, "gcd.acc.clean": 0.98,
    "detector.auc.org": 0.97, "detector.auc.is": 1.0, "detector.auc.gcd": 0.999,
}
WHITE_OLD = {  # a white-box run from before DET_org, the intervals, the adaptive attacks and the indicators
    "whitebox.n": 40.0, "whitebox.success.nodet": 1.0, "whitebox.success.det_is": 0.5, "whitebox.success.gcd": 0.25,
    "whitebox.success.gcd_end_to_end": 0.3, "whitebox.success.bpda_eot": 0.9,
    "whitebox.l2_median.nodet": 1.4, "whitebox.l2_median.gcd": 2.5,
}
SUCCESS_CI = {"nodet": (0.912, 1.0), "det_is": (0.352, 0.648), "gcd": (0.142, 0.400), "det_org": (0.040, 0.231),
              "bpda_eot": (0.769, 0.960)}
WHITE = {
    **WHITE_OLD, "whitebox.success.det_org": 0.1,
    **{f"whitebox.success_ci.{name}.{side}": v for name, ci in SUCCESS_CI.items() for side, v in zip(("low", "high"), ci)},
    "whitebox.success.gcd_end_to_end_ci.low": 0.2, "whitebox.success.gcd_end_to_end_ci.high": 0.4,
    "whitebox.success.bpda_eot_end_to_end": 0.85,
    "whitebox.success.bpda_eot_end_to_end_ci.low": 0.75, "whitebox.success.bpda_eot_end_to_end_ci.high": 0.95,
    **{f"whitebox.robust_linf.0.1000.{key}": value for key, value in (
        ("success", 0.0), ("success_ci.low", 0.0), ("success_ci.high", 0.088), ("robust_acc", 0.9), ("robust_acc_all", 0.89),
        ("tramer.radius", 0.05), ("tramer.reference", 0.9607), ("tramer.plausible", 1.0))},
    **{f"whitebox.robust_l2.2.0000.{key}": value for key, value in (
        ("success", 0.5), ("success_ci.low", 0.352), ("success_ci.high", 0.648), ("robust_acc", 0.5), ("robust_acc_all", 0.49),
        ("tramer.radius", 1.0), ("tramer.reference", float("nan")), ("tramer.plausible", float("nan")))},
    **{f"whitebox.indicator.{name}": 0.0 for name in INDICATORS},
    **{f"whitebox.indicator.{name}.failed": float(name in ("incomplete", "unbounded")) for name in INDICATORS},
}


def write_run(folder, dataset, attack, threat, metrics, mtime, suite="standard"):
    folder.mkdir(parents=True)
    config = {"experiment_name": f"{dataset}_{attack}", "dataset": {"name": dataset},
              "attack": {"name": attack, "targeted": attack.endswith("_targeted")},
              "threat": {"name": threat, "suite": suite}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.json").write_text(json.dumps(metrics))
    os.utime(folder / "metrics.json", (mtime, mtime))


def test_tables_take_the_latest_run_per_experiment_and_put_the_paper_beside_it(tmp_path, capsys):
    write_run(tmp_path / "old" / "cw", "mnist", "cw_untargeted", "greybox", {**GREY, "detector.auc.gcd": 0.5}, 1_000)
    write_run(tmp_path / "new" / "cw", "mnist", "cw_untargeted", "greybox",
              {**GREY, "gcd.robust_acc.all": 0.9207, "base.robust_acc.all": 0.0}, 2_000)
    write_run(tmp_path / "new" / "ddn", "mnist", "ddn_untargeted", "whitebox", {**GREY, **WHITE, "gcd.acc.clean": 0.97}, 3_000)
    write_run(tmp_path / "paper" / "ddn", "mnist", "ddn_untargeted", "whitebox",
              {**GREY, **WHITE_OLD, "whitebox.success.gcd": 0.75}, 4_000, suite="paper")
    (tmp_path / "unfinished").mkdir()
    assert len(find_runs(tmp_path)) == 4
    runs = latest(find_runs(tmp_path))

    columns, rows = table2(runs)
    cw = rows[0]
    assert cw[:2] == ["mnist", "cw_untargeted"]
    assert cw[columns.index("GCD")] == 0.999 and cw[columns.index("GCD paper")] == 1.00
    assert cw[columns.index("DET_org paper")] == 0.99
    assert len(rows) == 2

    columns, rows = table3(runs)
    ddn, ddn_paper = rows  # the paper's protocol (suite=paper) does not replace the standard suite's row
    assert ddn[columns.index("GCD")] == 0.25 and ddn[columns.index("GCD paper")] == 0.941
    assert ddn[columns.index("n")] == "40" and ddn[columns.index("threat")] == "whitebox"
    assert ddn_paper[columns.index("threat")] == "whitebox (paper)" and ddn_paper[columns.index("GCD")] == 0.75

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
    table3_md = (tmp_path / "tables" / "table3.md").read_text()
    assert "| NoDET | NoDET paper | DET_IS | DET_IS paper | GCD | GCD paper | DET_org | GCD end to end |" in table3_md
    assert "| 0.2500 [0.142, 0.400] | 0.9410 | 0.1000 [0.040, 0.231] |" in table3_md
    assert "| incomplete, unbounded |" in table3_md
    header = (tmp_path / "tables" / "table3.csv").read_text().splitlines()[0]
    assert "GCD,GCD_low,GCD_high,GCD paper" in header and "GCD end to end,GCD end to end_low,GCD end to end_high" in header


def test_table3_gives_every_rate_its_interval_and_older_runs_n_a(tmp_path):
    write_run(tmp_path / "new", "mnist", "ddn_untargeted", "whitebox", {**GREY, **WHITE}, 1_000)
    write_run(tmp_path / "old", "cifar10", "cw_targeted", "whitebox", {**GREY, **WHITE_OLD}, 2_000)
    runs = latest(find_runs(tmp_path))

    columns, (old, new) = table3(runs)  # CSV: the rate, then <column>_low and <column>_high
    assert old[:2] == ["cifar10", "cw_targeted"]

    def interval(row, column):
        return tuple(row[columns.index(c)] for c in (column, f"{column}_low", f"{column}_high"))

    assert interval(new, "GCD") == (0.25, 0.142, 0.400)  # the stage's interval
    assert interval(new, "DET_org") == (0.1, 0.040, 0.231)
    assert interval(new, "GCD end to end") == (0.3, 0.2, 0.4)  # over the mask draws
    assert interval(new, "BPDA+EOT end to end") == (0.85, 0.75, 0.95)
    assert interval(new, "BPDA+EOT") == (0.9, 0.769, 0.960)
    assert new[columns.index("failed indicators")] == "incomplete, unbounded"
    assert new[columns.index("GCD paper")] == 0.941 and new[columns.index("L2 GCD")] == 2.5
    # a run from before the new metrics: Wilson's interval from its rate over n images, n/a where there is no rate
    assert interval(old, "GCD") == (0.25, *wilson_interval(10, 40))
    assert interval(old, "NoDET") == (1.0, *wilson_interval(40, 40))
    for column in ("DET_org", "BPDA+EOT end to end"):
        assert interval(old, column) == (None, None, None)
    assert interval(old, "GCD end to end") == (0.3, None, None)  # a mean over draws: no interval from the rate
    assert old[columns.index("failed indicators")] is None

    columns, (old, new) = table3(runs, cells=True)  # Markdown: one cell, rate [low, high]
    assert "GCD_low" not in columns and len(columns) == len(new)
    assert new[columns.index("GCD")] == "0.2500 [0.142, 0.400]"
    assert new[columns.index("GCD end to end")] == "0.3000 [0.200, 0.400]"
    low, high = wilson_interval(10, 40)
    assert old[columns.index("GCD")] == f"0.2500 [{low:.3f}, {high:.3f}]"
    assert old[columns.index("GCD end to end")] == "0.3000"
    assert old[columns.index("DET_org")] is None and old[columns.index("GCD paper")] == 0.321


def test_failed_indicators_names_the_failed_ones():
    ok = {f"whitebox.indicator.{name}.failed": 0.0 for name in INDICATORS}
    assert failed_indicators(ok) == "none"
    assert failed_indicators({**ok, "whitebox.indicator.silent.failed": 1.0}) == "silent"
    assert failed_indicators(WHITE_OLD) is None  # a run from before the indicators: n/a
    targets = {"whitebox.target_indicator.det_pd.unbounded": 0.0, "whitebox.target_indicator.det_pd.unbounded.failed": 1.0,
               "whitebox.target_indicator.det_is.unbounded": 1.0, "whitebox.target_indicator.det_is.unbounded.failed": 0.0}
    assert failed_indicators({**ok, **targets, "whitebox.indicator.silent.failed": 1.0}) == "silent, unbounded (det_pd)"
    lines = "\n".join(indicator_lines({**{f"whitebox.indicator.{n}": 0.0 for n in INDICATORS}, **ok, **targets}))
    assert "**WARNING** unbounded (det_pd): 0.0000" in lines and "ok: unbounded (det_is): 1.0000" in lines
    assert "that target's Table 3 cell may understate the attacker" in lines


def test_aggregate_without_runs_says_what_it_expected(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        find_runs(tmp_path)


def test_one_run_is_a_list_of_one_with_det_org_the_intervals_and_the_robust_accuracy_over_all_examined():
    """What a run's report.md and its W&B tables show: the aggregate's tables of that run alone."""
    tables = laid_out([Run("mnist", "ddn_untargeted", "whitebox",
                           {**GREY, **WHITE, "gcd.robust_acc.all": 0.9, "base.robust_acc.all": 0.0})])
    assert list(tables) == ["table2", "table3", "table5", "robustness"]
    columns, (row,) = tables["table3"]
    row = dict(zip(columns, row))
    assert (row["GCD"], row["GCD_low"], row["GCD_high"], row["GCD paper"]) == (0.25, 0.142, 0.400, 0.941)
    assert (row["DET_org"], row["DET_org_low"], row["DET_org_high"]) == (0.1, 0.040, 0.231) and "DET_org paper" not in row
    assert (row["BPDA+EOT"], row["BPDA+EOT end to end"], row["GCD end to end_high"]) == (0.9, 0.85, 0.4)
    columns, rows = tables["table5"]
    assert [row[1] for row in rows] == ["clean (lowest of 1)", "ddn_untargeted"]
    assert rows[1][columns.index("GCD all examined"):] == [0.9, 0.0]

    tables = laid_out([Run("imagenet_subset", "no_such_attack", "whitebox", {**GREY, **WHITE_OLD})])  # older, no paper
    columns, (row,) = tables["table3"]
    row = dict(zip(columns, row))
    assert row["DET_org"] is None and row["GCD end to end_low"] is None and row["GCD_low"] == wilson_interval(10, 40)[0]
    assert row["GCD paper"] is None and "robustness" not in tables


def test_robustness_table_has_a_row_per_budget_with_its_interval_and_tramers_verdict(tmp_path):
    write_run(tmp_path / "new", "mnist", "pgd_targeted", "whitebox", {**GREY, **WHITE}, 200)
    write_run(tmp_path / "old", "mnist", "ddn_targeted", "whitebox", {**GREY, **WHITE_OLD}, 100)  # no fixed budgets: no rows
    runs = latest(find_runs(tmp_path))
    columns, rows = robustness(runs)
    assert [row[3:5] for row in rows] == [["l2", "2"], ["linf", "0.1"]]
    linf = dict(zip(columns, rows[1]))
    assert (linf["success"], linf["success_low"], linf["success_high"]) == (0.0, 0.0, 0.088)
    assert linf["robust acc all examined"] == 0.89 and linf["Tramèr radius"] == "0.05" and linf["plausible"] == "yes"
    assert dict(zip(columns, rows[0]))["plausible"] is None  # no published L2 reference
    _, cells = robustness(runs, cells=True)
    assert cells[1][5] == "0.0000 [0.000, 0.088]"


def test_report_warns_when_f_is_near_chance():
    base = {"classifier.test_acc": 0.9939, "classifier.num_classes": 10.0, "classifier.train_seconds": 1.0, "classifier.cached": 1.0}
    assert "WARNING" not in render(base, "ok")
    text = render(base | {"classifier.test_acc": 0.11}, "untrained")
    assert "**WARNING** f's test accuracy 0.1100 is below 2× chance (1/10)" in text


def test_table2_gets_a_column_pair_per_baseline_with_the_papers_number():
    with_baselines = {**GREY, "detector.auc.mds": 0.7, "detector.auc.gnorm": 0.99}
    columns, rows = table2([Run("mnist", "pgd_untargeted", "greybox", with_baselines),
                            Run("mnist", "cw_targeted", "greybox", GREY)])
    assert columns[-4:] == ["DET_MDS", "DET_MDS paper", "‖G‖₂", "‖G‖₂ paper"]  # the paper's baselines first
    first, second = (dict(zip(columns, row)) for row in rows)
    assert (first["DET_MDS"], first["DET_MDS paper"], first["‖G‖₂"], first["‖G‖₂ paper"]) == (0.7, 0.89, 0.99, None)
    assert (second["DET_MDS"], second["DET_MDS paper"]) == (None, 0.93)  # a run without it: n/a beside the paper
    assert table2([Run("mnist", "pgd_untargeted", "greybox", GREY)])[0][-1] == "GCD paper"


def test_table3_gets_a_rate_per_attacked_baseline():
    white = {**WHITE, "whitebox.success.det_mds": 0.5, "whitebox.success_ci.det_mds.low": 0.4, "whitebox.success_ci.det_mds.high": 0.6}
    columns, (row,) = table3([Run("mnist", "pgd_untargeted", "whitebox", white)])
    row = dict(zip(columns, row))
    assert (row["DET_MDS"], row["DET_MDS_low"], row["DET_MDS_high"]) == (0.5, 0.4, 0.6)
    assert "DET_MDS" not in table3([Run("mnist", "pgd_untargeted", "whitebox", WHITE)])[0]


def test_transfer_matrices_are_written_per_detector_with_a_heat_map(tmp_path):
    def transfer_metrics(own):
        return {**GREY, **{f"transfer.auc.gcd.{attack}": value for attack, value in (("pgd_targeted", own), ("fgsm_untargeted", 0.6))},
                **{f"transfer.tpr_at_fpr.gcd.{attack}.{fpr}": 0.5 for attack in ("pgd_targeted", "fgsm_untargeted") for fpr in ("0.01", "0.05")}}

    write_run(tmp_path / "pgd", "mnist", "pgd_targeted", "greybox", transfer_metrics(0.99), 1_000)
    write_run(tmp_path / "cw", "mnist", "cw_untargeted", "greybox", {**GREY, "transfer.auc.gcd.pgd_targeted": 0.7}, 2_000)
    aggregate_script.main([str(tmp_path), "--out", str(tmp_path / "tables")])
    rows = list(csv.reader((tmp_path / "tables" / "transfer_gcd.csv").open()))
    assert rows[0] == ["dataset", "trained on", "measure", "fgsm_untargeted", "pgd_targeted"]
    assert ["mnist", "pgd_targeted", "AUC", "0.6", "0.99"] in rows
    assert ["mnist", "cw_untargeted", "AUC", "", "0.7"] in rows  # an attack a run was not tested on: empty
    assert (tmp_path / "tables" / "transfer_gcd.png").read_bytes()[:4] == b"\x89PNG"
    assert "| pgd_targeted | TPR@1% |" in (tmp_path / "tables" / "transfer_gcd.md").read_text()


def test_table5_puts_each_rectifier_baseline_beside_the_papers_column(tmp_path):
    extra = {"rectifier_baseline.tvm.acc.adv": 0.61, "rectifier_baseline.tvm.acc.clean": 0.95,
             "rectifier_baseline.pgd.acc.adv": 0.42, "rectifier_baseline.pgd.acc.clean": 0.97}
    write_run(tmp_path / "cw", "mnist", "cw_untargeted", "greybox", {**GREY, **extra}, 1_000)
    write_run(tmp_path / "ddn", "mnist", "ddn_untargeted", "greybox",
              {**GREY, **extra, "rectifier_baseline.pgd.acc.clean": 0.96}, 2_000)
    columns, rows = table5(latest(find_runs(tmp_path)))
    assert columns[:8] == ["dataset", "images", "GCD", "GCD paper", "PGD", "PGD paper", "TVM", "TVM paper"]  # the paper's order
    clean, cw, _ = rows
    assert (cw[columns.index("PGD")], cw[columns.index("PGD paper")]) == (0.42, 0.73)
    assert (cw[columns.index("TVM")], cw[columns.index("TVM paper")]) == (0.61, 0.66)
    assert (clean[columns.index("PGD")], clean[columns.index("PGD paper")]) == (0.96, 0.84)  # the lowest of the runs
    assert clean[columns.index("TVM paper")] == 0.67 and clean[columns.index("F")] == GREY["base.acc.clean"]


def test_attack_agnostic_runs_are_rows_of_their_own():
    def config(attack, train_attacks):
        return {"dataset": {"name": "mnist"}, "attack": {"name": attack, "targeted": False},
                "threat": {"name": "greybox"}, "defense": {"train_attacks": train_attacks}}

    eight = ["fgsm_untargeted", "pgd_untargeted", "pgd_targeted", "deepfool_untargeted", "cw_untargeted", "cw_targeted",
             "ddn_untargeted", "ddn_targeted"]
    assert run_key(config("pgd_untargeted", [])) == ("mnist", "pgd_untargeted", "greybox")
    assert run_key(config("pgd_untargeted", eight))[2] == "greybox (trained on 8 attacks)"
    left_out = run_key(config("pgd_untargeted", [a for a in eight if a != "pgd_untargeted"]))
    assert left_out[2] == "greybox (trained on 7 others)"
    grey = {**GREY, "base.acc.clean": 0.99}
    runs = [Run(*key, grey) for key in (run_key(config("pgd_untargeted", [])), run_key(config("pgd_untargeted", eight)), left_out)]
    assert [row[1] for row in table2(runs)[1]] == ["pgd_untargeted", "pgd_untargeted (trained on 8 attacks)",
                                                   "pgd_untargeted (trained on 7 others)"]
    assert table2(runs)[1][2][table2(runs)[0].index("GCD paper")] == 1.00  # the paper's row is the attack's


def test_timing_table_gives_each_stages_wall_time_their_total_and_each_components_cost():
    runs = [Run("mnist", "cw_untargeted", "greybox", {**GREY, "stage_seconds.classifier": 0.4, "stage_seconds.attack": 61.2, "stage_seconds.baselines": 30.0,
                                                       "baseline.train_seconds.sal": 92.6, "whitebox.seconds_per_image.gcd": 3.0}),
            Run("mnist", "fgsm_untargeted", "greybox", {**GREY, "stage_seconds.classifier": 10.0})]
    columns, rows = timing(runs)
    assert columns == ["dataset", "attack", "threat", "stage_seconds.classifier", "stage_seconds.attack", "stage_seconds.baselines",
                       "stage_seconds.total", "baseline.train_seconds.sal"]
    assert len(set(columns)) == len(columns)  # the attack's name and the attack stage are two columns
    assert rows[0][3:] == ["0", "61", "30", "92", "93"] and rows[1][3:] == ["10", None, None, "10", None]
    assert timing([Run("mnist", "cw_untargeted", "greybox", GREY)])[1] == []  # runs from before the timings: no rows


def test_reports_name_the_detectors_the_defense_has(tmp_path):
    """A defense of DET_org and a detector of its own (``lid``): Tables 2 and 3, the report and the ROC name those."""
    own = {key.replace("det_is", "det_lid").replace("detector.auc.is", "detector.auc.lid"): value
           for key, value in {**GREY, **WHITE}.items()}
    metrics = {**own, "detector.val_auc.org": 0.9, "detector.val_auc.lid": 0.8, "detector.val_auc.gcd": 0.9, "gcd.robust_acc.all": 0.9,
               "base.robust_acc.all": 0.0}
    run = Run("mnist", "pgd_targeted", "whitebox", metrics)
    columns, (row,) = table2([run])
    assert "DET_IS" not in columns and dict(zip(columns, row))["DET_lid"] == 1.0 and dict(zip(columns, row))["DET_lid paper"] is None
    assert dict(zip(columns, row))["DET_org paper"] is not None  # the paper's own detector keeps its number
    columns, (row,) = table3([run])
    assert "DET_IS" not in columns and (dict(zip(columns, row))["DET_lid"], dict(zip(columns, row))["DET_org"]) == (0.5, 0.1)
    assert columns.index("GCD") < columns.index("DET_org") < columns.index("DET_lid")
    assert whitebox_targets(run) == {"nodet": "NoDET", "gcd": "GCD", "det_org": "DET_org", "det_lid": "DET_lid",
                                     "bpda_eot": "BPDA+EOT"}  # the report's columns of each attack's success
    paper_run = Run("mnist", "pgd_targeted", "whitebox", {**GREY, **WHITE, "detector.val_auc.org": 0.9, "detector.val_auc.is": 0.9})
    assert list(whitebox_targets(paper_run).values()) == ["NoDET", "DET_IS", "GCD", "DET_org", "BPDA+EOT"]
    png = roc_curves({name: torch.rand(20) for name in ("org", "lid", "gcd")},
                     {name: torch.rand(20) + 0.5 for name in ("org", "lid", "gcd")}, "ROC", tmp_path / "roc.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
