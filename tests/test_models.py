"""Architectures: shapes for each data set's geometry, normalisation inside, local ResNet weights."""

from __future__ import annotations

import pytest
import torch

from gcd_lightning.models import Normalize, SmallCNN, VGG11BN, normalized, resnet152, wide_resnet50_2


@pytest.mark.parametrize("net_cls", [SmallCNN, VGG11BN])
@pytest.mark.parametrize(("channels", "side"), [(1, 28), (3, 32)])
def test_small_image_models_give_logits(net_cls, channels, side):
    net = net_cls(in_channels=channels, num_classes=10, image_size=side)
    assert net(torch.rand(2, channels, side, side)).shape == (2, 10)


def test_normalize_is_inside_the_model_and_checks_channels():
    model = normalized(torch.nn.Identity(), [0.5], [0.25])
    assert torch.allclose(model(torch.ones(1, 1, 2, 2)), torch.full((1, 1, 2, 2), 2.0))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        model(torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="std must be positive"):
        Normalize([0.5], [0.0])


@pytest.mark.parametrize("build", [resnet152, wide_resnet50_2])
def test_resnets_load_local_weights_and_replace_the_head(tmp_path, build):
    reference = build(num_classes=1000)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    net = build(num_classes=20, weights_path=str(path))
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert torch.equal(net.layer4[0].conv2.weight, reference.layer4[0].conv2.weight)
    assert net.fc.out_features == 20


def test_resnet_missing_corrupt_or_foreign_weights_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.net.weights_path"):
        resnet152(num_classes=20, weights_path=str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="corrupt"):
        resnet152(num_classes=20, weights_path=str(bad))
    foreign = tmp_path / "foreign.pth"
    torch.save({"fc.weight": torch.zeros(1000, 2048)}, foreign)
    with pytest.raises(RuntimeError, match="wide_resnet50_2 .*another architecture"):
        wide_resnet50_2(num_classes=20, weights_path=str(foreign))
