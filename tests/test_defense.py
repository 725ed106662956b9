"""The GCD defense: eq. 1/8 sensitivity, eq. 10-11 ensemble, eq. 12-13 mask, detectors, routing, rectifier."""

from __future__ import annotations

import functools
import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from gcd_lightning.defense import (
    GCD,
    Detector,
    DetectorInput,
    GuidedMasking,
    RectifierFineTune,
    SubDetector,
    binary_entropy,
    detector_saliency,
    entropy_select,
    input_sensitivity,
    is_flagged,
    masked_duplicates,
    random_mask,
    saliency_threshold,
    sensitivity_features,
    zero_most_salient,
)
from gcd_lightning.adversarial import AdversarialSet
from gcd_lightning.models import SmallCNN, normalized
from gcd_lightning.models.normalize import Normalize
from gcd_lightning.adversarial import robust_accuracy
from gcd_lightning.pipeline.components import run_gcd
from gcd_lightning.pipeline.evaluate_stage import (
    DRAW_STRIDE,
    float64_copy,
    mask_draws,
    sensitivity_norm,
    sensitivity_norms,
)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models: one intra-op thread, since thread hand-offs cost more than these ops on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smooth_net(in_features: int, num_classes: int, seed: int = 0) -> nn.Module:
    """A tiny tanh MLP in double precision: smooth, so finite differences are accurate."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 6), nn.Tanh(), nn.Linear(6, num_classes))
    return net.double().eval()


def trainer(**kwargs) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def finite_difference_gradient(fn, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of the scalar ``fn`` at ``x``, entry by entry."""
    grad = torch.zeros_like(x)
    flat_x, flat_g = x.view(-1), grad.view(-1)
    for j in range(flat_x.numel()):
        plus, minus = flat_x.clone(), flat_x.clone()
        plus[j] += h
        minus[j] -= h
        flat_g[j] = (fn(plus.view_as(x)) - fn(minus.view_as(x))) / (2 * h)
    return grad


# --- eq. 10-11: entropy ensemble ---------------------------------------------------------


def test_binary_entropy_values_and_extremes_are_finite():
    p = torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.0, 1.0], [0.9, 0.1]], requires_grad=True)
    h = binary_entropy(p)
    expected = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
    assert torch.allclose(h, torch.tensor([1.0, 0.0, 0.0, expected]), atol=1e-6)
    h.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_entropy_select_keeps_the_more_confident_detector_and_ties_go_to_det_is():
    p_org = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [1.0, 0.0]], requires_grad=True)
    p_is = torch.tensor([[0.6, 0.4], [0.95, 0.05], [0.7, 0.3], [0.0, 1.0]], requires_grad=True)
    p, use_org = entropy_select(p_org, p_is)
    # row 0: H_o < H_s; row 1: H_o > H_s; row 2: equal entropies; row 3: both zero (0/1 probabilities)
    assert use_org.tolist() == [True, False, False, False]
    assert torch.equal(p, torch.stack([p_org[0], p_is[1], p_is[2], p_is[3]]))
    assert not torch.isnan(p).any()
    assert is_flagged(p).tolist() == [False, False, False, True]
    p[:, 1].sum().backward()
    assert p_org.grad[:, 1].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert p_is.grad[:, 1].tolist() == [0.0, 1.0, 1.0, 1.0]


def test_is_flagged_counts_a_tie_as_benign():
    assert is_flagged(torch.tensor([[0.5, 0.5], [0.49, 0.51], [0.51, 0.49]])).tolist() == [False, True, False]


def test_ensemble_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        binary_entropy(torch.full((3, 3), 1 / 3))
    with pytest.raises(ValueError, match="differ in shape"):
        entropy_select(torch.full((2, 2), 0.5), torch.full((3, 2), 0.5))


# --- eq. 12: suspect threshold --------------------------------------------------------------


