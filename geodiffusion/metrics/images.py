r"""Image metrics: a Fréchet distance on features of a small digit classifier trained in the package, the trajectory
equivariance error :math:`\Delta x_0`, and L1 / SSIM for paired translation (bridges).

The classifier replaces Inception (which cannot be downloaded here): a two-layer CNN trained on the rotated digits with
a fixed seed, saved in the run folder and shared by every model of the run, so their Fréchet distances are comparable.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from torch import Tensor, nn

__all__ = [
    "DigitClassifier",
    "train_digit_classifier",
    "load_or_train_classifier",
    "frechet_distance",
    "feature_frechet_distance",
    "delta_x0",
    "l1_error",
    "ssim",
]


class DigitClassifier(nn.Module):
    """conv(1->16, 3x3) - ReLU - 2x2 pool - conv(16->32) - ReLU - global mean - linear(32->64) - ReLU (the features)
    - linear(64->10). Works on any square size >= 4; the global mean pool makes it size-agnostic."""

    def __init__(self, channels: int = 1, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``[N, feature_dim]`` of ``x [N, C, H, W]``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def train_digit_classifier(
    images: Tensor, labels: Tensor, *, steps: int = 600, batch_size: int = 128, lr: float = 3e-3, seed: int = 0
) -> DigitClassifier:
    """Adam on cross-entropy over seeded minibatches; returns the classifier in eval mode (float32, CPU)."""
    if images.dim() != 4 or labels.shape != images.shape[:1]:
        raise ValueError(f"expected images [N, C, H, W] and labels [N], got {list(images.shape)} and {list(labels.shape)}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(images.shape[1])
    images, labels = images.float().cpu(), labels.cpu()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=gen)
        loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval().requires_grad_(False)


def load_or_train_classifier(path: str | Path, images: Tensor, labels: Tensor, **kwargs) -> DigitClassifier:
    """The classifier cached at ``path`` (a state dict) if present, else trained by :func:`train_digit_classifier` and saved."""
    path = Path(path)
    if path.is_file():
        model = DigitClassifier(images.shape[1])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval().requires_grad_(False)
    model = train_digit_classifier(images, labels, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    r""":math:`\|\mu_1 - \mu_2\|^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})`, the squared 2-Wasserstein
    distance of two Gaussians, with the matrix square root by :func:`scipy.linalg.sqrtm` (in float64; the imaginary
    round-off of a near-singular product is dropped)."""
    m1, m2 = mu1.detach().double().cpu().numpy(), mu2.detach().double().cpu().numpy()
    c1, c2 = cov1.detach().double().cpu().numpy(), cov2.detach().double().cpu().numpy()
    with warnings.catch_warnings():
        # fewer samples than features make the product singular: its square root is still the right limit
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = scipy.linalg.sqrtm(c1 @ c2)
    if np.iscomplexobj(root):
        root = root.real
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(root))


def feature_frechet_distance(classifier: DigitClassifier, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Fréchet distance between the Gaussians fitted to the classifier features of images ``x`` and ``y``."""
    with torch.no_grad():
        fx = torch.cat([classifier.features(b.float().cpu()) for b in x.split(batch_size)]).double()
        fy = torch.cat([classifier.features(b.float().cpu()) for b in y.split(batch_size)]).double()
    return frechet_distance(fx.mean(0), torch.cov(fx.T), fy.mean(0), torch.cov(fy.T))


def delta_x0(x0_of_gx: Tensor, g_x0: Tensor) -> float:
    r""":math:`\Delta x_0 = \mathrm{mean}\,|x_0(g \cdot x_T) - g \cdot x_0(x_T)|` (SPDM), in float64."""
    if x0_of_gx.shape != g_x0.shape:
        raise ValueError(f"expected equal shapes, got {list(x0_of_gx.shape)} and {list(g_x0.shape)}")
    return float((x0_of_gx.double() - g_x0.double()).abs().mean())


def l1_error(x: Tensor, y: Tensor) -> float:
    """Mean absolute error between two image stacks of equal shape."""
    if x.shape != y.shape:
        raise ValueError(f"expected equal shapes, got {list(x.shape)} and {list(y.shape)}")
    return float((x.double() - y.double()).abs().mean())


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0) -> float:
    """Mean SSIM (Wang et al., 2004) of ``x`` against reference ``y`` (``[N, 1, H, W]``, values in a range of width
    ``data_range``), by :func:`skimage.metrics.structural_similarity` with a 7x7 window (images of side >= 7)."""
    from skimage.metrics import structural_similarity

    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected equal shapes [N, 1, H, W], got {list(x.shape)} and {list(y.shape)}")
    # images stacked on the channel axis: skimage averages the per-image SSIM over it
    a = x[:, 0].double().cpu().permute(1, 2, 0).numpy()
    b = y[:, 0].double().cpu().permute(1, 2, 0).numpy()
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1))
