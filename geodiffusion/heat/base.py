"""The HeatKernel abstraction: the transition density of Brownian motion on a manifold."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from geodiffusion.manifolds.base import Manifold
from geodiffusion.registry import Component

__all__ = ["HeatKernel"]


class HeatKernel(Component, family=True):
    r"""Heat kernel :math:`p_t(x_0, x)`: the density (w.r.t. Riemannian volume) of Brownian
    motion started at :math:`x_0`, solving :math:`\partial_t p = \tfrac12 \Delta_x p`.

    The convention is the probabilists' one (generator :math:`\Delta/2`), so on
    :math:`\mathbb{R}^n`, :math:`p_t(x_0, \cdot) = \mathcal{N}(x_0, t I)`.
    """

    @property
    @abstractmethod
    def manifold(self) -> Manifold:
        """The manifold :math:`M` the Brownian motion lives on."""

    @abstractmethod
    def log_prob(self, x0: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\log p_t(x_0, x)`."""

    @abstractmethod
    def sample(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
        r"""One draw :math:`x \sim p_t(x_0, \cdot)` per point of ``x0``."""

    def score(self, x0: Tensor, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`\nabla_x \log p_t(x_0, x) \in T_x M` (autograd of ``log_prob`` unless overridden)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(x0, x, t).sum(), x)
        return self.manifold.proj(x.detach(), grad)
