"""Opening a defense folder runs no code of its own: every ``_target_`` of ``defense.yaml`` is checked first."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import torch
import yaml

from gcd_lightning import load_defense
from gcd_lightning.defense import GCD, GuidedMasking, SubDetector
from gcd_lightning.defense.export import DESCRIPTION, export_defense
from gcd_lightning.defense.trust import UntrustedCode, check_trusted
from gcd_lightning.models import SmallCNN, normalized
from gcd_lightning.predict import main as predict_main

MEAN, STD = [0.1307], [0.3081]
NET = {"_target_": "gcd_lightning.models.SmallCNN", "in_channels": 1, "num_classes": 10, "image_size": 28, "width": 4, "hidden": 8}
BODY = {"_target_": "gcd_lightning.models.SmallCNN", "in_channels": 1, "num_classes": 2, "image_size": 28, "width": 4, "hidden": 8}


def tiny_defense(folder):
    """An untrained GCD of 4-channel SmallCNNs, exported as a run exports its defense."""
    torch.manual_seed(0)
    f = normalized(SmallCNN(**{k: v for k, v in NET.items() if k != "_target_"}), MEAN, STD).eval()
    body = {k: v for k, v in BODY.items() if k != "_target_"}
    detectors = [SubDetector(SmallCNN(**body), "org"), SubDetector(SmallCNN(**body), "is", classifier=f)]
    rectifier = GuidedMasking(normalized(SmallCNN(**{k: v for k, v in NET.items() if k != "_target_"}), MEAN, STD), 0.5, 0.5)
    gcd = GCD(f, detectors, rectifier, input_shape=(1, 28, 28))
    specs = {name: {"_target_": "gcd_lightning.defense.SubDetector", "kind": name, "body": BODY} for name in ("org", "is")}
    return export_defense(gcd, folder, classifier_net=NET, external=False, rectifier_net=NET, detector_specs=specs,
                          rectifier_spec={"_target_": "gcd_lightning.defense.GuidedMasking", "alpha": 0.5, "p": 0.5},
                          mean=MEAN, std=STD, num_classes=10, input_shape=(1, 28, 28), dataset="mnist")


def edit(folder, change):
    path = folder / DESCRIPTION
    description = yaml.safe_load(path.read_text())
    change(description)
    path.write_text(yaml.safe_dump(description, sort_keys=False))


class Payload:
    """Unpickling it writes a marker file: the proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def folder(tmp_path):
    return tiny_defense(tmp_path / "defense")


def test_a_clean_folder_loads_and_answers(folder):
    defense = load_defense(folder)
    assert defense.predict(torch.rand(2, 1, 28, 28)).label.shape == (2,)


def test_a_torch_load_payload_is_refused_before_it_runs(folder, tmp_path):
    marker = tmp_path / "ran"
    with open(folder / "payload.pkl", "wb") as file:
        pickle.dump(Payload(marker), file)
    edit(folder, lambda d: d["rectifier"]["spec"].update(
        extra={"_target_": "torch.load", "f": str(folder / "payload.pkl"), "weights_only": False}))
    with pytest.raises(UntrustedCode, match=r"rectifier\.spec\.extra\._target_ = 'torch\.load'.*trust_code=True"):
        load_defense(folder)
    with pytest.raises(SystemExit, match=r"predict: .*rectifier\.spec\.extra\._target_ = 'torch\.load'"):
        predict_main([f"defense={folder}", f"inputs={tmp_path}", f"out={tmp_path / 'a.csv'}"])
    assert not marker.exists()
    # the check is what stopped it: trusted, the payload runs (and the load then fails on the unknown argument)
    with pytest.raises(Exception):
        load_defense(folder, trust_code=True)
    assert marker.exists()


@pytest.mark.parametrize("target", [
    "os.system",                                     # not ours: refused before import
    "antigravity.fly",                               # a module whose import does something
    "gcd_lightning.models.external.torch.load",      # ours by prefix, torch.load by attribute
    "gcd_lightning.utils.files.save_text",           # ours, but a function that writes files
    "gcd_lightning.models.NoSuchNet",
    "torchvision.models.resnet18.__globals__",
])
def test_an_unknown_class_is_refused_with_one_line_naming_the_key(folder, target):
    edit(folder, lambda d: d["classifier"]["net"].update(_target_=target))
    with pytest.raises(UntrustedCode) as info:
        load_defense(folder)
    message = str(info.value)
    assert "\n" not in message and "classifier.net._target_" in message and repr(target) in message
    assert "antigravity" not in sys.modules


