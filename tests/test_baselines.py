"""The baseline detectors: each separates an easy shift, is differentiable, round-trips, and computes its statistic right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from gcd_lightning.defense.baselines import FeatureSqueezing, FitData, Mahalanobis, SensitivityNorm, TurningWeakness
from gcd_lightning.defense.baselines.mahalanobis import class_gaussians, default_layers, mahalanobis_confidence
from gcd_lightning.defense.baselines.squeezing import median_filter, reduce_bit_depth
from gcd_lightning.defense.detector import SubDetector
from gcd_lightning.defense.sensitivity import logit_saliency
from gcd_lightning.models import SmallCNN, normalized
from gcd_lightning.scoring import threshold_at_fpr, tpr_at_fpr
from torch.utils.data import TensorDataset


class MeanBrightness(nn.Module):
    """Two classes by mean brightness, confident far from 0.5: logits ``k·(mean(x) − 0.5)·(1, −1)``."""

    def __init__(self, k: float = 40.0) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, x):
        m = x.flatten(1).mean(dim=1) - 0.5
        return self.k * torch.stack([m, -m], dim=1)


def auc(detector, clean, adv) -> float:
    scores = torch.cat([detector.scores(clean, 64), detector.scores(adv, 64)])
    truth = torch.cat([torch.zeros(len(clean)), torch.ones(len(adv))]).long()
    return binary_auroc(scores, truth).item()


def fit_data(clean, adv, train_images=None, labels=None) -> FitData:
    half = len(clean) // 2
    train_images = clean if train_images is None else train_images
    labels = torch.zeros(len(train_images), dtype=torch.long) if labels is None else labels
    return FitData(clean=clean[:half], adversarial=adv[:half], clean_val=clean[half:],
                   train=TensorDataset(train_images, labels), batch_size=64)


def brightness_images(n: int, near_boundary: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if near_boundary:  # mean ≈ 0.5: f is unsure, its loss gradient is large
        level = 0.5 + (torch.rand(n, generator=g) - 0.5) * 0.02
    else:  # mean 0.1 or 0.9: f is confident, its loss gradient is tiny
        level = torch.where(torch.rand(n, generator=g) < 0.5, 0.1, 0.9)
    return (level[:, None, None, None] + (torch.rand(n, 1, 8, 8, generator=g) - 0.5) * 0.1).clamp(0, 1)


def test_sensitivity_norm_flags_images_near_the_boundary_and_is_differentiable():
    f = MeanBrightness().eval()
    clean, adv = brightness_images(200, False, 0), brightness_images(200, True, 1)
    detector = SensitivityNorm(f, fpr=0.05)
    summary = detector.fit(fit_data(clean[:100], adv[:100]))
    assert auc(detector, clean[100:], adv[100:]) > 0.95
    assert detector.probabilities(clean[100:]).argmax(1).float().mean() <= 0.15  # about fpr of clean images flagged
    assert summary["threshold"] == pytest.approx(detector.threshold.item())
    x = adv[:4].clone().requires_grad_(True)
    detector(x)[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0


def test_sensitivity_norm_from_gcds_gradient_equals_its_own_pass():
    f = MeanBrightness().eval()
    detector = SensitivityNorm(f)
    detector.fit(fit_data(brightness_images(100, False, 0), brightness_images(100, True, 1)))
    x = brightness_images(8, True, 2).requires_grad_(True)
    g = torch.autograd.grad(nn.functional.cross_entropy(f(x), f(x).argmax(1), reduction="sum"), x)[0]
    assert detector.reads_sensitivity_of(f) and not detector.reads_sensitivity_of(MeanBrightness())
    assert torch.allclose(detector.logits_from_sensitivity(g), detector(x.detach()), atol=1e-5)


def test_squeezers_round_and_filter_and_pass_gradients():
    x = torch.tensor([[[[0.2, 0.7], [0.49, 0.51]]]], requires_grad=True)
    squeezed = reduce_bit_depth(x, 1)
    assert squeezed.tolist() == [[[[0.0, 1.0], [0.0, 1.0]]]]
    squeezed.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # straight through (BPDA)
    image = torch.zeros(1, 1, 5, 5)
    image[0, 0, 2, 2] = 1.0  # one bright pixel: a 3x3 median removes it, keeps flat regions
    assert median_filter(image, 3).abs().sum() == 0
    flat = torch.full((1, 2, 6, 6), 0.3)
    assert torch.allclose(median_filter(flat, 2), flat)
    assert median_filter(torch.rand(2, 3, 7, 9), 2).shape == (2, 3, 7, 9)


def test_feature_squeezing_flags_noise_that_one_bit_removes():
    torch.manual_seed(0)
    f = normalized(SmallCNN(1, 10, image_size=8, width=4, hidden=16), [0.5], [0.5]).eval()
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(200, 1, 8, 8, generator=g) > 0.5).float()  # binary: 1-bit squeezing leaves them alone
    noise = (torch.rand(200, 1, 8, 8, generator=g) - 0.5) * 0.8
    adv = (clean + noise).clamp(0, 1)
    detector = FeatureSqueezing(f, bits=1, median=None, fpr=0.05)
    detector.fit(fit_data(clean[:100], adv[:100]))
    assert auc(detector, clean[100:], adv[100:]) > 0.9
    x = adv[:4].clone().requires_grad_(True)
    detector(x)[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least one squeezer"):
        FeatureSqueezing(f, bits=None, median=None)


def test_class_gaussians_and_confidence_match_numpy():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(60, 4)) + np.repeat(np.arange(3), 20)[:, None]
    labels = np.repeat(np.arange(3), 20)
    means, precision = class_gaussians(torch.from_numpy(h).float(), torch.from_numpy(labels), 3)
    expected_means = np.stack([h[labels == c].mean(0) for c in range(3)])
    centred = h - expected_means[labels]
    expected_precision = np.linalg.pinv(centred.T @ centred / len(h))
    assert np.allclose(means.numpy(), expected_means, atol=1e-5)
    assert np.allclose(precision.numpy(), expected_precision, atol=1e-4)
    query = rng.normal(size=(5, 4))
    expected = np.max([-np.einsum("nd,de,ne->n", query - m, expected_precision, query - m) for m in expected_means], axis=0)
    got = mahalanobis_confidence(torch.from_numpy(query), means, precision)
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"class\(es\) \[3\]"):
        class_gaussians(torch.from_numpy(h), torch.from_numpy(labels), 4)


def shifted_digits(seed: int):
    """Clean: two classes of blobs; shifted: the same blobs with inverted contrast."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (300,), generator=g)
    x = torch.rand(300, 1, 8, 8, generator=g) * 0.2
    x[labels == 0, :, :4, :] += 0.7
    x[labels == 1, :, 4:, :] += 0.7
    return x.clamp(0, 1), labels


