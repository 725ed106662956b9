"""The data set's density model (``density`` group, a ``PixelCNN``), trained once and provided to the components that ask.

A component that needs it (``DET_PD``, the PixelDefend purifier) is built with ``density=None``;
``provide_density`` hands it the trained model. Training runs only then, on ``f``'s training split, and
is cached under ``cache/density/`` keyed by the data, the network config, its training, the trainer
settings and the seed; the attack plays no part, so every attack's run shares it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from torch import nn

from gcd_lightning.cache import Key, Weights
from gcd_lightning.models.pixelcnn import DensityTraining, PixelCNN
from gcd_lightning.pipeline.context import RunContext, code_version
from gcd_lightning.pipeline.training import fit, seed_stage
from gcd_lightning.utils.hashing import to_plain


def density_key(ctx: RunContext) -> Key:
    """The trained density model's cache key: everything that determines its weights."""
    spec = {
        "dataset": ctx.dataset_identity(),
        "density": to_plain(ctx.cfg.density),
        "trainer": ctx.training_identity(),
        "seed": ctx.cfg.seed,
        **code_version("density"),
    }
    return Key(ctx.cfg.dataset.name, spec)


def trained_density(ctx: RunContext) -> tuple[PixelCNN, dict]:
    """The run's density model, trained (or loaded) once per run (``ctx.memo``), in eval mode on the run's device;
    and its summary."""
    key = density_key(ctx)
    if key.id not in ctx.memo:
        cfg = ctx.cfg.density
        model = hydra.utils.instantiate(cfg.net)
        seed_stage(ctx.cfg.seed, "density")

        def train(resume: Path) -> dict[str, float]:
            module = DensityTraining(model, hydra.utils.instantiate(cfg.optimizer))
            trainer, seconds = fit(ctx, module, resume, "density", cfg.max_epochs,
                                   trainer_args={"limit_train_batches": cfg.limit_train_batches}, datamodule=ctx.datamodule)
            return {"val_bpd": float(trainer.callback_metrics["val/bpd"]), "train_seconds": seconds}

        summary, _ = ctx.cache.get_or_build(Weights("density", model, "density"), key, train)
        ctx.memo[key.id] = (model.eval().requires_grad_(False).to(ctx.device), summary)
    return ctx.memo[key.id]


def uses_density(component: nn.Module | None) -> bool:
    """Whether a part of ``component`` reads a density model (was built with a ``density`` attribute)."""
    return component is not None and any(hasattr(m, "density") for m in component.modules())


def density_identity(ctx: RunContext, component: nn.Module | None) -> dict[str, str]:
    """The cache-key entry of a component that reads the density model: the model's cache file name (its key);
    nothing for one that does not, so that their keys stay as they were."""
    return {"density": density_key(ctx).id} if uses_density(component) else {}


def provide_density(ctx: RunContext, component: nn.Module) -> dict[str, float]:
    """Give every part of ``component`` built with ``density=None`` the run's trained density model.

    Returns the density's summary (validation bits per dimension, training seconds) when it was
    provided, else nothing.
    """
    waiting = [m for m in component.modules() if hasattr(m, "density") and m.density is None]
    if not waiting:
        return {}
    model, summary = trained_density(ctx)
    for m in waiting:
        object.__setattr__(m, "density", model)
    return summary