def test_torchvision_builders_are_allowed_without_downloaded_weights():
    check_trusted({"net": {"_target_": "torchvision.models.resnet18", "num_classes": 10}}, "x")
    with pytest.raises(UntrustedCode, match=r"net\._target_ = .*weights='IMAGENET1K_V1'"):
        check_trusted({"net": {"_target_": "torchvision.models.resnet18", "weights": "IMAGENET1K_V1"}}, "x")
    with pytest.raises(UntrustedCode, match=r"items\[1\]\._target_ = 'builtins\.eval'"):
        check_trusted({"items": [{"_target_": "gcd_lightning.models.SmallCNN"}, {"_target_": "builtins.eval"}]}, "x")


def test_a_users_own_class_loads_only_with_trust_code(folder, tmp_path, monkeypatch):
    (tmp_path / "my_rectifier.py").write_text(
        "from gcd_lightning.defense import GuidedMasking\n\nclass MyMasking(GuidedMasking):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    edit(folder, lambda d: d["rectifier"]["spec"].update(_target_="my_rectifier.MyMasking"))
    with pytest.raises(UntrustedCode, match="'my_rectifier.MyMasking'"):
        load_defense(folder)
    assert type(load_defense(folder, trust_code=True).rectifier).__name__ == "MyMasking"


def test_predict_cli_takes_trust_code(folder, tmp_path):
    torch.save(torch.rand(3, 1, 28, 28), tmp_path / "x.pt")
    out = tmp_path / "a.csv"
    done = subprocess.run([sys.executable, "-m", "gcd_lightning.predict", f"defense={folder}", f"inputs={tmp_path / 'x.pt'}",
                           f"out={out}", "progress=false", "trust_code=false"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(out.read_text().splitlines()) == 4
    with pytest.raises(SystemExit, match="trust_code=maybe must be true or false"):
        predict_main([f"defense={folder}", f"inputs={tmp_path / 'x.pt'}", f"out={out}", "trust_code=maybe"])


def test_a_users_own_rectifier_with_state_of_its_own_is_exported_whole(tmp_path, monkeypatch):
    """Export stores the whole rectifier (its network and its own parameters), not only f_rec's inner network."""
    (tmp_path / "my_tempered.py").write_text(
        "import torch\nfrom torch import nn\nfrom gcd_lightning.defense.base import Rectifier\n\n"
        "class Tempered(Rectifier):\n"
        "    def __init__(self, network):\n"
        "        super().__init__()\n        self.network = network\n        self.temperature = nn.Parameter(torch.tensor(1.0))\n\n"
        "    def forward(self, x, saliency=None):\n        return self.network(x) / self.temperature\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from my_tempered import Tempered

    torch.manual_seed(0)
    f = normalized(SmallCNN(**{k: v for k, v in NET.items() if k != "_target_"}), MEAN, STD).eval()
    body = {k: v for k, v in BODY.items() if k != "_target_"}
    rectifier = Tempered(normalized(SmallCNN(**{k: v for k, v in NET.items() if k != "_target_"}), MEAN, STD))
    with torch.no_grad():
        rectifier.temperature.fill_(3.0)  # trained state of its own
    gcd = GCD(f, [SubDetector(SmallCNN(**body), "org"), SubDetector(SmallCNN(**body), "is", classifier=f)], rectifier,
              input_shape=(1, 28, 28)).eval()
    specs = {name: {"_target_": "gcd_lightning.defense.SubDetector", "kind": name, "body": BODY} for name in ("org", "is")}
    folder = export_defense(gcd, tmp_path / "defense", classifier_net=NET, external=False, rectifier_net=NET,
                            detector_specs=specs, rectifier_spec={"_target_": "my_tempered.Tempered"}, mean=MEAN, std=STD,
                            num_classes=10, input_shape=(1, 28, 28), dataset="mnist")
    with pytest.raises(UntrustedCode, match="'my_tempered.Tempered'"):
        load_defense(folder)
    loaded = load_defense(folder, trust_code=True)
    assert loaded.rectifier.temperature.item() == 3.0
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(loaded.rectifier(x), gcd.rectifier(x))


def test_a_folder_of_the_first_format_still_loads(folder):
    """Folders exported before the whole rectifier was stored hold only f_rec's inner network in rectifier.pt."""
    expected = load_defense(folder)
    state = torch.load(folder / "rectifier.pt", weights_only=True)
    torch.save({key.removeprefix("network.1."): value for key, value in state.items() if key.startswith("network.1.")},
               folder / "rectifier.pt")
    edit(folder, lambda d: d.update(format="gcd-lightning-defense/1"))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(load_defense(folder).rectifier.network(x), expected.rectifier.network(x))
