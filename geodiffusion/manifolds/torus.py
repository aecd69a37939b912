"""The flat torus T^n, with points stored as angles."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import rand, random_permutations
from geodiffusion.manifolds.base import Manifold
from geodiffusion.spec import Spec

__all__ = ["Torus", "wrap"]


def wrap(a: Tensor) -> Tensor:
    r"""Angles reduced to :math:`[-\pi, \pi)`."""
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


def _sums_of_squares(n: int, top: int) -> np.ndarray:
    """r_n(m) = #{k in Z^n : |k|^2 = m} for m = 0..top."""
    r1 = np.zeros(top + 1)
    r1[0] = 1.0
    r1[np.arange(1, math.isqrt(top) + 1) ** 2] = 2.0
    r, power = None, r1
    while n:
        if n & 1:
            r = power.copy() if r is None else np.convolve(r, power)[: top + 1]
        n >>= 1
        if n:
            power = np.convolve(power, power)[: top + 1]
    return r


class Torus(Manifold, kind="torus"):
    r""":math:`T^n = (\mathbb{R}/2\pi\mathbb{Z})^n` with the flat metric. A point is a tensor of ``n`` angles in
    :math:`[-\pi, \pi)` (not an embedding in :math:`\mathbb{R}^{2n}`); tangent vectors are any real ``n``-vectors.
    :math:`\exp_x v = \mathrm{wrap}(x + v)`, :math:`\log_x y = \mathrm{wrap}(y - x)`,
    :math:`d(x, y) = \|\mathrm{wrap}(y - x)\|`, volume :math:`(2\pi)^n`. The angle coordinates are isometric
    (``flat``), so the Laplace–Beltrami operator is the coordinate Laplacian.

    >>> torus = Torus(dim=2)
    >>> torus.exp(torch.tensor([3.0, 0.0]), torch.tensor([0.5, -0.25]))
    tensor([-2.7832, -0.2500])
    """

    compact = True
    has_heat_kernel = True
    flat = True

    class Spec(Spec):
        """Flat torus T^n, points as angles in [-pi, pi)^n."""

        dim: int = Field(ge=1, description="dimension n (number of angles)")

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=1), cls.Spec(dim=3)]

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.dim,)

    @property
    def log_volume(self) -> float:
        r""":math:`\log |T^n| = n \log 2\pi`."""
        return self.spec.dim * math.log(2 * math.pi)

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        r"""The ``count`` smallest distinct eigenvalues of :math:`-\Delta`, the integers :math:`m = |k|^2` that are
        sums of ``n`` squares (eigenfunctions :math:`e^{i k \cdot x}`, :math:`k \in \mathbb{Z}^n`), with
        multiplicities :math:`r_n(m) = \#\{k : |k|^2 = m\}`, float64 (exact below :math:`2^{53}`)."""
        if count < 1:
            raise ValueError(f"count: expected a positive integer, got {count}")
        # r_n = r_1 convolved n times, by repeated squaring (exact in float64 while r_n(m) < 2^53), on [0, top]:
        # top doubles until it holds count eigenvalues; (count - 1)^2 always does (the squares l^2, k = l e_1)
        top = min(4 * count, (count - 1) ** 2)
        while True:
            r = _sums_of_squares(self.spec.dim, top)
            m = np.flatnonzero(r)[:count]
            if len(m) == count:
                break
            top = min(2 * top, (count - 1) ** 2)
        return torch.tensor(m, dtype=torch.float64), torch.tensor(r[m], dtype=torch.float64)

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        r""":math:`x \mapsto \mathrm{wrap}(\sigma \odot x_\pi + b)`: a permutation of the angles, sign flips and a
        uniform translation (the isometries of the flat :math:`T^n` fixing the lattice's symmetries)."""
        d = self.spec.dim
        perm = random_permutations(n, d, generator)
        sign = 2.0 * (rand((n, d), generator, dtype=torch.float64) < 0.5) - 1.0
        shift = 2 * math.pi * rand((n, d), generator, dtype=torch.float64)
        return lambda x: wrap(sign.to(x) * torch.take_along_dim(x, perm.to(x.device), -1) + shift.to(x))

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        """Uniform angles in [-pi, pi)."""
        u = rand((n, self.spec.dim), generator, dtype=dtype, device=device)
        return wrap(2 * math.pi * u - math.pi)

    def reference_log_prob(self, x: Tensor) -> Tensor:
        """Uniform: :math:`-n \\log 2\\pi`."""
        self.check_point("x", x)
        return torch.full(x.shape[:-1], -self.log_volume, dtype=x.dtype, device=x.device)

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return v

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return wrap(x + v)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        return wrap(y - x)

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Finite angles in :math:`[-\\pi - \\text{atol}, \\pi + \\text{atol}]` (pi itself is the same point as -pi)."""
        self.check_point("x", x)
        return (torch.isfinite(x) & (x >= -math.pi - atol) & (x <= math.pi + atol)).all(-1)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.torus import TorusHeatKernel

        return TorusHeatKernel(manifold=self.spec, **options)
