"""Stage ``rectifier_baselines`` (with ``rectifier_baseline=[pgd,ddn,tvm]``): Table 5's defended classifiers beside GCD.

Each entry of ``cfg.rectifier_baseline`` (``conf/rectifier_baseline/<name>.yaml``) instantiates to a
``RobustRecipe``: a copy of ``f`` fine-tuned on adversarial examples or on transformed training images
(or ``f`` itself), behind an optional input transformation. The network does not depend on the run's
attack, so one training serves every attack of a grid: its cache key holds ``f``, the recipe, the
trainer settings and the seed. Its clean accuracy over the first ``evaluate.n_clean`` test images is
cached too. On each run's adversarial test images (grey-box: generated against ``f``) the
stage reports ``rectifier_baseline.<name>.acc.adv`` over all pairs, ``.acc.adv_successful`` over the
successful attacks and ``.robust_acc.all`` over every examined test image (as GCD's Table 5 cells).
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, predict, robust_accuracy, stack
from gcd_lightning.cache import Key, Summary, Weights
from gcd_lightning.defense.baselines.robust_training import Preprocessed, RobustRecipe, RobustTraining
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.density import density_identity, provide_density
from gcd_lightning.pipeline.training import fit, seed_stage
from gcd_lightning.utils.hashing import to_plain

PREFIX = "rectifier_baseline"


def network_key(ctx: RunContext, classifier_id: str, name: str, recipe: RobustRecipe) -> Key:
    """The trained network of baseline ``name``, keyed by ``f``, its recipe (but ``max_images``, which only the
    scoring reads), the density model its preprocessing reads (PixelDefend), the trainer settings and the seed;
    its id keys the clean accuracy and the white-box caches."""
    config = {key: value for key, value in to_plain(ctx.cfg.rectifier_baseline[name]).items() if key != "max_images"}
    spec = {
        **density_identity(ctx, recipe.preprocess),
        "classifier": classifier_id,
        "recipe": config,
        "trainer": ctx.training_identity(),
        "seed": ctx.cfg.seed,
        **code_version("rectifier_baselines"),
    }
    return Key(f"{ctx.cfg.dataset.name}_{name}", spec)


def train(ctx: RunContext, recipe: RobustRecipe, module: RobustTraining, resume: Path, name: str) -> dict[str, float]:
    """Fine-tune ``module``'s copy of ``f`` as ``recipe`` says, on ``f``'s training split (the last epoch is kept,
    as Madry et al. keep theirs; the clean validation accuracy is logged); returns the summary."""
    limit = {} if recipe.limit_train_batches is None else {"limit_train_batches": recipe.limit_train_batches}
    _, seconds = fit(ctx, module, resume, f"{PREFIX} {name}", recipe.max_epochs, trainer_args=limit, datamodule=ctx.datamodule)
    return {"train_seconds": seconds}


def clean_accuracy(ctx: RunContext, defense: nn.Module, network: Key, name: str, max_images: int | None) -> dict[str, float]:
    """The defended classifier's accuracy on the first ``evaluate.n_clean`` (at most ``max_images``) clean test
    images, cached beside its network's entry."""
    cfg = ctx.cfg
    test = ctx.datamodule.dataset("test")
    n_clean = min(cfg.evaluate.n_clean or len(test), max_images or len(test))

    def measure(_: Path) -> dict[str, float]:
        seed_stage(cfg.seed, f"{PREFIX} {name} clean")
        start = time.perf_counter()
        x, y = stack(test, torch.arange(n_clean))
        return {"acc": (predict(defense, x, cfg.adversarial.batch_size) == y).double().mean().item(),
                "n": float(n_clean), "seconds": time.perf_counter() - start}

    key = Key(f"{network.name}_clean", {"network": network.id, "n_clean": n_clean, "seed": cfg.seed})
    return ctx.cache.get_or_build(Summary(PREFIX, f"{PREFIX} {name} clean accuracy"), key, measure)[0]


def run_rectifier_baselines_stage(ctx: RunContext, classifier: nn.Module, classifier_id: str, adv_test: AdversarialSet
                                  ) -> tuple[dict[str, float], dict[str, tuple[Preprocessed, str]]]:
    """Train (or load) and evaluate every defended classifier of ``cfg.rectifier_baseline``.

    Returns their metrics, and each defended classifier with its identity (its weights' file name: ``f``,
    the recipe, the density model, the trainer, the seed), for the white-box stage to attack.
    """
    cfg = ctx.cfg
    metrics: dict[str, float] = {}
    defended: dict[str, tuple[Preprocessed, str]] = {}
    for name, spec in (cfg.get("rectifier_baseline") or {}).items():
        recipe: RobustRecipe = hydra.utils.instantiate(spec)
        if recipe.preprocess is not None:
            metrics.update({f"density.{key}": value for key, value in provide_density(ctx, recipe.preprocess).items()})
        network = classifier  # f itself, unless the recipe fine-tunes a copy
        key = network_key(ctx, classifier_id, name, recipe)
        summary, cached = {"train_seconds": 0.0}, True
        if recipe.max_epochs:
            seed_stage(cfg.seed, f"{PREFIX} {name}")
            module = RobustTraining(classifier, cfg.dataset.num_classes, recipe.transform(), recipe.optimizer)
            network = module.model
            summary, cached = ctx.cache.get_or_build(Weights(PREFIX, network, f"{PREFIX} {name}"), key,
                                                     lambda resume: train(ctx, recipe, module, resume, name))
        defense = recipe.defense(network.eval().to(ctx.device))
        defended[name] = defense, key.id
        clean = clean_accuracy(ctx, defense, key, name, recipe.max_images)
        seed_stage(cfg.seed, f"{PREFIX} {name} adversarial")
        start = time.perf_counter()
        pairs = slice(0, recipe.max_images)  # the first pairs of the test set (all without max_images)
        right = predict(defense, adv_test.x_adv[pairs], cfg.adversarial.batch_size) == adv_test.y[pairs]
        key = f"{PREFIX}.{name}"
        acc_adv = right.double().mean().item()
        metrics.update({
            f"{key}.acc.clean": clean["acc"],
            f"{key}.n_clean": clean["n"],
            f"{key}.acc.adv": acc_adv,
            f"{key}.n_adv": float(len(right)),
            f"{key}.acc.adv_successful": right[adv_test.success[pairs]].double().mean().item(),
            f"{key}.robust_acc.all": robust_accuracy(acc_adv, len(adv_test), adv_test.n_examined),
            f"{key}.train_seconds": summary["train_seconds"],
            f"{key}.clean_seconds": clean["seconds"],
            f"{key}.adv_seconds": time.perf_counter() - start,
            f"{key}.cached": float(cached),
        })
    return metrics, defended
