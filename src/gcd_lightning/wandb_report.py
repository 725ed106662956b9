"""A run's results on a W&B dashboard: config, summary metrics, the paper's table rows and figures.

Runs are named ``<experiment>-<threat>`` and grouped ``<dataset>-<attack>`` (``conf/logger/wandb.yaml``),
so a workspace shows AUC and success rate per attack side by side. Offline by default: the files
land in ``<output_dir>/wandb/offline-run-*`` and ``wandb sync`` uploads them later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gcd_lightning.aggregate import TABLE3_RATES, with_wilson
from gcd_lightning.paper import TABLE2, TABLE3, TABLE5

FIGURES = {"figures/roc": "roc.png", "figures/input_sensitivity": "sensitivity.png"}


def table_rows(metrics: dict[str, float], dataset: str, attack: str) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """The paper's tables as (columns, rows) for this run: ours and the paper's numbers where known.

    Table 5 adds the robust accuracy over all examined test images (``*.robust_acc.all``) where the
    run has it. Table 3 has the aggregate's rates (``aggregate.TABLE3_RATES``: DET_org, GCD's earlier
    attacks and the end-to-end ones besides the paper's three), each followed by its 95% interval,
    ``<column>_low`` / ``<column>_high``; ``None`` where the run lacks a metric.
    """
    m = metrics
    tables: dict[str, tuple[list[str], list[list[Any]]]] = {}
    if "detector.auc.gcd" in m:
        paper2 = TABLE2.get(dataset, {}).get(attack, (None,) * 4)
        tables["table2"] = (
            ["source", "dataset", "attack", "F", "DET_org", "DET_IS", "GCD"],
            [
                ["ours", dataset, attack, m["base.acc.adv"], m["detector.auc.org"], m["detector.auc.is"], m["detector.auc.gcd"]],
                ["paper", dataset, attack, *paper2],
            ],
        )
        clean5 = TABLE5.get(dataset, {}).get("clean", (None, None))
        adv5 = TABLE5.get(dataset, {}).get(attack, (None, None))
        ours5 = [["ours", dataset, "clean", m["gcd.acc.clean"], m["base.acc.clean"]],
                 ["ours", dataset, attack, m["gcd.acc.adv"], m["base.acc.adv"]]]
        if "gcd.robust_acc.all" in m or "base.robust_acc.all" in m:  # runs from before them have neither
            ours5.append(["ours", dataset, f"{attack}, all examined", m.get("gcd.robust_acc.all"), m.get("base.robust_acc.all")])
        tables["table5"] = (
            ["source", "dataset", "images", "GCD", "F"],
            [*ours5, ["paper", dataset, "clean", *clean5], ["paper", dataset, attack, *adv5]],
        )
    if "whitebox.success.gcd" in m:
        paper3 = TABLE3.get(dataset, {}).get(attack)
        filled = with_wilson(m)
        columns, ours, theirs = ["source", "dataset", "attack"], ["ours", dataset, attack], ["paper", dataset, attack]
        for rate in TABLE3_RATES:
            columns += [rate.column, f"{rate.column}_low", f"{rate.column}_high"]
            ours += [filled.get(rate.key), filled.get(f"{rate.interval}.low"), filled.get(f"{rate.interval}.high")]
            theirs += [None if paper3 is None or rate.paper is None else paper3[rate.paper], None, None]
        tables["table3"] = (columns, [ours, theirs])
    return tables


def log_run(loggers: list, cfg: DictConfig, metrics: dict[str, float], output_dir: Path) -> None:
    """Log config, summary, tables and figures to every ``WandbLogger`` among ``loggers``."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
        run.summary.update(metrics)
        payload: dict[str, Any] = {
            name: wandb.Table(columns=columns, data=rows)
            for name, (columns, rows) in table_rows(metrics, cfg.dataset.name, cfg.attack.name).items()
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
