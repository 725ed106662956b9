"""torchvision ResNets from local weights: ResNet-152, the paper's base model for the ImageNet
subset, and Wide ResNet-50-2, the architecture of its ImageNet rectifier (paper 4.3)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn


def resnet152(num_classes: int, weights_path: str | None = None) -> nn.Module:
    """torchvision's ResNet-152 (``torchvision_resnet``); weights e.g. ``resnet152-f82ba261.pth``."""
    return torchvision_resnet("resnet152", num_classes, weights_path)


def wide_resnet50_2(num_classes: int, weights_path: str | None = None) -> nn.Module:
    """torchvision's Wide ResNet-50-2 (``torchvision_resnet``); weights e.g. ``wide_resnet50_2-95faca4d.pth``."""
    return torchvision_resnet("wide_resnet50_2", num_classes, weights_path)


def torchvision_resnet(arch: str, num_classes: int, weights_path: str | None = None) -> nn.Module:
    """The torchvision ResNet ``arch``, optionally initialised from a local ImageNet state dict.

    Args:
        arch: a ResNet builder of ``torchvision.models`` (``resnet152``, ``wide_resnet50_2``, …).
        num_classes: outputs of the final layer; when it differs from the 1000 ImageNet classes
            the pretrained head is replaced by a new linear layer (to be fine-tuned).
        weights_path: a local ``.pth`` state dict of that architecture (torchvision's model zoo
            file), or ``None`` for random initialisation. Nothing is downloaded.
    """
    net = getattr(torchvision.models, arch)(weights=None)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{arch} weights not found at {path.resolve()}; download torchvision's {arch} "
                "ImageNet weights on a connected machine and set weights_path to the file "
                "(model.net.weights_path, or rectifier.net.weights_path for the rectifier), or set it to null "
                "to train from scratch"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(f"{arch} weights at {path} could not be read ({err}); the file is corrupt or not a state dict") from err
        load_matching(net, state, f"{arch} weights at {path}")
    if num_classes != net.fc.out_features:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net


def load_matching(net: nn.Module, state: dict, what: str) -> None:
    """``net.load_state_dict(state)``, or an error that says in a few words how the two differ."""
    mine = net.state_dict()
    missing = [key for key in mine if key not in state]
    unexpected = [key for key in state if key not in mine]
    resized = [key for key in mine if key in state and state[key].shape != mine[key].shape]
    if missing or unexpected or resized:
        def some(keys: list[str]) -> str:
            return f"{len(keys)} (e.g. {', '.join(keys[:3])})" if keys else "0"

        raise RuntimeError(
            f"{what} are of another architecture: missing {some(missing)}, unexpected {some(unexpected)}, "
            f"of another shape {some(resized)}; give the state dict of the same torchvision model"
        )
    net.load_state_dict(state)
