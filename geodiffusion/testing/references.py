r"""High-precision references for heat kernels, independent of the float64 code they check.

:func:`sphere_heat_kernel_reference` sums the eigenfunction series of :math:`S^n` in mpmath,
:math:`p_t(\theta) = |S^n|^{-1}\sum_l d_l e^{-l(l+n-1)t/2} P_l(\cos\theta)` (generator :math:`\Delta/2`), to
convergence, raising the working precision until the cancellation :math:`\sum_l |w_l P_l| / p_t` still leaves
25 correct digits. It shares no code with :mod:`geodiffusion.heat.sphere` (different recurrences for the
weights, no transport series, no Cauchy integrals), so an agreement is evidence for both. Needs ``mpmath``
(a test dependency), imported on first use.
"""

from __future__ import annotations

import functools
import math

__all__ = ["sphere_heat_kernel_reference"]

# log p below this is not referenced (p < 1e-300: outside float64, and the series would need thousands of digits)
_LOG_P_FLOOR = -700.0


def _eigen_mp(n: int, t: float, theta: float, dps: int):
    """(log p, d log p / du, cancellation) of the eigen series on S^n at ``dps`` decimal digits."""
    import mpmath as mp

    with mp.workdps(dps):
        t, u = mp.mpf(t), mp.cos(mp.mpf(theta))
        a = mp.mpf(n - 1) / 2
        e_t, base = mp.exp(-t), mp.exp(-mp.mpf(n - 2) * t / 2)
        w, e_l = mp.mpf(1), mp.mpf(1)
        s0, s1, size = mp.mpf(1), mp.mpf(0), mp.mpf(1)
        p_prev, p_cur, q_prev, q_cur = mp.mpf(0), mp.mpf(1), mp.mpf(0), mp.mpf(0)
        w_max, l, stop = w, 0, mp.mpf(10) ** (-dps - 3)
        while True:
            l += 1
            e_l *= e_t
            # w_l = d_l exp(-l(l+n-1)t/2) from its ratio to w_{l-1}
            ratio = (2 if l == 1 else 1) if n == 1 else mp.mpf(2 * l + n - 1) / (2 * l + n - 3) * mp.mpf(l + n - 2) / l
            w = w * ratio * base * e_l
            # normalised Gegenbauer P_l (Chebyshev for n = 1) and Q_{l-1}, its analogue on S^{n+2}: P_l' = l(l+n-1)/n Q_{l-1}
            if l == 1:
                p, q = u, mp.mpf(1)
            else:
                p = 2 * (l + a - 1) / (l + 2 * a - 1) * u * p_cur - mp.mpf(l - 1) / (l + 2 * a - 1) * p_prev
                k = l - 1
                q = u if k == 1 else 2 * (k + a) / (k + 2 * a + 1) * u * q_cur - mp.mpf(k - 1) / (k + 2 * a + 1) * q_prev
            p_prev, p_cur, q_prev, q_cur = p_cur, p, q_cur, q
            s0 += w * p
            size += abs(w * p)
            s1 += w * l * (l + n - 1) / n * q
            w_max = max(w_max, w)
            if l * (l + n - 1) * t > 4 * n + 20 and w < w_max * stop:
                break
        log_volume = mp.log(2) + mp.mpf(n + 1) / 2 * mp.log(mp.pi) - mp.loggamma(mp.mpf(n + 1) / 2)
        if s0 <= 0:
            return None, None, mp.inf
        return mp.log(s0) - log_volume, s1 / s0, size / abs(s0)


def _log_p_estimate(n: int, t: float, theta: float) -> float:
    """A generous upper estimate of log p_t(theta) (Varadhan with the sphere's factors), to skip hopeless tails."""
    m = 0.5 * (n - 1)
    varadhan = -(theta**2) / (2 * t) - 0.5 * n * math.log(2 * math.pi * t)
    sin = max(math.sin(theta), 1e-300)
    return varadhan + m * math.log(max(theta / sin, 1.0)) + 0.5 * m * m * t + 50.0


@functools.cache
def sphere_heat_kernel_reference(n: int, t: float, theta: float) -> tuple[float, float] | None:
    r"""``(log p_t(theta), d log p_t / du)`` on :math:`S^n` at :math:`u = \cos\theta`, correct to about 25 digits.

    Returns ``None`` where :math:`p_t(\theta) < 10^{-300}` (estimated, then confirmed by the series): there the
    value is outside float64 and is not referenced. Python floats in and out; results are cached.
    """
    import mpmath as mp

    if n < 1 or t <= 0 or not 0 <= theta <= math.pi:
        raise ValueError(f"expected n >= 1, t > 0 and 0 <= theta <= pi, got n={n}, t={t}, theta={theta}")
    if _log_p_estimate(n, t, theta) < _LOG_P_FLOOR:
        return None
    dps = 30
    while True:
        log_p, dlogp, cancellation = _eigen_mp(n, t, theta, dps)
        if log_p is not None and cancellation < mp.mpf(10) ** (dps - 25):
            if log_p < _LOG_P_FLOOR:
                return None
            return float(log_p), float(dlogp)
        dps = int(mp.log10(cancellation)) + 35 if mp.isfinite(cancellation) else 2 * dps
