"""Flat space R^d."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.manifolds.base import Manifold
from geodiffusion.spec import Spec

__all__ = ["Euclidean"]


class Euclidean(Manifold, kind="euclidean"):
    r""":math:`\mathbb{R}^d` with the flat metric: :math:`\exp_x v = x + v`, :math:`\log_x y = y - x`."""

    has_heat_kernel = True

    class Spec(Spec):
        """Euclidean space R^d."""

        dim: int = Field(ge=1, description="dimension d")

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.dim,)

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        return randn((n, self.spec.dim), generator, dtype=dtype, device=device)

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return v

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return x + v

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        return y - x

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        self.check_point("x", x)
        return torch.isfinite(x).all(-1)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.euclidean import EuclideanHeatKernel

        return EuclideanHeatKernel(manifold=self.spec, **options)
