"""Isotropic Gaussians: the closed-form marginals and priors of linear processes."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion._random import randn

__all__ = ["DiagonalGaussian"]


class DiagonalGaussian:
    r""":math:`\mathcal{N}(\mu, \sigma^2 I)` over events of the last ``event_ndim`` axes.

    ``mean`` and ``std`` broadcast against each other; ``log_prob`` sums over the event axes.
    """

    def __init__(self, mean: Tensor, std: Tensor, event_ndim: int) -> None:
        self.mean, self.std = torch.broadcast_tensors(mean, std)
        self.event_ndim = event_ndim

    def _reduce(self, x: Tensor) -> Tensor:
        return x.flatten(x.dim() - self.event_ndim).sum(-1) if self.event_ndim else x

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = randn(self.mean.shape, generator, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + self.std * noise

    def log_prob(self, x: Tensor) -> Tensor:
        z = (x - self.mean) / self.std
        return self._reduce(-0.5 * z**2 - torch.log(self.std) - 0.5 * math.log(2 * math.pi))

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x \log p(x) = -(x - \mu) / \sigma^2`."""
        return -(x - self.mean) / self.std**2
