"""Two-sample statistics between samples of a model and data: energy distance and MMD."""

from __future__ import annotations

import torch
from torch import Tensor

from geodiffusion._validation import check_finite, check_same_device_dtype

__all__ = ["energy_distance", "mmd_rbf", "median_bandwidth"]


def _flat_pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    check_finite("x", x)
    check_finite("y", y)
    if not (x.is_floating_point() and y.is_floating_point()):
        raise TypeError(f"x, y: expected floating tensors, got {x.dtype} and {y.dtype}")
    check_same_device_dtype(x=x, y=y)
    if x.dim() < 1 or y.dim() < 1 or x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"x, y: expected samples [n, ...] and [m, ...] of one event shape, got {list(x.shape)} and {list(y.shape)}"
        )
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"x, y: the unbiased statistics need at least 2 samples each, got {len(x)} and {len(y)}")
    return x.reshape(len(x), -1), y.reshape(len(y), -1)


def _pairwise_distances(a: Tensor, b: Tensor) -> Tensor:
    # the direct (non-matmul) form keeps d(x, x) exactly 0 and small distances accurate in float32
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _off_diagonal_mean(k: Tensor) -> Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Energy distance :math:`\mathcal{E}(P, Q) = 2\,\mathbb{E}\|X - Y\| - \mathbb{E}\|X - X'\| - \mathbb{E}\|Y - Y'\|`
    (Székely and Rizzo), estimated by the unbiased U-statistic (within-sample means over :math:`i \ne j`).

    Zero in expectation iff :math:`P = Q`; the estimate can be slightly negative. Samples ``x [n, ...]``,
    ``y [m, ...]`` are flattened per sample; returns a scalar tensor on their device and dtype.

    >>> x, y = torch.tensor([[0.0], [1.0]]), torch.tensor([[2.0], [4.0]])
    >>> float(energy_distance(x, y))  # 2 * 2.5 - 1 - 2
    2.0
    """
    x, y = _flat_pair(x, y)
    between = _pairwise_distances(x, y).mean()
    return 2 * between - _off_diagonal_mean(_pairwise_distances(x, x)) - _off_diagonal_mean(_pairwise_distances(y, y))


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    r"""Median heuristic :math:`h = \operatorname{median}\{\|z_i - z_j\| : i < j\}` over the pooled sample
    :math:`z = x \cup y` (the lower middle value for an even count)."""
    x, y = _flat_pair(x, y)
    z = torch.cat([x, y])
    upper = torch.ones(len(z), len(z), dtype=torch.bool, device=z.device).triu(1)
    return _pairwise_distances(z, z).masked_select(upper).median()


def mmd_rbf(x: Tensor, y: Tensor, bandwidth: float | Tensor | None = None) -> Tensor:
    r"""Squared maximum mean discrepancy with the Gaussian kernel :math:`k(a, b) = \exp(-\|a - b\|^2 / 2h^2)`,
    unbiased: :math:`\widehat{\mathrm{MMD}}^2 = \overline{k(x_i, x_j)}_{i \ne j} + \overline{k(y_i, y_j)}_{i \ne j}
    - 2\,\overline{k(x_i, y_j)}` (Gretton et al., 2012).

    ``bandwidth`` :math:`h` defaults to :func:`median_bandwidth`. Returns a scalar tensor.
    """
    x, y = _flat_pair(x, y)
    h = median_bandwidth(x, y) if bandwidth is None else torch.as_tensor(bandwidth, dtype=x.dtype, device=x.device)
    if not bool(h > 0):
        raise ValueError(f"bandwidth: expected a positive value, got {float(h)}")

    def gram(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-(_pairwise_distances(a, b) ** 2) / (2 * h**2))

    return _off_diagonal_mean(gram(x, x)) + _off_diagonal_mean(gram(y, y)) - 2 * gram(x, y).mean()