def test_mahalanobis_separates_a_shift_is_differentiable_and_round_trips():
    torch.manual_seed(0)
    f = normalized(SmallCNN(1, 2, image_size=8, width=4, hidden=16), [0.5], [0.5]).eval()
    assert default_layers(f) == ["1.features.3", "1.features.7", "1.head.3:in"]
    clean, labels = shifted_digits(0)
    adv = 1 - clean
    detector = Mahalanobis(f, (1, 8, 8), noise_grid=[0.0, 0.01], fit_images=200)
    summary = detector.fit(fit_data(clean[:200], adv[:200], train_images=clean[:200], labels=labels[:200]))
    assert summary["noise"] in (0.0, 0.01) and summary["val_auc"] > 0.9
    assert auc(detector, clean[200:], adv[200:]) > 0.9
    x = adv[:4].clone().requires_grad_(True)
    detector(x)[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0
    loaded = Mahalanobis(f, (1, 8, 8), noise_grid=[0.0, 0.01])
    loaded.load_state_dict(detector.state_dict())
    assert torch.allclose(loaded.scores(clean[200:], 64), detector.scores(clean[200:], 64))
    with pytest.raises(ValueError, match="no layer 'nope'"):
        Mahalanobis(f, (1, 8, 8), layers=["nope"])


def test_threshold_at_fpr_leaves_that_share_of_clean_scores_above():
    scores = torch.arange(1000, dtype=torch.float32)
    t = threshold_at_fpr(scores, 0.05)
    assert (scores > t).float().mean().item() == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError, match="fpr must lie in"):
        threshold_at_fpr(scores, 0.0)
    assert tpr_at_fpr(scores, torch.tensor([940.0, 960.0, 990.0, 10.0]), 0.05) == 0.5