def test_saliency_threshold_matches_a_hand_computation_per_image():
    saliency = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]], [[[-10.0, 12.0], [-14.0, 18.0]]]])
    # image 0: 0.5 * (4 - 0) + 0 = 2; image 1 (magnitudes 10..18): 0.5 * 8 + 10 = 14
    mask = saliency_threshold(saliency, 0.5)
    assert mask.shape == (2, 1, 2, 2)
    assert mask.flatten(1).tolist() == [[False, False, False, True], [False, False, False, True]]
    # threshold 0.25 * 4 = 1 and 0.25 * 8 + 10 = 12: strictly greater is suspect
    assert saliency_threshold(saliency, 0.25).flatten(1).tolist() == [[False, False, True, True]] * 2


def test_saliency_threshold_alpha_extremes_and_constant_images():
    saliency = torch.rand(3, 1, 5, 5) + torch.arange(3.0).view(3, 1, 1, 1)
    above_min = saliency > saliency.flatten(1).amin(1).view(3, 1, 1, 1)
    assert torch.equal(saliency_threshold(saliency, 0.0), above_min)
    assert not saliency_threshold(saliency, 1.0).any()
    assert not saliency_threshold(torch.full((1, 1, 3, 3), 0.7), 0.0).any()


def test_saliency_threshold_takes_the_channel_maximum_of_colour_images():
    # location 0 has channels (1, 5, 0) -> 5; location 1 has (3, 3, 3) -> 3; threshold 0.5 * 2 + 3 = 4
    saliency = torch.tensor([[[[1.0, 3.0]], [[5.0, 3.0]], [[0.0, 3.0]]]])
    mask = saliency_threshold(saliency, 0.5)
    assert mask.shape == (1, 1, 1, 2)
    assert mask.flatten().tolist() == [True, False]


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_saliency_threshold_rejects_alpha_outside_the_unit_interval(alpha):
    with pytest.raises(ValueError, match="alpha must lie in"):
        saliency_threshold(torch.rand(1, 1, 2, 2), alpha)


# --- eq. 13: random mask -------------------------------------------------------------------


def grey_image(seed: int = 0) -> torch.Tensor:
    """100x100 pixels around 0.5 with std 0.15, none of them on the k/255 grid."""
    g = torch.Generator().manual_seed(seed)
    return (0.5 + 0.15 * torch.randn(1, 1, 100, 100, generator=g, dtype=torch.float64)).clamp(0.02, 0.98)


def checkerboard(h: int, w: int) -> torch.Tensor:
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return ((rows + cols) % 2 == 0).view(1, 1, h, w)


def test_random_mask_statistics_follow_eq_13():
    x = grey_image()
    suspect = checkerboard(100, 100)
    out = random_mask(x, suspect, p=0.5, generator=torch.Generator().manual_seed(1))
    replaced = out != x
    assert not (replaced & ~suspect).any(), "a non-suspect pixel changed"
    assert torch.equal(out[~suspect], x[~suspect])
    share = replaced[suspect].double().mean().item()
    assert abs(share - 0.5) < 0.03
    values = out[replaced]
    assert torch.allclose(values * 255, (values * 255).round(), atol=1e-9)
    assert values.min() >= 0 and values.max() <= 1
    assert abs(values.mean().item() - x.mean().item()) < 0.01
    assert abs(values.std().item() - x.std().item()) < 0.01


