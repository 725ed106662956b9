"""VGG11 with batch norm (Simonyan & Zisserman 2015), the paper's base model for MNIST and CIFAR-10."""

from __future__ import annotations

from torch import nn

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11BN(nn.Module):
    """VGG11-BN adapted to small images (28×28×1 MNIST, 32×32×3 CIFAR-10).

    A max-pool is skipped once the feature map is down to 1×1 (28×28 inputs therefore keep
    four of the five pools), and the 4096-wide ImageNet head becomes a global average pool
    followed by one linear layer, as is usual for CIFAR-sized VGGs.

    Args:
        in_channels: image channels.
        num_classes: number of outputs (logits).
        image_size: side of the square input.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = in_channels, image_size
        for item in VGG11_LAYOUT:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
            channels = item
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x):
        return self.head(self.features(x))
