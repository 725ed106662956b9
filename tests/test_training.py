"""Early-stopping choice of ``fit_best`` (the best epoch by the monitored metric, ties by validation loss) and a
training's wall time over an interruption."""

from types import SimpleNamespace

import torch
from torch import nn

from gcd_lightning.pipeline import training
from gcd_lightning.pipeline.training import ElapsedTime, KeepBest


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


def test_elapsed_time_adds_the_seconds_before_an_interruption(monkeypatch):
    clock = iter([100.0, 130.0, 500.0, 520.0])
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    interrupted = ElapsedTime()  # made at 100 s
    saved = interrupted.state_dict()  # the resume checkpoint, written at 130 s
    resumed = ElapsedTime()  # made at 500 s
    resumed.load_state_dict(saved)
    assert saved == {"seconds": 30.0} and resumed.seconds == 50.0  # 30 s before the interruption, 20 s after
