"""A run's results on a W&B dashboard: config, summary metrics, the paper's tables and figures.

Runs are named ``<experiment>-<threat>`` and grouped ``<dataset>-<attack>`` (``conf/logger/wandb.yaml``),
so a workspace shows AUC and success rate per attack side by side. Offline by default: the files
land in ``<output_dir>/wandb/offline-run-*`` and ``wandb sync`` uploads them later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gcd_lightning.reporting.tables import Run, laid_out, run_key

FIGURES = {"figures/roc": "roc.png", "figures/input_sensitivity": "sensitivity.png"}


def log_run(loggers: list, cfg: DictConfig, metrics: dict[str, float], output_dir: Path) -> None:
    """Log config, summary, tables and figures to every ``WandbLogger`` among ``loggers``.

    The tables are the aggregate's (``tables.laid_out``) of this run alone: the paper's numbers in
    the columns beside ours, each rate's 95% interval in ``<column>_low`` / ``<column>_high``.
    """
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        config = OmegaConf.to_container(cfg, resolve=True)
        run.config.update(config, allow_val_change=True)
        run.summary.update(metrics)
        payload: dict[str, Any] = {
            name: wandb.Table(columns=columns, data=rows)
            for name, (columns, rows) in laid_out([Run(*run_key(config), metrics)]).items()
        }
        payload.update({key: wandb.Image(str(output_dir / file)) for key, file in FIGURES.items() if (output_dir / file).is_file()})
        if payload:
            run.log(payload)


def log_sweep(rows: list[dict], save_dir: Path, name: str, offline: bool = True) -> Path:
    """The α sweep (Fig. 6) as one W&B run: its table and a line plot of GCD accuracy against α.

    Offline by default, like the runs; returns the run's local folder.
    """
    import wandb

    columns = ["rectifier.alpha", "gcd.acc.adv", "gcd.acc.clean"]
    run = wandb.init(project="gcd-lightning", name=f"{name}-alpha-sweep", group=name, job_type="sweep",
                     dir=str(save_dir), mode="offline" if offline else "online", reinit="finish_previous")
    try:
        table = wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])
        run.log({
            "alpha_sweep/table": table,
            "alpha_sweep/gcd_acc_adv": wandb.plot.line(table, "rectifier.alpha", "gcd.acc.adv", title=f"GCD accuracy vs α, {name}"),
        })
        return Path(run.dir).parent
    finally:
        run.finish()
