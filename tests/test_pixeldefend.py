"""PixelDefend: the PixelCNN is causal and learns, DET_PD separates an easy shift, the purifier stays within ε."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from gcd_lightning.defense.baselines import FitData, PixelCNNLikelihood, PixelDefend, purify
from gcd_lightning.models.pixelcnn import PixelCNN, causal_mask


def blobs(n: int, seed: int, size: int = 8) -> torch.Tensor:
    """Dark images with one bright square at a random place, on the 256 grey levels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size)
    for k in range(n):
        i, j = torch.randint(0, size - 3, (2,), generator=g).tolist()
        x[k, 0, i : i + 3, j : j + 3] = 1.0
    return x


@pytest.fixture(scope="module")
def density():
    """A small PixelCNN fitted to ``blobs`` for 150 steps."""
    torch.manual_seed(0)
    model = PixelCNN(in_channels=1, levels=256, hidden=8, layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = DataLoader(TensorDataset(blobs(512, 0)), batch_size=64, shuffle=True)
    for (x,) in itertools.islice(itertools.cycle(data), 150):
        optimizer.zero_grad()
        model.bits_per_dim(x).mean().backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("channels", [1, 3])
def test_pixelcnn_is_causal_an_output_never_depends_on_later_pixels(channels):
    torch.manual_seed(channels)
    model = PixelCNN(in_channels=channels, levels=4, hidden=3, layers=2)
    x = torch.rand(1, channels, 5, 5, requires_grad=True)
    out = model(x)
    for c, i, j in itertools.product(range(channels), range(5), range(5)):
        (grad,) = torch.autograd.grad(out[0, c, :, i, j].sum(), x, retain_graph=True)
        for cc, ii, jj in itertools.product(range(channels), range(5), range(5)):
            later = (ii, jj) > (i, j) or ((ii, jj) == (i, j) and cc >= c)
            if later:
                assert grad[0, cc, ii, jj] == 0, (c, i, j, cc, ii, jj)
    (grad,) = torch.autograd.grad(out[0, channels - 1, :, 4, 4].sum(), x)
    assert grad.abs().sum() > 0  # the last output does read the pixels before it


def test_a_rows_logits_need_only_the_context_rows_above_it():
    torch.manual_seed(0)
    model = PixelCNN(in_channels=2, levels=4, hidden=3, layers=3)
    x = torch.rand(2, 2, 12, 7)
    full = model(x)
    for i in range(12):
        top = max(0, i - model.context_rows)
        assert torch.allclose(model(x[:, :, top : i + 1])[..., -1, :], full[..., i, :], atol=1e-6)
    assert not torch.allclose(model(x[:, :, 10 - model.context_rows + 1 : 11])[..., -1, :], full[..., 10, :])  # one row fewer


def test_causal_mask_hides_the_centre_from_mask_a_and_shows_earlier_channel_groups():
    mask_a = causal_mask(6, 3, 3, groups=3, include_centre=False)
    assert mask_a[:, :, 1, 1].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 0]]
    assert mask_a[:, :, 2, :].sum() == 0 and mask_a[:, :, 1, 2].sum() == 0 and mask_a[:, :, 0, :].all()


def test_density_training_learns_the_data(density):
    untrained = PixelCNN(in_channels=1, levels=256, hidden=8, layers=2)
    x = blobs(64, 1)
    with torch.no_grad():
        assert density.bits_per_dim(x).mean() < 0.25 * untrained.bits_per_dim(x).mean()


def test_det_pd_separates_noise_and_is_differentiable(density):
    clean, shifted = blobs(64, 2), (blobs(64, 3) + 0.3 * torch.rand(64, 1, 8, 8)).clamp(0, 1)
    detector = PixelCNNLikelihood(density, fpr=0.05)
    detector.fit(FitData(clean=clean, adversarial=shifted, clean_val=blobs(64, 4), train=TensorDataset(clean), batch_size=32))
    scores = torch.cat([detector.scores(clean, 32), detector.scores(shifted, 32)])
    truth = torch.cat([torch.zeros(64), torch.ones(64)])
    from torchmetrics.functional.classification import binary_auroc

    assert binary_auroc(scores, truth.long()).item() > 0.95
    x = shifted[:4].clone().requires_grad_(True)
    detector(x)[:, 1].sum().backward()
    assert x.grad.abs().sum() > 0


def test_det_pd_without_a_density_model_says_so():
    with pytest.raises(RuntimeError, match="no PixelCNN yet"):
        PixelCNNLikelihood()(blobs(2, 0))


def test_purification_stays_within_eps_and_makes_noisy_images_more_likely(density):
    noisy = (blobs(16, 5) + 0.15 * torch.rand(16, 1, 8, 8)).clamp(0, 1)
    purified = PixelDefend(density, eps=0.2)(noisy)
    assert (purified - noisy).abs().max() <= 0.2 + 0.5 / 255 + 1e-6 and purified.min() >= 0 and purified.max() <= 1
    assert torch.equal(purified, purified.mul(255).round().div(255))  # on the grey levels
    with torch.no_grad():
        assert (density.log_likelihood(purified) > density.log_likelihood(noisy)).float().mean() >= 0.9
    assert torch.allclose(purify(density, noisy, 0.0), noisy.mul(255).round().div(255))  # ε = 0 only quantises
