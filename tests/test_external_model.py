"""``model=external``: the user's own classifier is tested, never trained, and defended by every later stage."""

from __future__ import annotations

import copy
from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from omegaconf import open_dict
from omegaconf.errors import MissingMandatoryValue

from conftest import compose_config, shrink
from gcd_lightning.models import SmallCNN, external_classifier, normalized
from gcd_lightning.pipeline import run
from gcd_lightning.pipeline.classifier_stage import check_external, run_classifier_stage
from gcd_lightning import load_defense
from gcd_lightning.pipeline.components import classifier_recipe
from gcd_lightning.pipeline.context import RunContext
from gcd_lightning.utils.hashing import file_hash, spec_hash

MEAN, STD = 0.5, 0.5  # the fixture model's own normalisation, not MNIST's (0.1307, 0.3081)


def mnist_datamodule(tmp_path: Path):
    datamodule = hydra.utils.instantiate(compose_config([], tmp_path).dataset.datamodule)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.fixture(scope="module")
def user_cnn(tmp_path_factory) -> nn.Module:
    """A narrow small CNN fit for 40 MNIST batches on pixels normalised by (MEAN, STD): the user's own model."""
    tmp = tmp_path_factory.mktemp("user_model")
    torch.manual_seed(0)
    net = SmallCNN(1, 10, 28, width=8, hidden=32)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _, (x, y) in zip(range(40), mnist_datamodule(tmp).train_dataloader()):
        optimizer.zero_grad()
        F.cross_entropy(net((x - MEAN) / STD), y).backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def scripted_cnn(user_cnn, tmp_path_factory) -> Path:
    """The user's model saved as TorchScript."""
    path = tmp_path_factory.mktemp("scripted") / "cnn.ts"
    torch.jit.save(torch.jit.script(user_cnn), str(path))
    return path


