"""scripts/bench_suite.py's arguments: a budget it does not measure is refused before any work."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_suite  # noqa: E402


def test_eps_picks_budgets_of_the_chosen_norms_and_refuses_others(capsys):
    assert bench_suite.parse_args(["--checkpoint", "f.pt", "--eps", "0.3", "2.0"]).eps == [0.3, 2.0]
    with pytest.raises(SystemExit):
        bench_suite.parse_args(["--checkpoint", "f.pt", "--norms", "l2", "--eps", "0.3"])
    assert "--eps [0.3]: not a budget of --norms l2; choose from [1.0, 2.0]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_suite.parse_args(["--checkpoint", "f.pt", "--norms", "l1"])


def test_a_purifier_is_one_of_table5s_random_preprocesses(capsys):
    assert bench_suite.parse_args(["--checkpoint", "f.pt", "--purifier", "tvm"]).purifier == "tvm"
    assert bench_suite.parse_args(["--checkpoint", "f.pt"]).purifier is None
    with pytest.raises(SystemExit):
        bench_suite.parse_args(["--checkpoint", "f.pt", "--purifier", "jpeg"])
    assert "invalid choice: 'jpeg'" in capsys.readouterr().err
