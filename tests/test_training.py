"""Early-stopping choice of ``fit_best``: the best epoch by the monitored metric, ties by validation loss."""

from types import SimpleNamespace

import torch
from torch import nn

from gcd_lightning.pipeline.training import KeepBest


def test_keep_best_breaks_ties_of_a_saturated_metric_by_lower_validation_loss():
    keep = KeepBest("val/auc")
    module = nn.Linear(1, 1, bias=False)
    epochs = [(0.9, 0.9), (1.0, 0.7), (1.0, 0.1), (1.0, 0.4), (0.95, 0.01)]
    for weight, (auc, loss) in enumerate(epochs):
        module.weight.data.fill_(float(weight))
        trainer = SimpleNamespace(sanity_checking=False, callback_metrics={"val/auc": torch.tensor(auc), "val/loss": torch.tensor(loss)})
        keep.on_validation_epoch_end(trainer, module)
    assert keep.best == 1.0
    assert keep.state["weight"].item() == 2.0  # the AUC-1.0 epoch with the lowest loss