def test_det_sal_reads_the_saliency_map_and_an_attack_reaches_through_it():
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(5, 1, 4, 4)
    top = linear(x).argmax(1)
    assert torch.allclose(logit_saliency(linear, x), linear[1].weight[top].view(5, 1, 4, 4))  # ∂z_ŷ/∂x = W[ŷ]
    smooth_f = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    body = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    detector = SubDetector(body, "sal", classifier=smooth_f).eval()
    assert detector.name == "sal"
    probe = x.clone().requires_grad_(True)
    detector(probe)[:, 1].sum().backward()
    assert probe.grad.abs().sum() > 0  # double backprop through a smooth f
    relu_f = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    exact = SubDetector(body, "sal", classifier=relu_f).eval()
    probe = x.clone().requires_grad_(True)
    exact(probe)[:, 1].sum().backward()
    assert probe.grad.abs().sum() == 0  # a ReLU f's saliency is piecewise constant: the exact gradient is zero
    with pytest.raises(ValueError, match="kind=sal"):
        SubDetector(body, "sal")


def test_det_tws_flags_noise_fragile_images_and_scores_each_image_alike_in_any_batch():
    f = MeanBrightness().eval()
    clean, adv = brightness_images(200, False, 0), brightness_images(200, True, 1)
    detector = TurningWeakness(f, sigma=0.1, noise_draws=16, step=0.02, max_steps=30, fpr=0.05)
    summary = detector.fit(fit_data(clean[:100], adv[:100]))
    assert summary["clean_noise_flips"] < 0.05  # confident clean images keep their label under noise
    assert auc(detector, clean[100:], adv[100:]) > 0.9
    assert torch.equal(detector.scores(adv[:10], 3), detector.scores(adv[:10], 10))  # seeds from the image, not the batch
    assert not detector.differentiable
    with pytest.raises(ValueError, match="sigma, step > 0"):
        TurningWeakness(f, sigma=0.0)


def test_tws_surrogate_is_differentiable_and_agrees_with_the_real_decision():
    torch.manual_seed(0)
    f = MeanBrightness(k=40.0).eval()
    g = torch.Generator().manual_seed(0)
    clean = 0.3 * torch.rand(64, 1, 12, 12, generator=g)  # mean ≈ 0.15: confidently dark
    near = (0.5 + 0.04 * torch.rand(32, 1, 1, 1, generator=g) + 0.2 * (torch.rand(32, 1, 12, 12, generator=g) - 0.5)).clamp(0, 1)
    tws = TurningWeakness(f, sigma=0.3, noise_draws=16, step=0.02, max_steps=20)
    tws.fit(FitData(clean=clean[:8], adversarial=near[:8], clean_val=clean[16:], train=TensorDataset(clean), batch_size=16))
    surrogate = tws.surrogate()
    assert not tws.differentiable and surrogate.differentiable
    x = torch.cat([clean[:16], near[:16]]).requires_grad_(True)
    logits = surrogate(x)
    assert logits.shape == (32, 2) and torch.isfinite(logits).all()
    logits[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0
    with torch.no_grad():
        real, stand_in = tws(x.detach()).argmax(dim=1), surrogate(x.detach()).argmax(dim=1)
    assert real[16:].float().mean() >= 0.8  # the real detector flags the images next to the boundary
    assert (real == stand_in).float().mean() >= 0.8  # and the stand-in mostly decides as it does


def test_tws_computes_each_images_criteria_once(monkeypatch):
    f = MeanBrightness(k=40.0).eval()
    tws = TurningWeakness(f, sigma=0.3, noise_draws=8, step=0.02, max_steps=10)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    direct = tws.compute_criteria(x)
    first = tws.criteria(x[:4])
    computed = []
    original = tws.compute_criteria
    monkeypatch.setattr(tws, "compute_criteria", lambda images: computed.append(len(images)) or original(images))
    again = tws.criteria(x[[3, 4, 0, 5]])  # two seen images, two new ones
    assert computed == [2]
    for got, want in zip(first, direct):
        assert torch.equal(got, want[:4])
    for got, want in zip(again, direct):
        assert torch.equal(got, want[[3, 4, 0, 5]])
