r"""Products of manifolds with the product metric: powers :math:`M^k` (e.g. SU(3)^k for lattice gauge fields) and
products :math:`M_1 \times \dots \times M_k` of different factors (e.g. :math:`S^2 \times SO(3)`).

A point of ``product`` (:math:`M^k`) is a stacked tensor ``[..., k, *factor.point_shape]`` of the factor's dtype, so
the factor's batched maps act on all ``k`` components at once. A point of ``mixed_product`` is the concatenation of
its factors' flattened points, ``[..., D]`` with :math:`D = \sum_i` ``numel(point_shape_i)``; it is complex when a
factor is (SU(n)), and a real factor then occupies real entries of it.
Both have :math:`d(x, y)^2 = \sum_i d_i(x_i, y_i)^2`, volume :math:`\prod_i \mathrm{vol}(M_i)`,
:math:`\Delta = \sum_i \Delta_i` and spectrum the sums of one eigenvalue per factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import random_permutations
from geodiffusion.manifolds.base import Manifold
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["ProductManifold", "MixedProductManifold", "sum_spectra"]


def sum_spectra(spectra: list[tuple[Tensor, Tensor]], count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` smallest distinct eigenvalues of :math:`-\\Delta` on a product and their multiplicities, from
    each factor's ``(eigenvalues, multiplicities)``: an eigenvalue of the product is one eigenvalue per factor
    summed. Every factor's spectrum starts at 0, so the ``count`` smallest sums need only each factor's ``count``
    smallest eigenvalues, and each partial table may be cut to its ``count`` smallest entries."""
    table = {0.0: 1.0}
    for ev, mult in spectra:
        nxt: dict[float, float] = {}
        for a, ma in table.items():
            for b, mb in zip(ev.tolist(), mult.tolist(), strict=True):
                key = round(a + b, 9)
                nxt[key] = nxt.get(key, 0.0) + ma * mb
        table = dict(sorted(nxt.items())[:count])
    keys = sorted(table)[:count]
    return torch.tensor(keys, dtype=torch.float64), torch.tensor([table[k] for k in keys], dtype=torch.float64)


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
        return sum_spectra([self.factor.laplacian_spectrum(count)] * self.spec.power, count)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.product import ProductHeatKernel

        return ProductHeatKernel(manifold=self.spec, **options)


