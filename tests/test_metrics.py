"""Metrics (two-sample statistics, equivariance error, likelihood re-export) and the toy data."""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd
from geodiffusion.data import RingOfGaussians, ring_centres, ring_of_gaussians, ring_of_gaussians_log_prob
from geodiffusion.metrics import energy_distance, equivariance_error, log_likelihood, median_bandwidth, mmd_rbf
from geodiffusion.testing import tolerance

DTYPES = [torch.float32, torch.float64]


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def expected_abs_normal(mu: float, s: float) -> float:
    r""":math:`\mathbb{E}|Z|` for :math:`Z \sim \mathcal{N}(\mu, s^2)` (folded normal mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * normal_cdf(-mu / s))


def population_energy(delta: float) -> float:
    """Energy distance between N(0, 1) and N(delta, 1) in 1-D: X - Y ~ N(-delta, 2), X - X' ~ N(0, 2)."""
    return 2 * expected_abs_normal(delta, math.sqrt(2)) - 2 * expected_abs_normal(0.0, math.sqrt(2))


def population_mmd(delta: float, h: float) -> float:
    r"""MMD^2 between N(0, 1) and N(delta, 1) with an RBF kernel of bandwidth h:
    :math:`\mathbb{E}\,e^{-Z^2/2h^2} = \tfrac{h}{\sqrt{h^2+s^2}} e^{-\mu^2/2(h^2+s^2)}`, :math:`Z \sim \mathcal{N}(\mu, s^2)`."""
    return 2 * h / math.sqrt(h**2 + 2) * (1 - math.exp(-(delta**2) / (2 * (h**2 + 2))))


def normals(n: int, delta: float, seed: int, dim: int = 1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, dim), generator=gen, dtype=dtype)
    return x, torch.randn((n, dim), generator=gen, dtype=dtype) + delta


# --- two-sample statistics ------------------------------------------------------------------


def test_energy_distance_and_mmd_of_a_hand_computed_example():
    x = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [4.0]], dtype=torch.float64)
    # between: |0-2|, |0-4|, |1-2|, |1-4| -> mean 2.5; within x: 1; within y: 2 -> 2 * 2.5 - 1 - 2
    assert float(energy_distance(x, y)) == pytest.approx(2.0, abs=1e-15)
    e = math.exp
    mmd = e(-1 / 2) + e(-4 / 2) - 2 * (e(-4 / 2) + e(-16 / 2) + e(-1 / 2) + e(-9 / 2)) / 4
    assert float(mmd_rbf(x, y, bandwidth=1.0)) == pytest.approx(mmd, abs=1e-15)
    # pooled {0, 1, 2, 4}: distances 1, 2, 4, 1, 3, 2 -> median 2
    assert float(median_bandwidth(x, y)) == 2.0
    assert float(mmd_rbf(x, y)) == pytest.approx(float(mmd_rbf(x, y, bandwidth=2.0)), abs=1e-15)


@pytest.mark.parametrize("statistic", [energy_distance, lambda x, y: mmd_rbf(x, y, 1.0)], ids=["energy", "mmd"])
def test_statistics_are_unbiased_for_tiny_samples(statistic):
    # the mean of many 8-vs-8 estimates is the population value (a V-statistic would be biased by ~0.3 here)
    delta, reps = 0.5, 3000
    exact = population_energy(delta) if statistic is energy_distance else population_mmd(delta, 1.0)
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn((reps, 2, 8, 1), generator=gen, dtype=torch.float64)
    values = torch.stack([statistic(d[0], d[1] + delta) for d in draws])
    se = float(values.std() / math.sqrt(reps))
    assert abs(float(values.mean()) - exact) < 5 * se, (float(values.mean()), exact, se)


def test_statistics_are_near_zero_for_one_distribution_and_positive_for_a_shift():
    # spreads measured over 30 seeds at n = 1000: sd 0.0011 (energy) and 0.00046 (mmd) under equal laws,
    # 0.022 and 0.0075 under a shift of 0.5; bounds at 5 sd
    x, y = normals(1000, 0.0, seed=1)
    assert abs(float(energy_distance(x, y))) < 0.006
    assert abs(float(mmd_rbf(x, y, 1.0))) < 0.0025
    x, y = normals(1000, 0.5, seed=2)
    assert float(energy_distance(x, y)) == pytest.approx(population_energy(0.5), abs=0.11)
    assert float(energy_distance(x, y)) > 0.05
    assert float(mmd_rbf(x, y, 1.0)) == pytest.approx(population_mmd(0.5, 1.0), abs=0.04)
    assert float(mmd_rbf(x, y)) > 0.01


