"""The HeatKernel abstraction: the transition density of Brownian motion on a manifold."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from geodiffusion.manifolds.base import Manifold
from geodiffusion.registry import Component

__all__ = ["HeatKernel", "EIGEN_MAX_CANCELLATION", "raise_unresolved"]

EIGEN_MAX_CANCELLATION = 1e10
r"""Largest cancellation :math:`\sum_l |w_l P_l| / p_t` an explicit eigen (character, Gegenbauer) series may have. Its
float64 rounding error grows with it: on SO(3) near the cut locus at :math:`t = 0.3` the relative error of
:math:`p_t` was 1e-17 to 5e-17 times the cancellation (1.4e-7 at 1.3e10, 1.7e-5 at 9.6e11), so this bound keeps
the error below about 5e-7, within the 1e-6 that the heat kernels promise."""


def raise_unresolved(series: str, unresolved: Tensor, angle: Tensor, t: Tensor, why: str, remedy: str) -> None:
    """Raise a ValueError naming the first point (``angle``, ``t``, broadcast) where ``series`` is ``unresolved``."""
    if not bool(unresolved.any()):
        return
    angle, t, unresolved = torch.broadcast_tensors(angle.detach(), t.detach(), unresolved)
    i = int(unresolved.reshape(-1).nonzero()[0, 0])
    raise ValueError(
        f"{series} cannot resolve p_t in float64 at {int(unresolved.sum())} of {unresolved.numel()} points (e.g. "
        f"angle {float(angle.reshape(-1)[i]):.4g}, t = {float(t.reshape(-1)[i]):.4g}): {why}; {remedy}"
    )


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
