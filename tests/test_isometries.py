"""Manifold.random_isometry: isometries of every manifold, and check_heat_kernel's invariance check that uses them."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import registered_examples

import geodiffusion as gd
from geodiffusion.testing import CheckError, check_heat_kernel, check_manifold, heat_kernel_errors, tolerance

F64 = torch.float64


@pytest.mark.parametrize("spec", registered_examples(gd.Manifold))
def test_random_isometries_keep_points_on_the_manifold_and_preserve_distance(spec):
    manifold = gd.build(spec)
    gen = torch.Generator().manual_seed(0)
    x, y = (manifold.random_point(16, gen, dtype=F64) for _ in range(2))
    g = manifold.random_isometry(16, gen)
    gx, gy = g(x), g(y)
    assert manifold.belongs(gx).all() and manifold.belongs(gy).all()
    torch.testing.assert_close(manifold.dist(gx, gy), manifold.dist(x, y), atol=tolerance(F64, "exact"), rtol=0)
    assert float(manifold.dist(gx, x).max()) > 0.1  # and they are not all the identity


class Line(gd.Manifold, register=False):
    """R with the flat metric, written from scratch (not a subclass of Euclidean): the checks know no isometry of it."""

    flat = True

    @property
    def dim(self) -> int:
        return 1

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (1,)

    def random_point(self, n, generator=None, *, device=None, dtype=None):
        return torch.randn((n, 1), generator=generator, dtype=dtype, device=device)

    def reference_log_prob(self, x):
        return -0.5 * x[..., 0] ** 2 - 0.5 * math.log(2 * math.pi)

    def proj(self, x, v):
        return v

    def exp(self, x, v):
        return x + v

    def log(self, x, y):
        return y - x

    def belongs(self, x, atol=1e-6):
        return torch.isfinite(x).all(-1)


class ReflectedLine(Line, register=False):
    """Supplies its isometries x -> b - x itself."""

    def random_isometry(self, n, generator=None):
        b = torch.randn((n, 1), generator=generator, dtype=F64)
        return lambda x: b.to(x) - x


class StretchedLine(Line, register=False):
    """Claims x -> 2x is an isometry: the invariance check must use it, and so fail."""

    def random_isometry(self, n, generator=None):
        return lambda x: 2 * x


def _gaussian_kernel_on(manifold_cls: type[Line]) -> gd.HeatKernel:
    class LineHeatKernel(gd.EuclideanHeatKernel, register=False):
        line = manifold_cls()

        @property
        def manifold(self):
            return self.line

    return LineHeatKernel(manifold={"kind": "euclidean", "dim": 1})


def test_isometry_invariance_is_reported_unverified_on_a_manifold_without_known_isometries():
    kernel = _gaussian_kernel_on(Line)
    errors = heat_kernel_errors(kernel, n_mc=2000)
    unverified = [k for k in errors if "no isometries known for Line" in k]
    assert len(unverified) == 2 and all(errors[k] == math.inf for k in unverified), errors
    with pytest.raises(CheckError, match="no isometries known for Line"):
        check_heat_kernel(kernel, n_mc=2000)


def test_isometry_invariance_uses_the_manifolds_own_random_isometry():
    check_heat_kernel(_gaussian_kernel_on(ReflectedLine), n_mc=2000)
    with pytest.raises(CheckError, match="isometry invariance"):
        check_heat_kernel(_gaussian_kernel_on(StretchedLine), n_mc=2000)


def test_check_manifold_catches_an_isometry_that_does_not_keep_distances():
    check_manifold(ReflectedLine())
    with pytest.raises(CheckError, match="random isometries keep distances"):
        check_manifold(StretchedLine())
