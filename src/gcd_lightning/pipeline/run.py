"""``run(cfg) -> metrics``: the testable body of ``python -m gcd_lightning``."""

from __future__ import annotations

import enum
import logging
import sys
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from gcd_lightning import distributed
from gcd_lightning.pipeline.attack_stage import run_attack_stage
from gcd_lightning.pipeline.baselines_stage import run_baselines_stage, save_memos
from gcd_lightning.pipeline.checks import check_config
from gcd_lightning.pipeline.classifier_stage import run_classifier_stage
from gcd_lightning.pipeline.components import build_gcd, export_run_defense
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.pipeline.detectors_stage import run_detectors_stage
from gcd_lightning.pipeline.evaluate_stage import run_evaluate_stage
from gcd_lightning.pipeline.rectifier_baselines_stage import run_rectifier_baselines_stage
from gcd_lightning.pipeline.rectifier_stage import run_rectifier_stage
from gcd_lightning.pipeline.transfer_stage import run_transfer_stage
from gcd_lightning.pipeline.whitebox_stage import run_whitebox_stage
from gcd_lightning.reporting import wandb as wandb_report
from gcd_lightning.reporting.report import write_report
from gcd_lightning.utils.files import save_json, save_text
from gcd_lightning.utils.provenance import FILE as PROVENANCE
from gcd_lightning.utils.provenance import provenance

log = logging.getLogger(__name__)


class Stage(str, enum.Enum):
    """What a run computes, in order; each stage loads what the stages before it cached."""

    CLASSIFIER = "classifier"
    ATTACK = "attack"
    DETECTORS = "detectors"
    RECTIFIER = "rectifier"
    EVALUATE = "evaluate"  # grey-box evaluation, then the white-box attacks when threat=whitebox
    ALL = "all"

    def includes(self, other: Stage) -> bool:
        """Whether running up to this stage runs ``other``."""
        order = list(Stage)
        return order.index(other) <= order.index(self)


def parse_stage(value: str) -> Stage:
    try:
        return Stage(value)
    except ValueError:
        names = ", ".join(s.value for s in Stage)
        raise ValueError(f"unknown stage={value!r}; choose one of: {names}") from None


def run(cfg: DictConfig) -> dict[str, float]:
    """Run the stages ``cfg.stage`` asks for; write the resolved config, its provenance, metrics and report.

    A run that fails or is interrupted leaves a ``FAILED`` file in its run dir saying so, with the error.

    With ``trainer=ddp`` this runs in every process of the run (``distributed.launch`` starts
    them here); every rank computes the metrics, rank 0 writes the files.
    """
    stage = parse_stage(cfg.stage)
    check_config(cfg)
    opened = distributed.launch(cfg.trainer)
    pl.seed_everything(cfg.seed, workers=True)
    ctx = RunContext.build(cfg)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    distributed.write_on_rank_zero(save_text, OmegaConf.to_yaml(cfg, resolve=True), ctx.output_dir / "config.yaml")
    distributed.write_on_rank_zero(save_json, provenance(), ctx.output_dir / PROVENANCE)
    status = "failed"
    try:
        metrics = run_stages(ctx, stage)
        distributed.write_on_rank_zero(
            write_report,
            metrics,
            ctx.output_dir,
            title=f"{cfg.experiment_name} ({cfg.threat.name}, stage={stage.value})",
            dataset=cfg.dataset.name,
            attack=cfg.attack.name,
        )
        for logger in ctx.loggers:
            logger.log_metrics(metrics)
        wandb_report.log_run(ctx.loggers, cfg, metrics, ctx.output_dir)
        log.info("results in %s", ctx.output_dir)
        if stage.includes(Stage.RECTIFIER) and distributed.is_rank_zero():
            print(usage_example(ctx.output_dir / "defense"))
        status = "success"
        return metrics
    except BaseException as err:
        if distributed.is_rank_zero():  # no barrier: the other ranks may be gone
            save_text(failure_text(err), ctx.output_dir / FAILED)
        raise
    finally:
        close_loggers(ctx.loggers, status)
        if opened and status == "success":  # a failed rank may never reach the barrier
            distributed.shutdown()