@pytest.mark.parametrize("dtype", DTYPES)
def test_statistics_are_symmetric_and_invariant_under_rigid_motions(dtype):
    x, y = normals(300, 0.3, seed=3, dim=2, dtype=dtype)
    tol = tolerance(dtype, "exact")
    for stat in (energy_distance, mmd_rbf):
        value = stat(x, y)
        assert value.dtype == dtype and value.dim() == 0
        torch.testing.assert_close(stat(y, x), value, atol=tol, rtol=tol)
        rotation = gd.SpecialOrthogonal(dim=2).sample(1, torch.Generator().manual_seed(0), dtype=dtype)[0]
        shift = torch.tensor([3.0, -1.0], dtype=dtype)
        moved = stat(x @ rotation.T + shift, y @ rotation.T + shift)
        torch.testing.assert_close(moved, value, atol=10 * tol, rtol=10 * tol)


def test_two_sample_statistics_flatten_events_and_reject_bad_input():
    x, y = normals(20, 0.0, seed=4, dim=6)
    assert torch.equal(energy_distance(x.reshape(20, 2, 3), y.reshape(20, 2, 3)), energy_distance(x, y))
    with pytest.raises(ValueError, match="event shape"):
        energy_distance(x, y[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        mmd_rbf(x[:1], y)
    with pytest.raises(ValueError, match="NaN"):
        energy_distance(torch.full_like(x, float("nan")), y)
    with pytest.raises(ValueError, match="dtype"):
        energy_distance(x, y.float())
    with pytest.raises(ValueError, match="bandwidth"):
        mmd_rbf(x, y, bandwidth=0.0)


# --- equivariance error -------------------------------------------------------------------


def radial_field(x):
    return x * (x**2).sum(-1, keepdim=True)  # f(Rx) = R f(x) for every rotation


@pytest.mark.parametrize("dtype", DTYPES)
def test_equivariance_error_is_zero_for_equivariant_maps_and_large_otherwise(dtype):
    c6 = gd.CyclicGroup(n=6)
    x = torch.randn((50, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
    tol = tolerance(dtype, "equivariance")
    assert equivariance_error(radial_field, c6, x) < tol
    assert equivariance_error(lambda y: (y**2).sum(-1), c6, x, output="invariant") < tol
    assert equivariance_error(lambda y: y + torch.tensor([1.0, 0.0], dtype=dtype), c6, x) > 0.1
    assert equivariance_error(lambda y: y[:, :1] * y, c6, x) > 0.1


def test_equivariance_error_uses_the_representation_of_the_output():
    translations = gd.Translations(dim=2)
    x = torch.randn((10, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    shift = lambda y: y + 1.0  # noqa: E731
    # y -> y + 1 commutes with translations of points, but vectors do not translate
    assert equivariance_error(shift, translations, x, output="point") < tolerance(torch.float64, "equivariance")
    assert equivariance_error(shift, translations, x, output="vector") > 0.1
    assert equivariance_error(lambda y: torch.ones_like(y), translations, x, output="vector") == 0.0


def test_equivariance_error_default_elements_are_seeded_and_explicit_elements_are_used():
    so3 = gd.SpecialOrthogonal(dim=3)
    x = torch.randn((10, 3), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    broken = lambda y: y + torch.tensor([1.0, 0.0, 0.0], dtype=y.dtype)  # noqa: E731
    assert equivariance_error(broken, so3, x) == equivariance_error(broken, so3, x) > 0.1
    identity = so3.identity((1,), dtype=torch.float64)
    assert equivariance_error(broken, so3, x, elements=identity) == 0.0
    # one point without a batch axis
    assert equivariance_error(radial_field, so3, x[0]) < tolerance(torch.float64, "equivariance")
    with pytest.raises(ValueError, match="output"):
        equivariance_error(broken, so3, x, output="tensor")
    with pytest.raises(ValueError, match="elements"):
        equivariance_error(broken, so3, x, elements=identity[0])


def test_frame_averaging_removes_the_equivariance_error_of_an_mlp():
    torch.manual_seed(0)
    mlp = gd.TimeMLP(dim=2, hidden=32, depth=2)
    averaged = gd.FrameAveraged.wrap(mlp, gd.CyclicGroup(n=6))
    x = torch.randn((64, 2), generator=torch.Generator().manual_seed(3))
    t = torch.tensor(0.3)
    assert equivariance_error(lambda y: averaged(t, y), averaged.group, x) < tolerance(torch.float32, "equivariance")
    assert equivariance_error(lambda y: mlp(t, y), averaged.group, x) > 1e-2


def test_likelihood_is_the_probability_flow_estimator():
    assert log_likelihood is gd.samplers.ode.log_likelihood


# --- toy data -------------------------------------------------------------------------------


@pytest.mark.parametrize("k,offset", [(1, 0.0), (6, 0.0), (5, 0.7)])
def test_ring_density_integrates_to_one(k, offset):
    radius, std = 1.5, 0.2
    lim = radius + 8 * std
    axis = torch.linspace(-lim, lim, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1)
    density = ring_of_gaussians_log_prob(grid, k, radius, std, offset=offset).exp()
    integral = torch.trapezoid(torch.trapezoid(density, axis, dim=-1), axis)
    assert float(integral) == pytest.approx(1.0, abs=1e-6)


def test_ring_density_is_a_gaussian_for_one_component():
    x = torch.randn((20, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, cov = torch.tensor([1.5, 0.0], dtype=torch.float64), 0.04 * torch.eye(2, dtype=torch.float64)
    normal = torch.distributions.MultivariateNormal(mean, cov)
    torch.testing.assert_close(ring_of_gaussians_log_prob(x, 1, 1.5, 0.2), normal.log_prob(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_density_is_invariant_under_its_cyclic_group_only(dtype):
    k = 6
    c = gd.CyclicGroup(n=k)
    x = torch.randn((200, 2), generator=torch.Generator().manual_seed(0), dtype=dtype) * 2
    logp = ring_of_gaussians_log_prob(x, k, 1.5, 0.2)
    for g in c.elements():
        torch.testing.assert_close(ring_of_gaussians_log_prob(c.act(g, x), k, 1.5, 0.2), logp, **_tols(dtype))
    half_step = gd.CyclicGroup(n=2 * k).act(torch.tensor(1), x)  # rotation by pi/k: not a symmetry
    assert (ring_of_gaussians_log_prob(half_step, k, 1.5, 0.2) - logp).abs().max() > 1.0


def _tols(dtype):
    tol = tolerance(dtype, "exact")
    return {"atol": 10 * tol, "rtol": 10 * tol}


def test_ring_samples_have_the_exact_moments_and_balanced_components():
    n, k, radius, std = 60_000, 6, 1.5, 0.2
    x = ring_of_gaussians(n, k, radius, std, torch.Generator().manual_seed(0), torch.float64)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    # E x = 0 (centres sum to zero), E|x|^2 = r^2 + 2 s^2; bounds at 5 standard errors
    se_mean = math.sqrt(radius**2 / 2 + std**2) / math.sqrt(n)
    assert (x.mean(0).abs() < 5 * se_mean).all()
    sq = (x**2).sum(-1)
    assert abs(float(sq.mean()) - (radius**2 + 2 * std**2)) < 5 * float(sq.std()) / math.sqrt(n)
    nearest = torch.cdist(x, ring_centres(k, radius, dtype=torch.float64)).argmin(-1)
    counts = torch.bincount(nearest, minlength=k).double()
    assert ((counts - n / k).abs() < 5 * math.sqrt(n * (1 / k) * (1 - 1 / k))).all()


def test_ring_sampling_is_reproducible_and_the_spec_matches_the_functions():
    data = RingOfGaussians(k=4, radius=2.0, std=0.3, offset=0.1)
    a = data.sample(100, torch.Generator().manual_seed(7))
    b = ring_of_gaussians(100, 4, 2.0, 0.3, torch.Generator().manual_seed(7), offset=0.1)
    assert torch.equal(a, b) and a.dtype == torch.get_default_dtype()
    assert not torch.equal(a, data.sample(100, torch.Generator().manual_seed(8)))
    torch.testing.assert_close(data.log_prob(a), ring_of_gaussians_log_prob(a, 4, 2.0, 0.3, offset=0.1))
    torch.testing.assert_close(ring_centres(4, 2.0, 0.1)[0], 2.0 * torch.tensor([math.cos(0.1), math.sin(0.1)]))


def test_ring_rejects_bad_parameters():
    with pytest.raises(ValueError, match="k"):
        ring_of_gaussians(10, 0, 1.0, 0.1)
    with pytest.raises(ValueError, match="std"):
        ring_of_gaussians_log_prob(torch.zeros(3, 2), 3, 1.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        ring_of_gaussians(10, 3, -1.0, 0.1)
    with pytest.raises(ValueError, match="shape"):
        ring_of_gaussians_log_prob(torch.zeros(3, 3), 3, 1.0, 0.1)
    with pytest.raises(ValueError, match="std"):
        RingOfGaussians(std=0.0)
