"""ResNet-152 (He et al. 2016), the paper's base model for the ImageNet subset."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn


def resnet152(num_classes: int, weights_path: str | None = None) -> nn.Module:
    """torchvision's ResNet-152, optionally initialised from a local ImageNet state dict.

    Args:
        num_classes: outputs of the final layer; when it differs from the 1000 ImageNet classes
            the pretrained head is replaced by a new linear layer (to be fine-tuned).
        weights_path: a local ``.pth`` state dict of ``torchvision.models.resnet152`` (for
            instance ``resnet152-f82ba261.pth`` from torchvision's model zoo), or ``None`` for
            random initialisation. Nothing is downloaded.
    """
    net = torchvision.models.resnet152(weights=None)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"ResNet-152 weights not found at {path.resolve()}; download torchvision's resnet152 "
                "ImageNet weights on a connected machine and set model.net.weights_path to the file, "
                "or set it to null to train from scratch"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RuntimeError(f"ResNet-152 weights at {path} could not be read ({err}); the file is corrupt or not a state dict") from err
        net.load_state_dict(state)
    if num_classes != net.fc.out_features:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    return net
