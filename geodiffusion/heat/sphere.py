r"""Heat kernel of the unit sphere :math:`S^n` and exact sampling from it.

Notation of Lou et al., *Scaling Riemannian diffusion models* (2310.20030): :math:`\theta = d(x_0, x)`,
:math:`u = \cos\theta`, :math:`m = (n-1)/2`, Brownian motion with generator :math:`\Delta/2`, so the
Laplace eigenvalues give decay rates :math:`\lambda_l = l(l+n-1)/2`. Every estimator returns
:math:`\log p_t` and the radial derivative :math:`\partial_u \log p_t`; the score is then
:math:`\nabla_x \log p_t = \partial_u \log p_t \,(x_0 - u\,x)`, which is finite at :math:`\theta = 0` and
vanishes at :math:`\theta = \pi`.

Estimators (``SphereHeatKernel.Spec.estimator``):

``eigen``
    :math:`p_t = |S^n|^{-1}\sum_l d_l\, e^{-\lambda_l t} P_l(u)`, with :math:`P_l = C^{m}_l/C^{m}_l(1)` the
    normalised Gegenbauer polynomials (Chebyshev for :math:`n=1`) from their three-term recurrence, the
    weights :math:`d_l e^{-\lambda_l t}` in log space, and :math:`P_l' = \tfrac{l(l+n-1)}{n} P^{(n+2)}_{l-1}`.
    Exact for every :math:`t`; the number of terms grows like :math:`t^{-1/2}` and rounding grows with the
    cancellation :math:`\sum_l |w_l P_l| / p_t`, which is large in the far tail at small :math:`t`: where it
    exceeds :math:`10^{10}` (rounding error above about :math:`5 \times 10^{-7}` of :math:`p_t`, see
    ``heat.base.EIGEN_MAX_CANCELLATION``) ``log_prob`` and ``score`` raise a
    ``ValueError`` naming the point instead of returning a meaningless value.
``varadhan``
    :math:`(2\pi t)^{-n/2} e^{-\theta^2/2t}` with the Euclidean normalisation (total mass :math:`1 + O(t)` on
    :math:`S^n`); its score is exact to leading order as :math:`t \to 0`.
``schwinger_dewitt``
    :math:`(2\pi t)^{-n/2} e^{-\theta^2/2t} (\theta/\sin\theta)^m e^{m^2 t/2} B(\theta, t)`: the paper's ansatz
    has :math:`B = 1`; ``sd_order = J`` adds the transport-equation corrections
    :math:`B = 1 + \sum_{j \le J} b_j(\theta) t^j`, with :math:`b_j` as power series in :math:`\theta^2`
    (128 powers: valid for :math:`\theta \le 2.8`). For odd :math:`n` the series stops at
    :math:`j = m - 1` and is the exact contribution of the shortest geodesic; :math:`S^3` needs no correction.
``sum_over_paths``
    Exact on odd spheres. :math:`p^{S^{n+2}}_t = \tfrac{e^{nt/2}}{2\pi} \partial_u p^{S^n}_t` gives
    :math:`p^{S^{2m+1}}_t = e^{m^2 t/2}(2\pi)^{-m}\partial_u^m p^{S^1}_t` with :math:`p^{S^1}_t` the wrapped
    Gaussian (the sum over all geodesics). The :math:`m`-th :math:`u`-derivative is the Taylor coefficient
    :math:`a_m` of :math:`p^{S^1}_t(u_0 + h)`, taken by the trapezoidal rule on a circle :math:`|h| = r`
    (a Cauchy integral). All :math:`a_j` are positive (each is a higher odd sphere's kernel), so at the
    saddle-point radius there is no cancellation: the result is accurate to a few ulps for every :math:`m`.
    On even :math:`n = 2m + 2`: :math:`p^{S^n}_t = e^{m(m+1)t/2}(2\pi)^{-m}\partial_u^m p^{S^2}_t`, the same Cauchy
    integral, of :math:`p^{S^2}_t` at complex :math:`u` by the Hopf fibre integral of :math:`S^3`'s sum over paths
    (:meth:`_Radial.hopf_cauchy`; on :math:`S^2`, :math:`m = 0`, the circle average of that integral).
``auto``
    Per point: the transport series where the shortest geodesic dominates and the series is well conditioned
    (small :math:`t`, :math:`\theta \le 2.8`), else the eigen expansion where it cancels by less than
    :math:`10^4`, else the exact tail method ``sum_over_paths``: on odd :math:`n` the Cauchy integral of the
    wrapped Gaussian, on :math:`S^2` the Hopf fibre integral :math:`p^{S^2}_t(\theta) = \tfrac12\int_0^\pi
    p^{S^3}_{t/4}(\varphi(\alpha))\,d\alpha`, :math:`\cos\varphi = \cos\tfrac\theta2\cos\alpha`, on even
    :math:`n \ge 4` the Cauchy integral of that. Measured against mpmath on a grid of :math:`\theta \in (0, \pi)`
    for :math:`t \in [10^{-4}, 10]` (``python benchmarks/heat_kernels.py --accuracy``): relative error of
    :math:`p_t` at most :math:`10^{-9}` on :math:`S^1, S^2, S^3, S^4, S^{15}, S^{16}, S^{127}`.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion._validation import check_same_device_dtype, check_time, expand_time
from geodiffusion.heat.base import EIGEN_MAX_CANCELLATION, HeatKernel, raise_unresolved
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.sphere import Sphere
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["SphereHeatKernel", "geodesic_random_walk"]

Estimator = Literal["auto", "eigen", "varadhan", "schwinger_dewitt", "sum_over_paths"]
SamplerKind = Literal["auto", "rejection", "ode"]

_LOG_2PI = math.log(2 * math.pi)
# a term below exp(-_CUT) of the largest one cannot change a float64 sum
_CUT = 45.0
# auto: a per-point result is trusted when its terms cancel by less than this factor (rounding error is
# about 1e-16 times it): the transport series' 1e7, the eigen series' 1e4 (every sphere has an exact tail method
# to fall back on: sum over paths on odd n, the Hopf fibre integral on S^2, its Cauchy integral on even n >= 4)
_MAX_CANCELLATION = 1e7
_MAX_CANCELLATION_WITH_TAIL = 1e4
# transport series: terms kept (t powers) and power-series length in theta^2 (radius pi^2)
_SD_TERMS = 64
_SD_POWERS = 128
_SD_MAX_THETA = 2.8  # (2.8 / pi)^256 ~ 1e-13: power-series truncation at 128 terms (measured against mpmath)
# rejection samplers are used while their expected number of proposals per draw is below this
_MAX_PROPOSALS = 64.0
_ODE_STEP = 0.2  # RK4 step in log-time of the radial flow: quantile error <= 2e-6 (measured in benchmarks/heat_kernels.py)


def _log_sphere_volume(n: int) -> float:
    return math.log(2.0) + 0.5 * (n + 1) * math.log(math.pi) - math.lgamma(0.5 * (n + 1))


def _log_dim(l: int, n: int) -> float:
    """log of the multiplicity d_l of the l-th Laplace eigenvalue on S^n."""
    if n == 1:
        return 0.0 if l == 0 else math.log(2.0)
    return math.log(2 * l + n - 1) - math.log(n - 1) + math.lgamma(l + n - 1) - math.lgamma(l + 1) - math.lgamma(n - 1)


# --- elementary functions, stable at theta -> 0 ------------------------------------------------------


def _theta_over_sin(theta: Tensor) -> Tensor:
    """theta / sin(theta), with the limit 1 at 0 (and the safe-branch trick so gradients stay finite)."""
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    return torch.where(small, 1 + theta**2 / 6, safe / torch.sin(safe).clamp_min(1e-150))


def _log_theta_over_sin(theta: Tensor) -> Tensor:
    small = theta < 1e-4
    safe = torch.where(small, torch.ones_like(theta), theta)
    return torch.where(small, theta**2 / 6, torch.log(safe) - torch.log(torch.sin(safe).clamp_min(1e-150)))


def _cot_gap_over_sin(theta: Tensor) -> Tensor:
    r""":math:`(1/\theta - \cot\theta)/\sin\theta`, the u-derivative of :math:`-\log(\theta/\sin\theta)`."""
    small = theta < 0.1
    safe = torch.where(small, torch.ones_like(theta), theta)
    x = theta**2
    # 1/theta - cot(theta) = sum 2^{2k}|B_2k|/(2k)! theta^{2k-1}; truncation error < 1e-16 at theta = 0.1
    series = (1 / 3 + x * (1 / 45 + x * (2 / 945 + x * (1 / 4725 + x * 2 / 93555)))) * _theta_over_sin(theta)
    s = torch.sin(safe).clamp_min(1e-150)
    direct = (s - safe * torch.cos(safe)) / (safe * s * s)
    return torch.where(small, series, direct)


# --- transport (Schwinger-DeWitt) coefficients -------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _transport_table(n: int, n_terms: int, n_powers: int) -> np.ndarray:
    r"""Coefficients :math:`\beta_{jk}` of :math:`b_j(\theta) = \sum_k \beta_{jk}\theta^{2k}`.

    With :math:`p = (2\pi t)^{-n/2}e^{-\theta^2/2t}(\theta/\sin\theta)^m e^{m^2t/2} B`, the heat equation becomes
    :math:`\partial_t B + \tfrac{\theta}{t}\partial_\theta B = \tfrac12(B'' + \tfrac{n-1}{\theta}B' + qB)`,
    :math:`q = m(1-m)(\sin^{-2}\theta - \theta^{-2}) = m(1-m)\sum_i q_i\theta^{2i}`,
    :math:`q_i = 2(2i+1)\zeta(2i+2)/\pi^{2i+2}`; matching powers of :math:`t` and :math:`\theta` gives
    :math:`(j+1+2k)\beta_{j+1,k} = \tfrac12[(2k+2)(2k+n)\beta_{j,k+1} + m(1-m)\sum_i q_i\beta_{j,k-i}]`.
    """
    from scipy.special import zeta

    m = 0.5 * (n - 1)
    c = m * (1 - m)
    width = n_powers + n_terms + 1  # later rows need higher powers of earlier ones
    q = np.array([2 * (2 * i + 1) * zeta(2 * i + 2) / math.pi ** (2 * i + 2) for i in range(width)])
    beta = np.zeros((n_terms + 1, width))
    beta[0, 0] = 1.0
    k = np.arange(width - 1)
    last = n_terms
    for j in range(n_terms):
        conv = np.convolve(q, beta[j])[: width - 1]
        beta[j + 1, : width - 1] = ((2 * k + 2) * (2 * k + n) * beta[j, 1:] + c * conv) / (2 * (j + 1 + 2 * k))
        if not np.all(np.isfinite(beta[j + 1])) or np.abs(beta[j + 1]).max() > 1e250:
            last = j  # very large n: keep the rows that fit in float64
            break
    beta = beta[: last + 1, :n_powers]
    if n % 2 == 1:
        # odd n: B is a polynomial of degree m - 1 in t (the derivative recursion); the rows beyond are
        # zero in exact arithmetic and only carry rounding
        beta[max(int(m), 1) :] = 0.0
    return beta


# --- the estimators, as functions of (theta, t) on flat float64 tensors ----------------------------


class _Radial:
    r"""Radial heat kernel of :math:`S^n`: ``(log p_t, d log p_t / du)`` at angles ``theta`` and times ``t``."""

    def __init__(self, n: int, tol: float = 1e-16, n_terms: int | None = None, sd_order: int = 0) -> None:
        self.n = n
        self.m = 0.5 * (n - 1)
        self.tol = tol
        self.n_terms = n_terms
        self.sd_order = sd_order
        self.log_volume = _log_sphere_volume(n)
        self.extra_nodes = 24  # sum over paths: trapezoid nodes beyond 2m (aliasing below 1e-16, see tests)
        # auto uses the transport series only while its terms cancel mildly: e^{|c| t / 3} <= 1e7
        self.c = self.m * (1 - self.m)

    # eigen ------------------------------------------------------------------------------------------

    def eigen_terms(self, t_min: float) -> int:
        """Terms needed at ``t_min``: past the largest weight, until weights fall below tol of it."""
        n, log_tol = self.n, math.log(self.tol) - 5.0
        best, l = -math.inf, 0
        while True:
            logw = _log_dim(l, n) - 0.5 * l * (l + n - 1) * t_min
            best = max(best, logw)
            if l >= 2 and logw < best + log_tol and l * (l + n - 1) * t_min > n:
                return l
            l += 1

    def eigen(self, theta: Tensor, t: Tensor, n_terms: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        n = self.n
        u = torch.cos(theta)
        L = n_terms or self.n_terms or self.eigen_terms(float(t.detach().min()))
        L = max(L, 2)
        alpha = 0.5 * (n - 1)
        lt = t.detach()
        # shift by the (detached) largest log-weight: the continuous maximiser of log d_l - lambda_l t
        lhat = (-(n - 1) * lt + torch.sqrt((n - 1) ** 2 * lt**2 + 16 * lt * max(n - 1, 0))) / (4 * lt)
        cands = torch.stack([torch.zeros_like(lhat), lhat.floor(), lhat.floor() + 1]).clamp(max=L)
        shift = self._log_weight_tensor(cands, lt).amax(0)
        logd = [_log_dim(l, n) for l in range(L + 1)]

        def weight(l: int) -> Tensor:
            return torch.exp(logd[l] - 0.5 * l * (l + n - 1) * t - shift)

        w0, w1 = weight(0), weight(1)
        p_prev, p_cur = torch.ones_like(u), u
        q_prev, q_cur = torch.zeros_like(u), torch.ones_like(u)  # Q_{l-1}: normalised Gegenbauer of S^{n+2}
        s0 = w0 + w1 * u
        s1 = w1  # P_1' = 1 * n / n * Q_0
        a0 = w0 + w1 * u.abs()
        a1 = w1.clone()
        # for large n the polynomials can underflow in the far tail (amplitude ~ sin(theta)^-m l^-m); then no
        # digit of the sum is right, whatever the cancellation estimate says: track the smallest |P_l|+|P_l-1|
        lowest = torch.ones_like(u)
        for l in range(2, L + 1):
            p_prev, p_cur = (
                p_cur,
                (2 * (l + alpha - 1) / (l + 2 * alpha - 1)) * u * p_cur - ((l - 1) / (l + 2 * alpha - 1)) * p_prev,
            )
            k = l - 1  # Q_k with parameter alpha + 1
            if k == 1:
                q_prev, q_cur = q_cur, u
            else:
                q_prev, q_cur = (
                    q_cur,
                    (2 * (k + alpha) / (k + 2 * alpha + 1)) * u * q_cur - ((k - 1) / (k + 2 * alpha + 1)) * q_prev,
                )
            w = weight(l)
            dw = w * (l * (l + n - 1) / n)
            s0 = s0 + w * p_cur
            s1 = s1 + dw * q_cur
            a0 = a0 + w * p_cur.abs()
            a1 = a1 + dw * q_cur.abs()
            lowest = torch.minimum(lowest, (p_cur.abs() + p_prev.abs()).detach())
        log_p = shift + torch.log(s0.clamp_min(1e-300)) - self.log_volume
        # a1 = 0: every derivative weight underflowed (p is uniform to double precision), nothing cancels
        cancel1 = torch.where(a1 > 0, a1 / s1.clamp_min(1e-300), torch.ones_like(a1))
        cancel = torch.maximum(a0 / s0.clamp_min(1e-300), cancel1).detach()
        valid = (s0 > 0) & ((s1 > 0) | (a1 == 0)) & (lowest > 1e-250)
        cancel = torch.where(valid, cancel, torch.full_like(cancel, math.inf))
        return log_p, s1 / s0.clamp_min(1e-300), cancel

    def _check_resolved(self, cancel: Tensor, theta: Tensor, t: Tensor, remedy: str) -> None:
        raise_unresolved(
            f"the Gegenbauer series of S^{self.n}",
            cancel > EIGEN_MAX_CANCELLATION,
            theta,
            t,
            f"its terms cancel by more than {EIGEN_MAX_CANCELLATION:.0e} (or underflow) there",
            remedy,
        )

    def _log_weight_tensor(self, l: Tensor, t: Tensor) -> Tensor:
        n = self.n
        if n == 1:
            logd = torch.where(l > 0, math.log(2.0), 0.0)
        else:
            logd = torch.log(2 * l + n - 1) - math.log(n - 1) + torch.lgamma(l + n - 1) - torch.lgamma(l + 1) - math.lgamma(n - 1)
        return logd - 0.5 * l * (l + n - 1) * t

    # small-time ansaetze --------------------------------------------------------------------------

    def varadhan(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_p = -(theta**2) / (2 * t) - 0.5 * self.n * (_LOG_2PI + torch.log(t))
        return log_p, _theta_over_sin(theta) / t

    def schwinger_dewitt(self, theta: Tensor, t: Tensor, order: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The ansatz with ``order`` transport corrections; also returns the cancellation of the t-series."""
        order = self.sd_order if order is None else order
        m = self.m
        log_p, dlogp = self.varadhan(theta, t)
        if m > 0:
            log_p = log_p + m * _log_theta_over_sin(theta) + 0.5 * m * m * t
            dlogp = dlogp - m * _cot_gap_over_sin(theta)
        if order == 0 or self.c == 0:
            return log_p, dlogp, torch.ones_like(theta)
        table = _transport_table(self.n, _SD_TERMS, _SD_POWERS)[: order + 1]
        beta = torch.as_tensor(table, dtype=theta.dtype, device=theta.device)
        J, K = beta.shape
        x = theta**2
        powers = torch.cumprod(torch.cat([torch.ones_like(x)[:, None], x[:, None].expand(-1, K - 1)], 1), 1)
        b = powers @ beta.T  # b_j(theta)
        db = powers[:, : K - 1] @ (beta[:, 1:] * (2 * torch.arange(1, K, dtype=x.dtype, device=x.device))).T  # b_j'/theta
        tj = torch.cumprod(torch.cat([torch.ones_like(t)[:, None], t[:, None].expand(-1, J - 1)], 1), 1)
        terms = b * tj
        big_b = terms.sum(-1)
        d_big_b = (db * tj).sum(-1)
        # conditioning of the t-series and size of its last kept term, both relative to B
        cancel = terms.abs().sum(-1) / big_b.abs().clamp_min(1e-300)
        tail = (terms[:, -2:].abs().sum(-1) / big_b.abs().clamp_min(1e-300)) if J > 2 else torch.zeros_like(cancel)
        bad = (big_b <= 0) | (tail > 1e-16) | (theta > _SD_MAX_THETA)
        cancel = torch.where(bad, torch.full_like(cancel, math.inf), cancel).detach()
        safe_b = torch.where(big_b > 0, big_b, torch.ones_like(big_b))
        log_p = log_p + torch.log(safe_b)
        dlogp = dlogp - _theta_over_sin(theta) * d_big_b / safe_b
        return log_p, dlogp, cancel

    def transport_ok(self, theta: Tensor, t: Tensor) -> Tensor:
        """Where the shortest geodesic dominates: the next one (length 2 pi - theta) is e^-40 smaller, allowing
        for the (phi_k / theta)^m prefactor of an image, and the t-series cannot cancel by more than ~1e7."""
        far = 2 * math.pi * (math.pi - theta.clamp_min(0.5 * math.pi)) / t
        return (far >= 40 + 1.1 * self.m) & (abs(self.c) * t <= 48) & (theta <= _SD_MAX_THETA)

    def eigen_hopeless(self, theta: Tensor, t: Tensor) -> Tensor:
        r"""Where the eigen series surely cancels by more than :math:`e^{30}`: its terms are of size
        :math:`p_t(0)(\sqrt t/\sin\theta)^m` and the sum is :math:`p_t(\theta)`, so the cancellation is about
        :math:`e^{\theta^2/2t}(\theta/\sin\theta)^{-m}(t/\theta^2)^{m/2}` (:math:`\sin\theta \ge \sqrt t` at the
        caustic); skipping it there saves its :math:`O(t^{-1/2})` terms at small t."""
        th = theta.detach().clamp_min(1e-300)
        tt = t.detach()
        sin = torch.sin(th).clamp_min(1e-300).maximum(torch.sqrt(tt))
        log_cancel = th**2 / (2 * tt) - self.m * torch.log(th / sin) - 0.5 * self.m * torch.log(th**2 / tt)
        # within sqrt(t) of x0 (the bulk, theta = 0 included: p_t(x0, x0)) the terms do not outgrow the sum
        log_cancel = torch.where(th**2 < tt, torch.zeros_like(log_cancel), log_cancel)
        return log_cancel > math.log(_MAX_CANCELLATION_WITH_TAIL) + 30

    # sum over paths (odd n directly, even n through hopf_cauchy) --------------------------------------------

    def sum_over_paths(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        if self.n % 2 == 0:
            return self.hopf_cauchy(theta, t)
        m = int(self.m)
        N = 2 * m + self.extra_nodes
        N += N % 2
        w0 = 2 * torch.sin(theta / 2) ** 2  # 1 - u, accurate near u = 1
        log_r = _saddle_log_radius(w0.detach(), t.detach(), m + 0.5)
        # about 2^22 complex numbers per chunk: nodes x images x points
        chunk = max(256, 2**22 // ((N // 2 + 1) * (2 * _n_images(float(t.detach().max())) + 1)))
        if theta.numel() > chunk:
            parts = [
                self._paths_chunk(*args, m, N)
                for args in zip(theta.split(chunk), t.split(chunk), w0.split(chunk), log_r.split(chunk), strict=True)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        return self._paths_chunk(theta, t, w0, log_r, m, N)

    def _paths_chunk(self, theta: Tensor, t: Tensor, w0: Tensor, log_r: Tensor, m: int, N: int) -> tuple[Tensor, Tensor]:
        # p^{S^1} is real on the real axis, so the nodes phi and 2 pi - phi give conjugate values: use
        # phi in [0, pi] with trapezoid weights 1, 2, ..., 2, 1 and take real parts
        phi = (2 * math.pi / N) * torch.arange(N // 2 + 1, dtype=theta.dtype, device=theta.device)
        log_weight = torch.full_like(phi, math.log(2.0))
        log_weight[0] = log_weight[-1] = 0.0
        log_f = _log_wrapped_gaussian_complex(w0, t, log_r, phi)  # [P, N/2+1]: log p^{S^1}(u0 + r e^{i phi})
        log_am, dlogp = _taylor_coefficient(log_f, log_weight, phi, log_r, m, N)
        return 0.5 * m * m * t - m * _LOG_2PI + math.lgamma(m + 1) + log_am, dlogp

    # even n: derivatives of the S^2 kernel, itself the Hopf fibre integral of S^3's sum over paths ---------------

    def hopf_cauchy(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Exact kernel of an even sphere :math:`S^{2m+2}`, :math:`m \ge 0`, in the far tail as well.

        :math:`p^{S^{2m+2}}_t = e^{m(m+1)t/2}(2\pi)^{-m}\partial_u^m p^{S^2}_t` (the dimension recursion), with the
        :math:`m`-th derivative the Taylor coefficient of :math:`p^{S^2}_t(u_0 + h)` by the trapezoid rule on a circle
        :math:`|h| = r` at the saddle-point radius, as for odd :math:`n`. All Taylor coefficients are positive (each is
        a higher even sphere's kernel), so nothing cancels. :math:`p^{S^2}_t` at complex :math:`u` is the Hopf fibre
        average :math:`\tfrac\pi2\langle p^{S^3}_{t/4}(c\cos\alpha)\rangle_{\alpha \in [0, 2\pi)}`,
        :math:`c^2 = (1+u)/2` (either root), an entire function of :math:`u`; :math:`p^{S^3}_s` is its closed-form sum
        over paths with images paired (``_log_s3_complex``). The fibre rule takes :math:`\ge 2m + 64` nodes (the
        Taylor coefficients of degree :math:`2m` in :math:`c\cos\alpha`) and spacing :math:`\le \sigma/2`, the
        real fibre integrand's width (see :meth:`hopf`); for :math:`m = 0` (:math:`S^2`) the circle average is the value
        itself, exact at :math:`\theta = 0` too, where the real Hopf rule is not. Measured against mpmath on
        :math:`S^2, S^4, S^6, S^{16}, S^{128}`
        at nine angles from :math:`10^{-3}` to :math:`\pi` and :math:`t \in [10^{-4}, 10]`: relative error of
        :math:`p_t` and of :math:`d\log p/du` at most :math:`4 \times 10^{-12}` (``python scripts/even_sphere_accuracy.py``)."""
        if self.n % 2:
            raise ValueError(f"hopf_cauchy gives the kernels of S^2, S^4, ..., not S^{self.n}")
        m = int(self.n // 2 - 1)
        N = 2 * m + self.extra_nodes
        N += N % 2
        w0 = 2 * torch.sin(theta / 2) ** 2
        log_r = _saddle_log_radius(w0.detach(), t.detach(), m + 0.5)
        with torch.no_grad():
            sigma = _fibre_width(theta.detach() / 2, t.detach() / 4)
            fibre = torch.ceil(4 * math.pi / sigma).clamp(min=2 * m + 64, max=16384)
        # about 2^22 complex numbers per chunk: points x circle nodes x fibre nodes x images. Points go in decreasing
        # order of fibre nodes, so a chunk's first point has its largest count and sizes it
        order = torch.argsort(fibre, descending=True)
        images = _n_images(float(t.detach().max()) / 4)
        log_p, dlogp = torch.empty_like(theta), torch.empty_like(theta)
        start = 0
        while start < len(order):
            nodes = int(fibre[order[start]])
            size = max(1, 2**22 // ((N // 2) * nodes * (2 * images + 1)))
            idx = order[start : start + size]
            lp, dl = self._hopf_cauchy_chunk(theta[idx], t[idx], log_r[idx], m, N, nodes, images)
            log_p = log_p.index_put((idx,), lp)
            dlogp = dlogp.index_put((idx,), dl)
            start += size
        return log_p, dlogp

    def _hopf_cauchy_chunk(
        self, theta: Tensor, t: Tensor, log_r: Tensor, m: int, N: int, nodes: int, images: int
    ) -> tuple[Tensor, Tensor]:
        # p^{S^2} is real on the real axis: circle nodes phi and 2 pi - phi are conjugate. Nodes offset by half a step
        # keep u off the real axis, so c cos(alpha) never lands on arccos's branch cuts (|w| > 1 real), where the
        # values are right but autograd's one-sided derivative of arccos need not match them
        phi = (2 * math.pi / N) * (torch.arange(N // 2, dtype=theta.dtype, device=theta.device) + 0.5)
        log_weight = torch.full_like(phi, math.log(2.0))
        u = torch.cos(theta)[:, None] + torch.polar(torch.exp(log_r)[:, None], phi)  # [P, N/2]
        c = torch.sqrt((1 + u) / 2)
        alpha = (2 * math.pi / nodes) * torch.arange(nodes, dtype=theta.dtype, device=theta.device)
        log_p3 = _log_s3_complex(c[..., None] * torch.cos(alpha), (t / 4)[:, None, None], images)  # [P, N/2, nodes]
        top3 = log_p3.real.amax(-1, keepdim=True).detach()
        log_f = top3[..., 0] + torch.log(torch.exp(log_p3 - top3).mean(-1)) + math.log(math.pi / 2)  # log p^{S^2}(u)
        log_am, dlogp = _taylor_coefficient(log_f, log_weight, phi, log_r, m, N)
        return 0.5 * m * (m + 1) * t - m * _LOG_2PI + math.lgamma(m + 1) + log_am, dlogp

    # Hopf fibration (n = 2) --------------------------------------------------------------------------

    def hopf(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""Exact :math:`S^2` kernel as the fibre average of the closed-form :math:`S^3` kernel at :math:`s = t/4`.

        The Hopf map :math:`S^3 \to S^2` sends Brownian motion at time :math:`t/4` to Brownian motion at time
        :math:`t`; the fibre over a point at angle :math:`\theta` is a great circle on which
        :math:`\cos\varphi = \cos(\theta/2)\cos\alpha`, so
        :math:`p^{S^2}_t(\theta) = \tfrac{\pi}{2}\,\tfrac1\pi\int_0^\pi p^{S^3}_{t/4}(\varphi(\alpha))\,d\alpha` with
        :math:`p^{S^3}_s(\varphi) = e^{s/2}(2\pi s)^{-3/2}\sum_k \tfrac{\varphi + 2\pi k}{\sin\varphi}e^{-(\varphi+2\pi k)^2/2s}`.
        All terms are positive up to images of relative size :math:`e^{-\pi^2/2s}`, so there is no cancellation
        in the far tail, where the eigen series loses every digit. The integrand is an entire, even function of
        :math:`\alpha` peaked at 0 with width :math:`\sigma = \sqrt{s/\kappa}`, :math:`\kappa = \tfrac\theta2\cot\tfrac\theta2`:
        the trapezoid rule with spacing :math:`\le\sigma/2` on :math:`[0, A]`, where the exponent has dropped by
        50 (or :math:`A = \pi`, the periodic rule), is exact to rounding."""
        if self.n != 2:
            raise ValueError(f"the Hopf fibre integral gives the kernel of S^2, not S^{self.n}")
        s = t / 4
        half = theta / 2
        c = torch.cos(half)
        with torch.no_grad():
            hd, sd, cd = half.detach(), s.detach(), c.detach()
            # the fibre angle A beyond which the S^3 exponent -phi^2 / 2s has dropped by 50
            phi_a = torch.sqrt(hd**2 + 100 * sd)
            ratio = torch.cos(phi_a) / cd.clamp_min(1e-300)
            full = (phi_a >= math.pi - hd) | (ratio <= -1)
            big_a = torch.where(full, torch.full_like(hd, math.pi), torch.acos(ratio.clamp(-1.0, 1.0)))
            sigma = _fibre_width(hd, sd)
            nodes = int(min(4096, max(16, math.ceil(float((2 * big_a / sigma).max())))))
            frac = torch.linspace(0.0, 1.0, nodes + 1, dtype=theta.dtype, device=theta.device)
            alpha = big_a[:, None] * frac  # [P, N+1]
            log_tw = torch.full_like(frac, 0.0)
            log_tw[0] = log_tw[-1] = -math.log(2.0)
            log_h = torch.log(big_a / nodes) - math.log(math.pi)  # (1/pi) * spacing
        # sin^2(phi/2) = sin^2(theta/4) + cos(theta/2) sin^2(alpha/2): accurate for small angles
        hav = (torch.sin(theta / 4) ** 2)[:, None] + c[:, None] * torch.sin(alpha / 2) ** 2
        phi = 2 * torch.asin(torch.sqrt(hav).clamp(max=1.0))
        ss = s[:, None, None]
        k_max = _n_images(float(sd.max()))
        shift = 2 * math.pi * torch.arange(-k_max, k_max + 1, dtype=theta.dtype, device=theta.device)
        arg = phi[..., None] + shift  # [P, N+1, 2K+1]
        rel = torch.exp(-(arg**2 - phi[..., None] ** 2) / (2 * ss))  # k = 0 has the largest exponent
        big_s = (arg * rel).sum(-1)
        dsum = ((1 - arg**2 / ss) * rel).sum(-1)
        sin_phi = torch.sin(phi).clamp_min(1e-300)
        log_p3 = torch.log(big_s.clamp_min(1e-300)) - phi**2 / (2 * s[:, None]) - torch.log(sin_phi)
        log_p3 = log_p3 + (s / 2 - 1.5 * (_LOG_2PI + torch.log(s)))[:, None]
        expo = log_p3 + log_tw
        top = expo.amax(-1, keepdim=True).detach()
        weights = torch.exp(expo - top)
        total = weights.sum(-1)
        log_p = top[:, 0] + torch.log(total) + log_h + math.log(math.pi / 2)
        # d log p3 / dv = (cot phi - F'/F) / sin phi at v = cos phi = c cos alpha, and dc/du = 1/(4c)
        dlog_p3 = (torch.cos(phi) / sin_phi - dsum / big_s.clamp_min(1e-300)) / sin_phi
        dlogp = (weights * dlog_p3 * torch.cos(alpha)).sum(-1) / total / (4 * c.clamp_min(1e-150))
        return log_p, dlogp

    # dispatch -------------------------------------------------------------------------------------------

    def evaluate(self, theta: Tensor, t: Tensor, estimator: str = "auto") -> tuple[Tensor, Tensor]:
        if estimator == "eigen":
            log_p, dlogp, cancel = self.eigen(theta, t)
            self._check_resolved(cancel, theta, t, "use estimator='auto', which is exact there")
            return log_p, dlogp
        if estimator == "varadhan":
            return self.varadhan(theta, t)
        if estimator == "schwinger_dewitt":
            return self.schwinger_dewitt(theta, t)[:2]
        if estimator == "sum_over_paths":
            return self.sum_over_paths(theta, t)
        return self.auto(theta, t)

    def auto(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        log_p = torch.zeros_like(theta)
        dlogp = torch.zeros_like(theta)
        todo = torch.ones_like(theta, dtype=torch.bool)
        use = self.transport_ok(theta, t)
        if bool(use.any()):
            lp, dl, cancel = self.schwinger_dewitt(theta[use], t[use], order=_SD_TERMS)
            good = cancel <= _MAX_CANCELLATION
            log_p, dlogp, todo = _fill(log_p, dlogp, todo, use, lp, dl, good)
        rest = todo & ~self.eigen_hopeless(theta, t)
        if bool(rest.any()):
            lp, dl, cancel = self.eigen(theta[rest], t[rest])
            good = cancel <= _MAX_CANCELLATION_WITH_TAIL
            log_p, dlogp, todo = _fill(log_p, dlogp, todo, rest, lp, dl, good)
        if bool(todo.any()):  # the exact tail method of every n: sum over paths, Hopf, or Hopf then Cauchy
            rest = todo.clone()
            # S^2: the real Hopf integral, exact here in the tail (not at theta ~ 0, which the eigen series takes)
            lp, dl = self.hopf(theta[rest], t[rest]) if self.n == 2 else self.sum_over_paths(theta[rest], t[rest])
            log_p, dlogp, todo = _fill(log_p, dlogp, todo, rest, lp, dl, torch.ones_like(lp, dtype=torch.bool))
        return log_p, dlogp


def _fill(log_p, dlogp, todo, where, lp, dl, good):
    """Write the ``good`` entries of a subset result (``where`` selects the subset) into the full tensors."""
    sel = torch.zeros_like(todo)
    sel[where] = good
    log_p = log_p.masked_scatter(sel, lp[good])
    dlogp = dlogp.masked_scatter(sel, dl[good])
    return log_p, dlogp, todo & ~sel


def _log_g(w: Tensor) -> Tensor:
    r"""log of :math:`g(u) = \arccos u/\sqrt{1-u^2}` continued analytically to :math:`u > 1`, at :math:`w = 1 - u`."""
    pos = w > 1e-8
    neg = w < -1e-8
    wp = torch.where(pos, w, torch.ones_like(w))
    wn = torch.where(neg, -w, torch.ones_like(w))
    g_pos = torch.log(2 * torch.asin(torch.sqrt(wp / 2).clamp(max=1.0))) - 0.5 * (torch.log(wp) + torch.log(2 - wp))
    g_neg = torch.log(2 * torch.asinh(torch.sqrt(wn / 2))) - 0.5 * (torch.log(wn) + torch.log(2 + wn))
    ws = torch.where(pos | neg, torch.zeros_like(w), w)
    return torch.where(pos, g_pos, torch.where(neg, g_neg, ws / 3))


def _saddle_log_radius(w0: Tensor, t: Tensor, order: float) -> Tensor:
    r"""Radius of the Cauchy circle: :math:`r\,g(u_0 + r) = \text{order}\cdot t`, the saddle point of
    :math:`\log p^{S^1}_t(u_0 + r) - \text{order}\log r` for the shortest-path term; bisection in :math:`\log r`."""
    target = math.log(order) + torch.log(t)
    # g >= 1 below u = 1 and r g(u0 + r) ~ log(2r) for large r bracket the root; near the antipode the
    # root is about 2 (order t / pi)^2, far below order * t
    lo = target - 24.0
    hi = torch.maximum(target, order * t) + 2.0
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        r = torch.exp(mid)
        val = mid + _log_g(w0 - r)
        up = val > target
        hi = torch.where(up, mid, hi)
        lo = torch.where(up, lo, mid)
    return 0.5 * (lo + hi)


def _fibre_width(half: Tensor, s: Tensor) -> Tensor:
    r"""Width :math:`\sigma = \sqrt{s/\kappa}`, :math:`\kappa = \tfrac\theta2\cot\tfrac\theta2`, of the Hopf fibre
    integrand around :math:`\alpha = 0` at half-angle ``half`` = :math:`\theta/2` and :math:`S^3` time ``s``."""
    kappa = torch.where(half < 1e-4, 1 - half**2 / 3, half / torch.tan(half.clamp_min(1e-4)))
    return torch.sqrt(s / kappa.clamp_min(1e-300))


def _taylor_coefficient(log_f: Tensor, log_weight: Tensor, phi: Tensor, log_r: Tensor, m: int, N: int) -> tuple[Tensor, Tensor]:
    r"""``(log a_m, (m+1) a_{m+1} / a_m)``: the Taylor coefficients of :math:`f(u_0 + h) = \sum_j a_j h^j` by the
    trapezoid rule on :math:`|h| = r` from ``log_f`` at the nodes ``phi`` of one half circle (``log_weight`` counts
    each node's conjugate), i.e. :math:`\log(\partial_u^m f/m!)` and :math:`d\log \partial_u^m f/du`. For a kernel all
    :math:`a_j` are positive, so the real parts of the sums do not cancel."""
    orders = torch.tensor([m, m + 1], dtype=phi.dtype, device=phi.device)
    expo = log_f[:, None, :] + log_weight - 1j * orders[None, :, None] * phi  # [P, 2, nodes]
    top = expo.real.amax(-1, keepdim=True).detach()
    sums = torch.exp(expo - top).real.sum(-1)  # N a_j r^j e^{-top}, positive
    log_am = top[:, 0, 0] + torch.log(sums[:, 0].clamp_min(1e-300)) - math.log(N) - m * log_r
    return log_am, (m + 1) * sums[:, 1] / sums[:, 0].clamp_min(1e-300) * torch.exp(-log_r)


def _log_s3_complex(w: Tensor, s: Tensor, images: int) -> Tensor:
    r""":math:`\log p^{S^3}_s` at complex :math:`w = \cos\varphi`: :math:`e^{s/2}(2\pi s)^{-3/2}\tfrac{\varphi}{\sin\varphi}
    e^{-\varphi^2/2s}[1 + \sum_{k\ge1} e^{-a_k}(2\cosh x_k - 4a_k\tfrac{\sinh x_k}{x_k})]`, :math:`a_k = 2\pi^2k^2/s`,
    :math:`x_k = 2\pi k\varphi/s`: the paths :math:`\pm k` paired as in :func:`_s3_image_ratio`, so every factor is
    entire in :math:`\varphi` (no 0/0 at :math:`w = 1`; at :math:`w = -1` the pole of :math:`\varphi/\sin\varphi` meets
    a zero of the bracket, a point the off-axis circle nodes never reach); ``images`` as :func:`_n_images` gives
    for ``s``."""
    phi = torch.arccos(w)  # Re phi in [0, pi] (principal branch), as _s3_image_pairs needs
    small = phi.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(phi), phi)
    ratio = torch.where(small, 1 + phi**2 / 6 + 7 * phi**4 / 360, safe / torch.sin(safe))
    bracket = _s3_image_pairs(phi, s, images)
    return 0.5 * s - 1.5 * (_LOG_2PI + torch.log(s)) - phi**2 / (2 * s) + torch.log(ratio) + torch.log(bracket)


def _n_images(t_max: float) -> int:
    """Images on each side of the nearest one: |Re A + 2 pi k| <= pi for the nearest, so further ones have
    exponents below -(2 pi j - pi)^2 / 2t, under e^-45 relative for j beyond this."""
    return int(math.ceil((math.sqrt(90 * t_max) + math.pi) / (2 * math.pi)))


def _log_wrapped_gaussian_complex(w0: Tensor, t: Tensor, log_r: Tensor, phi: Tensor) -> Tensor:
    r""":math:`\log p^{S^1}_t(u)` at :math:`u = 1 - w_0 + r e^{i\phi}`: :math:`(2\pi t)^{-1/2}\sum_k e^{-(A + 2\pi k)^2/2t}`
    with :math:`\cos A = u`; the sum over all images makes the result independent of the branch of A."""
    big = (log_r > 18.0)[:, None]
    # near u = 1: arccos(1 - w) = 2 asin(sqrt(w / 2)); for |h| > e^18, arccos z = -i log(2z) + O(z^-2), which
    # needs only log r (r itself may overflow when (m + 1/2) t is in the hundreds)
    r_small = torch.exp(log_r.clamp(max=18.0))[:, None]
    h = r_small * torch.exp(1j * phi)[None, :]
    w = w0[:, None].to(h.dtype) - torch.where(big, torch.zeros_like(h), h)
    a_small = 2 * torch.asin(torch.sqrt(w / 2))
    u0 = (1 - w0)[:, None]
    inv_r = torch.exp(-log_r)[:, None]
    ratio = torch.where(big, u0 * torch.exp(-1j * phi)[None, :] * inv_r, torch.zeros_like(h))
    log_z = log_r[:, None] + 1j * phi[None, :] + ratio - ratio**2 / 2
    a_big = -1j * (math.log(2.0) + log_z)
    a = torch.where(big, a_big, a_small)
    tt = t[:, None]
    k_max = _n_images(float(t.detach().max()))
    k_star = torch.round(-a.real.detach() / (2 * math.pi))
    terms = []
    for k in range(-k_max, k_max + 1):
        shift = 2 * math.pi * (k_star + k)
        terms.append(-((a + shift) ** 2) / (2 * tt))
    expo = torch.stack(terms)  # [2K+1, P, N]
    top = expo.real.amax(0).detach()
    return top + torch.log(torch.exp(expo - top).sum(0)) - 0.5 * (_LOG_2PI + torch.log(tt))


# --- the heat kernel ----------------------------------------------------------------------------------


class SphereHeatKernel(HeatKernel, kind="sphere_heat"):
    r"""Heat kernel of :math:`S^n` (generator :math:`\Delta/2`): :math:`p_t(x_0, x) = p_t(\theta)`,
    :math:`\theta = d(x_0, x)`, by one of the estimators of :mod:`geodiffusion.heat.sphere`; the score is
    :math:`\partial_u \log p_t\,(x_0 - u x)`, :math:`u = \langle x_0, x\rangle`.

    ``sample`` is exact whatever the estimator (it uses the exact evaluator): :math:`S^1` wraps a Gaussian;
    :math:`n \ge 3` rejects proposals :math:`\exp_{x_0}(\sigma z)` against the bound
    :math:`p_t \le (\theta/\sin\theta)^m e^{m^2t/2 - m(m-1)t/6} p^{\text{harmonic}}` (a Feynman–Kac comparison),
    or uniform proposals against :math:`p_t(0)`, whichever accepts more; where both accept rarely it samples
    exactly at an earlier time and pushes forward with the radial probability-flow ODE
    :math:`\dot\theta = -\tfrac12\partial_\theta \log p_s(\theta)` (RK4 in :math:`\log s`). :math:`S^2` is the
    Hopf image of :math:`S^3` at time :math:`t/4`. The direction is uniform in :math:`T_{x_0}S^n`.
    """

    class Spec(Spec):
        """Heat kernel of the sphere S^n."""

        manifold: component_spec(Manifold)
        estimator: Estimator = Field("auto", description="how p_t is computed (see geodiffusion.heat.sphere)")
        n_terms: int | None = Field(None, ge=2, description="eigen: number of terms; None chooses it from t and tol")
        tol: float = Field(1e-16, gt=0, lt=1e-3, description="eigen: drop terms below tol times the largest")
        sd_order: int = Field(0, ge=0, le=_SD_TERMS, description="schwinger_dewitt: transport corrections b_j t^j kept")
        sampler: SamplerKind = Field(
            "auto", description="auto: rejection where efficient, else ODE; ode: probability-flow ODE from the uniform law"
        )

        @model_validator(mode="after")
        def _check(self):
            kind = getattr(self.manifold, "kind", None)
            if kind != "sphere":
                raise ValueError(f"SphereHeatKernel needs a sphere manifold spec, got kind {kind!r}")
            return self

    @classmethod
    def examples(cls):
        sphere = {"kind": "sphere"}
        return [
            cls.Spec(manifold={**sphere, "dim": 2}),
            cls.Spec(manifold={**sphere, "dim": 15}),
            cls.Spec(manifold={**sphere, "dim": 3}, estimator="sum_over_paths"),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, Sphere):
            raise ValueError(f"SphereHeatKernel needs a Sphere, got {type(manifold).__name__}")
        self._manifold = manifold
        s = self.spec
        self._radial = _Radial(manifold.dim, s.tol, s.n_terms, s.sd_order)
        self._exact = _Radial(manifold.dim)  # the sampler's evaluator: auto, whatever the estimator

    @property
    def manifold(self) -> Sphere:
        return self._manifold

    # inputs ---------------------------------------------------------------------------------------

    def _points(self, x0: Tensor, x: Tensor, t) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
        """Validated float64 unit vectors broadcast to one batch shape, and t expanded to that shape."""
        m = self._manifold
        m.check_point("x0", x0)
        m.check_point("x", x)
        check_same_device_dtype(x0=x0, x=x)
        if not x.is_floating_point():
            raise ValueError(f"x: expected a floating-point tensor, got {x.dtype}")
        try:
            batch = torch.broadcast_shapes(x0.shape[:-1], x.shape[:-1])
        except RuntimeError as err:
            raise ValueError(f"x0 and x: batch shapes {list(x0.shape[:-1])} and {list(x.shape[:-1])} do not broadcast") from err
        _check_on_sphere(m, "x0", x0)
        _check_on_sphere(m, "x", x)
        t = _time(t, x0.new_empty(batch + (1,)))
        x0 = x0.to(torch.float64).expand(batch + x0.shape[-1:])
        x = x.to(torch.float64).expand(batch + x.shape[-1:])
        # renormalising keeps u in [-1, 1] and is a valid ambient extension for autograd
        x0 = x0 / x0.norm(dim=-1, keepdim=True)
        x = x / x.norm(dim=-1, keepdim=True)
        return x0, x, t.to(torch.float64), batch

    def _radial_of(self, x0: Tensor, x: Tensor, t: Tensor, evaluator: _Radial, estimator: str):
        # theta = 2 atan2(|x - x0|, |x + x0|) is accurate to an ulp at every angle, unlike acos(<x0, x>)
        theta = 2 * torch.atan2((x - x0).norm(dim=-1), (x + x0).norm(dim=-1))
        flat = theta.reshape(-1)
        log_p, dlogp = evaluator.evaluate(flat, t.reshape(-1), estimator)
        return log_p.reshape(theta.shape), dlogp.reshape(theta.shape)

    # the HeatKernel interface -------------------------------------------------------------------------

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        r""":math:`\log p_t(\theta)` by the chosen estimator, computed in float64."""
        dtype = x.dtype
        x0_, x_, t_, _ = self._points(x0, x, t)
        log_p, _ = self._radial_of(x0_, x_, t_, self._radial, self.spec.estimator)
        return log_p.to(dtype)

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        r""":math:`\nabla_x \log p_t = \partial_u \log p_t(\theta)\,(x_0 - u x)`: the radial derivative times the
        tangent :math:`-\sin\theta\,e_\theta` pointing to :math:`x_0`; zero at :math:`\theta = 0, \pi`."""
        dtype = x.dtype
        x0_, x_, t_, _ = self._points(x0, x, t)
        with torch.no_grad():
            _, dlogp = self._radial_of(x0_, x_, t_, self._radial, self.spec.estimator)
            # x0 - u x = |r|^2 x0 - u r with r = x - u x0 (for unit vectors): when x0 is a coordinate axis every
            # component comes out to a few ulps, where x0 - u x would lose eps / theta to cancellation
            u = (x0_ * x_).sum(-1, keepdim=True)
            r = x_ - u * x0_
            out = dlogp[..., None] * ((r**2).sum(-1, keepdim=True) * x0_ - u * r)
        return out.to(dtype)

    def radial_log_prob(self, theta: Tensor, t) -> Tensor:
        r""":math:`\log p_t(\theta)` at geodesic distances ``theta`` (the density w.r.t. volume, not of theta)."""
        theta_ = theta.to(torch.float64)
        t_ = _time(t, theta_[..., None]).to(torch.float64)
        log_p, _ = self._radial.evaluate(theta_.reshape(-1), t_.reshape(-1), self.spec.estimator)
        return log_p.reshape(theta.shape).to(theta.dtype)

    def sample(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        r"""Exact draws :math:`x = \cos\theta\,x_0 + \sin\theta\,e` with :math:`\theta` from the radial law
        :math:`p_t(\theta)|S^{n-1}|\sin^{n-1}\theta` and :math:`e` uniform on the unit sphere of :math:`T_{x_0}S^n`."""
        m = self._manifold
        m.check_point("x0", x0)
        _check_on_sphere(m, "x0", x0)
        dtype = x0.dtype
        t = _time(t, x0)
        x0_ = x0.to(torch.float64)
        x0_ = x0_ / x0_.norm(dim=-1, keepdim=True)
        batch = x0.shape[:-1]
        flat_t = t.to(torch.float64).expand(batch).reshape(-1)
        theta = self.sample_theta(flat_t, generator).reshape(batch)
        z = randn(x0_.shape, generator, dtype=torch.float64, device=x0.device)
        e = z - (z * x0_).sum(-1, keepdim=True) * x0_
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        x = torch.cos(theta)[..., None] * x0_ + torch.sin(theta)[..., None] * e
        return x.to(dtype)

    # sampling the angle -------------------------------------------------------------------------------

    def sample_theta(self, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws of the geodesic distance at float64 times ``t`` (flat)."""
        if self.spec.sampler == "ode":
            return _theta_by_ode_from_uniform(self._exact, t, generator)
        return _sample_theta(self._exact, t, generator, allow_ode=self.spec.sampler == "auto")


# --- sampling ---------------------------------------------------------------------------------------


def _sample_theta(radial: _Radial, t: Tensor, generator, allow_ode: bool = True) -> Tensor:
    n = radial.n
    if t.numel() == 0:
        return torch.empty_like(t)
    if n == 1:
        # the wrapped Gaussian folded onto [0, pi]
        z = torch.sqrt(t) * randn(t.shape, generator, dtype=t.dtype, device=t.device)
        return torch.remainder(z + math.pi, 2 * math.pi).sub(math.pi).abs()
    if n == 2:
        # Hopf: BM on S^3 at t/4 maps to BM on S^2 at t; with y = cos(phi) e_0 + sin(phi) w, w uniform on
        # S^2, the image angle satisfies sin(theta/2) = sin(phi) sqrt(1 - w_1^2)
        phi = _sample_theta(_radial_for(3), t / 4, generator, allow_ode)
        w1 = 2 * rand(t.shape, generator, dtype=t.dtype, device=t.device) - 1
        return 2 * torch.asin((torch.sin(phi) * torch.sqrt(1 - w1**2)).clamp(0.0, 1.0))
    if n == 3 and allow_ode:
        small = t <= _S3_CHI_TIME
        if bool(small.all()):
            return _sample_theta_s3(t, generator)
        if bool(small.any()):
            theta = torch.empty_like(t)
            theta[small] = _sample_theta_s3(t[small], generator)
            theta[~small] = _sample_theta(radial, t[~small], generator, allow_ode)
            return theta
    # the bounds depend on t only: compute them once per distinct time
    times, index = torch.unique(t, return_inverse=True)
    log_m_chi = _log_bound_chi(n, times)[index]
    log_m_unif = (radial.evaluate(torch.zeros_like(times), times)[0] + radial.log_volume)[index]
    use_chi = log_m_chi <= log_m_unif
    best = torch.minimum(log_m_chi, log_m_unif)
    theta = torch.empty_like(t)
    via_ode = (best > math.log(_MAX_PROPOSALS)) if allow_ode else torch.zeros_like(use_chi)
    chi = use_chi & ~via_ode
    unif = ~use_chi & ~via_ode
    if bool(chi.any()):
        theta[chi] = _rejection(radial, t[chi], generator, "chi")
    if bool(unif.any()):
        theta[unif] = _rejection(radial, t[unif], generator, "uniform", log_m_unif[unif])
    if bool(via_ode.any()):
        s0 = _chi_time(n)
        start = _rejection(radial, torch.full_like(t[via_ode], s0), generator, "chi")
        theta[via_ode] = _flow(radial, start, torch.full_like(start, s0), t[via_ode])
    return theta


def _s3_image_ratio(theta: Tensor, s: Tensor, images: int = 3) -> Tensor:
    r""":math:`\sum_k (\theta + 2\pi k) e^{-(\theta+2\pi k)^2/2s} / (\theta e^{-\theta^2/2s})` on :math:`S^3`, with the
    images :math:`\pm k` paired as :math:`e^{-2\pi^2k^2/s}[2\cosh x - \tfrac{8\pi^2k^2}{s}\tfrac{\sinh x}{x}]`,
    :math:`x = 2\pi k\theta/s`: finite at :math:`\theta = 0` and free of overflow. Each pair is :math:`\le 0`
    for :math:`s \le 36`, so the ratio is at most 1 there; ``images`` = 3 leaves terms below :math:`e^{-59}` at
    :math:`s \le 2`. The pairs are evaluated only where they can matter: pair :math:`k` is at most
    :math:`(2 + 4a_k)e^{2\pi k(\theta - \pi k)/s}`, :math:`a_k = 2\pi^2k^2/s`, so where the sum of these bounds is
    below :math:`e^{-45}` (far under float64 rounding of 1) the ratio is 1, which at small :math:`s` is every
    proposal not within a few :math:`s` of the antipode."""
    out = torch.ones_like(theta)
    a_max = 2 * math.pi**2 * images**2 / s
    log_bound = math.log(images) + torch.log(2 + 4 * a_max) - 2 * math.pi * (math.pi - theta) / s
    near = log_bound > -45.0
    if not bool(near.all()):
        if bool(near.any()):
            out[near] = _s3_image_pairs(theta[near], s[near], images)
        return out
    return _s3_image_pairs(theta, s, images)


def _s3_image_pairs(phi: Tensor, s: Tensor, images: int) -> Tensor:
    r""":math:`1 + \sum_{k=1}^{\text{images}} e^{-a_k}[2\cosh x_k - 4a_k\tfrac{\sinh x_k}{x_k}]`,
    :math:`a_k = 2\pi^2k^2/s`, :math:`x_k = 2\pi k\varphi/s`: the paths :math:`\pm k` of :math:`S^3` relative to the
    shortest one, real or complex :math:`\varphi` with :math:`\mathrm{Re}\,\varphi \in [0, \pi]`, where
    :math:`|e^{x - a}| \le 1` and :math:`|e^{-x - a}| \le e^{-a}`: nothing overflows."""
    out = torch.ones_like(phi)
    for k in range(1, images + 1):
        a = 2 * math.pi**2 * k * k / s
        x = 2 * math.pi * k * phi / s
        up, down = torch.exp(x - a), torch.exp(-x - a)
        small = x.abs() < 1
        xs = torch.where(small & (x != 0), x, torch.ones_like(x))  # small branch: sinh(x)/x directly
        xl = torch.where(small, torch.ones_like(x), x)  # large branch: no overflow, no cancellation
        sinhc = torch.where(small, torch.exp(-a) * torch.sinh(xs) / xs, (up - down) / (2 * xl))
        sinhc = torch.where(x == 0, torch.exp(-a).to(sinhc.dtype), sinhc)
        out = out + (up + down) - 4 * a * sinhc
    return out


# S^3: the chi_3 proposal at variance s is dominated with bound e^{s/2}; used up to this time (< 2 proposals)
_S3_CHI_TIME = 2.0


def _sample_theta_s3(s: Tensor, generator) -> Tensor:
    r"""Exact angles on :math:`S^3` at times ``s`` <= 2 by rejection from :math:`\chi_3` with variance :math:`s`.

    :math:`p^{S^3}_s(\theta) = e^{s/2}(2\pi s)^{-3/2}\sum_k \tfrac{\theta+2\pi k}{\sin\theta}e^{-(\theta+2\pi k)^2/2s}`,
    so the radial density over the :math:`\chi_3` one is
    :math:`e^{s/2}\,\tfrac{\sin\theta}{\theta}\,\text{ratio}(\theta) \le e^{s/2}` (see :func:`_s3_image_ratio`) on
    :math:`[0, \pi)`, and zero beyond: accept with probability :math:`\tfrac{\sin\theta}{\theta}\text{ratio}(\theta)`."""
    out = torch.empty_like(s)
    todo = torch.arange(s.numel(), device=s.device)
    for _ in range(10_000):
        if todo.numel() == 0:
            return out
        ss = s[todo]
        k = int(math.ceil(2 * math.exp(0.5 * float(ss.max()))))
        sk = ss[:, None].expand(-1, k).reshape(-1)
        z = randn((sk.numel(), 3), generator, dtype=s.dtype, device=s.device)
        theta = torch.sqrt(sk) * z.norm(dim=-1)
        inside = theta < math.pi
        th = torch.where(inside, theta, torch.ones_like(theta))
        sinc = torch.where(th < 1e-4, 1 - th**2 / 6, torch.sin(th) / th)
        accept_p = torch.where(inside, sinc * _s3_image_ratio(th, sk), torch.zeros_like(th))
        accept = (rand(accept_p.shape, generator, dtype=s.dtype, device=s.device) < accept_p).reshape(-1, k)
        theta = theta.reshape(-1, k)
        hit = accept.any(-1)
        first = accept.to(torch.int8).argmax(-1)
        out[todo[hit]] = theta[hit, first[hit]]
        todo = todo[~hit]
    raise RuntimeError("rejection sampling on S^3 did not finish")


@functools.lru_cache(maxsize=16)
def _radial_for(n: int) -> _Radial:
    return _Radial(n)


@functools.lru_cache(maxsize=1)
def _zeta_even(count: int = 14) -> tuple[float, ...]:
    from scipy.special import zeta

    return tuple(float(zeta(2 * k)) for k in range(1, count + 1))


def _horner(coefficients: list[float], x: Tensor) -> Tensor:
    out = torch.full_like(x, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        out = out * x + c
    return out


def _log_sinc_sq(s: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`f(s) = \log(\sin\sqrt s/\sqrt s) = -\sum_k \zeta(2k)s^k/(k\pi^{2k})` and :math:`f'(s)`, for
    :math:`0 \le s < \pi^2`; :math:`f` is concave (all coefficients negative)."""
    z = _zeta_even()
    small = s < 0.5
    x = torch.where(small, s, torch.zeros_like(s)) / math.pi**2
    f_series = -x * _horner([z[k - 1] / k for k in range(1, len(z) + 1)], x)
    df_series = -_horner(list(z), x) / math.pi**2
    r = torch.sqrt(torch.where(small, torch.ones_like(s), s))
    f_direct = torch.log(torch.sin(r) / r)
    df_direct = (r / torch.tan(r) - 1) / (2 * r * r)
    return torch.where(small, f_series, f_direct), torch.where(small, df_series, df_direct)


def _inv_sin_sq_gap(s: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`h(s) = \sin^{-2}\sqrt s - 1/s = \sum_i 2(2i+1)\zeta(2i+2)s^i/\pi^{2i+2}` and :math:`h'(s)`;
    :math:`h` is convex and increasing on :math:`[0, \pi^2)`."""
    z = _zeta_even()
    small = s < 0.5
    x = torch.where(small, s, torch.zeros_like(s)) / math.pi**2
    h_series = _horner([2 * (2 * i + 1) * z[i] for i in range(len(z))], x) / math.pi**2
    dh_series = _horner([2 * (2 * i + 1) * i * z[i] for i in range(1, len(z))], x) / math.pi**4
    r = torch.sqrt(torch.where(small, torch.ones_like(s), s))
    sin = torch.sin(r)
    h_direct = 1 / sin**2 - 1 / r**2
    dh_direct = -torch.cos(r) / (r * sin**3) + 1 / r**4
    return torch.where(small, h_series, h_direct), torch.where(small, dh_series, dh_direct)


def _chi_params(n: int, t: Tensor, grid: int = 12) -> tuple[Tensor, Tensor]:
    r"""Proposal variance :math:`\sigma^2` and log-bound :math:`\log M` of the Gaussian-proposal rejection sampler
    (n >= 3), for flat times ``t``.

    :math:`\psi = \sin^m\theta\,p_t` solves :math:`\partial_t\psi = \tfrac12\psi'' - V\psi` with
    :math:`V = \tfrac{m(m-1)}{2}(\theta^{-2} + h(\theta^2)) - \tfrac{m^2}{2}`, and
    :math:`(\sin\theta/\theta)^{n-1}p_t = p^{\mathbb R^n}_t (\sin\theta/\theta)^m e^{m^2t/2}
    \,\mathbb E_{\text{bridge}}[e^{-\frac{m(m-1)}{2}\int h(|X|^2)}]`. Tangent lines bound the convex :math:`h`
    from below at :math:`s_1` (a harmonic potential, :math:`\omega^2 = m(m-1)h'(s_1)`, whose bridge expectation
    is Mehler's formula) and the concave :math:`f = \log(\sin\sqrt s/\sqrt s)` from above at :math:`s_0`, so
    :math:`(\sin\theta/\theta)^{n-1}p_t(\theta) \le M\,\mathcal N(\theta; 0, \sigma^2 I_n)` with
    :math:`\sigma^{-2} = \omega\coth\omega t - 2mf'(s_0)` and
    :math:`\log M = m(f(s_0) - s_0f'(s_0)) + (\tfrac{m^2}{2} - \tfrac{m(m-1)}{2}(h(s_1) - s_1h'(s_1)))t
    - \tfrac n2\log\tfrac{\sinh\omega t}{\omega t} - \tfrac n2\log(t/\sigma^2)`, for any
    :math:`s_0, s_1 \in [0, \pi^2)`; the pair minimising :math:`M` on a grid is used."""
    m = 0.5 * (n - 1)
    top = (2.0 * n * t).clamp(max=9.0)[:, None]
    frac = torch.linspace(0.0, 1.0, grid, dtype=t.dtype, device=t.device)
    s0 = (top * frac)[:, :, None]  # [P, G, 1]
    s1 = (top * frac)[:, None, :]  # [P, 1, G]
    f0, df0 = _log_sinc_sq(s0)
    h1, dh1 = _inv_sin_sq_gap(s1)
    tt = t[:, None, None]
    omega = torch.sqrt(m * (m - 1) * dh1)
    wt = omega * tt
    tiny = wt < 1e-6
    safe = torch.where(tiny, torch.ones_like(wt), wt)
    coth = torch.where(tiny, 1 / tt + wt * omega / 3, omega / torch.tanh(safe))  # omega coth(omega t)
    log_sinhc = torch.where(tiny, wt**2 / 6, safe + torch.log1p(-torch.exp(-2 * safe)) - torch.log(2 * safe))
    prec = coth - 2 * m * df0
    log_m = (
        m * (f0 - s0 * df0)
        + (0.5 * m * m - 0.5 * m * (m - 1) * (h1 - s1 * dh1)) * tt
        - 0.5 * n * log_sinhc
        - 0.5 * n * torch.log(prec * tt)
    )
    flat = log_m.reshape(t.shape[0], -1)
    best = flat.argmin(-1)
    var = 1 / prec.expand_as(log_m).reshape(t.shape[0], -1).gather(-1, best[:, None])[:, 0]
    return var, flat.gather(-1, best[:, None])[:, 0]


def _log_bound_chi(n: int, t: Tensor) -> Tensor:
    return _chi_params(n, t)[1]


@functools.lru_cache(maxsize=64)
def _chi_time(n: int) -> float:
    """The time up to which the Gaussian-proposal sampler needs at most half the allowed proposals."""
    lo, hi = 1e-12, 1e3
    target = math.log(_MAX_PROPOSALS / 2)
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if float(_log_bound_chi(n, torch.tensor([mid], dtype=torch.float64))[0]) > target:
            hi = mid
        else:
            lo = mid
    return lo


def _rejection(radial: _Radial, t: Tensor, generator, proposal: str, log_m_unif: Tensor | None = None) -> Tensor:
    """Rejection sampling of theta, vectorised over samples; ``proposal`` is "chi" or "uniform"."""
    n = radial.n
    out = torch.empty_like(t)
    todo = torch.arange(t.numel(), device=t.device)
    if proposal == "chi":
        times, index = torch.unique(t, return_inverse=True)
        var, log_m = (v[index] for v in _chi_params(n, times))
    else:
        var, log_m = None, log_m_unif
    for _ in range(10_000):
        if todo.numel() == 0:
            return out
        tt = t[todo]
        # a quarter of the expected proposals per round: k / (1 - e^{-k/M}) ~ 1.13 M target evaluations per draw
        # (2.3 M at k = 2M), the dominant cost, for about 4 ln(N) more (cheap, shrinking) rounds
        k = int(min(_MAX_PROPOSALS, max(1.0, math.ceil(0.25 * math.exp(float(log_m[todo].max()))))))
        tk = tt[:, None].expand(-1, k).reshape(-1)
        z = randn((todo.numel() * k, n + (proposal == "uniform")), generator, dtype=t.dtype, device=t.device)
        if proposal == "chi":
            vk = var[todo][:, None].expand(-1, k).reshape(-1)
            theta = torch.sqrt(vk) * z.norm(dim=-1)
            inside = theta < math.pi
            theta_in = torch.where(inside, theta, torch.ones_like(theta))
            log_p = radial.evaluate(theta_in, tk)[0]
            log_acc = (
                log_p
                + (n - 1) * (torch.log(torch.sin(theta_in)) - torch.log(theta_in))
                + 0.5 * n * (_LOG_2PI + torch.log(vk))
                + theta_in**2 / (2 * vk)
                - log_m[todo][:, None].expand(-1, k).reshape(-1)
            )
            log_acc = torch.where(inside, log_acc, torch.full_like(log_acc, -math.inf))
        else:
            theta = torch.atan2(z[:, 1:].norm(dim=-1), z[:, 0])
            log_p = radial.evaluate(theta, tk)[0]
            log_acc = log_p + radial.log_volume - log_m[todo][:, None].expand(-1, k).reshape(-1)
        accept = torch.log(rand(log_acc.shape, generator, dtype=t.dtype, device=t.device)) < log_acc
        accept = accept.reshape(-1, k)
        theta = theta.reshape(-1, k)
        hit = accept.any(-1)
        first = accept.float().argmax(-1)
        out[todo[hit]] = theta[hit, first[hit]]
        todo = todo[~hit]
    raise RuntimeError(f"rejection sampling on S^{n} did not finish; acceptance is too low")


def _flow(radial: _Radial, theta: Tensor, s0: Tensor, t: Tensor, step: float = _ODE_STEP) -> Tensor:
    r"""Push exact draws at times ``s0`` to times ``t`` with the radial probability-flow ODE
    :math:`d\theta/d\log s = -\tfrac{s}{2}\partial_\theta\log p_s = \tfrac{s}{2}\sin\theta\,\partial_u\log p_s`,
    by classical RK4 in :math:`\log s` with steps of at most ``step`` (every sample has its own times; all
    take the same number of steps, so one call of the radial evaluator serves the whole batch per stage)."""
    tau0, tau1 = torch.log(s0), torch.log(t)
    steps = max(4, int(math.ceil(float((tau1 - tau0).abs().max()) / step)))
    h = (tau1 - tau0) / steps

    def velocity(theta: Tensor, tau: Tensor) -> Tensor:
        s = torch.exp(tau)
        theta = theta.clamp(0.0, math.pi)
        return 0.5 * s * torch.sin(theta) * radial.evaluate(theta, s)[1]

    tau = tau0
    with torch.no_grad():
        for _ in range(steps):
            k1 = velocity(theta, tau)
            k2 = velocity(theta + 0.5 * h * k1, tau + 0.5 * h)
            k3 = velocity(theta + 0.5 * h * k2, tau + 0.5 * h)
            k4 = velocity(theta + h * k3, tau + h)
            theta = (theta + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)).clamp(0.0, math.pi)
            tau = tau + h
    return theta


@functools.lru_cache(maxsize=64)
def _uniform_time(n: int) -> float:
    """A time after which p_t is uniform to 1e-13: sum_{l >= 1} d_l e^{-lambda_l t} <= 1e-13."""
    t = 1.0
    while True:
        total = sum(math.exp(_log_dim(l, n) - 0.5 * l * (l + n - 1) * t) for l in range(1, 200))
        if total <= 1e-13:
            return t
        t *= 1.25


def _theta_by_ode_from_uniform(radial: _Radial, t: Tensor, generator) -> Tensor:
    """The paper's sampler: uniform draws at a time where the heat kernel is uniform, then the ODE back to t."""
    n = radial.n
    big = _uniform_time(n)
    z = randn((t.numel(), n + 1), generator, dtype=t.dtype, device=t.device)
    theta = torch.atan2(z[:, 1:].norm(dim=-1), z[:, 0])
    return _flow(radial, theta, torch.full_like(t, big), t)


# --- helpers -------------------------------------------------------------------------------------------


def _on_sphere_tol(dtype: torch.dtype) -> float:
    return max(1e-6, 1e3 * torch.finfo(dtype).eps)


def _check_on_sphere(manifold: Sphere, name: str, x: Tensor) -> None:
    ok = manifold.belongs(x, atol=_on_sphere_tol(x.dtype)) if x.is_floating_point() else torch.zeros((), dtype=torch.bool)
    if not bool(ok.all()):
        raise ValueError(
            f"{name}: points must lie on S^{manifold.dim} (unit norm within {_on_sphere_tol(x.dtype):.0e}, finite); "
            f"{int((~ok).sum())} do not"
        )


def _time(t, like: Tensor) -> Tensor:
    """t as a tensor of the batch shape of ``like`` (points with a trailing event dim); rejects t <= 0."""
    t = check_time(t, math.inf, like, lower=0.0)
    if bool((t <= 0).any()):
        raise ValueError("t: the heat kernel needs t > 0")
    batch = like[..., 0]
    return expand_time(t, batch).expand(batch.shape) if t.dim() else t.expand(batch.shape)


# --- baseline --------------------------------------------------------------------------------------------


def geodesic_random_walk(manifold: Manifold, x0: Tensor, t, n_steps: int, generator: torch.Generator | None = None) -> Tensor:
    r"""Baseline sampler of Brownian motion: ``n_steps`` steps :math:`x \leftarrow \exp_x(\sqrt{\delta}\,\xi)`,
    :math:`\xi` a standard Gaussian in :math:`T_x M`, :math:`\delta = t/\text{n\_steps}`; weak order 1 in
    :math:`\delta`, so its law only approaches :math:`p_t(x_0, \cdot)` as ``n_steps`` grows."""
    if n_steps < 1:
        raise ValueError(f"n_steps: expected a positive integer, got {n_steps}")
    t = _time(t, x0)
    scale = torch.sqrt(t / n_steps).reshape(t.shape + (1,) * len(manifold.point_shape))
    x = x0
    for _ in range(n_steps):
        x = manifold.exp(x, scale * manifold.random_tangent(x, generator))
    return x
