"""Stage ``rectifier``: fine-tune a copy of ``f`` into ``f_rec`` on guided random masks (section 3.2, eq. 12-13)."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from torch import nn

from gcd_lightning import distributed
from gcd_lightning.adversarial import AdversarialSet
from gcd_lightning.defense.detector import DetectorInput, SubDetector
from gcd_lightning.defense.ensemble import ADVERSARIAL, entropy_select
from gcd_lightning.defense.rectifier import guided_saliency, masked_duplicates
from gcd_lightning.defense.rectifier_module import RectifierFineTune
from gcd_lightning.pipeline.classifier_stage import build_model
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.detectors_stage import pair_split
from gcd_lightning.pipeline.training import fit_best, seed_stage
from gcd_lightning.utils.files import load_json, load_torch, save_json, save_torch
from gcd_lightning.utils.hashing import spec_hash

log = logging.getLogger(__name__)


def ensemble_saliency(
    detectors: dict[DetectorInput, SubDetector], x: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``|∂L_DET/∂x|`` of adversarial images from the detector that eq. 11 picks for each, batch by batch.

    In a DDP run the ranks share the batches (``distributed.map_batches``) and every rank gets
    all the maps back in order, the same as a single process computes.
    """
    det_org, det_is = detectors[DetectorInput.PIXELS], detectors[DetectorInput.SENSITIVITY]
    device = next(det_org.parameters()).device

    def saliency(_: int, rows: slice) -> torch.Tensor:
        chunk = x[rows].to(device)
        with torch.no_grad():
            _, use_org = entropy_select(det_org.probabilities(chunk), det_is.probabilities(chunk))
        target = torch.full((len(chunk),), ADVERSARIAL, device=device)
        return guided_saliency(det_org, det_is, chunk, use_org, target=target).cpu()

    return distributed.map_batches(saliency, len(x), batch_size)


def rectifier_path(ctx: RunContext, detectors_folder: Path, classifier_id: str) -> Path:
    spec = {
        "detectors": detectors_folder.name,
        "classifier": classifier_id,
        "rectifier": ctx.cfg.rectifier,
        "seed": ctx.cfg.seed,
    }
    return ctx.cache_dir / "rectifier" / f"{detectors_folder.name}_rec_{spec_hash(spec)}.pt"


def run_rectifier_stage(
    ctx: RunContext,
    classifier: nn.Module,
    classifier_id: str,
    detectors: dict[DetectorInput, SubDetector],
    detectors_folder: Path,
    adv_train: AdversarialSet,
) -> tuple[nn.Module, dict[str, float]]:
    """Train (or load) ``f_rec`` on ``k`` masked duplicates of each successful adversarial train example.

    ``f_rec`` starts as a copy of ``f``, or as the network ``rectifier.net`` describes (e.g. the
    Wide ResNet of ``rectifier=wide_resnet``, the paper's ImageNet rectifier).
    """
    cfg = ctx.cfg
    weights = rectifier_path(ctx, detectors_folder, classifier_id)
    summary_path = weights.with_suffix(".json")
    seed_stage(cfg.seed, "rectifier")
    net = cfg.rectifier.get("net")
    module = RectifierFineTune(
        classifier=classifier if net is None else build_model(ctx, net),
        num_classes=cfg.dataset.num_classes,
        optimizer=hydra.utils.instantiate(cfg.rectifier.optimizer),
    )
    cached = distributed.broadcast(weights.is_file() and summary_path.is_file())  # rank 0's look, for all
    if cached:
        log.info("rectifier: cache hit %s", weights)
        module.model.load_state_dict(load_torch(weights, "cached rectifier weights"))
        summary = load_json(summary_path, "cached rectifier summary")
    else:
        log.info("rectifier: cache miss, training %s", weights)
        train_rows, val_rows = pair_split(len(adv_train), cfg.detector.val_fraction, cfg.seed)
        generator = torch.Generator().manual_seed(cfg.seed)
        saliency = ensemble_saliency(detectors, adv_train.x_adv, cfg.adversarial.batch_size)

        def duplicates(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            won = rows[adv_train.success[rows]]
            r = cfg.rectifier
            return masked_duplicates(adv_train.x_adv[won], saliency[won], adv_train.y[won], r.alpha, r.p, r.k, generator)

        best, seconds = fit_best(
            ctx,
            module,
            duplicates(train_rows),
            duplicates(val_rows),
            max_epochs=cfg.rectifier.max_epochs,
            batch_size=cfg.rectifier.batch_size,
            monitor="val/acc",
        )
        summary = {"val_acc": best, "train_seconds": seconds}
        distributed.write_on_rank_zero(save_torch, module.model.state_dict(), weights)
        distributed.write_on_rank_zero(save_json, summary, summary_path)
    metrics = {
        "rectifier.alpha": float(cfg.rectifier.alpha),
        "rectifier.val_acc": summary["val_acc"],
        "rectifier.train_seconds": summary["train_seconds"],
        "rectifier.cached": float(cached),
    }
    return module.model.eval().to(ctx.device), metrics
