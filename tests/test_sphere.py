"""The sphere S^n: closed-form geometry and the Laplace-Beltrami operator on spherical harmonics."""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd


@pytest.mark.parametrize("n", [1, 2, 3, 15, 127])
def test_laplace_beltrami_has_spherical_harmonic_eigenvalues(n):
    """Harmonic homogeneous polynomials of degree l satisfy Delta Y = -l (l + n - 1) Y on S^n."""
    sphere = gd.Sphere(dim=n)
    x = sphere.random_point(6, torch.Generator().manual_seed(0), dtype=torch.float64)
    cubic = (
        (lambda z: z[..., 0] ** 3 - 3 * z[..., 0] * z[..., 1] ** 2) if n == 1 else (lambda z: z[..., 0] * z[..., 1] * z[..., 2])
    )
    harmonics = {1: lambda z: z[..., 0], 2: lambda z: z[..., 0] * z[..., 1], 3: cubic}
    for degree, fn in harmonics.items():
        torch.testing.assert_close(sphere.laplace_beltrami(fn, x), -degree * (degree + n - 1) * fn(x))


def test_geodesic_distance_is_the_angle_and_exp_reaches_the_antipode():
    sphere = gd.Sphere(dim=2)
    x = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    v = torch.tensor([math.pi, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sphere.exp(x, v), -x, atol=1e-15, rtol=0)
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(sphere.dist(x, y), torch.tensor(math.pi / 2, dtype=torch.float64))
    tiny = torch.tensor([1e-9, 0.0, 1.0], dtype=torch.float64)
    tiny = tiny / tiny.norm()
    torch.testing.assert_close(sphere.dist(x, tiny), torch.tensor(1e-9, dtype=torch.float64), rtol=1e-12, atol=0)


def test_exp_at_zero_is_identity_with_finite_gradient():
    sphere = gd.Sphere(dim=3)
    x = sphere.random_point(2, torch.Generator().manual_seed(1), dtype=torch.float64)
    v = torch.zeros_like(x, requires_grad=True)
    y = sphere.exp(x, v)
    torch.testing.assert_close(y, x)
    (grad,) = torch.autograd.grad(y[:, 0].sum(), v)
    assert bool(torch.isfinite(grad).all())


def test_uniform_samples_have_zero_mean_and_isotropic_second_moment():
    n = 4
    x = gd.Sphere(dim=n).random_uniform(40000, torch.Generator().manual_seed(2), dtype=torch.float64)
    assert float(x.mean(0).abs().max()) < 5 / math.sqrt(40000 * (n + 1))
    torch.testing.assert_close(x.T @ x / 40000, torch.eye(n + 1, dtype=torch.float64) / (n + 1), atol=5e-3, rtol=0)


def test_log_volume_matches_known_areas():
    assert math.isclose(math.exp(gd.Sphere(dim=1).log_volume), 2 * math.pi)
    assert math.isclose(math.exp(gd.Sphere(dim=2).log_volume), 4 * math.pi)
    assert math.isclose(math.exp(gd.Sphere(dim=3).log_volume), 2 * math.pi**2)


def test_points_of_the_wrong_size_are_rejected():
    with pytest.raises(ValueError, match=r"expected points of shape \[..., 3\]"):
        gd.Sphere(dim=2).belongs(torch.zeros(4, 4))
    assert not bool(gd.Sphere(dim=2).belongs(torch.tensor([1.0, 1.0, 0.0])))
