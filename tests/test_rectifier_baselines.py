"""Table 5's rectifier baselines: TVM's reconstruction, adversarial-training inputs and the recipes' checks."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from gcd_lightning.attacks import PGD
from gcd_lightning.defense.baselines import (
    AdversarialExamples,
    Preprocessed,
    RobustRecipe,
    TotalVariationMinimization,
    total_variation,
    tvm_reconstruct,
)
from gcd_lightning.defense.baselines.tvm import tvm_objective
from gcd_lightning.models import SmallCNN, normalized


def noisy_digits(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Smooth blobs plus salt-and-pepper-like noise: high total variation, values in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(-1, 1, 28)
    blob = torch.exp(-(grid.view(1, -1) ** 2 + grid.view(-1, 1) ** 2) * 3)
    return (blob + 0.3 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1)


def test_total_variation_of_a_step_edge_is_the_norm_of_its_column_jump():
    z = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])  # rows equal, one column jump of (1, 1)
    assert total_variation(z, p=2).item() == pytest.approx(2**0.5, abs=1e-5)
    assert total_variation(z, p=1).item() == pytest.approx(2.0)
    assert total_variation(torch.full((2, 3, 5, 5), 0.4)).max().item() < 1e-4  # constant images: none


def test_tvm_lowers_total_variation_and_its_objective_and_stays_in_range():
    x = noisy_digits()
    z = tvm_reconstruct(x, keep_prob=0.3, weight=0.5, steps=10, generator=torch.Generator().manual_seed(1))
    assert z.shape == x.shape and z.min() >= 0 and z.max() <= 1
    assert (total_variation(z) < 0.5 * total_variation(x)).all()
    keep = (torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.3).float()  # the same masks
    assert (tvm_objective(z, x, keep, 0.5) < tvm_objective(x, x, keep, 0.5)).all()


def test_tvm_keeping_every_pixel_without_variation_weight_returns_the_image():
    x = noisy_digits(2)
    assert torch.allclose(tvm_reconstruct(x, keep_prob=1.0, weight=0.0, steps=5), x, atol=1e-5)


def test_tvm_is_reproducible_with_a_generator_and_refuses_bad_settings():
    x = noisy_digits(2)
    first, second = (TotalVariationMinimization(generator=torch.Generator().manual_seed(3))(x) for _ in range(2))
    assert torch.equal(first, second)
    for bad in ({"keep_prob": 1.5}, {"steps": 0}, {"weight": -1.0}, {"p": 3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TotalVariationMinimization(**bad)


def test_adversarial_examples_stay_in_budget_flip_labels_and_restore_train_mode():
    torch.manual_seed(0)
    net = normalized(SmallCNN(in_channels=1, num_classes=10, image_size=28, width=8, hidden=32), [0.5], [0.5])
    x, y = noisy_digits(8), torch.arange(8) % 10
    with torch.no_grad():
        y = net.eval()(x).argmax(dim=1)  # the network's own labels: the attack must move them
    transform = AdversarialExamples(functools.partial(PGD, eps=0.3, nb_iter=20, eps_iter=0.05))
    net.train()
    x_adv = transform(net, x, y)
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert (x_adv - x).abs().max() <= 0.3 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (net.eval()(x_adv).argmax(dim=1) != y).float().mean() >= 0.5


def test_recipe_checks_and_builds_its_defense():
    with pytest.raises(ValueError, match="needs an optimizer"):
        RobustRecipe(preprocess=TotalVariationMinimization(), max_epochs=1)
    with pytest.raises(ValueError, match="an attack or a preprocess"):
        RobustRecipe(max_epochs=1, optimizer=functools.partial(torch.optim.Adam))
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    defense = RobustRecipe(preprocess=TotalVariationMinimization()).defense(net)
    assert isinstance(defense, Preprocessed) and defense(noisy_digits(3)).shape == (3, 10)