def test_random_mask_is_reproducible_with_a_seeded_generator():
    x, suspect = grey_image(), checkerboard(100, 100)
    first = random_mask(x, suspect, 0.5, torch.Generator().manual_seed(3))
    again = random_mask(x, suspect, 0.5, torch.Generator().manual_seed(3))
    other = random_mask(x, suspect, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_random_mask_probability_extremes():
    x, suspect = grey_image(), checkerboard(100, 100)
    assert torch.equal(random_mask(x, suspect, p=0.0), x)
    assert torch.equal(random_mask(x, suspect, p=1.0) != x, suspect)


def test_random_mask_of_colour_images_replaces_locations_with_per_image_per_channel_statistics():
    g = torch.Generator().manual_seed(0)
    means = torch.tensor([[0.2, 0.5, 0.8], [0.7, 0.4, 0.1]], dtype=torch.float64).view(2, 3, 1, 1)
    x = means + 0.05 * torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    out = random_mask(x, torch.ones(2, 1, 32, 32, dtype=torch.bool), p=0.5, generator=g)
    replaced = out != x
    assert torch.equal(replaced[:, 0], replaced[:, 1]) and torch.equal(replaced[:, 0], replaced[:, 2])
    for n in range(2):
        for c in range(3):
            channel_values = out[n, c][replaced[n, c]]
            assert abs(channel_values.mean().item() - x[n, c].mean().item()) < 0.01


def test_random_mask_rejects_bad_inputs():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="p must lie in"):
        random_mask(x, torch.ones(2, 1, 4, 4, dtype=torch.bool), p=1.2)
    with pytest.raises(ValueError, match="suspect must be a bool mask"):
        random_mask(x, torch.ones(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        random_mask(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))


def test_masked_duplicates_builds_k_randomised_copies_with_true_labels():
    x = grey_image().repeat(2, 1, 1, 1)[:, :, :20, :20]
    saliency = torch.zeros_like(x)
    saliency[:, :, :10] = 1.0  # the top half is suspect
    y = torch.tensor([3, 7])
    xs, ys = masked_duplicates(x, saliency, y, alpha=0.5, p=0.5, k=4, generator=torch.Generator().manual_seed(0))
    assert xs.shape == (8, 1, 20, 20)
    assert ys.tolist() == [3, 3, 3, 3, 7, 7, 7, 7]
    originals = x.repeat_interleave(4, dim=0)
    assert torch.equal(xs[:, :, 10:], originals[:, :, 10:])
    assert (xs[:, :, :10] != originals[:, :, :10]).any()
    assert not torch.equal(xs[0], xs[1]), "duplicates must draw their own masks"
    with pytest.raises(ValueError, match="k must be at least 1"):
        masked_duplicates(x, saliency, y, alpha=0.5, p=0.5, k=0)


# --- eq. 1 / 8: input sensitivity ------------------------------------------------------------


def test_input_sensitivity_matches_finite_differences_per_example():
    f = smooth_net(9, 3)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    y_hat = f(x).argmax(1)
    g = input_sensitivity(f, x)

    def loss_of(i, xi):
        return nn.functional.cross_entropy(f(xi.unsqueeze(0)), y_hat[i : i + 1]).item()

    expected = torch.stack([finite_difference_gradient(functools.partial(loss_of, i), x[i]) for i in range(4)])
    assert torch.allclose(g, expected, atol=1e-8)
    assert not g.requires_grad
    assert all(p.grad is None for p in f.parameters())


def test_input_sensitivity_takes_given_labels_and_works_under_inference_mode():
    f = smooth_net(9, 3)
    x = torch.rand(4, 1, 3, 3, dtype=torch.float64)
    other = (f(x).argmax(1) + 1) % 3
    assert not torch.allclose(input_sensitivity(f, x, other), input_sensitivity(f, x))
    with torch.inference_mode():
        assert torch.allclose(input_sensitivity(f, x), input_sensitivity(f, x.clone()))
    assert torch.allclose(input_sensitivity(f, x.clone().requires_grad_(True)), input_sensitivity(f, x))


def test_input_sensitivity_supports_double_backprop():
    f = smooth_net(9, 3)
    x0 = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    y_hat = f(x0).argmax(1)

    def phi(x):
        return sensitivity_features(input_sensitivity(f, x, y_hat, create_graph=True), tau=1e-2).pow(2).sum()

    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(phi(x), x)
    expected = finite_difference_gradient(lambda z: phi(z).item(), x0)
    assert grad.abs().max() > 0
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in f.parameters())


