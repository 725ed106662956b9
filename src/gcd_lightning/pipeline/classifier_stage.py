"""Stage ``classifier``: train the protected classifier ``f`` once per config, then reuse it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.classifier import BaseClassifier
from gcd_lightning.models import normalized
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.hashing import file_hash, spec_hash

log = logging.getLogger(__name__)

WEIGHTS = "model.pt"
SUMMARY = "summary.json"


def classifier_spec(ctx: RunContext) -> dict:
    """Everything that determines ``f``'s weights."""
    cfg = ctx.cfg
    return {"dataset": ctx.dataset_identity(), "model": cfg.model, "classifier": cfg.classifier, "seed": cfg.seed}


def classifier_dir(ctx: RunContext) -> Path:
    spec = classifier_spec(ctx)
    return ctx.cache_dir / "classifier" / f"{ctx.cfg.dataset.name}_{ctx.cfg.model.name}_{spec_hash(spec)}"


def build_model(ctx: RunContext, net: DictConfig | None = None) -> nn.Module:
    """An untrained network on pixels, the data set's normalisation inside: ``f`` (``model.net``) or ``net``."""
    cfg = ctx.cfg
    return normalized(hydra.utils.instantiate(cfg.model.net if net is None else net), cfg.dataset.mean, cfg.dataset.std)


def train(ctx: RunContext, folder: Path) -> None:
    """Fit and test ``f`` with Lightning, then cache its weights and test accuracy atomically (rank 0 writes)."""
    cfg = ctx.cfg
    module = BaseClassifier(
        model=build_model(ctx),
        num_classes=cfg.dataset.num_classes,
        optimizer=hydra.utils.instantiate(cfg.model.optimizer),
        scheduler=hydra.utils.instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
    )
    trainer = hydra.utils.instantiate(
        cfg.trainer, max_epochs=cfg.classifier.max_epochs, logger=ctx.loggers or False, enable_checkpointing=False
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=ctx.datamodule)
    seconds = time.perf_counter() - start
    (result,) = trainer.test(module, datamodule=ctx.datamodule, verbose=False)
    distributed.write_on_rank_zero(save_torch, module.model.state_dict(), folder / WEIGHTS)
    distributed.write_on_rank_zero(
        save_json,
        {"spec": classifier_spec(ctx), "test_acc": result["test/acc"], "train_seconds": seconds},
        folder / SUMMARY,
    )


def run_classifier_stage(ctx: RunContext) -> tuple[nn.Module, str, dict[str, float]]:
    """Load ``f`` from the cache (training it first on a miss).

    Returns ``f``, the content hash of its weights (the id that keys every later cache) and metrics.
    """
    folder = classifier_dir(ctx)
    weights = folder / WEIGHTS
    cached = distributed.broadcast(weights.is_file() and (folder / SUMMARY).is_file())  # rank 0's look, for all
    if cached:
        log.info("classifier: cache hit %s", folder)
    else:
        log.info("classifier: cache miss, training into %s", folder)
        train(ctx, folder)
    model = build_model(ctx)
    model.load_state_dict(load_torch(weights, "cached classifier weights"))
    summary = load_json(folder / SUMMARY, "cached classifier summary")
    metrics = {
        "classifier.test_acc": summary["test_acc"],
        "classifier.train_seconds": summary["train_seconds"],
        "classifier.cached": float(cached),
    }
    return model.eval().to(ctx.device), file_hash(weights), metrics
