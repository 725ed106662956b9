"""Shared fixtures: configs composed from conf/ and shrunk to CPU-sized runs in tmp folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gcd_lightning.utils.locks import entry_lock

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one torch thread each ...
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # ... and in the processes a test starts (a fresh process must compute as it does)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA = REPO / "data"


def compose_config(overrides: list[str], tmp_path: Path) -> DictConfig:
    """The root config with ``overrides``, outputs and caches under ``tmp_path``, real data from ``data/``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                f"paths.data_dir={DATA}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"paths.output_dir={tmp_path / 'out'}",
                "logger=none",
                "progress=false",
                *overrides,
            ],
        )
    return cfg


def shrink(cfg: DictConfig) -> DictConfig:
    """A run that takes seconds: a few training batches, small adversarial subsets."""
    with open_dict(cfg):
        cfg.trainer.limit_train_batches = 60
        cfg.trainer.limit_val_batches = 5
        cfg.trainer.limit_test_batches = 10
        cfg.trainer.enable_model_summary = False
        cfg.classifier.max_epochs = 1
        cfg.adversarial.n_train = 200
        cfg.adversarial.n_test = 100
        cfg.adversarial.batch_size = 100
        cfg.detector.max_epochs = 5
        cfg.detector.batch_size = 32
        cfg.rectifier.max_epochs = 4
        cfg.rectifier.k = 4
        cfg.evaluate.n_clean = 200
    return cfg


SUITES = Path(__file__).parent / "suites"


def shrink_whitebox(cfg: DictConfig, n_test: int = 20) -> DictConfig:
    """White-box evaluations that take seconds: few images, the quick suites (``tests/suites``), few budgets
    (``threat=whitebox`` composed)."""
    with open_dict(cfg):
        threat = cfg.threat
        threat.n_test, threat.judge_draws, threat.donors = n_test, 3, 100
        threat.suite, threat.rand_suite = str(SUITES / "quick.yaml"), str(SUITES / "quick_rand.yaml")
        threat.robustness.linf_eps, threat.robustness.l2_eps = [0.1, 0.3], [1.0]
    return cfg


def lean_whitebox(cfg: DictConfig, n_test: int = 20) -> DictConfig:
    """``shrink_whitebox`` at the row's own budget alone: for tests whose subject is not the fixed-budget robustness."""
    cfg = shrink_whitebox(cfg, n_test)
    with open_dict(cfg):
        cfg.threat.judge_draws, cfg.threat.donors = 2, 40
        cfg.threat.robustness.linf_eps, cfg.threat.robustness.l2_eps = [], []
    return cfg


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder ``build`` filled, once per test session: under pytest -n by the first worker that asks for it, in the
    session's temp folder that the workers share (under a lock: the others wait, then use it); in one process, in
    its own temp folder. Tests read it; what they change goes to a copy of their own."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name
    with entry_lock(folder, f"test session ({name})"):  # the cache's own lock: the others wait, and a log line says so
        if not (folder / ".built").exists():  # a worker that failed half-way leaves no mark: build again from scratch
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@pytest.fixture
def tiny_cfg(tmp_path):
    """Compose and shrink: ``tiny_cfg("+experiment=mnist_ddn_untargeted", "stage=attack")``."""

    def make(*overrides: str) -> DictConfig:
        return shrink(compose_config(list(overrides), tmp_path))

    return make


def pytest_collection_modifyitems(config, items):
    """The ``slow`` tests first: pytest -n's workers then take the long ones early and share out the short ones at the
    end, instead of one worker starting a long test while the other has nothing left (``make test``'s wall time)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