class MixedProductManifold(Manifold, kind="mixed_product"):
    r""":math:`M_1 \times \dots \times M_k` of any factors, with points ``[..., D]``: each factor's flattened point in
    turn. Every map is each factor's on its slice; on a complex product (one factor is SU(n)) a real factor reads the
    real part of its slice, and ``belongs`` also asks that slice's imaginary part to vanish.

    >>> m = MixedProductManifold(factors=[{"kind": "sphere", "dim": 2}, {"kind": "so3"}])
    >>> m.dim, m.point_shape
    (5, (12,))
    """

    class Spec(Spec):
        """The product M_1 x ... x M_k of manifolds (product metric); ``product`` is the faster M^k."""

        factors: list[component_spec(Manifold)] = Field(
            min_length=2, max_length=64, description="the factor manifolds M_1, ..., M_k, in the order of their slices"
        )

    @classmethod
    def examples(cls):
        return [
            cls.Spec(factors=[{"kind": "sphere", "dim": 2}, {"kind": "so3"}]),
            cls.Spec(factors=[{"kind": "su", "n": 2}, {"kind": "sphere", "dim": 1}]),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.factors = [build(f, Manifold) for f in self.spec.factors]
        self._shapes = [tuple(f.point_shape) for f in self.factors]
        ends = [0]
        for shape in self._shapes:
            ends.append(ends[-1] + math.prod(shape))
        self._slices = list(zip(ends[:-1], ends[1:], strict=True))
        # SU(n)'s convention: a complex manifold returns complex points for a real dtype; a private generator keeps
        # building this manifold from moving the global random stream
        probe = torch.Generator().manual_seed(0)
        self._complex = [f.random_point(1, probe, dtype=torch.float64).is_complex() for f in self.factors]
        self.is_complex = any(self._complex)
        self.compact = all(f.compact for f in self.factors)
        self.has_heat_kernel = all(f.has_heat_kernel for f in self.factors)

    @property
    def dim(self) -> int:
        return sum(f.dim for f in self.factors)

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self._slices[-1][1],)

    def split(self, x: Tensor) -> list[Tensor]:
        """The factors' components ``[..., *point_shape_i]`` of points or ambient vectors ``[..., D]``."""
        self.check_point("x", x)
        if self.is_complex and not x.is_complex():
            raise ValueError(f"x: points and vectors of {self._name()} are complex, got dtype {x.dtype}")
        batch = tuple(x.shape[:-1])
        parts = []
        for (a, b), shape, cplx in zip(self._slices, self._shapes, self._complex, strict=True):
            part = x[..., a:b]
            parts.append((part if cplx or not x.is_complex() else part.real).reshape(batch + shape))
        return parts

    def join(self, parts: list[Tensor]) -> Tensor:
        """Inverse of :meth:`split`: the factors' components, batch shapes broadcast, as one ``[..., D]`` tensor."""
        pairs = list(zip(parts, self._shapes, strict=True))
        batch = torch.broadcast_shapes(*(p.shape[: p.dim() - len(s)] for p, s in pairs))
        dtype = reduce(torch.promote_types, [p.dtype for p in parts])
        return torch.cat([p.to(dtype).expand(batch + s).reshape(batch + (-1,)) for p, s in pairs], -1)

    def _name(self) -> str:
        return " x ".join(type(f).__name__ for f in self.factors)

    def _map(self, method: str, *tensors: Tensor) -> Tensor:
        split = [self.split(t) for t in tensors]
        return self.join([getattr(f, method)(*args) for f, *args in zip(self.factors, *split, strict=True)])

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        real = dtype.to_real() if dtype is not None else None
        return self.join(
            [
                f.random_point(n, generator, device=device, dtype=dtype if cplx else real)
                for f, cplx in zip(self.factors, self._complex, strict=True)
            ]
        )

    def reference_log_prob(self, x: Tensor) -> Tensor:
        return sum(f.reference_log_prob(p) for f, p in zip(self.factors, self.split(x), strict=True))

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        return self._map("proj", x, v)

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        return self._map("exp", x, v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        return self._map("log", x, y)

    def log_differential(self, x: Tensor, u: Tensor, y: Tensor, w: Tensor) -> Tensor:
        """Each factor's own differential of ``log``."""
        return self._map("log_differential", x, u, y, w)

    def inner(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        parts = zip(self.factors, self.split(x), self.split(u), self.split(v), strict=True)
        return sum(f.inner(*args) for f, *args in parts)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return sum(f.dist(a, b) ** 2 for f, a, b in zip(self.factors, self.split(x), self.split(y), strict=True)).sqrt()

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        inside = [f.belongs(p, atol) for f, p in zip(self.factors, self.split(x), strict=True)]
        if x.is_complex():  # a real factor's slice must be real
            for (a, b), cplx in zip(self._slices, self._complex, strict=True):
                if not cplx:
                    inside.append((x[..., a:b].imag.abs() <= atol).all(-1))
        return reduce(torch.logical_and, inside)

    def laplace_beltrami(self, fn, x: Tensor) -> Tensor:
        r""":math:`\Delta f = \sum_i \Delta_i f`, each factor's operator on :math:`f` with the others held fixed."""
        parts = [p.detach() for p in self.split(x)]
        total = None
        for i, f in enumerate(self.factors):

            def partial(z: Tensor, i: int = i) -> Tensor:
                return fn(self.join(parts[:i] + [z] + parts[i + 1 :]).to(x.dtype))

            term = f.laplace_beltrami(partial, parts[i])
            total = term if total is None else total + term
        return total

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        """Each factor's own random isometry on its slice."""
        maps = [f.random_isometry(n, generator) for f in self.factors]
        return lambda x: self.join([g(p) for g, p in zip(maps, self.split(x), strict=True)]).to(x.dtype)

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        """Smallest ``count`` distinct eigenvalues of :math:`-\\Delta` on the product with multiplicities."""
        return sum_spectra([f.laplacian_spectrum(count) for f in self.factors], count)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.product import MixedProductHeatKernel

        return MixedProductHeatKernel(manifold=self.spec, **options)
