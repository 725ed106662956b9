"""Stage ``classifier``: train the protected classifier ``f`` once per config, then reuse it; or, with
``model=external``, test the user's own model instead (nothing is trained)."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from torch import nn

from gcd_lightning.cache import Key, Summary, Weights
from gcd_lightning.classifier import BaseClassifier
from gcd_lightning.models.external import first_line, weights_file
from gcd_lightning.pipeline.components import build_model, classifier_recipe
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.training import fit
from gcd_lightning.utils.hashing import file_hash, spec_hash

FOLDER = "classifier"
EXTERNAL = Summary(FOLDER, "external classifier summary")  # the user's f: its test summary only


def classifier_spec(ctx: RunContext) -> dict:
    """Everything that determines ``f``'s weights."""
    cfg = ctx.cfg
    return {
        "dataset": ctx.dataset_identity(),
        "model": cfg.model,
        "classifier": cfg.classifier,
        "trainer": ctx.training_identity(),
        "seed": cfg.seed,
        **code_version("classifier"),
    }


def external_id(ctx: RunContext) -> str:
    """The id of the user's ``f`` (``model=external``): the content hash of ``model.weights_path``
    together with the normalisation in front of it, so that either change keys new caches."""
    recipe = classifier_recipe(ctx)
    weights = weights_file(ctx.cfg.model.weights_path)
    return spec_hash({"weights": file_hash(weights), "mean": recipe["mean"], "std": recipe["std"]})


def external_spec(ctx: RunContext, classifier_id: str) -> dict:
    """Everything that determines the user's ``f``'s test accuracy: the data and ``f``'s id."""
    return {"dataset": ctx.dataset_identity(), "classifier": classifier_id, "trainer": ctx.training_identity()}


def classifier_key(ctx: RunContext) -> Key:
    """The cache key of ``f``: its weights and summary, or only the summary of the user's own ``f``."""
    external = classifier_recipe(ctx)["external"]
    spec = external_spec(ctx, external_id(ctx)) if external else classifier_spec(ctx)
    return Key(f"{ctx.cfg.dataset.name}_{ctx.cfg.model.name}", spec)


def train(ctx: RunContext, model: nn.Module, resume: Path) -> dict:
    """Fit (resumable from ``resume``) and test ``f`` (``model``, trained in place) with Lightning; returns the summary to cache."""
    cfg = ctx.cfg
    module = BaseClassifier(
        model=model,
        num_classes=cfg.dataset.num_classes,
        optimizer=hydra.utils.instantiate(cfg.model.optimizer),
        scheduler=hydra.utils.instantiate(cfg.model.scheduler) if cfg.model.get("scheduler") else None,
    )
    trainer, seconds = fit(ctx, module, resume, "classifier", cfg.classifier.max_epochs, datamodule=ctx.datamodule)
    (result,) = trainer.test(module, datamodule=ctx.datamodule, verbose=False)
    return {"test_acc": result["test/acc"], "train_seconds": seconds}


def check_external(ctx: RunContext, model: nn.Module) -> None:
    """A clear error when the user's ``f`` does not map two test images to ``dataset.num_classes`` logits."""
    x, _ = next(iter(ctx.datamodule.test_dataloader()))
    x, expected = x[:2], (min(2, len(x)), ctx.cfg.dataset.num_classes)
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except Exception as err:
        raise ValueError(
            f"model=external: the model fails on {ctx.cfg.dataset.name} test images of shape {tuple(x.shape)} "
            f"({first_line(err)}); give a model for these images (model.mean / model.std normalise them first)"
        ) from err
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"model=external: the model gives outputs of shape {tuple(logits.shape)} for {expected[0]} images, "
            f"expected {expected} logits; give a model with dataset.num_classes={expected[1]} outputs"
        )


def evaluate_external(ctx: RunContext, model: nn.Module, classifier_id: str) -> dict:
    """Test the user's ``f`` with Lightning (as ``train`` tests a trained one); returns the summary to cache."""
    cfg = ctx.cfg
    check_external(ctx, model)
    module = BaseClassifier(model=model, num_classes=cfg.dataset.num_classes, optimizer=None)  # tested, never fit
    trainer = hydra.utils.instantiate(cfg.trainer, logger=ctx.loggers or False, enable_checkpointing=False)
    (result,) = trainer.test(module, datamodule=ctx.datamodule, verbose=False)
    return {"recipe": classifier_recipe(ctx), "test_acc": result["test/acc"], "train_seconds": 0.0}


def stage_metrics(ctx: RunContext, summary: dict, cached: bool) -> dict[str, float]:
    """The stage's metrics from its cached summary (a trained ``f``'s or the user's, whose ``train_seconds`` is 0)."""
    return {
        "classifier.test_acc": summary["test_acc"],
        "classifier.num_classes": float(ctx.cfg.dataset.num_classes),
        "classifier.train_seconds": summary["train_seconds"],
        "classifier.cached": float(cached),
    }


def run_external_stage(ctx: RunContext) -> tuple[nn.Module, str, dict[str, float]]:
    """``run_classifier_stage`` under ``model=external``: load the user's ``f``, test it once per weights and data."""
    model = build_model(ctx)  # loads model.weights_path, with its clear errors
    key = classifier_key(ctx)  # hashes the weights file once
    classifier_id = key.spec["classifier"]
    summary, cached = ctx.cache.get_or_build(EXTERNAL, key, lambda _: evaluate_external(ctx, model, classifier_id))
    return model.eval().to(ctx.device), classifier_id, stage_metrics(ctx, summary, cached)


def run_classifier_stage(ctx: RunContext) -> tuple[nn.Module, str, dict[str, float]]:
    """Load ``f`` from the cache (training it first on a miss), or the user's own ``f`` (``model=external``).

    Returns ``f`` in eval mode, its id (the content hash of its weights, with its normalisation for
    the user's ``f``; it keys every later cache) and metrics.
    """
    if classifier_recipe(ctx)["external"]:
        return run_external_stage(ctx)
    model = build_model(ctx)
    kind, key = Weights(FOLDER, model, "classifier"), classifier_key(ctx)
    summary, cached = ctx.cache.get_or_build(kind, key, lambda resume: train(ctx, model, resume))
    return model.eval().to(ctx.device), file_hash(ctx.cache.path(kind, key)), stage_metrics(ctx, summary, cached)
