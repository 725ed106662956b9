"""Stage ``rectifier``: fine-tune a copy of ``f`` into ``f_rec`` on guided random masks (section 3.2, eq. 12-13)."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, pair_split
from gcd_lightning.cache import Key, Weights
from gcd_lightning.defense.base import Detector
from gcd_lightning.defense.gcd import GCD
from gcd_lightning.defense.rectifier import masked_duplicates
from gcd_lightning.defense.rectifier_module import RectifierFineTune
from gcd_lightning.pipeline.components import build_model, ensemble_saliency
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.training import fit_best, seed_stage


def rectifier_key(ctx: RunContext, detectors_group: str, classifier_id: str) -> Key:
    spec = {
        "detectors": detectors_group,
        "classifier": classifier_id,
        "rectifier": ctx.cfg.rectifier,
        "trainer": ctx.training_identity(),
        "seed": ctx.defense_seed,
        **code_version("rectifier"),
    }
    return Key(f"{detectors_group}_rec", spec)


def run_rectifier_stage(
    ctx: RunContext,
    classifier: nn.Module,
    classifier_id: str,
    detectors: dict[str, Detector],
    detectors_group: str,
    adv_train: AdversarialSet,
) -> tuple[nn.Module, str, dict[str, float]]:
    """Train (or load) ``f_rec`` on ``k`` masked duplicates of each successful adversarial train example.

    ``f_rec`` starts as a copy of ``f``, or as the network ``rectifier.net`` describes (e.g. the
    Wide ResNet of ``rectifier=wide_resnet``, the paper's ImageNet rectifier). Returns ``f_rec``,
    its id (the cache entry's, which keys the white-box caches) and metrics.
    """
    cfg = ctx.cfg
    key = rectifier_key(ctx, detectors_group, classifier_id)
    seed_stage(ctx.defense_seed, "rectifier")
    net = cfg.rectifier.get("net")
    module = RectifierFineTune(
        classifier=classifier if net is None else build_model(ctx, net),
        num_classes=cfg.dataset.num_classes,
        optimizer=hydra.utils.instantiate(cfg.rectifier.optimizer),
    )

    def train(resume: Path) -> dict[str, float]:
        train_rows, val_rows = pair_split(len(adv_train), cfg.detector.val_fraction, cfg.seed)
        generator = torch.Generator().manual_seed(ctx.defense_seed)  # the random masks of its training copies
        saliency = ensemble_saliency(GCD(classifier, list(detectors.values())), adv_train.x_adv, cfg.adversarial.batch_size)

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
            resume=resume,
            what="rectifier",
        )
        return {"val_acc": best, "train_seconds": seconds}

    summary, cached = ctx.cache.get_or_build(Weights("rectifier", module.model, "rectifier"), key, train)
    metrics = {
        "rectifier.alpha": float(cfg.rectifier.alpha),
        "rectifier.val_acc": summary["val_acc"],
        "rectifier.train_seconds": summary["train_seconds"],
        "rectifier.cached": float(cached),
    }
    return module.model.eval().to(ctx.device), key.id, metrics
