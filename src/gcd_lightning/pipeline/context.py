"""What every stage needs from the config: the data, the device, the cache folders, the cache keys."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from gcd_lightning import distributed
from gcd_lightning.cache import Cache
from gcd_lightning.data import fingerprint

# data-module settings that change where or how fast data is read, never what it is
LOCATION_KEYS = ("root", "num_workers", "download")
# the dataset keys that determine the data and f's input layer (attack budgets and defense
# settings reach the caches through the attack / detector / rectifier configs instead)
IDENTITY_KEYS = ("name", "mean", "std", "datamodule")
# memo of the data files' content hashes, in the cache folder (see data.fingerprint)
FINGERPRINT_MEMO = "fingerprints.json"
# trainer settings that change what a stage trains or measures (limits, precision, accumulation, clipping ...):
# part of every trained model's cache key when set, so a debug run never serves its model to a normal one.
# Devices, strategy and logging are left out: the same model trained with DDP or on one device is reused.
TRAINING_KEYS = (
    "limit_train_batches", "limit_val_batches", "limit_test_batches", "max_steps", "min_steps", "min_epochs",
    "max_time", "precision", "accumulate_grad_batches", "gradient_clip_val", "gradient_clip_algorithm",
    "overfit_batches", "fast_dev_run", "val_check_interval", "check_val_every_n_epoch",
)
# values of those settings that are Lightning's defaults spelled out (trainer=gpu sets precision 32-true)
TRAINING_DEFAULTS = {"precision": ("32", "32-true")}
# data splits the detectors' and the rectifier's training pairs may come from (adversarial.train_split)
TRAIN_SOURCES = ("val", "train")
# the code's part of every cache key, per stage: raise a stage's number when a change to its code changes what
# it computes (a refactor that computes the same keeps it), so that no cache serves what older code built.
# whitebox 2: every batch seeded on its own, batches shared by the ranks of a DDP run; 3: judged by ensemble_flags;
# 4: AdaptivePGD keeps an image's first success (it leaves the batch); 5: the stage a driver of the suite; 6: on a
# targeted row's goal, a suite attack with classes starts at random points
CODE_VERSIONS = {"classifier": 1, "adversarial": 1, "detectors": 1, "rectifier": 1, "evaluate": 1, "baselines": 1,
                 "rectifier_baselines": 1, "density": 1, "whitebox": 7}


def code_version(stage: str) -> dict[str, int]:
    """``stage``'s entry of a cache key's spec: ``{"code": n}``, nothing for version 1 (so the first
    version's caches keep the keys they had before keys carried a version)."""
    version = CODE_VERSIONS[stage]
    return {} if version == 1 else {"code": version}


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the package's configs (a link to conf/ in a checkout)


def attack_names() -> list[str]:
    """The attacks of the ``attack`` config group."""
    return sorted(path.stem for path in (CONF_DIR / "attack").glob("*.yaml"))


@dataclasses.dataclass
class RunContext:
    """The composed config plus the objects built once per run."""

    cfg: DictConfig
    datamodule: pl.LightningDataModule
    output_dir: Path
    cache_dir: Path
    device: torch.device
    loggers: list[Any]
    _fingerprint: str | None = dataclasses.field(default=None, init=False, repr=False)
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict, init=False, repr=False)  # models loaded once per run
    timings: dict[str, float] = dataclasses.field(default_factory=dict, init=False, repr=False)  # wall seconds per stage

    @property
    def cache(self) -> Cache:
        """The run's cache (``paths.cache_dir``)."""
        return Cache(self.cache_dir)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the wall time of the block to ``timings[stage]`` (a run reports them as ``stage_seconds.<stage>``)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start

    @classmethod
    def build(cls, cfg: DictConfig) -> RunContext:
        datamodule = hydra.utils.instantiate(cfg.dataset.datamodule)
        distributed.write_on_rank_zero(datamodule.prepare_data)  # downloads and conversions: once per run
        datamodule.setup()
        loggers = [hydra.utils.instantiate(node) for node in (cfg.get("logger") or {}).values()]
        return cls(
            cfg=cfg,
            datamodule=datamodule,
            output_dir=Path(cfg.paths.output_dir),
            cache_dir=Path(cfg.paths.cache_dir),
            device=select_device(cfg.trainer.accelerator),
            loggers=loggers,
        )

    def with_attack(self, name: str) -> RunContext:
        """This run with the attack ``conf/attack/<name>.yaml`` instead of its own (same data, caches, f)."""
        if name not in attack_names():
            raise ValueError(f"unknown attack {name!r}; choose from {attack_names()}")
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.attack = OmegaConf.load(CONF_DIR / "attack" / f"{name}.yaml")
        return dataclasses.replace(self, cfg=cfg)

    @property
    def defense_seed(self) -> int:
        """The seed of the detectors' and the rectifier's training: ``defense_seed``, or ``seed`` when it is null."""
        value = self.cfg.get("defense_seed")
        return self.cfg.seed if value is None else value

    def training_identity(self) -> dict[str, Any]:
        """The trainer settings of ``TRAINING_KEYS`` that this run sets (``+trainer.limit_train_batches=20`` ...).

        A setting at Lightning's default (``TRAINING_DEFAULTS``) counts as unset, so that ``trainer=ddp``
        and the CPU default share their models.
        """
        trainer = OmegaConf.to_container(self.cfg.trainer, resolve=True)
        return {
            key: trainer[key]
            for key in TRAINING_KEYS
            if trainer.get(key) is not None and str(trainer[key]) not in TRAINING_DEFAULTS.get(key, ())
        }

    def dataset_identity(self) -> dict[str, Any]:
        """What the data is, not where its files are: the dataset config's identity and the data's fingerprint.

        The fingerprint (``data.fingerprint``) hashes the content of the data module's files, so that
        other data in the same format under the same config (``paths.data_dir`` pointed elsewhere)
        never reuses the caches of this one.
        """
        full = OmegaConf.to_container(self.cfg.dataset, resolve=True)
        spec = {key: full[key] for key in IDENTITY_KEYS}
        for key in LOCATION_KEYS:
            spec["datamodule"].pop(key, None)
        spec["fingerprint"] = self.data_fingerprint()
        return spec

    def data_fingerprint(self) -> str:
        """The content fingerprint of the data module's files, computed once per run.

        Its per-file hashes are memoised in ``<cache_dir>/fingerprints.json``; every rank of a DDP
        run computes it (no collective, so any rank may ask first), and only rank 0 writes the memo.
        """
        if self._fingerprint is None:
            self._fingerprint = fingerprint.data_fingerprint(
                self.datamodule.data_files(), self.cache_dir / FINGERPRINT_MEMO, save=distributed.is_rank_zero()
            )
        return self._fingerprint

    def source_split(self, split: str) -> str:
        """The data split whose images the adversarial set of ``split`` (``train`` or ``test``) attacks.

        The "train" set (the detectors' and the rectifier's pairs) comes from
        ``adversarial.train_split``: ``val`` by default, images ``f`` did not train on, so that the
        detectors do not learn "memorised vs unseen" from clean training images and unseen test ones.
        """
        if split == "test":
            return "test"
        source = self.cfg.adversarial.train_split
        if source not in TRAIN_SOURCES:
            raise ValueError(f"adversarial.train_split={source!r} is unknown; choose one of {TRAIN_SOURCES}")
        return source


def select_device(accelerator: str) -> torch.device:
    """The device for attacks and gradient maps: the GPU when the trainer uses one, else the CPU."""
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")
