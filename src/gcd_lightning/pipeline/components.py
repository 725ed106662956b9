"""The defense's parts built from the config (``defense``, ``detector``, ``rectifier`` groups), and GCD run over tensors."""

from __future__ import annotations

import inspect
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet, detection_pairs, pair_split, stack
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.ensemble import ADVERSARIAL
from gcd_lightning.defense.export import export_defense
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.models import normalized
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.training import fit_best
from gcd_lightning.utils.hashing import to_plain


def classifier_recipe(ctx: RunContext) -> dict:
    """How to rebuild ``f``: its network config (``model.net``, resolved), the normalisation inside it
    (``model.mean`` / ``model.std``, else the data set's) and whether it is the user's own (``model=external``)."""
    model, dataset = ctx.cfg.model, ctx.cfg.dataset

    def channels(key: str) -> list[float]:
        value = model.get(key)
        return [float(v) for v in to_plain(dataset[key] if value is None else value)]

    return {
        "net": to_plain(model.net),
        "mean": channels("mean"),
        "std": channels("std"),
        "external": bool(model.get("external", False)),
    }


def build_model(ctx: RunContext, net: DictConfig | None = None) -> nn.Module:
    """A network on pixels, normalisation inside.

    Without ``net``: ``f`` as ``classifier_recipe`` describes it (``model.net`` untrained, or the user's
    loaded model under ``model=external``) behind ``f``'s normalisation. With ``net`` (e.g.
    ``rectifier.net``): that untrained network behind the data set's normalisation.
    """
    if net is None:
        recipe = classifier_recipe(ctx)
        return normalized(hydra.utils.instantiate(recipe["net"]), recipe["mean"], recipe["std"])
    return normalized(hydra.utils.instantiate(net), ctx.cfg.dataset.mean, ctx.cfg.dataset.std)


def build_detector(ctx: RunContext, spec: DictConfig, classifier: nn.Module) -> Detector:
    """The untrained detector of ``spec`` (an entry of ``defense.detectors`` or ``baseline``) on ``f`` (given to
    a detector whose constructor takes ``classifier``); a trained one (a LightningModule such as
    ``SubDetector``) gets the ``detector`` group's body and optimizer."""
    cfg = ctx.cfg
    cls = hydra.utils.get_class(spec._target_)
    parts = {"body": hydra.utils.instantiate(cfg.detector.body), "optimizer": hydra.utils.instantiate(cfg.detector.optimizer)}
    reads_f = {"classifier": classifier} if "classifier" in inspect.signature(cls).parameters else {}  # DET_PD does not
    return hydra.utils.instantiate(spec, **reads_f, **(parts if issubclass(cls, pl.LightningModule) else {}))


def detection_split(ctx: RunContext, adv_train: AdversarialSet) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The clean originals of ``adv_train`` and its seeded (train, validation) rows, as every detector learns
    from them: GCD's, the baselines, and the thresholds of the transfer stage."""
    cfg = ctx.cfg
    clean, _ = stack(ctx.datamodule.dataset(ctx.source_split("train")), adv_train.index)
    return clean, pair_split(len(adv_train), cfg.detector.val_fraction, cfg.seed)


def train_detector(ctx: RunContext, detector: Detector, clean: torch.Tensor, adv_train: AdversarialSet,
                   rows: tuple[torch.Tensor, torch.Tensor], resume: Path, what: str) -> dict[str, float]:
    """Train a detector LightningModule on the pairs of eq. 7 (``rows``: training and validation rows of
    ``adv_train``), keeping the epoch of best validation AUC; returns its summary."""
    cfg = ctx.cfg
    train_rows, val_rows = rows
    best, seconds = fit_best(
        ctx,
        detector,
        detection_pairs(clean, adv_train, train_rows),
        detection_pairs(clean, adv_train, val_rows),
        max_epochs=cfg.detector.max_epochs,
        batch_size=cfg.detector.batch_size,
        monitor="val/auc",
        resume=resume,
        what=what,
    )
    return {"val_auc": best, "train_seconds": seconds}


