r"""Powers :math:`M^k` of one manifold, with the product metric (e.g. SU(3)^k for lattice gauge fields).

A point is a stacked tensor ``[..., k, *factor.point_shape]`` (of the factor's dtype): the factor's batched maps
act on all ``k`` components at once. :math:`d(x, y)^2 = \sum_i d_M(x_i, y_i)^2`, volume :math:`\mathrm{vol}(M)^k`,
:math:`\Delta = \sum_i \Delta_i`, spectrum: sums of ``k`` factor eigenvalues.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import random_permutations
from geodiffusion.manifolds.base import Manifold
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["ProductManifold"]


class ProductManifold(Manifold, kind="product"):
    r""":math:`M^k` with points ``[..., k, *shape]``; every map is the factor's, componentwise.

    >>> m = ProductManifold(factor={"kind": "su", "n": 3}, power=4)
    >>> m.dim, m.point_shape
    (32, (4, 3, 3))
    """

    class Spec(Spec):
        """The k-th power M^k of a manifold M (product metric)."""

        factor: component_spec(Manifold) = Field(description="the factor manifold M")
        power: int = Field(2, ge=1, le=4096, description="number of factors k")

    @classmethod
    def examples(cls):
        return [cls.Spec(factor={"kind": "so3"}, power=2), cls.Spec(factor={"kind": "su", "n": 2}, power=2)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.factor = build(self.spec.factor, Manifold)
        self.compact = self.factor.compact
        self.has_heat_kernel = self.factor.has_heat_kernel

    @property
    def power(self) -> int:
        return self.spec.power

    @property
    def dim(self) -> int:
        return self.factor.dim * self.spec.power

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.power,) + tuple(self.factor.point_shape)

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        x = self.factor.random_point(n * self.spec.power, generator, device=device, dtype=dtype)
        return x.reshape((n,) + self.point_shape)

    def reference_log_prob(self, x: Tensor) -> Tensor:
        self.check_point("x", x)
        return self.factor.reference_log_prob(x).sum(-1)

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return self.factor.proj(x, v)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return self.factor.exp(x, v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        return self.factor.log(x, y)

    def inner(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        return self.factor.inner(x, u, v).sum(-1)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.factor.dist(x, y) ** 2).sum(-1).sqrt()

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        self.check_point("x", x)
        return self.factor.belongs(x, atol).all(-1)

    def random_uniform(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        self.factor.random_uniform(1, None, device=device, dtype=dtype)  # raises unless the factor is compact
        return self.random_point(n, generator, device=device, dtype=dtype)

    def laplace_beltrami(self, fn, x: Tensor) -> Tensor:
        r""":math:`\Delta f = \sum_i \Delta_i f`, each factor's operator on :math:`f` with the others held fixed."""
        nd = len(self.factor.point_shape)
        axis = x.dim() - nd - 1
        total = None
        for i in range(self.spec.power):

            def partial(z: Tensor, i: int = i) -> Tensor:
                parts = list(x.detach().unbind(axis))
                parts[i] = z
                return fn(torch.stack(parts, axis))

            term = self.factor.laplace_beltrami(partial, x.select(axis, i))
            total = term if total is None else total + term
        return total

    def log_differential(self, x: Tensor, u: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """Each factor's own differential of ``log``."""
        shape = tuple(self.factor.point_shape)
        flat = [a.reshape((-1,) + shape) for a in (x, u, y, w)]
        return self.factor.log_differential(*flat).reshape(w.shape)

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        """Each factor's own random isometry, then a random permutation of the ``k`` (identical) factors."""
        k, shape = self.spec.power, tuple(self.factor.point_shape)
        factor = self.factor.random_isometry(n * k, generator)
        perm = random_permutations(n, k, generator).reshape((n, k) + (1,) * len(shape))

        def act(x: Tensor) -> Tensor:
            moved = factor(x.reshape((n * k,) + shape)).reshape(x.shape)
            return torch.take_along_dim(moved, perm.to(x.device), 1)

        return act

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        """Smallest ``count`` distinct eigenvalues of :math:`-\\Delta` on :math:`M^k` with multiplicities."""
        ev, mult = self.factor.laplacian_spectrum(count)
        table = {0.0: 1.0}
        for _ in range(self.spec.power):
            nxt: dict[float, float] = {}
            for a, ma in table.items():
                for b, mb in zip(ev.tolist(), mult.tolist(), strict=True):
                    key = round(a + b, 9)
                    nxt[key] = nxt.get(key, 0.0) + ma * mb
            table = dict(sorted(nxt.items())[:count])
        keys = sorted(table)[:count]
        return torch.tensor(keys, dtype=torch.float64), torch.tensor([table[k] for k in keys], dtype=torch.float64)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.product import ProductHeatKernel

        return ProductHeatKernel(manifold=self.spec, **options)
