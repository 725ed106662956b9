"""``Mahalanobis`` (``DET_MDS``; Lee, Lee, Lee & Shin 2018): class Gaussians on ``f``'s features.

For each chosen layer ℓ of ``f``: the feature vector ``h_ℓ(x)`` (a feature map averaged over its
spatial positions), class means ``μ_ℓc`` and one tied covariance ``Σ_ℓ`` fitted on clean images
``f`` trained on (``class_gaussians``), and the confidence ``M_ℓ(x) = max_c −(h−μ_ℓc)ᵀ Σ_ℓ⁻¹ (h−μ_ℓc)``
(``mahalanobis_confidence``) measured after the input pre-processing step
``x̂ = x + ε·sign(∇ₓ M_ℓ(x))``. A logistic regression on ``(M_1 … M_L)`` fitted on clean and
adversarial training pairs gives the score (the paper's supervised setting); ε is chosen from
``noise_grid`` by the AUC on held-out pairs, as the authors chose it on validation data.

Choices the paper leaves open, and ours: the layers are, by default, the output of every pooling
layer of ``f`` and the input of its last linear layer (the end of each block and the penultimate
features, as the authors' ResNet features); ``Σ⁻¹`` is the pseudo-inverse (the authors' sklearn
``EmpiricalCovariance``); the features are standardised before the regression. The sign step is a
constant under differentiation, so white-box attacks get the gradient of ``M_ℓ`` at ``x̂``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from gcd_lightning.defense.baselines.scored import FitData, ScoredDetector, in_batches
from gcd_lightning.defense.sensitivity import input_gradients_enabled

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def class_gaussians(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (C, D) and the precision (D, D) of the tied covariance ``Σ = 1/N Σ_i (h_i−μ_yi)(h_i−μ_yi)ᵀ``.

    Computed in float64; the precision is the pseudo-inverse of ``Σ``. Every class needs at least one image.
    """
    h = features.double()
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        raise ValueError(f"class_gaussians: no image of class(es) {(counts == 0).nonzero().flatten().tolist()}")
    means = torch.zeros(num_classes, h.shape[1], dtype=torch.float64).index_add_(0, labels, h) / counts[:, None]
    centred = h - means[labels]
    covariance = centred.T @ centred / len(h)
    return means, torch.linalg.pinv(covariance, hermitian=True)