@pytest.fixture(scope="module")
def exported_cnn(user_cnn, tmp_path_factory) -> Path:
    """The user's model saved as a torch.export program, batch size dynamic."""
    path = tmp_path_factory.mktemp("exported") / "cnn.pt2"
    program = torch.export.export(user_cnn, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def load_user_model(path: Path) -> nn.Module:
    """The user's saved model as they would load it themselves."""
    return torch.jit.load(str(path)).eval() if path.suffix == ".ts" else torch.export.load(str(path)).module()


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    """An untrained torchvision resnet18 (10 classes) state dict."""
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pt"
    torch.save(torchvision.models.get_model("resnet18", num_classes=10).state_dict(), path)
    return path


def external_config(tmp_path: Path, *overrides: str):
    """A tiny FGSM run on the user's model: ``conftest.shrink``, then fewer images, epochs and draws."""
    cfg = shrink(compose_config(["+experiment=mnist_fgsm_untargeted", "model=external", *overrides], tmp_path))
    with open_dict(cfg):
        cfg.trainer.limit_test_batches = 4
        cfg.adversarial.n_train, cfg.adversarial.n_test = 100, 50
        cfg.detector.max_epochs, cfg.rectifier.max_epochs, cfg.rectifier.k = 2, 1, 2
        cfg.evaluate.n_clean, cfg.evaluate.mask_draws = 50, 1
    return cfg


def accuracy_on_tested_batches(path: Path, cfg, datamodule) -> float:
    """The saved model's accuracy on the test batches ``trainer.test`` sees (``limit_test_batches``)."""
    model = load_user_model(path)
    correct = total = 0
    with torch.no_grad():
        for _, (x, y) in zip(range(cfg.trainer.limit_test_batches), datamodule.test_dataloader()):
            correct += (model((x - MEAN) / STD).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


@pytest.mark.parametrize("saved", ["scripted_cnn", "exported_cnn"])
def test_a_saved_model_is_tested_not_trained_and_defended(saved, request, tmp_path):
    path = request.getfixturevalue(saved)
    torchscript = path.suffix == ".ts"
    overrides = ("stage=all", f"model.torchscript={str(torchscript).lower()}", f"model.weights_path={path}", f"model.mean=[{MEAN}]",
                 f"model.std=[{STD}]")
    cfg = external_config(tmp_path, *overrides)
    metrics = run(cfg)
    ctx = RunContext.build(copy.deepcopy(cfg))
    assert metrics["classifier.test_acc"] == pytest.approx(accuracy_on_tested_batches(path, cfg, ctx.datamodule), abs=1e-6)
    assert metrics["classifier.test_acc"] >= 0.8
    assert metrics["classifier.train_seconds"] == 0.0 and metrics["classifier.cached"] == 0.0
    assert not list((Path(cfg.paths.cache_dir) / "classifier").glob("*.pt"))  # no weights of a trained f
    for key in ("attack.test.success_rate", "detector.val_auc.gcd", "rectifier.val_acc", "gcd.acc.adv"):
        assert key in metrics, key
    assert metrics["attack.test.n"] == cfg.adversarial.n_test

    # a rerun reloads the user's f and hits every cache keyed by its weights
    model, classifier_id, again = run_classifier_stage(ctx)
    assert again["classifier.cached"] == 1.0 and again["classifier.test_acc"] == metrics["classifier.test_acc"]
    assert classifier_id == spec_hash({"weights": file_hash(path), "mean": [MEAN], "std": [STD]})
    assert classifier_recipe(ctx) == {
        "net": {"_target_": "gcd_lightning.models.external_classifier", "arch": None, "weights_path": str(path),
                "num_classes": 10, "torchscript": torchscript},
        "mean": [MEAN],
        "std": [STD],
        "external": True,
    }
    assert not model.training
    x, _ = next(iter(ctx.datamodule.test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(model(x), load_user_model(path)((x - MEAN) / STD))

    # the exported defense does not copy the user's f: it is rebuilt from the user's file, or passed in
    folder = Path(cfg.paths.output_dir) / "defense"
    assert not (folder / "classifier.pt").exists()
    defense = load_defense(folder)
    passed = load_defense(folder, classifier=external_classifier(None, str(path), 10, torchscript=torchscript))
    assert torch.equal(defense.predict(x[:8]).label, passed.predict(x[:8]).label)
    with pytest.raises(ValueError, match="differ from those the defense"):
        load_defense(folder, classifier=SmallCNN(1, 10, 28, width=4, hidden=8))


def test_model_that_does_not_fit_the_data_fails_clearly(resnet18_weights, tmp_path):
    cfg = external_config(tmp_path, "stage=classifier", "model.arch=resnet18", f"model.weights_path={resnet18_weights}")
    with pytest.raises(ValueError, match=r"model=external: the model fails on mnist test images of shape \(2, 1, 28, 28\)"):
        run(cfg)
    ctx = RunContext.build(cfg)
    with pytest.raises(ValueError, match=r"expected \(2, 10\) logits; give a model with dataset.num_classes=10"):
        check_external(ctx, normalized(SmallCNN(1, 5, 28, width=4, hidden=8), [MEAN], [STD]))


def test_torchvision_state_dict_loads_into_its_architecture(resnet18_weights):
    net = external_classifier("resnet18", str(resnet18_weights), num_classes=10)
    saved = torch.load(resnet18_weights, weights_only=True)
    assert all(torch.equal(value, saved[key]) for key, value in net.state_dict().items())


@pytest.mark.parametrize(
    ("arch", "torchscript", "error", "match"),
    [
        (None, False, ValueError, r"model.arch=None and model.torchscript=False: set exactly one"),
        ("resnet18", True, ValueError, r"model.arch='resnet18' and model.torchscript=True: set exactly one"),
        ("resnet_18", False, ValueError, r"model.arch='resnet_18' is not a torchvision model; .*list_models\(\)"),
        ("resnet34", False, RuntimeError, r"model.weights_path=.* \(for model.arch=resnet34, .* another architecture"),
        (None, True, RuntimeError, r"model.weights_path=.* is not a TorchScript file .*torch.jit.save"),
    ],
)
def test_external_classifier_errors_name_the_key_and_the_fix(resnet18_weights, arch, torchscript, error, match):
    with pytest.raises(error, match=match):
        external_classifier(arch, str(resnet18_weights), num_classes=10, torchscript=torchscript)


def test_missing_or_foreign_weights_file_errors(resnet18_weights, scripted_cnn, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.weights_path=.*: no file at .*; set it to your model's state dict"):
        external_classifier("resnet18", str(tmp_path / "absent.pt"), num_classes=10)
    with pytest.raises(RuntimeError, match=r"model.weights_path=.* is not a state dict .*model.torchscript=true"):
        external_classifier("resnet18", str(scripted_cnn), num_classes=10)
    with pytest.raises(RuntimeError, match=r"of another shape 2 \(e.g. fc.weight, fc.bias\)"):
        external_classifier("resnet18", str(resnet18_weights), num_classes=5)


def test_external_config_needs_weights_and_defaults_to_the_data_sets_normalisation(tmp_path):
    cfg = compose_config(["model=external"], tmp_path)
    assert cfg.model.mean == cfg.dataset.mean and cfg.model.std == cfg.dataset.std and cfg.classifier.max_epochs == 0
    with pytest.raises(MissingMandatoryValue, match="model.weights_path"):
        cfg.model.weights_path


def test_an_exported_program_loads_its_tensors_only(tmp_path):
    from gcd_lightning.models.external import weights_only_loads

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"x": Payload()}, tmp_path / "payload.pt")
    with weights_only_loads(), pytest.raises(Exception):
        torch.load(tmp_path / "payload.pt", weights_only=False)  # what torch.export.load falls back to
    assert not marker.exists()
    (tmp_path / "bad.pt2").write_bytes(b"not a program")
    with pytest.raises(RuntimeError, match=r"model.weights_path=.*bad.pt2 is not a torch.export program of tensors only"):
        external_classifier(None, str(tmp_path / "bad.pt2"), num_classes=10)