FAILED = "FAILED"


def failure_text(err: BaseException) -> str:
    """What a run's ``FAILED`` file says: interrupted or failed, and the error."""
    what = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
    return f"this run {what}; its outputs are incomplete\n{type(err).__name__}: {err}\n"


def usage_example(folder: Path) -> str:
    """What ``make demo`` ends with: where the trained defense is and two lines of Python that use it."""
    return (
        f"defense exported to {folder}; use it in Python:\n"
        "    from gcd_lightning import load_defense\n"
        f"    labels = load_defense({str(folder)!r}).predict(images).label  # images: (N, C, H, W) floats in [0, 1]"
    )


def run_stages(ctx: RunContext, stage: Stage) -> dict[str, float]:
    """The stages up to ``stage``, each fed by the ones before; returns their flat metrics and ``stage_seconds.<stage>``,
    the wall seconds each took in this run (near 0 for a stage served by the cache)."""
    metrics = stages(ctx, stage)
    return metrics | {f"stage_seconds.{name}": seconds for name, seconds in ctx.timings.items()}


def stages(ctx: RunContext, stage: Stage) -> dict[str, float]:
    """``run_stages`` without the timings."""
    with ctx.timed("classifier"):
        model, classifier_id, metrics = run_classifier_stage(ctx)
    if not stage.includes(Stage.ATTACK):
        return metrics
    with ctx.timed("attack"):
        sets, attack_metrics = run_attack_stage(ctx, model, classifier_id)
    metrics.update(attack_metrics)
    (adv_train, train_path), (adv_test, test_path) = sets["train"], sets["test"]
    if not stage.includes(Stage.DETECTORS):
        return metrics
    with ctx.timed("detectors"):
        detectors, detectors_group, detector_metrics = run_detectors_stage(ctx, model, classifier_id, adv_train, train_path)
    metrics.update(detector_metrics)
    if not stage.includes(Stage.RECTIFIER):
        return metrics
    with ctx.timed("rectifier"):
        rectifier, rectifier_id, rectifier_metrics = run_rectifier_stage(
            ctx, model, classifier_id, detectors, detectors_group, adv_train
        )
    metrics.update(rectifier_metrics)
    gcd = build_gcd(ctx, model, detectors, rectifier)
    distributed.write_on_rank_zero(export_run_defense, ctx, gcd)
    if not stage.includes(Stage.EVALUATE):
        return metrics
    with ctx.timed("evaluate"):
        ids = {"classifier": classifier_id, "detectors": detectors_group, "rectifier": rectifier_id, "adv_test": test_path.stem}
        metrics.update(run_evaluate_stage(ctx, gcd, adv_test, ids))
    with ctx.timed("baselines"):
        baselines, baseline_metrics = run_baselines_stage(ctx, model, classifier_id, adv_train, train_path, adv_test)
    metrics.update(baseline_metrics)
    with ctx.timed("rectifier_baselines"):
        rectifier_baseline_metrics, defended = run_rectifier_baselines_stage(ctx, model, classifier_id, adv_test)
    metrics.update(rectifier_baseline_metrics)
    if ctx.cfg.evaluate.transfer_attacks:  # other attacks' test sets against the same f, from the cache or built
        with ctx.timed("transfer"):
            test_sets = {name: run_attack_stage(ctx.with_attack(name), model, classifier_id, splits=("test",))[0]["test"][0]
                         for name in ctx.cfg.evaluate.transfer_attacks}
            metrics.update(run_transfer_stage(ctx, gcd, baselines, adv_train, test_sets))
            save_memos(ctx, baselines, classifier_id)
    if ctx.cfg.threat.name == "whitebox":
        with ctx.timed("whitebox"):
            metrics.update(run_whitebox_stage(ctx, gcd, classifier_id, rectifier_id, detectors_group, adv_test, baselines,
                                              defended))
    return metrics


def close_loggers(loggers: list, status: str) -> None:
    """Finalize every logger, and end the W&B run so that its offline files are complete."""
    for logger in loggers:
        logger.finalize(status)
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0 if status == "success" else 1)
