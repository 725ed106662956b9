"""A small CNN: the CPU default for the classifier and for the detectors."""

from __future__ import annotations

from torch import nn


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU-pool blocks and a two-layer head.

    Args:
        in_channels: image channels (1 for MNIST, 3 for colour).
        num_classes: number of outputs (logits).
        image_size: side of the square input; any size divisible by 4.
        width: channels of the first block (the second has twice as many).
        hidden: units of the hidden fully connected layer.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 28, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"SmallCNN: image_size must be divisible by 4, got {image_size}")
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width), ("hidden", hidden)):
            if value < 1:
                raise ValueError(f"SmallCNN: {name} must be at least 1, got {value}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.head(self.features(x))