def mahalanobis_confidence(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """(N,) ``max_c −(h−μ_c)ᵀ P (h−μ_c)`` (Lee et al. 2018, eq. 2), in the dtype of ``features``."""
    diff = features[:, None, :] - means.to(features.dtype)[None]  # (N, C, D)
    distance = torch.einsum("ncd,de,nce->nc", diff, precision.to(features.dtype), diff)
    return (-distance).amax(dim=1)


def default_layers(model: nn.Module) -> list[str]:
    """Every pooling layer's output and the last linear layer's input (``"<name>:in"``)."""
    named = list(model.named_modules())
    layers = [name for name, module in named if isinstance(module, POOLS)]
    linear = [name for name, module in named if isinstance(module, nn.Linear)]
    return layers + ([f"{linear[-1]}:in"] if linear else [])


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Each layer names a module of ``model``, as ``"<name>"`` (its output) or ``"<name>:in"`` (its input)."""
    modules = dict(model.named_modules())
    for layer in layers:
        name, _, side = layer.partition(":")
        if name not in modules or side not in ("", "in"):
            raise ValueError(f"Mahalanobis: no layer {layer!r} in the classifier; layers are <module name> or "
                             f"<module name>:in, module names such as {[n for n in modules if n][:8]}")


def layer_features(model: nn.Module, layers: Sequence[str], x: torch.Tensor) -> list[torch.Tensor]:
    """The features of ``layers`` (see ``check_layers``) in one forward pass of ``model``, differentiable in
    ``x``: a feature map (N, C, H, W) averaged over its positions, a vector (N, D) as it is. The hooks that
    catch them live for this pass only, so ``model`` runs unhooked everywhere else."""
    modules = dict(model.named_modules())
    caught: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:
        name, _, side = layer.partition(":")
        if side == "in":
            handles.append(modules[name].register_forward_pre_hook(lambda _, inputs, layer=layer: caught.__setitem__(layer, inputs[0])))
        else:
            handles.append(modules[name].register_forward_hook(lambda _, __, output, layer=layer: caught.__setitem__(layer, output)))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
    return [caught[layer].flatten(2).mean(dim=2) if caught[layer].dim() > 2 else caught[layer].flatten(1) for layer in layers]


class Mahalanobis(ScoredDetector):
    """``DET_MDS``: logistic regression on per-layer Mahalanobis confidences with input pre-processing.

    Args:
        classifier: the protected classifier ``f`` (by reference, not a submodule).
        input_shape: ``(C, H, W)`` of the images (to size the statistics before they are fitted or loaded).
        layers: module names of ``f`` (``"<name>"``: its output, ``"<name>:in"``: its input); null:
            ``default_layers``.
        noise_grid: candidate ε of the pre-processing step; the one with the best held-out AUC is kept.
        fit_images: how many of ``f``'s training images fit the class Gaussians.
        fpr: false-positive rate of the threshold on clean validation images.
    """

    name = "mds"

    def __init__(self, classifier: nn.Module, input_shape: Sequence[int], layers: Sequence[str] | None = None,
                 noise_grid: Sequence[float] = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01), fit_images: int = 5000,
                 fpr: float = 0.05) -> None:
        super().__init__(fpr)
        object.__setattr__(self, "classifier", classifier.eval())
        self.layers = list(layers) if layers is not None else default_layers(classifier)
        if not self.layers:
            raise ValueError("Mahalanobis: the classifier has no pooling or linear layer to take features from; give layers")
        if any(e < 0 for e in noise_grid) or not noise_grid:
            raise ValueError(f"Mahalanobis: noise_grid must be non-empty, every ε >= 0, got {list(noise_grid)}")
        self.noise_grid, self.fit_images = list(noise_grid), fit_images
        check_layers(classifier, self.layers)
        parameter = next(classifier.parameters())
        probe = torch.zeros(1, *input_shape, device=parameter.device, dtype=parameter.dtype)
        with torch.no_grad():
            num_classes = classifier(probe).shape[1]
            dims = [h.shape[1] for h in layer_features(classifier, self.layers, probe)]
        for i, d in enumerate(dims):
            self.register_buffer(f"means_{i}", torch.zeros(num_classes, d, dtype=torch.float64))
            self.register_buffer(f"precision_{i}", torch.zeros(d, d, dtype=torch.float64))
        self.register_buffer("noise", torch.zeros(()))
        self.register_buffer("feature_mean", torch.zeros(len(dims)))
        self.register_buffer("feature_std", torch.ones(len(dims)))
        self.register_buffer("weight", torch.zeros(len(dims)))
        self.register_buffer("bias", torch.zeros(()))

    def gaussians(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"means_{i}"), getattr(self, f"precision_{i}")

    def layer_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``h_ℓ(x)`` of every layer (one forward pass of ``f``), differentiable in ``x``."""
        return layer_features(self.classifier, self.layers, x)

    def confidences(self, x: torch.Tensor, noise: float) -> torch.Tensor:
        """(N, L) ``M_ℓ(x̂_ℓ)`` with the pre-processing step of size ``noise`` taken per layer."""
        columns = []
        for i in range(len(self.layers)):
            means, precision = self.gaussians(i)
            x_hat = x
            if noise > 0:
                with input_gradients_enabled():
                    probe = x.detach().clone().requires_grad_(True)
                    confidence = mahalanobis_confidence(self.layer_features(probe)[i], means, precision)
                    (grad,) = torch.autograd.grad(confidence.sum(), probe)
                x_hat = x + noise * grad.sign()  # a constant shift: the gradient flows through x
            columns.append(mahalanobis_confidence(self.layer_features(x_hat)[i], means, precision))
        return torch.stack(columns, dim=1)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        m = (self.confidences(x, float(self.noise)) - self.feature_mean) / self.feature_std
        return m @ self.weight + self.bias

    def fit_statistics(self, data: FitData) -> dict[str, float]:
        """Class Gaussians on ``f``'s training images, then ε and the regression (fitted on the training
        pairs, ε chosen by the AUC on the held-out pairs)."""
        per_batch, labels = [], []
        with torch.no_grad():
            for x, y in data.train_batches(self.fit_images):
                per_batch.append([h.detach().cpu() for h in self.layer_features(x.to(self.weight.device))])
                labels.append(y)
        labels = torch.cat(labels)
        num_classes = self.means_0.shape[0]
        for i, h in enumerate(torch.cat(layer) for layer in zip(*per_batch)):
            means, precision = class_gaussians(h, labels, num_classes)
            getattr(self, f"means_{i}").copy_(means)
            getattr(self, f"precision_{i}").copy_(precision)
        half = len(data.clean) // 2  # the regression's pairs and the pairs that choose ε
        best = None
        for noise in self.noise_grid:
            clean, adv = (in_batches(lambda x: self.confidences(x, noise), images, data.batch_size, self.weight.device)
                          for images in (data.clean, data.adversarial))
            x = torch.cat([clean[:half], adv[: len(adv) // 2]])
            y = torch.cat([torch.zeros(half), torch.ones(len(adv) // 2)])
            mean, std, weight, bias = logistic_regression(x, y)
            held = torch.cat([clean[half:], adv[len(adv) // 2:]])
            truth = torch.cat([torch.zeros(len(clean) - half), torch.ones(len(adv) - len(adv) // 2)])
            auc = binary_auroc(((held - mean) / std) @ weight + bias, truth.long()).item()
            if best is None or auc > best[0]:
                best = (auc, noise, mean, std, weight, bias)
        auc, noise, mean, std, weight, bias = best
        self.noise.fill_(noise)
        self.feature_mean.copy_(mean), self.feature_std.copy_(std), self.weight.copy_(weight), self.bias.fill_(bias)
        return {"noise": noise, "val_auc": auc, "fit_images": float(len(labels))}


def logistic_regression(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 200):
    """Standardised logistic regression by L-BFGS: ``(mean, std, weight, bias)`` with ``p(y=1) = σ(((x−mean)/std)·w + b)``."""
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-12)
    z = ((x - mean) / std).double()
    target = y.double()
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, target) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with input_gradients_enabled():
        optimizer.step(closure)
    return mean, std, weight.detach().float(), bias.detach().item()

