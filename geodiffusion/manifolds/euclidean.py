"""Flat space R^d."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.groups.matrix import haar_orthogonal
from geodiffusion.manifolds.base import Manifold
from geodiffusion.spec import Spec

__all__ = ["Euclidean"]


class Euclidean(Manifold, kind="euclidean"):
    r""":math:`\mathbb{R}^d` with the flat metric: :math:`\exp_x v = x + v`, :math:`\log_x y = y - x`."""

    has_heat_kernel = True
    flat = True

    class Spec(Spec):
        """Euclidean space R^d."""

        dim: int = Field(ge=1, description="dimension d")

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=1), cls.Spec(dim=3)]

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.dim,)

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        r""":math:`x \mapsto Qx + b`, :math:`Q` Haar on :math:`O(d)`, :math:`b` standard normal."""
        d = self.spec.dim
        q, b = haar_orthogonal(n, d, generator, special=False, dtype=torch.float64), randn((n, d), generator, dtype=torch.float64)
        return lambda x: (q.to(x) @ x[..., None])[..., 0] + b.to(x)

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        return randn((n, self.spec.dim), generator, dtype=dtype, device=device)

    def reference_log_prob(self, x: Tensor) -> Tensor:
        """Standard normal, the law of ``random_point``."""
        self.check_point("x", x)
        return -0.5 * (x**2).sum(-1) - 0.5 * self.spec.dim * math.log(2 * math.pi)

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
