"""advertorch 0.2.3 imports and runs on this PyTorch through the compatibility shim."""

from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from gcd_lightning.attacks import advertorch_compat
from gcd_lightning.attacks.advertorch_compat import install_zero_gradients, zero_gradients


def test_shim_provides_zero_gradients_and_advertorch_attacks():
    gradcheck_module = importlib.import_module("torch.autograd.gradcheck")
    assert callable(gradcheck_module.zero_gradients)
    assert install_zero_gradients() is False  # already present: a second call changes nothing
    for name in ("GradientSignAttack", "LinfPGDAttack", "CarliniWagnerL2Attack", "DDNL2Attack"):
        cls = getattr(advertorch_compat, name)
        assert cls.__module__.startswith("advertorch.attacks.")
    assert advertorch_compat.import_advertorch() is importlib.import_module("advertorch.attacks")


def test_zero_gradients_zeroes_tensors_and_nested_iterables():
    a = torch.ones(3, requires_grad=True)
    b = torch.ones(2, 2, requires_grad=True)
    untouched = torch.ones(2, requires_grad=True)
    (a.sum() * 2 + (b * 3).sum()).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    zero_gradients([a, (b, untouched)])
    assert torch.equal(a.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(2, 2))
    assert untouched.grad is None


def test_zero_gradients_detaches_a_grad_with_history():
    x = torch.ones(2, requires_grad=True)
    (x**3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    grad = x.grad
    zero_gradients(x)
    assert x.grad is grad  # in place
    assert not x.grad.requires_grad and torch.equal(x.grad, torch.zeros(2))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.rand(6, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize(
    "make",
    [
        lambda m: advertorch_compat.GradientSignAttack(m, eps=0.1),
        lambda m: advertorch_compat.LinfPGDAttack(m, eps=0.1, nb_iter=3, eps_iter=0.05),
        lambda m: advertorch_compat.CarliniWagnerL2Attack(m, 3, binary_search_steps=2, max_iterations=5),
        lambda m: advertorch_compat.DDNL2Attack(m, nb_iter=5),
    ],
    ids=["fgsm", "pgd", "cw", "ddn"],
)
def test_wrapped_advertorch_attacks_run(make, tiny):
    model, x, y = tiny
    x_adv = make(model).perturb(x, y)
    assert x_adv.shape == x.shape and torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_advertorch_fab_gradients_are_right_with_the_patched_zero_gradients(tiny):
    """FAB zeroes the input gradient between its per-class backward passes with ``zero_gradients``;
    without a working patch the class gradients would accumulate."""
    model, x, y = tiny
    fab = importlib.import_module("advertorch.attacks").L2FABAttack(model, n_iter=5)
    fab.device = x.device
    _, dg = fab.get_diff_logits_grads_batch(x, y)
    x_req = x.clone().requires_grad_(True)
    logits = model(x_req)
    per_class = torch.stack(
        [torch.autograd.grad(logits[:, k].sum(), x_req, retain_graph=True)[0] for k in range(logits.shape[1])], 1
    )
    expected = per_class - per_class[torch.arange(len(y)), y].unsqueeze(1)
    torch.testing.assert_close(dg, expected)
    assert torch.isfinite(fab.perturb(x, y)).all()