def build_gcd(ctx: RunContext, classifier: nn.Module, detectors: dict[str, Detector], rectifier_network: nn.Module) -> GCD:
    """The run's defense: ``f``, its detectors and ``defense.rectifier`` around ``f_rec``.

    Its random masks come from the global generator (``run_gcd`` seeds it).
    """
    cfg = ctx.cfg
    rectifier = hydra.utils.instantiate(cfg.defense.rectifier, network=rectifier_network)
    input_shape = (cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size)
    return GCD(classifier, list(detectors.values()), rectifier, input_shape=input_shape)


def gcd_batch(gcd: GCD, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """GCD's labels, every adversarial score ``p⁻`` (each detector's and ``"gcd"``), flags and routing of one batch, on the CPU."""
    prediction = gcd.predict(x.to(next(gcd.parameters()).device))
    answers = {
        "label": prediction.label,
        **prediction.adversarial_scores,
        "flagged": prediction.flagged,
        "decided": prediction.detection.decided,
    }
    return {name: value.detach().cpu() for name, value in answers.items()}


def run_gcd(gcd: GCD, x: torch.Tensor, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """``gcd_batch`` over ``x`` batch by batch, batch ``i``'s random masks drawn after seeding ``seed + i``.

    So the answers do not depend on the order of calls or on how a DDP run shares the batches.
    """
    return distributed.map_batches(lambda _, rows: gcd_batch(gcd, x[rows]), len(x), batch_size, seed)


def gap_scores(detector: Detector, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N,) the detector's logit gap ``adversarial − benign`` of every image (detectors that read an input
    gradient take it themselves), on the CPU; a DDP run shares the batches between its ranks."""

    def gap(_: int, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            logits = detector(x[rows].to(device))
        return (logits[:, 1] - logits[:, 0]).cpu()

    return distributed.map_batches(gap, len(x), batch_size)


def detection_scores(gcd: GCD, baselines: dict[str, Detector], x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """(N,) scores of every detector, larger is more adversarial: ``p⁻`` of each of GCD's detectors and of
    its ensemble (``gcd``, eq. 10-11; detection only, no rectifier), the logit gap of each baseline."""
    device = next(gcd.parameters()).device

    def detect(_: int, rows: slice) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            result = gcd.detect(x[rows].to(device))
        return {name: p[:, ADVERSARIAL].cpu() for name, p in result.p_each.items()} | {"gcd": result.p[:, ADVERSARIAL].cpu()}

    scores = distributed.map_batches(detect, len(x), batch_size)
    return scores | {name: gap_scores(detector, x, batch_size, device) for name, detector in baselines.items()}


def ensemble_saliency(gcd: GCD, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``|∂L_DET/∂x|`` (at "adversarial") of images from the detector that decides each (eq. 11), batch by batch.

    In a DDP run the ranks share the batches (``distributed.map_batches``) and every rank gets
    all the maps back in order, the same as a single process computes.
    """
    device = next(gcd.parameters()).device

    def saliency(_: int, rows: slice) -> torch.Tensor:
        chunk = x[rows].to(device)
        with torch.no_grad():
            decided = gcd.detect(chunk).decided
        return gcd.saliency(chunk, decided, target=torch.full((len(chunk),), ADVERSARIAL, device=device)).cpu()

    return distributed.map_batches(saliency, len(x), batch_size)


def export_run_defense(ctx: RunContext, gcd: GCD) -> Path:
    """Export the run's trained defense to ``<run dir>/defense`` (``defense.export``); returns the folder."""
    cfg = ctx.cfg
    recipe = classifier_recipe(ctx)
    rectifier_net = cfg.rectifier.get("net") or recipe["net"]
    detector_specs = {name: {**to_plain(spec), "body": to_plain(cfg.detector.body)} for name, spec in cfg.defense.detectors.items()}
    return export_defense(
        gcd,
        ctx.output_dir / "defense",
        classifier_net=recipe["net"],
        external=recipe["external"],
        rectifier_net=to_plain(rectifier_net),
        detector_specs=detector_specs,
        rectifier_spec=to_plain(cfg.defense.rectifier),
        mean=recipe["mean"],
        std=recipe["std"],
        num_classes=cfg.dataset.num_classes,
        input_shape=(cfg.dataset.in_channels, cfg.dataset.image_size, cfg.dataset.image_size),
        dataset=cfg.dataset.name,
    )
