r"""Heat kernel of the flat torus T^n: accuracy against mpmath, exact sampling, the Fourier estimator's limits.

The reference is the wrapped Gaussian summed in mpmath at 40 digits,
:math:`p^{S^1}_t(\theta) = (2\pi t)^{-1/2}\sum_k e^{-(\theta + 2\pi k)^2/2t}`, and its exact derivative; on
:math:`T^n` the kernel is the product over angles, so the log-density is a sum and the score is per angle.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from geodiffusion.manifolds import Torus

mp = pytest.importorskip("mpmath")

F64 = torch.float64
TARGET_P = 1e-6  # relative error of p_t: an absolute error of log p_t
TARGET_SCORE = 1e-5
TIMES = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 4.9, 5.1, 10.0)  # auto switches from paths to Fourier at t = 5


def circle_reference(t: float, theta: float) -> tuple[float, float]:
    """(log p_t(theta), d/dtheta log p_t) on S^1 to ~30 digits by the wrapped Gaussian."""
    with mp.workdps(40):
        t, theta = mp.mpf(t), mp.mpf(theta)
        p = mp.nsum(lambda k: mp.exp(-((theta + 2 * mp.pi * k) ** 2) / (2 * t)), [-mp.inf, mp.inf])
        dp = mp.nsum(
            lambda k: -(theta + 2 * mp.pi * k) / t * mp.exp(-((theta + 2 * mp.pi * k) ** 2) / (2 * t)), [-mp.inf, mp.inf]
        )
        return float(mp.log(p) - mp.log(2 * mp.pi * t) / 2), float(dp / p)


def angle_grid(t: float) -> list[float]:
    """theta -> 0, the bulk (multiples of sqrt t) and the far tail up to pi, where p_t is smallest."""
    s = math.sqrt(t)
    return sorted({min(a, math.pi) for a in (1e-7, 0.3 * s, s, 2 * s, 4 * s, 1.0, 2.0, 3.0, math.pi - 1e-6, math.pi)})


@pytest.mark.parametrize("t", TIMES)
def test_auto_log_prob_and_score_on_t3_match_mpmath_from_the_peak_to_the_antipode(t):
    kernel = Torus(dim=3).heat_kernel()
    thetas = angle_grid(t)
    ref = [circle_reference(t, a) for a in thetas]
    # three angles per point, rolled so that each coordinate sees every angle; x0 off the origin and x wrapped
    theta = torch.tensor(thetas, dtype=F64)
    offsets = torch.stack([theta, theta.roll(1), theta.roll(2)], -1)
    x0 = torch.tensor([2.5, -1.0, 0.4], dtype=F64).expand_as(offsets)
    x = torch.remainder(x0 + offsets + math.pi, 2 * math.pi) - math.pi
    log_p_ref = torch.tensor([r[0] for r in ref], dtype=F64)
    score_ref = torch.tensor([r[1] for r in ref], dtype=F64)
    expected_log_p = log_p_ref + log_p_ref.roll(1) + log_p_ref.roll(2)
    expected_score = torch.stack([score_ref, score_ref.roll(1), score_ref.roll(2)], -1)
    log_p = kernel.log_prob(x0, x, t)
    assert (log_p - expected_log_p).abs().max() <= TARGET_P
    # relative to the score's size at that time, 1/sqrt(t), where it passes through 0 (theta = 0 and pi)
    scale = expected_score.abs().clamp_min(1 / math.sqrt(t))
    assert ((kernel.score(x0, x, t) - expected_score).abs() / scale).max() <= TARGET_SCORE


@pytest.mark.parametrize("estimator", ["sum_over_paths", "eigen"])
def test_each_estimator_is_exact_where_it_resolves_p(estimator):
    kernel = Torus(dim=1).heat_kernel(estimator=estimator)
    times = (1e-3, 0.1, 1.0, 10.0) if estimator == "sum_over_paths" else (1.0, 3.0, 10.0)
    for t in times:
        thetas = angle_grid(t)
        ref = torch.tensor([circle_reference(t, a) for a in thetas], dtype=F64)
        x = torch.tensor(thetas, dtype=F64)[:, None]
        x0 = torch.zeros_like(x)
        assert (kernel.log_prob(x0, x, t) - ref[:, 0]).abs().max() <= TARGET_P, t
        scale = ref[:, 1].abs().clamp_min(1 / math.sqrt(t))
        assert ((kernel.score(x0, x, t)[:, 0] - ref[:, 1]).abs() / scale).max() <= TARGET_SCORE, t


def test_the_fourier_series_refuses_points_it_cannot_resolve_instead_of_returning_nan():
    """At t = 0.01 the tail p_t(3) ~ e^-450 is far below the series' rounding error around 1/2."""
    kernel = Torus(dim=2).heat_kernel(estimator="eigen")
    x0 = torch.zeros(2, 2, dtype=F64)
    x = torch.tensor([[0.1, 0.0], [3.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="cannot resolve p_t.*angle 3, t = 0.01.*'auto'"):
        kernel.log_prob(x0, x, 0.01)
    with pytest.raises(ValueError, match="cannot resolve"):
        kernel.score(x0, x, 0.01)
    # auto is exact there
    assert (
        abs(float(Torus(dim=2).heat_kernel().log_prob(x0, x, 0.01)[1]) - sum(circle_reference(0.01, a)[0] for a in (3.0, 0.0)))
        < 1e-9
    )


def test_no_nan_or_inf_at_tiny_times_and_many_dimensions():
    torus = Torus(dim=127)
    kernel = torus.heat_kernel()
    gen = torch.Generator().manual_seed(0)
    x0, x = torus.random_point(16, gen, dtype=F64), torus.random_point(16, gen, dtype=F64)
    for t in (1e-5, 1e-4, 10.0, 100.0):
        assert torch.isfinite(kernel.log_prob(x0, x, t)).all() and torch.isfinite(kernel.score(x0, x, t)).all(), t


def wrapped_normal_cdf(theta, t: float):
    """CDF on [-pi, pi) of wrap(sqrt(t) z), z ~ N(0, 1)."""
    s = math.sqrt(t)
    k = int(math.ceil(8 * s / (2 * math.pi))) + 1
    return sum(
        stats.norm.cdf((theta + 2 * math.pi * j) / s) - stats.norm.cdf((-math.pi + 2 * math.pi * j) / s) for j in range(-k, k + 1)
    )


@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0, 10.0])
def test_exact_samples_follow_the_wrapped_gaussian_law(t):
    kernel = Torus(dim=2).heat_kernel()
    x0 = torch.tensor([3.0, -2.0], dtype=F64).expand(4000, 2)
    x = kernel.sample(x0, t, torch.Generator().manual_seed(1))
    assert Torus(dim=2).belongs(x).all()
    offset = torch.remainder(x - x0 + math.pi, 2 * math.pi) - math.pi
    for i in range(2):
        assert stats.kstest(offset[:, i].numpy(), lambda a: wrapped_normal_cdf(a, t)).pvalue > 1e-3, (t, i)
    # the law's scale matters: the same draws are rejected as the law at twice the time
    assert stats.kstest(offset[:, 0].numpy(), lambda a: wrapped_normal_cdf(a, 2 * t)).pvalue < 1e-3 or t >= 10
