"""Contract of every attack of the registry, on a tiny CNN trained on synthetic 8x8 shapes."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from gcd_lightning.attacks import ATTACKS, CW, DDN, FGSM, PGD, Attack, DeepFool, Norm, random_targets, run_attack
from gcd_lightning.attacks.advertorch_compat import DDNL2Attack
from gcd_lightning.attacks.ddn import cosine_step_sizes

NUM_CLASSES = 3
SIDE = 8
LINF_EPS = 0.3
CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "attack"


def make_shapes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, 8, 8) in [0, 1] of a horizontal bar (0), a vertical bar (1) or a 3x3 box (2)."""
    y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
    x = 0.2 * torch.rand(n, 1, SIDE, SIDE, generator=generator)
    pos = torch.randint(1, SIDE - 3, (n, 2), generator=generator)
    level = 0.7 + 0.3 * torch.rand(n, generator=generator)
    for i in range(n):
        r, c = pos[i].tolist()
        if y[i] == 0:
            x[i, 0, r, 1:-1] = level[i]
        elif y[i] == 1:
            x[i, 0, 1:-1, c] = level[i]
        else:
            x[i, 0, r : r + 3, c : c + 3] = level[i]
    return x, y


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    """A trained tiny CNN (eval mode) and 60 test images it classifies correctly, with targets."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x_train, y_train = make_shapes(600, gen)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, NUM_CLASSES),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        idx = torch.randint(0, len(x_train), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    model.eval()
    x_test, y_test = make_shapes(100, gen)
    with torch.no_grad():
        correct = model(x_test).argmax(1) == y_test
    assert correct.float().mean() > 0.95, "the tiny model did not learn the shapes"
    x, y = x_test[correct][:60], y_test[correct][:60]
    return {"model": model, "x": x, "y": y, "target": random_targets(y, NUM_CLASSES, torch.Generator().manual_seed(1))}


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1)


# name -> (factory, minimum success rate on the tiny model)
FACTORIES = {
    "fgsm_untargeted": (lambda m: FGSM(m, eps=LINF_EPS), 0.5),
    "pgd_untargeted": (lambda m: PGD(m, eps=LINF_EPS, nb_iter=20, eps_iter=0.03), 0.95),
    "pgd_targeted": (lambda m: PGD(m, eps=LINF_EPS, nb_iter=20, eps_iter=0.03, targeted=True), 0.9),
    "deepfool_untargeted": (lambda m: DeepFool(m, num_classes=NUM_CLASSES), 0.98),
    "cw_untargeted": (
        lambda m: CW(m, NUM_CLASSES, learning_rate=0.05, binary_search_steps=4, max_iterations=50, initial_const=1.0),
        0.98,
    ),
    "cw_targeted": (
        lambda m: CW(m, NUM_CLASSES, learning_rate=0.05, binary_search_steps=4, max_iterations=50, initial_const=1.0, targeted=True),
        0.98,
    ),
    "ddn_untargeted": (lambda m: DDN(m, steps=50), 0.98),
    "ddn_targeted": (lambda m: DDN(m, steps=50, targeted=True), 0.98),
}


@pytest.fixture(scope="module")
def results(data) -> dict[str, tuple[Attack, torch.Tensor]]:
    """Each attack of FACTORIES run once on the test images (seeded)."""
    out = {}
    for name, (factory, _) in FACTORIES.items():
        attack = factory(data["model"])
        torch.manual_seed(0)
        target = data["target"] if attack.targeted else None
        out[name] = (attack, attack.perturb(data["x"], data["y"], target))
    return out


def success(data, attack: Attack, x_adv: torch.Tensor) -> torch.Tensor:
    pred = predict(data["model"], x_adv)
    return pred == data["target"] if attack.targeted else pred != data["y"]


def l2(x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x_adv - x).flatten(1).norm(dim=1)


def test_registry_maps_names_to_attack_classes():
    assert set(ATTACKS) == {"fgsm", "pgd", "deepfool", "cw", "ddn"}
    for cls in ATTACKS.values():
        assert issubclass(cls, Attack)
        assert isinstance(cls.norm, Norm)
        assert cls.__doc__ and "Examples::" in cls.__doc__


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_attack_configs_instantiate(path, data):
    root = OmegaConf.create({"dataset": {"num_classes": NUM_CLASSES, "linf_eps": LINF_EPS, "pgd_step": 0.01, "pgd_steps": 40}})
    root.attack = OmegaConf.load(path)
    attack = hydra.utils.instantiate(root.attack.attack)(model=data["model"])
    kind, targetedness = path.stem.split("_")
    assert root.attack.name == path.stem
    assert isinstance(attack, ATTACKS[kind])
    assert attack.targeted is (targetedness == "targeted") is root.attack.targeted
    assert attack.norm.value == root.attack.norm
    if attack.norm is Norm.LINF:
        assert attack.eps == pytest.approx(LINF_EPS)
    else:
        assert root.attack.eps is None


def test_config_set_is_complete():
    names = {p.stem for p in CONF_DIR.glob("*.yaml")}
    assert names == set(FACTORIES)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_output_contract(name, data, results):
    _, x_adv = results[name]
    x = data["x"]
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert torch.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("name", list(FACTORIES))
def test_success_rate(name, data, results):
    attack, x_adv = results[name]
    rate = success(data, attack, x_adv).float().mean().item()
    assert rate >= FACTORIES[name][1], f"{name}: success {rate:.2f}"


@pytest.mark.parametrize("name", ["fgsm_untargeted", "pgd_untargeted", "pgd_targeted"])
def test_linf_budget(name, data, results):
    attack, x_adv = results[name]
    assert (x_adv - data["x"]).abs().max() <= attack.eps + 1e-6


@pytest.mark.parametrize("name", ["pgd_targeted", "cw_targeted", "ddn_targeted"])
def test_targeted_attacks_reach_the_target(name, data, results):
    _, x_adv = results[name]
    pred = predict(data["model"], x_adv)
    assert (pred == data["target"]).float().mean() >= 0.9


def line_search_baseline(model, x, y, x_pool, y_pool, steps: int = 20) -> torch.Tensor:
    """L2 of the smallest blend ``(1 - t) x + t x_o`` that leaves ``y``, towards the nearest
    correctly classified pool image ``x_o`` of another class (bisection on t)."""
    keep = predict(model, x_pool) == y_pool
    x_pool, y_pool = x_pool[keep], y_pool[keep]
    dist = torch.cdist(x.flatten(1), x_pool.flatten(1))
    dist[y[:, None] == y_pool[None, :]] = float("inf")
    other = x_pool[dist.argmin(1)]
    lo, hi = torch.zeros(len(x)), torch.ones(len(x))
    for _ in range(steps):
        mid = (lo + hi) / 2
        fooled = predict(model, x + mid.view(-1, 1, 1, 1) * (other - x)) != y
        hi = torch.where(fooled, mid, hi)
        lo = torch.where(fooled, lo, mid)
    return hi * (other - x).flatten(1).norm(dim=1)


@pytest.mark.parametrize("name", ["deepfool_untargeted", "ddn_untargeted", "cw_untargeted"])
def test_minimal_norm_attacks_beat_the_line_search_baseline(name, data, results):
    attack, x_adv = results[name]
    x_pool, y_pool = make_shapes(300, torch.Generator().manual_seed(2))
    baseline = line_search_baseline(data["model"], data["x"], data["y"], x_pool, y_pool)
    ok = success(data, attack, x_adv)
    ours = l2(x_adv, data["x"])[ok]
    assert ours.median() < baseline[ok].median()
    assert ours.median() < 0.5 * data["x"].flatten(1).norm(dim=1).median()


@pytest.mark.parametrize("targeted", [False, True])
def test_ddn_matches_advertorch_ddn(targeted, data, results):
    attack, x_adv = results["ddn_targeted" if targeted else "ddn_untargeted"]
    labels = data["target"] if targeted else data["y"]
    reference = DDNL2Attack(data["model"], nb_iter=attack.steps, targeted=targeted).perturb(data["x"], labels)
    ours_ok, ref_ok = success(data, attack, x_adv), success(data, attack, reference)
    assert ours_ok.float().mean() >= ref_ok.float().mean()
    both = ours_ok & ref_ok
    assert l2(x_adv, data["x"])[both].median() <= 1.05 * l2(reference, data["x"])[both].median()


def test_ddn_step_sizes_anneal_from_one_to_a_hundredth():
    sizes = cosine_step_sizes(100)
    assert sizes[0] == pytest.approx(1.0) and sizes[-1] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    assert cosine_step_sizes(1) == [1.0]


def test_ddn_quantises_to_8_bit_levels(data, results):
    _, x_adv = results["ddn_untargeted"]
    levels = x_adv * 255
    assert torch.allclose(levels, levels.round(), atol=1e-4)


def test_ddn_max_norm_bounds_the_output(data):
    x_adv = DDN(data["model"], steps=30, max_norm=0.5).perturb(data["x"], data["y"])
    norms = l2(x_adv, data["x"])
    assert norms.max() <= 0.5 + 1e-5
    moved = norms > 0
    assert (predict(data["model"], x_adv[moved]) != data["y"][moved]).all()


def test_ddn_survives_a_zero_gradient(data):
    flat = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, NUM_CLASSES)).eval()
    nn.init.zeros_(flat[1].weight)
    with torch.no_grad():
        flat[1].bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    y = torch.zeros(len(data["x"]), dtype=torch.long)
    torch.manual_seed(0)
    x_adv = DDN(flat, steps=5).perturb(data["x"], y)
    assert torch.isfinite(x_adv).all()
    assert torch.equal(x_adv, data["x"])  # nothing can fool a constant classifier


@pytest.mark.parametrize("name", ["pgd_untargeted", "ddn_untargeted", "cw_targeted", "deepfool_untargeted"])
def test_same_seed_same_output(name, data, results):
    attack, x_adv = results[name]
    target = data["target"] if attack.targeted else None
    torch.manual_seed(0)
    again = attack.perturb(data["x"], data["y"], target)
    assert torch.equal(again, x_adv)


def test_pgd_random_start_follows_the_seed(data, results):
    attack, x_adv = results["pgd_untargeted"]
    torch.manual_seed(1)
    assert not torch.equal(attack.perturb(data["x"], data["y"]), x_adv)


def test_deepfool_candidates(data):
    with pytest.raises(ValueError, match="untargeted"):
        DeepFool(data["model"], num_classes=NUM_CLASSES, targeted=True)
    with pytest.raises(ValueError, match="nb_candidate"):
        DeepFool(data["model"], num_classes=NUM_CLASSES, nb_candidate=1)
    x_adv = DeepFool(data["model"], num_classes=NUM_CLASSES, nb_candidate=2).perturb(data["x"], data["y"])
    assert (predict(data["model"], x_adv) != data["y"]).float().mean() >= 0.9


def test_deepfool_is_exact_on_an_affine_classifier():
    """For an affine classifier the first linearisation is exact (Section 3 of the paper): one step
    reaches the closest boundary, at distance min_k |f_k - f_y| / ||w_k - w_y||, times 1 + overshoot."""
    torch.manual_seed(0)
    affine = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, NUM_CLASSES)).eval()
    x = (0.5 + 0.05 * torch.randn(20, 1, SIDE, SIDE)).clamp(0, 1)
    y = predict(affine, x)
    with torch.no_grad():
        logits = affine(x)
    weight = affine[1].weight
    gaps = (logits - logits.gather(1, y[:, None])).abs()
    w_diff = (weight[None] - weight[y][:, None]).norm(dim=2)
    w_diff[torch.arange(len(y)), y] = 1.0
    gaps[torch.arange(len(y)), y] = float("inf")
    closest = (gaps / w_diff).min(1).values
    forwards = []
    affine.register_forward_hook(lambda module, args, out: forwards.append(len(args[0])))
    x_adv = DeepFool(affine, num_classes=NUM_CLASSES, overshoot=0.02).perturb(x, y)
    assert forwards == [len(x)] * 3  # the clean pass, the one step, the check that every example flipped
    assert 0 < x_adv.min() and x_adv.max() < 1  # no clipping, so the closed form applies
    assert (predict(affine, x_adv) != y).all()
    torch.testing.assert_close(l2(x_adv, x), 1.02 * (closest + 1e-4), rtol=1e-4, atol=1e-5)


def test_attacks_leave_the_model_untouched(data):
    model = data["model"]
    model.zero_grad(set_to_none=True)  # the advertorch reference runs outside our contract
    before = {k: v.clone() for k, v in model.state_dict().items()}
    DDN(model, steps=3).perturb(data["x"][:8], data["y"][:8])
    PGD(model, eps=0.1, nb_iter=3, eps_iter=0.05).perturb(data["x"][:8], data["y"][:8])
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_attack_runs_under_no_grad(data):
    with torch.no_grad():
        x_adv = DDN(data["model"], steps=10).perturb(data["x"][:8], data["y"][:8])
    assert (x_adv != data["x"][:8]).any()


def test_run_attack_batches_like_one_call(data):
    attack = DeepFool(data["model"], num_classes=NUM_CLASSES)
    whole = attack.perturb(data["x"], data["y"])
    batched = run_attack(attack, data["x"], data["y"], batch_size=7, progress=False)
    assert batched.device.type == "cpu"
    torch.testing.assert_close(batched, whole)
    targeted = DDN(data["model"], steps=5, targeted=True)
    out = run_attack(targeted, data["x"][:10], data["y"][:10], data["target"][:10], batch_size=4, progress=False)
    assert out.shape == data["x"][:10].shape
    with pytest.raises(ValueError, match="batch_size"):
        run_attack(attack, data["x"], data["y"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="labels"):
        run_attack(attack, data["x"], data["y"][:5], progress=False)


BAD_INPUTS = {
    "uint8": (lambda x, y, t: ((x * 255).to(torch.uint8), y, t), ValueError, "float"),
    "no batch dim": (lambda x, y, t: (x[0], y, t), ValueError, "shape"),
    "out of range": (lambda x, y, t: (x * 2 - 0.5, y, t), ValueError, r"\[0, 1\]"),
    "nan": (lambda x, y, t: (x.clone().index_fill_(0, torch.tensor([1]), float("nan")), y, t), ValueError, r"images \[1\] contain NaN"),
    "inf": (lambda x, y, t: (x.clone().index_fill_(0, torch.tensor([3]), float("inf")), y, t), ValueError, r"images \[3\] contain NaN or infinite"),
    "label shape": (lambda x, y, t: (x, y[:-1], t), ValueError, "labels"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("name", list(FACTORIES))
def test_bad_inputs_raise(name, case, data):
    attack = FACTORIES[name][0](data["model"])
    transform, error, message = BAD_INPUTS[case]
    target = data["target"][:4] if attack.targeted else None
    with pytest.raises(error, match=message):
        attack.perturb(*transform(data["x"][:4], data["y"][:4], target))


@pytest.mark.parametrize("name", list(FACTORIES))
def test_target_misuse_raises(name, data):
    attack = FACTORIES[name][0](data["model"])
    x, y = data["x"][:4], data["y"][:4]
    if attack.targeted:
        with pytest.raises(ValueError, match="target"):
            attack.perturb(x, y)
        with pytest.raises(ValueError, match="equals the true label"):
            attack.perturb(x, y, y.clone())
    else:
        with pytest.raises(ValueError, match="untargeted"):
            attack.perturb(x, y, data["target"][:4])


@pytest.mark.parametrize("name", list(FACTORIES))
def test_train_mode_and_inference_mode_raise(name, data):
    model = data["model"]
    attack = FACTORIES[name][0](model)
    target = data["target"][:4] if attack.targeted else None
    model.train()
    try:
        with pytest.raises(RuntimeError, match="train mode"):
            attack.perturb(data["x"][:4], data["y"][:4], target)
    finally:
        model.eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        attack.perturb(data["x"][:4], data["y"][:4], target)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m: FGSM(m, eps=5), r"FGSM: eps must lie in \(0, 1\], got 5"),
        (lambda m: FGSM(m, eps=float("nan")), r"FGSM: eps must lie in \(0, 1\], got nan"),
        (lambda m: PGD(m, eps=-1), r"PGD: eps must lie in \(0, 1\], got -1"),
        (lambda m: PGD(m, eps_iter=0), r"PGD: eps_iter must lie in \(0, 1\]"),
        (lambda m: PGD(m, nb_iter=0), r"PGD: nb_iter must lie in \[1, inf\)"),
        (lambda m: DeepFool(m, NUM_CLASSES, overshoot=float("nan")), "DeepFool: overshoot must lie in"),
        (lambda m: DeepFool(m, NUM_CLASSES, max_iter=0), "DeepFool: max_iter must lie in"),
        (lambda m: CW(m, NUM_CLASSES, learning_rate=-0.1), "CW: learning_rate must lie in"),
        (lambda m: CW(m, NUM_CLASSES, binary_search_steps=0), "CW: binary_search_steps must lie in"),
        (lambda m: CW(m, NUM_CLASSES, confidence=-1), "CW: confidence must lie in"),
        (lambda m: DDN(m, gamma=1.0), r"DDN: gamma must lie in \(0, 1\)"),
        (lambda m: DDN(m, max_norm=0), "DDN: max_norm must lie in"),
    ],
)
def test_attack_settings_are_checked_when_the_attack_is_built(build, message, data):
    with pytest.raises(ValueError, match=message):
        build(data["model"])
