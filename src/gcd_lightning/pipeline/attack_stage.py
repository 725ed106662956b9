"""Stage ``attack``: adversarial sets of the train and test subsets, cached by content hash.

The "train" set feeds the detectors and the rectifier. Its images come from the split named by
``adversarial.train_split``: ``val`` (the default), images ``f`` never trained on, so that the
clean half of the detectors' pairs is not "memorised" while the test images are unseen; ``train``
(``f``'s own training images) is kept as an option.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from torch import nn

from gcd_lightning.adversarial import AdversarialSet, Sets, generate, union
from gcd_lightning.cache import Key
from gcd_lightning.pipeline.context import RunContext, code_version

SPLITS = ("train", "test")
SETS = Sets()


def adversarial_spec(ctx: RunContext, split: str, classifier_id: str) -> dict:
    """Everything that determines one adversarial set (the classifier by the hash of its weights)."""
    cfg = ctx.cfg
    return {
        "dataset": ctx.dataset_identity(),
        "split": split,
        "source": ctx.source_split(split),
        "n": cfg.adversarial[f"n_{split}"],
        "batch_size": cfg.adversarial.batch_size,
        "classifier": classifier_id,
        "attack": cfg.attack,
        "seed": cfg.seed,
        **code_version("adversarial"),
    }


def adversarial_key(ctx: RunContext, spec: dict) -> Key:
    return Key(f"{ctx.cfg.dataset.name}_{ctx.cfg.attack.name}_{spec['split']}", spec)


def run_attack_stage(
    ctx: RunContext, model: nn.Module, classifier_id: str, splits: tuple[str, ...] = SPLITS
) -> tuple[dict[str, tuple[AdversarialSet, Path]], dict[str, float]]:
    """Build or load the adversarial set of each split of ``splits``; returns each set with its file, and flat metrics.

    With ``defense.train_attacks`` (attack-agnostic training), the train set is the union of those
    attacks' train sets against ``f`` (each cached as its own attack's, the union too), taken whole or
    balanced to one attack's size (``defense.train_union``, see ``adversarial.union``); the run's own
    attack need not be among them (leave-one-attack-out), and then its train set is not built.
    """
    train_attacks = list(ctx.cfg.defense.get("train_attacks") or [])
    sets, metrics = attack_splits(ctx, model, classifier_id, tuple(s for s in splits if s != "train" or not train_attacks))
    if "train" in splits and train_attacks:
        parts = [attack_splits(ctx.with_attack(name), model, classifier_id, ("train",))[0]["train"] for name in train_attacks]
        mode = ctx.cfg.defense.train_union
        spec = {"union": [path.name for _, path in parts], "mode": mode}
        key = Key(f"{ctx.cfg.dataset.name}_union_train", spec)
        adv, hit = ctx.cache.get_or_build(SETS, key, lambda _: union([adv for adv, _ in parts], mode))
        sets["train"] = adv, ctx.cache.path(SETS, key)
        metrics.update({f"attack.train.{key}": value for key, value in adv.summary().items()})
        metrics["attack.train.cached"], metrics["attack.train.n_attacks"] = float(hit), float(len(parts))
    return sets, metrics


def attack_splits(
    ctx: RunContext, model: nn.Module, classifier_id: str, splits: tuple[str, ...]
) -> tuple[dict[str, tuple[AdversarialSet, Path]], dict[str, float]]:
    """The configured attack's set of each split of ``splits``, built or loaded from the cache."""
    cfg = ctx.cfg
    attack = hydra.utils.instantiate(cfg.attack.attack)(model=model)
    sets: dict[str, tuple[AdversarialSet, Path]] = {}
    metrics: dict[str, float] = {}
    for split in splits:
        spec = adversarial_spec(ctx, split, classifier_id)

        def build(_: Path, split: str = split) -> AdversarialSet:
            return generate(
                model,
                attack,
                ctx.datamodule.dataset(ctx.source_split(split)),
                n=cfg.adversarial[f"n_{split}"],
                num_classes=cfg.dataset.num_classes,
                seed=cfg.seed,
                batch_size=cfg.adversarial.batch_size,
                progress=cfg.progress,
                desc=f"{cfg.attack.name} ({split})",
            )

        key = adversarial_key(ctx, spec)
        adv, hit = ctx.cache.get_or_build(SETS, key, build)
        sets[split] = adv, ctx.cache.path(SETS, key)
        metrics.update({f"attack.{split}.{key}": value for key, value in adv.summary().items()})
        metrics[f"attack.{split}.cached"] = float(hit)
    return sets, metrics