def test_input_sensitivity_rejects_train_mode_and_bad_labels():
    f = smooth_net(9, 3)
    with pytest.raises(ValueError, match="y_hat must have shape"):
        input_sensitivity(f, torch.rand(2, 1, 3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="train mode"):
        input_sensitivity(f.train(), torch.rand(2, 1, 3, 3, dtype=torch.float64))


def test_sensitivity_features_compress_magnitudes_smoothly():
    g = torch.tensor([-1.0, -1e-3, 0.0, 1e-6, 1e-3, 1.0], requires_grad=True)
    s = sensitivity_features(g)
    assert s[2] == 0 and s[0] == -s[5] and s[1] == -s[4]  # odd: the sign of G is kept
    assert torch.all(s[1:] > s[:-1])
    assert abs(s[3].item() - 0.01) < 1e-4  # linear below tau = 1e-4
    assert 9.5 < s[5].item() < 10.5  # log(2 / 1e-4) ≈ 9.9 for a large adversarial entry
    (grad,) = torch.autograd.grad(s.sum(), g)
    assert torch.isfinite(grad).all() and abs(grad[2].item() - 1e4) < 1.0
    with pytest.raises(ValueError, match="tau must be positive"):
        sensitivity_features(g, tau=0.0)


# --- SubDetector (eq. 7-9) -------------------------------------------------------------------


def detector_body() -> nn.Module:
    return SmallCNN(in_channels=1, num_classes=2, image_size=8, width=4, hidden=8)


def adam(params):
    return torch.optim.Adam(params, lr=1e-2)


def loaders(x: torch.Tensor, label: torch.Tensor) -> tuple[DataLoader, DataLoader]:
    """Shuffled training batches and an ordered validation pass over the same toy set."""
    data = TensorDataset(x, label)
    return DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=64)


