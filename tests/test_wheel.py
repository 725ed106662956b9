"""The package installs like a library: a wheel built from the repository runs outside it, configs included."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import DATA, REPO


def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_stage_outside_the_repository(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("gcd_lightning-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, Lightning, Hydra ...) come from this environment; gcd_lightning only from the wheel
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "gcd-lightning"), *args], cwd=outside, capture_output=True, text=True)

    job = cli("+experiment=mnist_pgd_targeted", "--cfg", "job")
    assert job.returncode == 0, job.stderr
    assert "name: pgd_targeted" in job.stdout and "name: gcd" in job.stdout  # configs shipped in the package
    where = subprocess.run([str(python), "-c", "import gcd_lightning; print(gcd_lightning.__file__)"], cwd=outside,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where  # the installed copy, not the repository's
    assert (Path(where).parent / "py.typed").is_file()
    stage = cli(
        "+experiment=mnist_pgd_targeted", "stage=classifier", f"paths.data_dir={DATA}", "paths.cache_dir=cache",
        "hydra.run.dir=run", "logger=none", "progress=false", "classifier.max_epochs=1",
        "+trainer.limit_train_batches=5", "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2",
    )
    assert stage.returncode == 0, stage.stderr[-2000:]
    metrics = json.loads((outside / "run" / "metrics.json").read_text())
    assert 0.0 <= metrics["classifier.test_acc"] <= 1.0 and metrics["classifier.cached"] == 0.0
