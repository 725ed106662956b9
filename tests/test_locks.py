"""Runs that share a cache build each artefact once: one lock per cache entry (utils/locks.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import CONF, DATA
from gcd_lightning.utils.locks import entry_lock

HOLD = """
import logging, sys, time
from gcd_lightning.utils.locks import entry_lock
logging.basicConfig(level=logging.INFO)
with entry_lock(sys.argv[1], "test"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_holder_never_blocks_the_next_process(tmp_path):
    entry = tmp_path / "cache" / "model.pt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(entry)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        probe = subprocess.Popen([sys.executable, "-c", HOLD.replace("600", "0"), str(entry)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert "another process is building" in probe.stderr.readline()  # it says who waits ...
        time.sleep(1)
        assert probe.poll() is None  # ... and waits for the holder
        os.kill(holder.pid, signal.SIGKILL)
        out, err = probe.communicate(timeout=60)
        assert probe.returncode == 0 and out.strip() == "held", err
    finally:
        holder.kill()
    with entry_lock(entry, "test"):  # free again
        pass


SWEEP = [sys.executable, "-m", "gcd_lightning", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "+experiment=mnist_fgsm_untargeted", "rectifier.alpha=0.5,0.6", "stage=attack", "logger=none", "progress=false",
         "+trainer.limit_train_batches=30", "+trainer.limit_val_batches=3", "+trainer.limit_test_batches=3",
         "+trainer.enable_model_summary=false",
         "classifier.max_epochs=1", "adversarial.n_train=40", "adversarial.n_test=20", "adversarial.batch_size=20"]


@pytest.mark.slow
def test_a_parallel_sweep_on_an_empty_cache_trains_f_once_and_its_jobs_share_it(tmp_path):
    """Two jobs of one sweep started at once by the joblib launcher, each in its own process: the first builds
    f and the adversarial sets, the other waits for the lock and loads them."""
    done = subprocess.run([*SWEEP, f"paths.data_dir={DATA}", f"paths.cache_dir={tmp_path / 'cache'}",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=CONF.parent, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads((tmp_path / "sweep" / job / "metrics.json").read_text()) for job in ("0", "1")]
    assert sorted(m["classifier.cached"] for m in metrics) == [0.0, 1.0]  # one trained f, the other waited and loaded it
    assert sorted(m["attack.train.cached"] for m in metrics) == [0.0, 1.0]  # and the same for each adversarial set
    assert sorted(m["attack.test.cached"] for m in metrics) == [0.0, 1.0]
    assert metrics[0]["classifier.test_acc"] == metrics[1]["classifier.test_acc"]
    assert len(list((tmp_path / "cache" / "classifier").glob("*.pt"))) == 1
    assert len(list((tmp_path / "cache" / "adversarial").glob("*.pt"))) == 2  # one train set, one test set, of one f
    logs = [(tmp_path / "sweep" / job / "__main__.log").read_text() for job in ("0", "1")]
    assert any("another process is building" in log for log in logs)  # they ran at once