def pixel_toy_set(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign images are dark, adversarial ones bright: separable in the pixel domain."""
    g = torch.Generator().manual_seed(0)
    label = torch.arange(n) % 2
    x = (0.2 + 0.4 * label.view(-1, 1, 1, 1) + 0.05 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1)
    return x, label


def margin_classifier() -> nn.Module:
    """``f`` decides on the mean pixel around 0.5, with a BatchNorm whose running statistics would reveal training."""
    f = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(64, 2))
    with torch.no_grad():
        f[2].weight.copy_(torch.stack([torch.full((64,), 20 / 64), torch.full((64,), -20 / 64)]))
        f[2].bias.copy_(torch.tensor([-10.0, 10.0]))
    return f.eval()


def sensitivity_toy_set(n: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Benign images are far from f's boundary (mean 0.1 or 0.9), adversarial ones on it (mean 0.5)."""
    g = torch.Generator().manual_seed(0)
    label = torch.arange(n) % 2
    far = torch.where(torch.arange(n) % 4 == 0, 0.1, 0.9)
    centre = torch.where(label == 1, 0.5, far).view(-1, 1, 1, 1)
    return (centre + 0.02 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), label


def test_pixel_detector_trains_and_reports_auc():
    detector = SubDetector(detector_body(), "org", optimizer=adam)
    assert detector.kind is DetectorInput.PIXELS
    run = trainer(max_epochs=5)
    run.fit(detector, *loaders(*pixel_toy_set()))
    assert run.callback_metrics["val/auc"] > 0.95
    assert run.callback_metrics["val/auc_best"] >= run.callback_metrics["val/auc"]
    x, label = pixel_toy_set(16)
    p = detector.eval().probabilities(x)
    assert p.shape == (16, 2) and torch.allclose(p.sum(1), torch.ones(16))
    assert ((p[:, 1] > 0.5).long() == label).all()


def test_sensitivity_detector_trains_without_touching_f():
    f = margin_classifier()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    detector = SubDetector(detector_body(), DetectorInput.SENSITIVITY, optimizer=adam, classifier=f)
    run = trainer(max_epochs=5)
    run.fit(detector, *loaders(*sensitivity_toy_set()))
    assert run.callback_metrics["val/auc"] > 0.95
    (test_metrics,) = run.test(detector, DataLoader(TensorDataset(*sensitivity_toy_set(64)), batch_size=64))
    assert test_metrics["test/auc"] > 0.95
    assert not f.training
    assert all(torch.equal(v, before[k]) for k, v in f.state_dict().items())
    assert all(p.grad is None for p in f.parameters())
    assert not any(key.startswith("classifier") for key in detector.state_dict())
    assert "classifier" not in detector.hparams and "body" not in detector.hparams
    restored = SubDetector(detector_body(), "is", optimizer=adam, classifier=f)
    restored.load_state_dict(detector.state_dict())
    x = sensitivity_toy_set(8)[0]
    assert torch.allclose(restored.eval()(x), detector.eval()(x))
    detector.double()
    assert f[2].weight.dtype == torch.float64, "the classifier follows the detector's casts"


def test_sub_detector_checks_its_classifier():
    with pytest.raises(ValueError, match="needs the protected classifier"):
        SubDetector(detector_body(), "is", optimizer=adam)
    f = margin_classifier()
    pixels = SubDetector(detector_body(), "org", optimizer=adam, classifier=f)  # built like DET_IS, keeps no f
    assert pixels.classifier is None and not pixels.reads_sensitivity_of(f) and pixels.name == "org"
    assert SubDetector(detector_body(), "is", optimizer=adam, classifier=f).reads_sensitivity_of(f)
    with pytest.raises(ValueError):
        SubDetector(detector_body(), "gradients", optimizer=adam)


def test_det_is_saliency_flows_through_the_sensitivity():
    f = smooth_net(9, 3, seed=1)
    body = smooth_net(9, 2, seed=2)
    detector = SubDetector(body, "is", optimizer=adam, classifier=f).double().eval()
    x = torch.rand(3, 1, 3, 3, dtype=torch.float64)
    target = detector(x).argmax(1)
    saliency = detector_saliency(detector, x)

    def det_loss(i, xi):
        return nn.functional.cross_entropy(detector(xi.unsqueeze(0)), target[i : i + 1]).item()

    expected = torch.stack([finite_difference_gradient(functools.partial(det_loss, i), x[i]) for i in range(3)])
    assert saliency.abs().max() > 0
    assert torch.allclose(saliency, expected.abs(), rtol=1e-4, atol=1e-8)


# --- GCD routing ---------------------------------------------------------------------------


class PixelDetector(Detector):
    """A stub detector whose adversarial logit is ``scale·(x[row, col] − 0.5)``: known decision and saliency."""

    def __init__(self, row: int, col: int, name: str, scale: float = 20.0) -> None:
        super().__init__()
        self.row, self.col, self.name, self.scale = row, col, name, scale

    def forward(self, x):
        z = self.scale * (x[:, 0, self.row, self.col] - 0.5)
        return torch.stack([torch.zeros_like(z), z], dim=1)


class ConstantClassifier(nn.Module):
    """Always predicts ``label`` among 3 classes."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label

    def forward(self, x):
        return nn.functional.one_hot(torch.full((x.shape[0],), self.label), 3).to(x.dtype)


def routing_batch() -> torch.Tensor:
    """DET_org reads pixel (0, 0), DET_IS pixel (3, 3); values chosen so entropies pick the decider."""
    x = torch.full((4, 1, 4, 4), 0.3)
    x[:, 0, 0, 0] = torch.tensor([0.1, 0.95, 0.45, 0.05])
    x[:, 0, 3, 3] = torch.tensor([0.1, 0.45, 0.95, 0.55])
    return x


def make_gcd(rectifier: nn.Module, alpha: float = 0.5, p: float = 1.0, generator: torch.Generator | None = None) -> GCD:
    """f always says 0; DET_org reads pixel (0, 0), DET_IS pixel (3, 3); flagged inputs go to ``rectifier``."""
    detectors = [PixelDetector(0, 0, "org"), PixelDetector(3, 3, "is")]
    return GCD(ConstantClassifier(0), detectors, GuidedMasking(rectifier, alpha, p, generator))


def test_gcd_routes_benign_inputs_to_f_and_flagged_ones_to_the_rectifier():
    gcd = make_gcd(ConstantClassifier(1), generator=torch.Generator().manual_seed(0))
    x = routing_batch()
    with torch.inference_mode():
        prediction = gcd.predict(x)
    result = prediction.detection
    # 0: both benign (tie -> DET_IS); 1: DET_org sure it is adversarial; 2: DET_IS sure;
    # 3: DET_org sure it is benign overrules an unsure DET_IS
    assert result.decided.tolist() == [1, 0, 1, 0] and gcd.detector_names == ["org", "is"]
    assert result.flagged.tolist() == [False, True, True, False]
    assert torch.equal(result.p, torch.where((result.decided == 0)[:, None], result.p_each["org"], result.p_each["is"]))
    assert prediction.label.tolist() == [0, 1, 1, 0]
    assert prediction.f_label.tolist() == [0, 0, 0, 0] and prediction.rectified_label.tolist() == [-1, 1, 1, -1]
    assert set(prediction.adversarial_scores) == {"org", "is", "gcd"}
    assert torch.equal(gcd(x).argmax(1), prediction.label)


def test_gcd_masks_flagged_inputs_where_the_deciding_detector_looks():
    gcd = make_gcd(ConstantClassifier(1), generator=torch.Generator().manual_seed(0))
    x = routing_batch()[1:3]  # flagged by DET_org, then by DET_IS
    decided = gcd.detect(x).decided
    changed = gcd.rectifier.mask(x, gcd.saliency(x, decided)) != x
    expected = torch.zeros_like(changed)
    expected[0, 0, 0, 0] = True  # flagged by DET_org: its saliency is on pixel (0, 0)
    expected[1, 0, 3, 3] = True  # flagged by DET_IS: pixel (3, 3)
    assert torch.equal(changed, expected)


def test_gcd_predict_refuses_inputs_it_cannot_score():
    gcd = make_gcd(ConstantClassifier(1))
    gcd.input_shape = (1, 4, 4)
    x = routing_batch()
    for bad, message in (
        (x.clone().index_fill_(0, torch.tensor([2]), float("nan")), r"images \[2\] contain NaN"),
        (x * 255, r"values in \[0, 1\]"),
        ((x * 255).to(torch.uint8), "dtype torch.uint8"),
        (x.repeat(1, 3, 1, 1), r"shape \(N, 1, 4, 4\)"),
        (x[0], "batch"),
    ):
        with pytest.raises(ValueError, match=message):
            gcd.predict(bad)
    assert gcd.predict(x.double()).label.tolist() == [0, 1, 1, 0]  # float64 is cast, not refused


def test_gcd_predict_can_flag_nonfinite_inputs_instead_of_refusing_them():
    gcd = make_gcd(ConstantClassifier(1))
    x = routing_batch()  # benign, flagged, flagged, benign
    x[0, 0, 1, 1], x[3, 0, 2, 2] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"images \[0, 3\] contain NaN"):
        gcd.predict(x)
    prediction = gcd.predict(x, nonfinite="flag")
    assert prediction.nonfinite.tolist() == [True, False, False, True]
    assert prediction.flagged.tolist() == [True, True, True, True]  # NaN/inf is never clean
    assert prediction.label.tolist() == [-1, 1, 1, -1] and prediction.f_label.tolist() == [-1, 0, 0, -1]
    assert prediction.logits[[0, 3]].isnan().all() and not prediction.logits[[1, 2]].isnan().any()
    assert all(score[[0, 3]].eq(1).all() for score in prediction.adversarial_scores.values())
    assert torch.equal(prediction.label[1:3], gcd.predict(x[1:3]).label)  # the others answered as usual
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        gcd.predict(x, nonfinite="ignore")


class PixelClassifier(nn.Module):
    """Class 1 when pixel (0, 0) is above 0.5, else class 0 (of 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # unused; the pipeline finds the device by a parameter

    def forward(self, x):
        return nn.functional.one_hot((x[:, 0, 0, 0] > 0.5).long(), 3).to(x.dtype)


def test_mask_draws_average_gcd_accuracy_over_its_random_masks():
    x = torch.full((64, 1, 4, 4), 0.3)
    x[:, 0, 0, 0] = 0.95  # DET_org flags every image, and its saliency points at pixel (0, 0)
    y = torch.ones(64, dtype=torch.long)  # right while pixel (0, 0) survives the mask (p = 0.5)
    adv = AdversarialSet(index=torch.arange(64), x_adv=x, y=y, target=torch.full((64,), -1), success=torch.arange(64) < 32,
                         l2=torch.zeros(64), linf=torch.zeros(64), n_examined=64, seconds=0.0)
    gcd = make_gcd(PixelClassifier(), p=0.5)
    first = run_gcd(gcd, x, 16, seed=3)["label"]
    one = mask_draws(gcd, adv, first, 16, seed=3, draws=1)
    assert one["gcd.acc.adv"] == (first == y).double().mean().item() and one["gcd.acc.adv_std"] == 0.0
    assert 0.2 < one["gcd.acc.adv"] < 0.8  # the masks really are random
    many = mask_draws(gcd, adv, first, 16, seed=3, draws=8)
    per_draw = [(run_gcd(gcd, x, 16, seed=3 + d * DRAW_STRIDE)["label"] == y).double().mean().item() for d in range(8)]
    assert many["gcd.acc.adv"] == pytest.approx(sum(per_draw) / 8)
    assert many["gcd.acc.adv_min"] == min(per_draw) < max(per_draw) == many["gcd.acc.adv_max"]
    assert many["gcd.acc.adv_std"] > 0 and many == mask_draws(gcd, adv, first, 16, seed=3, draws=8)  # seeded
    with pytest.raises(ValueError, match="mask_draws"):
        mask_draws(gcd, adv, first, 16, seed=3, draws=0)


def test_robust_accuracy_counts_the_skipped_misclassified_images_as_errors():
    assert robust_accuracy(0.5, 80, 100) == pytest.approx(0.4)  # 40 of 100 examined images survive the attack
    assert robust_accuracy(1.0, 90, 100) == pytest.approx(0.9)  # at best the clean accuracy
    assert robust_accuracy(0.25, 64, 64) == 0.25  # nothing skipped: the accuracy under attack itself
    for acc, attacked, examined in ((0.5, 101, 100), (0.5, 0, 100)):
        with pytest.raises(ValueError, match="n_attacked <= n_examined"):
            robust_accuracy(acc, attacked, examined)
    with pytest.raises(ValueError, match=r"acc_adv must be an accuracy in \[0, 1\]"):
        robust_accuracy(1.5, 10, 10)


def test_sensitivity_norms_for_the_histograms_are_computed_in_float64():
    """‖G‖₂ by a float64 copy of a float32 f equals the float64 closed form; float32 misses the confident images."""
    torch.manual_seed(0)
    linear = nn.Linear(2 * 3 * 3, 4)
    f = nn.Sequential(Normalize([0.4, 0.6], [0.2, 0.3]), nn.Flatten(), linear).eval()  # float32, as trained
    w, b = linear.weight.detach().double(), linear.bias.detach().double()
    mean, std = f[0].mean.double(), f[0].std.double()
    x64 = torch.rand(6, 2, 3, 3, dtype=torch.float64)
    towards_2 = w[2] - w.mean(dim=0)
    x64[0] = (20 * towards_2 / towards_2.norm() ** 2).view(2, 3, 3) * std[0] + mean[0]  # class 2, 1 − p ≈ 1e-10
    x = x64.float()
    x64 = x.double()
    logits = ((x64 - mean) / std).flatten(1) @ w.T + b
    residual = logits.softmax(dim=1) - nn.functional.one_hot(logits.argmax(dim=1), 4).double()
    expected = ((residual @ w).view_as(x64) / std).flatten(1).norm(dim=1)  # G = ∂CE/∂x = Wᵀ(p − e_ŷ) / std
    assert expected[0] < 1e-8 < 1e-2 < expected[1:].min()

    f64 = float64_copy(f)
    norms = sensitivity_norms(f64, x, batch_size=4)
    assert norms.dtype == torch.float64 and torch.allclose(norms, expected, rtol=1e-12, atol=0)
    assert next(f.parameters()).dtype == torch.float32 and f[0].mean.dtype == torch.float32  # f itself is untouched
    in_float32 = input_sensitivity(f, x).flatten(1).norm(dim=1).double()
    assert not torch.allclose(in_float32[0], expected[0], rtol=0.1, atol=0)  # what float64 fixes: 1 − p_ŷ below 2⁻²⁴
    with pytest.raises(ValueError, match=r"computed in float64.*torch.float32; pass float64_copy\(classifier\)"):
        sensitivity_norm(f, x)


def test_gcd_checks_its_settings_and_mode():
    with pytest.raises(ValueError, match="alpha must lie in"):
        make_gcd(ConstantClassifier(1), alpha=1.5, p=0.5)
    with pytest.raises(ValueError, match="p must lie in"):
        make_gcd(ConstantClassifier(1), alpha=0.5, p=-0.1)
    with pytest.raises(ValueError, match="names must differ"):
        GCD(ConstantClassifier(0), [PixelDetector(0, 0, "org"), PixelDetector(3, 3, "org")])
    with pytest.raises(ValueError, match="one detector or the two"):
        GCD(ConstantClassifier(0), [])
    with pytest.raises(RuntimeError, match="without a rectifier"):
        GCD(ConstantClassifier(0), [PixelDetector(0, 0, "org")]).predict(routing_batch())
    gcd = make_gcd(ConstantClassifier(1), alpha=0.5, p=0.5).train()
    with pytest.raises(RuntimeError, match="inference module"):
        gcd(routing_batch())


# --- rectifier fine-tuning -----------------------------------------------------------------


def test_rectifier_fine_tunes_a_copy_of_f_on_masked_duplicates():
    torch.manual_seed(0)
    f = normalized(SmallCNN(in_channels=1, num_classes=3, image_size=8, width=4, hidden=8), [0.5], [0.25]).eval()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    x_adv = torch.rand(16, 1, 8, 8)
    y = torch.arange(16) % 3
    x_adv[:, :, :, :4] = y.view(-1, 1, 1, 1) / 2  # the left half carries the class
    saliency = torch.zeros_like(x_adv)
    saliency[:, :, :, 4:] = 1.0  # the right half is suspect
    xs, ys = masked_duplicates(x_adv, saliency, y, alpha=0.5, p=0.5, k=4, generator=torch.Generator().manual_seed(0))
    module = RectifierFineTune(f, num_classes=3, optimizer=adam)
    run = trainer(max_epochs=12)
    run.fit(module, *loaders(xs, ys))
    assert all(torch.equal(v, before[k]) for k, v in f.state_dict().items()), "f itself must not change"
    assert not torch.equal(module.model[1].head[-1].weight, f[1].head[-1].weight)
    assert run.callback_metrics["val/acc"] > 0.9
    assert "classifier" not in module.hparams


def test_zero_most_salient_zeroes_exactly_the_top_locations():
    x = torch.full((2, 3, 4, 5), 0.5)
    saliency = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = zero_most_salient(x, saliency, 0.10)  # 2 of 20 locations per image
    zeroed = (out == 0).all(dim=1)
    assert zeroed.flatten(1).sum(1).tolist() == [2, 2]
    top = saliency.amax(dim=1).flatten(1).topk(2, dim=1).indices
    assert zeroed.flatten(1).gather(1, top).all()
    assert torch.equal(out[~(out == 0)], x[~(out == 0)])
    assert torch.equal(zero_most_salient(x, saliency, 0.0), x)
    with pytest.raises(ValueError, match="shape"):
        zero_most_salient(x, saliency[:, :1], 0.1)
