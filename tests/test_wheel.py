"""The package installs like a library: a wheel built from the repository runs outside it, configs included."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import DATA, REPO, built_once


def build_wheel(tmp_path: Path) -> Path:
    """The package's wheel in ``tmp_path/dist``."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("gcd_lightning-*.whl")
    return wheel


def fresh_venv(venv: Path) -> tuple[Path, Path]:
    """A new venv without pip of its own (this environment's pip installs into it: ``pip --python``), whose
    dependencies (torch, Lightning, Hydra ...) come from this environment: its python and site folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def pip(python: Path, *args: str) -> subprocess.CompletedProcess:
    """This environment's pip acting on the venv of ``python``."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *args], capture_output=True, text=True)


def install(wheel: Path, venv: Path, constraints: list[str]) -> tuple[Path, Path]:
    """``wheel`` pip-installed offline into a fresh venv at ``venv`` with ``constraints``; its python and site folder."""
    python, site = fresh_venv(venv)
    done = pip(python, "install", "-q", "--no-index", *constraints, str(wheel))
    assert done.returncode == 0, done.stderr[-2000:]  # every dependency resolved (offline: against the tested versions)
    assert pip(python, "check").returncode == 0
    return python, site


@pytest.fixture(scope="session")
def pinned(tmp_path_factory):
    """The wheel, and a fresh venv it is installed in with the constraints file (as make install installs); built once
    per session (``built_once``: builds in one source tree would collide), the tests only read them."""

    def build(folder: Path) -> None:
        python, site = install(build_wheel(folder), folder / "pinned", ["-c", str(REPO / "constraints.txt")])
        (folder / "venv.json").write_text(json.dumps({"python": str(python), "site": str(site)}))

    folder = built_once(tmp_path_factory, "wheel", build)
    (wheel,) = (folder / "dist").glob("gcd_lightning-*.whl")
    venv = json.loads((folder / "venv.json").read_text())
    return wheel, (Path(venv["python"]), Path(venv["site"]))


@pytest.mark.slow
def test_the_wheel_resolves_its_declared_ranges_with_the_constraints_file_and_without_it(pinned, tmp_path):
    wheel, _ = pinned
    python, _ = install(wheel, tmp_path / "ranges", [])
    requires = json.loads(subprocess.run([str(python), "-c", "import importlib.metadata as m, json; print(json.dumps(m.requires('gcd-lightning')))"],
                                         capture_output=True, text=True, check=True).stdout)
    pins = [r for r in requires if r.split("==")[0] in ("torch", "torchvision", "pytorch-lightning")]
    assert "torch>=2.1" in requires and not pins  # ranges for users, the tested pins only in constraints.txt


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_stage_outside_the_repository(pinned, tmp_path):
    _, (python, site) = pinned
    venv = python.parents[1]
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
