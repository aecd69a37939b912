r"""Heat kernels of SO(3) and SU(n) (Frobenius bi-invariant metric, generator :math:`\Delta/2`) and exact sampling.

Notation of Lou et al., *Scaling Riemannian diffusion models* (2310.20030). A heat kernel of a compact group is a
class function, :math:`p_t(x_0, x) = p_t(g)`, :math:`g = x_0^H x`, so it lives on the maximal torus: the
eigenangles :math:`\theta` of :math:`g`. Two exact series:

eigen (characters, Weyl formula)
    :math:`p_t(g) = \mathrm{vol}(G)^{-1}\sum_\lambda d_\lambda\, e^{-C(\lambda)t/2}\chi_\lambda(g)`, with
    :math:`\chi_\lambda = s_\lambda(e^{i\theta})` the Schur polynomial (Weyl character formula), evaluated as
    :math:`\det[h_{\mu_k - j}(z_1, \dots, z_{j+1})]` (divided differences of the bialternant), so coincident
    eigenvalues (the identity, walls of the Weyl chamber) need no division. Truncated where the remaining
    weights :math:`d_\lambda^2 e^{-C(\lambda)t/2}` fall below :math:`e^{-42}` of the largest.
sum_over_paths (maximal torus)
    :math:`p_t(e^H) = (2\pi t)^{-D/2}e^{|\rho|^2t/2}\sum_{\gamma}\prod_{\alpha>0}
    \frac{\alpha(H+\gamma)}{2\sin(\alpha(H+\gamma)/2)}e^{-|H+\gamma|^2/2t}` over the coroot lattice
    :math:`\gamma \in 2\pi\{m \in \mathbb Z^n: \sum m = 0\}`: exact, and fast at small :math:`t`.
varadhan
    :math:`(2\pi t)^{-D/2}e^{-d(x_0, x)^2/2t}`, the leading small-time term (not normalised).

For SO(3) and SU(2) (rank one) both series reduce to the unit-sphere :math:`S^3` kernel
:math:`P_s(\psi)`: SU(2) is :math:`S^3` of radius :math:`\sqrt2`, so :math:`p_t(\phi) = 2^{-3/2}P_{t/2}(\phi)`;
SO(3) is :math:`S^3(2\sqrt2)/\{\pm1\}`, so :math:`p_t(\theta) = 2^{-9/2}[P_{t/8}(\theta/2) + P_{t/8}(\pi - \theta/2)]`
(:math:`\theta` the rotation angle). The sum over paths is evaluated with the images paired
(:math:`k \leftrightarrow -k` near :math:`\psi = 0`, :math:`k \leftrightarrow -k-1` near :math:`\psi = \pi`), so
:math:`\theta = 0` and :math:`\theta = \pi` are regular points of the formula.

``auto``: SO(3)/SU(2) sum over paths for :math:`s \le 2` (S^3 time), eigen beyond. SU(n), n >= 3: each point takes
the first exact estimator that resolves it in float64, in the order: up to :math:`t = 4` (SU(3)), 2 (SU(4)) or 0.5
(n >= 5), where it is the cheaper, the sum over paths (near a wall, where eigenvalues nearly coincide and its terms
divide by vanishing roots, first its Taylor expansion about the wall, :meth:`_SUTorus.wall`), then the characters;
beyond, the characters, then the sum over paths and its expansion (at centre elements of SU(n), n >= 5, just above
t = 0.5 the characters cancel beyond float64). A point none resolves raises. Everything in float64 and log space.

Sampling SU(n): eigenangles by rejection from Lie-algebra Gaussians :math:`e^X`, :math:`X \sim N(0, tI)`, whose
density :math:`q_t` has one term per preimage, :math:`(2\pi t)^{-D/2}e^{-|H+\gamma|^2/2t}/J(H+\gamma)`,
:math:`J = \prod_{\alpha>0}(\sin(\alpha/2)/(\alpha/2))^2`: the path term of the same preimage is
:math:`e^{|\rho|^2t/2}\prod_\alpha\sin(\alpha/2)/(\alpha/2)` times it, so :math:`p_t \le e^{|\rho|^2t/2}q_t` and the
acceptance rate is :math:`e^{-|\rho|^2t/2}`; Haar proposals beyond the time where :math:`\mathrm{vol}\,p_t(e)` is
the smaller bound; a probability-flow ODE only where both bounds exceed 64 (n >= 5 at moderate t).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion._validation import check_same_device_dtype, check_tensor
from geodiffusion.heat.base import EIGEN_MAX_CANCELLATION, HeatKernel, raise_unresolved
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.lie import SO3, SU, real_dtype, su_angles, su_casimir, su_dimension, su_partitions
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["SO3HeatKernel", "SUHeatKernel", "s3_log_kernel"]

Estimator = Literal["auto", "eigen", "varadhan", "schwinger_dewitt", "sum_over_paths"]
_LOG_2PI = math.log(2 * math.pi)
_CUT = 42.0  # a weight below e^-42 of the largest changes no float64 digit of a positive sum
_RANK_ONE_PATHS_UP_TO = 2.0  # S^3 time s
# auto's sum over paths first up to this t (measured crossovers of the gradient's cost on 2048 Haar-random points, one
# thread: SU(3) 0.04 s against the characters' 0.39 s at t = 1, even at t = 4; SU(4) at t ~ 2; SU(5) ~ 0.6)
_SU_PATHS_UP_TO = {3: 4.0, 4: 2.0}
_SU_PATHS_UP_TO_DEFAULT = 0.5
_MAX_PROPOSALS = 64.0
_ODE_TOL = 1e-9
_PROPOSAL_BLOCK = 8192  # proposals per block of the acceptance computation
_WALL = 1e-7  # eigenangles closer than this (times tau in the wall expansion) are treated as coinciding
_MERGE = 1e-6  # near a wall, angles closer than this fraction of their cluster's widest gap are merged
# the determinant characters of SU(n) round more than S^3's series: on 2048 Haar-random SU(3) pairs at t = 0.3 their
# log p was up to 7.7e-7 off where they cancel by <= 1e10 (EIGEN_MAX_CANCELLATION), 1.3e-7 where by <= 1e9
_SU_EIGEN_MAX_CANCELLATION = EIGEN_MAX_CANCELLATION / 10
_MAX_ROWS = 120  # character expansion of SU(n >= 3): largest first row of a partition used by auto


# --- rank one: the unit S^3 kernel ----------------------------------------------------------------------


def _x_over_sin(x: Tensor) -> Tensor:
    """x / sin(x) for |x| < pi, with the series at 0 (autograd-safe)."""
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 + x**2 / 6, safe / torch.sin(safe))


def _one_minus_exp_over(y: Tensor) -> Tensor:
    """(1 - e^{-2y}) / y for y >= 0, with the limit 2 at 0."""
    # the series below 1e-3 (truncation < 1e-17): the direct form's derivative cancels like eps / y^2
    small = y < 1e-3
    safe = torch.where(small, torch.ones_like(y), y)
    series = 2 + y * (-2 + y * (4 / 3 + y * (-2 / 3 + y * (4 / 15 - y * 4 / 45))))
    return torch.where(small, series, -torch.expm1(-2 * safe) / safe)


def _s3_paths(psi: Tensor, s: Tensor) -> Tensor:
    r""":math:`\log P_s(\psi)`,
    :math:`P_s = (2\pi s)^{-3/2}e^{s/2}\sum_k \frac{\psi + 2\pi k}{\sin\psi}e^{-(\psi+2\pi k)^2/2s}`."""
    K = int(math.ceil((math.pi + math.sqrt(92 * float(s.detach().max()))) / (2 * math.pi))) + 1
    lower = psi <= 0.5 * math.pi
    # near 0: pair k and -k; P = e^{-psi^2/2s} (psi/sin psi) (1 + sum_k T_k)
    psi_a = torch.where(lower, psi, torch.zeros_like(psi))
    b = 2 * math.pi * torch.arange(1, K + 1, dtype=psi.dtype, device=psi.device)
    x = b * psi_a[..., None] / s[..., None]
    lead = torch.exp(-(b**2 - 2 * b * psi_a[..., None]) / (2 * s[..., None]))
    ratio = (b**2 / s[..., None]) * _one_minus_exp_over(x)  # 2 (b/psi) sinh(x) e^{-x}, finite at psi = 0
    t_k = lead * ((1 + torch.exp(-2 * x)) - ratio)
    log_a = -(psi_a**2) / (2 * s) + torch.log(_x_over_sin(psi_a)) + torch.log1p(t_k.sum(-1))
    # near pi: eta = pi - psi, pair k >= 0 with -k-1, a = (2k+1) pi
    eta = torch.where(lower, torch.zeros_like(psi), math.pi - psi)
    a = math.pi * (2 * torch.arange(0, K + 1, dtype=psi.dtype, device=psi.device) + 1)
    y = a * eta[..., None] / s[..., None]
    bracket = (a**2 / s[..., None]) * _one_minus_exp_over(y) - 1 - torch.exp(-2 * y)
    expo = -((a - eta[..., None]) ** 2) / (2 * s[..., None])
    log_b = torch.log(_x_over_sin(eta)) + torch.logsumexp(expo + torch.log(bracket), -1)
    return -1.5 * (_LOG_2PI + torch.log(s)) + 0.5 * s + torch.where(lower, log_a, log_b)


def _s3_eigen_terms(s_min: float) -> int:
    l = 1
    while 2 * math.log(l + 1) - 0.5 * l * (l + 2) * s_min > -_CUT - 5 or l < 3:
        l += 1
    return l


def _s3_eigen(
    psi: Tensor,
    s: Tensor,
    even: bool = False,
    series: str = "the character series of S^3 (in S^3's angle and time: SU(2)'s time t is 2 s)",
    remedy: str = "use estimator='auto', which is exact there",
) -> Tensor:
    r""":math:`\log P_s(\psi)`, :math:`P_s = \tfrac{1}{2\pi^2}\sum_{l\ge0}(l+1)e^{-l(l+2)s/2}U_l(\cos\psi)`, with the
    Chebyshev polynomials :math:`U_l(\cos\psi) = \sin((l+1)\psi)/\sin\psi` from their recurrence. ``even``: the
    even-``l`` terms only, :math:`\tfrac12(P_s(\psi) + P_s(\pi - \psi))`, SO(3)'s own character series."""
    L = _s3_eigen_terms(float(s.detach().min()))
    u = torch.cos(psi)
    lhat = torch.clamp(torch.sqrt(2.0 / s.detach()) - 1, min=0.0)  # maximiser of log(l+1)^2 - l(l+2)s/2
    shift = 2 * torch.log(lhat + 1) - 0.5 * lhat * (lhat + 2) * s.detach()
    u_prev, u_cur = torch.zeros_like(u), torch.ones_like(u)
    total = torch.zeros_like(u)
    absum = torch.zeros_like(u)
    for l in range(L + 1):
        if not (even and l % 2):
            w = torch.exp(math.log(l + 1) - 0.5 * l * (l + 2) * s - shift)
            total = total + w * u_cur
            absum = absum + (w * u_cur.abs()).detach()
        u_prev, u_cur = u_cur, 2 * u * u_cur - u_prev
    _check_resolved(series, absum, total, psi, s, remedy)
    return torch.log(total) + shift - math.log(2 * math.pi**2)


def _resolved(absum: Tensor, total: Tensor, bound: float = EIGEN_MAX_CANCELLATION) -> Tensor:
    """Where a series' sum is positive and its terms cancel by at most ``bound``."""
    total = total.detach()
    return (total > 0) & (absum <= bound * total)


def _check_resolved(
    series: str, absum: Tensor, total: Tensor, angle: Tensor, t: Tensor, remedy: str, bound: float = EIGEN_MAX_CANCELLATION
) -> None:
    """Raise where the series' terms cancel by more than ``bound`` (or its sum is not positive)."""
    why = f"its terms cancel by more than {bound:.0e} there"
    raise_unresolved(series, ~_resolved(absum, total, bound), angle, t, why, remedy)


def s3_log_kernel(psi: Tensor, s: Tensor, estimator: str = "auto") -> Tensor:
    r""":math:`\log P_s(\psi)` of the unit sphere :math:`S^3` (generator :math:`\Delta/2`), float64 tensors."""
    if estimator == "sum_over_paths":
        return _s3_paths(psi, s)
    if estimator == "eigen":
        return _s3_eigen(psi, s)
    if estimator == "varadhan":
        return -(psi**2) / (2 * s) - 1.5 * (_LOG_2PI + torch.log(s))
    if estimator == "schwinger_dewitt":
        # the k = 0 path: on a group the Schwinger-DeWitt series terminates (e^{s/2} is its whole time series), so
        # this is exact up to the other geodesics' weight e^{-((2 pi - psi)^2 - psi^2)/2s}; it diverges at psi = pi
        return -1.5 * (_LOG_2PI + torch.log(s)) + 0.5 * s - psi**2 / (2 * s) + torch.log(_x_over_sin(psi))
    small = s <= _RANK_ONE_PATHS_UP_TO
    out = torch.zeros_like(psi)
    if bool(small.any()):
        out = out.masked_scatter(small, _s3_paths(psi[small], s[small]))
    if bool((~small).any()):
        # large s only: the series converges in a few terms there and cannot cancel
        out = out.masked_scatter(~small, _s3_eigen(psi[~small], s[~small], remedy="this is auto: please report it"))
    return out


# --- SU(n): characters and the sum over the coroot lattice -------------------------------------------------


def _centred(phi: Tensor) -> tuple[Tensor, Tensor]:
    r"""Representatives of the eigenangles with the branch cut in the middle of the widest gap between
    eigenvalues, so nearly equal eigenvalues get nearly equal angles (spread < :math:`2\pi(1-1/n)`), and
    :math:`k = \sum_j\phi_j / 2\pi`."""
    ang = torch.remainder(phi.detach(), 2 * math.pi)
    srt, _ = ang.sort(-1)
    gaps = torch.cat([srt[..., 1:] - srt[..., :-1], (srt[..., :1] + 2 * math.pi - srt[..., -1:])], -1)
    j = gaps.argmax(-1, keepdim=True)
    cut = torch.gather(srt, -1, j) + 0.5 * torch.gather(gaps, -1, j)
    shift = 2 * math.pi * torch.floor((cut - phi.detach()) / (2 * math.pi)) + 2 * math.pi
    out = phi + shift  # in (cut - 2 pi, cut): a detached multiple of 2 pi added, so gradients pass through
    k = torch.round(out.detach().sum(-1) / (2 * math.pi))
    return out, k


def _pairs(n: int) -> tuple[list[int], list[int]]:
    jj, kk = zip(*itertools.combinations(range(n), 2), strict=True)
    return list(jj), list(kk)


@functools.lru_cache(maxsize=256)
def _lattice(n: int, k: int, radius: float) -> Tensor:
    """Lattice vectors m in Z^n with sum(m) = -k and |m| <= radius (float64 rows)."""
    M = int(math.floor(radius))
    side = torch.arange(-M, M + 1, dtype=torch.float64)
    free = torch.cartesian_prod(*[side] * (n - 1)).reshape(-1, n - 1)  # the last entry is -k - sum of the others
    pts = torch.cat([free, -k - free.sum(-1, keepdim=True)], -1)
    return pts[(pts**2).sum(-1) <= radius**2]


def _images(n: int, k: int, centre: Tensor, t: Tensor) -> Tensor:
    """Lattice vectors m [T, n] (sum -k) whose images centre + 2 pi m have Gaussian weight e^{-|.|^2/2t} within
    e^-60 of the largest at one point at least: the others change no float64 digit of the sums over paths."""
    # centre = 2 pi k / n + d (sum d = 0), so |centre + 2 pi m| = |d + 2 pi m'|, m' = m + k / n (sum zero). The smallest
    # is at most |d| + 2 pi |m'_0| for m_0 = -(q + 1 [r times], q, ...), k = q n + r, |m'_0|^2 = r (n - r) / n, and the
    # images within 120 t of it have |2 pi m'| <= 2 |d| + 2 pi |m'_0| + sqrt(120 t); |m|^2 = |m'|^2 + k^2 / n.
    d = float((centre.detach() - centre.detach().mean(-1, keepdim=True)).norm(dim=-1).max())
    r = k % n
    reach = (2 * d + math.sqrt(120 * float(t.detach().max()))) / (2 * math.pi) + math.sqrt(r * (n - r) / n)
    box = _lattice(n, k, math.ceil(2 * math.sqrt(reach**2 + k * k / n)) / 2).to(centre.device)
    expo = -((centre.detach()[:, None, :] + 2 * math.pi * box[None]) ** 2).sum(-1) / (2 * t.detach()[:, None])
    return box[(expo - expo.amax(-1, keepdim=True) > -60).any(0)]


class _SUTorus:
    """Heat kernel of SU(n) as a function of the eigenangles (float64)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.dim = n * n - 1
        self.rho2 = n * (n * n - 1) / 12
        self.log_volume = SU(n=n).log_volume

    # sum over paths ---------------------------------------------------------------------------------

    def paths(self, phi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p, valid)``; ``valid`` is False where terms cancel too much (walls at larger t)."""
        return self._by_class(self._paths_k, phi, t)

    @staticmethod
    def _by_class(fn, phi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``fn(phi, t, k)`` on the centred angles of each class :math:`k = \sum_j\phi_j/2\pi` (its lattice coset),
        reassembled: ``(log p, ok)``."""
        phi, k = _centred(phi)
        log_p = torch.zeros_like(t)
        ok = torch.zeros_like(t, dtype=torch.bool)
        for kv in torch.unique(k).tolist():
            sel = k == kv
            lp, good = fn(phi[sel], t[sel], int(kv))
            log_p = log_p.masked_scatter(sel, lp)
            ok = ok.masked_scatter(sel, good)
        return log_p, ok

    def _paths_k(self, phi: Tensor, t: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n = self.n
        box = _images(n, k, phi, t)
        sign = (-1.0) ** ((n + 1) * k)
        ok = torch.ones(phi.shape[0], box.shape[0], dtype=torch.bool, device=phi.device)
        phim = phi[:, None, :] + 2 * math.pi * box[None]  # [P, T, n]
        expo = -(phim**2).sum(-1) / (2 * t[:, None])
        expo = torch.where(ok, expo, torch.full_like(expo, -math.inf))
        shift = expo.detach().amax(-1, keepdim=True)
        jj, kk = _pairs(n)
        delta = phi[:, jj] - phi[:, kk]  # [P, pairs], |delta| < 2 pi
        mjk = box[:, jj] - box[:, kk]  # [T, pairs]
        delta_m = delta[:, None, :] + 2 * math.pi * mjk[None]
        near = delta.detach().abs() < 1e-3
        # below 1e-7 a singular image is either negligible (dropped) or makes the point invalid: its value is unused
        safe = torch.where(delta.detach().abs() < 1e-7, torch.ones_like(delta), delta)
        ratio_f = torch.where(mjk[None] == 0, torch.ones_like(delta_m), delta_m / safe[:, None, :])
        singular = ((mjk[None] != 0) & near[:, None, :]).any(-1)  # [P, T]
        weight = torch.exp(expo - shift)
        terms = ratio_f.prod(-1) * weight
        regular = torch.where(singular, torch.zeros_like(terms), terms).sum(-1)
        # a singular group of images (a ratio 1/delta at a wall) cancels to at most its derivative scale
        scale = torch.where(
            (mjk[None] != 0) & near[:, None, :],
            1 + delta_m.detach().abs() * (phim.detach().norm(dim=-1, keepdim=True) + 1) / t[:, None, None],
            ratio_f.detach().abs(),
        ).prod(-1)
        drop = singular & (scale * weight.detach() < 1e-19 * regular.detach().abs()[:, None])
        keep = ~singular | ~drop
        kept = torch.where(keep, terms, torch.zeros_like(terms))
        total = kept.sum(-1) * sign
        cancel = kept.detach().abs().sum(-1) / total.detach().abs().clamp_min(1e-300)
        hard = (singular & keep & (delta.detach().abs().amin(-1, keepdim=True) < 1e-7)).any(-1)
        valid = (total.detach() > 0) & (cancel < 1e6) & ~hard
        main = torch.log(_x_over_sin(0.5 * delta).abs()).sum(-1)  # prod delta / (2 sin(delta/2))
        log_p = (
            -0.5 * self.dim * (_LOG_2PI + torch.log(t))
            + 0.5 * self.rho2 * t
            + shift[:, 0]
            + main
            + torch.log(torch.where(valid, total, torch.ones_like(total)))
        )
        return log_p, valid

    # walls: coinciding and nearly coinciding eigenvalues --------------------------------------------------

    def wall(self, phi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(log p, ok)`` on and near the walls (eigenvalues coinciding or nearly so), where the sum over paths
        divides terms by vanishing roots and cancels, by a Taylor expansion of it about the nearest wall point.

        With :math:`F(\phi) = \sum_m \Delta(\phi_m)e^{-|\phi_m|^2/2t}` (:math:`\Delta(x) = \prod_{j<k}(x_j - x_k)`,
        :math:`\phi_m = \phi + 2\pi m`) and :math:`D(\phi) = \prod_{j<k} 2\sin((\phi_j - \phi_k)/2)`,
        :math:`p_t = (2\pi t)^{-D/2}e^{|\rho|^2t/2}(\pm F/D)`. Clusters of gaps below :math:`\tau \sim t/|\phi|`
        have means :math:`\bar\phi`, a wall point with :math:`N_0` vanishing roots; within one, angles closer than
        ``_MERGE`` times its widest gap are merged into their mean, :math:`\phi'` (the value moves at second order,
        the score by that fraction of itself near a centre element), and :math:`\epsilon = \phi' - \bar\phi`.
        :math:`F` is anti-invariant under the reflections fixing :math:`\bar\phi`, so :math:`F(\bar\phi + s\epsilon
        + uv)` (:math:`v` the centred ranks, no root vanishing on it) is :math:`u^{N_1}s^{N_0 - N_1}` times an entire
        function, :math:`N_1` the roots vanishing at :math:`\phi'`; hence :math:`F/D(\phi') = \sum_{k \ge N_0 -
        N_1}[s^k u^{N_1}]F / [u^{N_1}]D(\phi' + uv)`, Taylor coefficients taken exactly (products of linear factors
        times the series of a Gaussian's exponential)
        with no division by a vanishing root, and summed at :math:`s = 1` where the series has converged."""
        return self._by_class(self._wall_k, phi, t)

    @staticmethod
    def _tau(phi: Tensor, t: Tensor) -> Tensor:
        """Gap [P, 1] below which ``wall`` expands about the wall: it keeps |x . eps| / t, the rate of its Taylor
        series, of order one on the images that matter."""
        return (2 * t.detach() / (phi.detach().norm(dim=-1) + 1)).clamp_max(0.5)[:, None]

    def _near_wall(self, phi: Tensor, t: Tensor) -> Tensor:
        """Points with two eigenvalues closer than ``_tau``: ``wall`` resolves them better than the plain sum over
        paths, whose terms there are ratios of nearly vanishing sines."""
        centred, _ = _centred(phi.detach())
        return (centred.sort(-1).values.diff(dim=-1) < self._tau(centred, t)).any(-1)

    @staticmethod
    def _runs(split: Tensor) -> Tensor:
        """Cluster id [P, n] of each sorted angle from ``split`` [P, n-1], whether a gap of the sorted angles parts
        two clusters."""
        return torch.cat([torch.ones_like(split[:, :1]), split], -1).long().cumsum(-1) - 1

    @classmethod
    def _clusters(cls, order: Tensor, split: Tensor) -> Tensor:
        """The cluster ids of ``_runs`` in the input order of the angles (``order`` sorts them)."""
        return torch.empty_like(order).scatter_(-1, order, cls._runs(split))

    @staticmethod
    def _cluster_mean(phi: Tensor, cid: Tensor) -> Tensor:
        member = (cid[:, :, None] == torch.arange(phi.shape[-1], device=phi.device)[None, None, :]).to(phi.dtype)
        mean = (phi[:, :, None] * member).sum(1) / member.sum(1).clamp_min(1.0)
        return (member * mean[:, None, :]).sum(-1)

    def _wall_k(self, phi: Tensor, t: Tensor, k: int) -> tuple[Tensor, Tensor]:
        n = self.n
        srt, order = phi.detach().sort(-1)
        tau = self._tau(phi, t)
        gaps = srt[:, 1:] - srt[:, :-1]
        inner = gaps < tau
        cid1 = self._clusters(order, ~inner)
        # within a cluster, angles are merged where nearly coinciding (gap < 1e-6 of the cluster's widest): the
        # series in s would cancel there like (width / gap)^roots, and the merge moves the score by ~ gap |Hessian|,
        # against a score ~ width |Hessian| near a centre element; a whole cluster narrower than _WALL tau (~ the
        # round-off of the angles, where d log F and d log D ~ 1 / width cancel) too, which moves the score by
        # ~ width |x|^2 / t^2 <~ 1e-7 |x| / t, its scale
        cl = self._runs(~inner)[:, 1:]  # the cluster of each gap (of the angle above it)
        width = torch.zeros_like(srt).scatter_reduce(-1, cl, torch.where(inner, gaps, torch.zeros_like(gaps)), "amax")
        merge = inner & (gaps <= torch.gather(torch.maximum(_MERGE * width, (width <= _WALL * tau) * width), -1, cl))
        cid0 = self._clusters(order, ~merge)
        bar = self._cluster_mean(phi, cid1)
        eps = self._cluster_mean(phi, cid0) - bar
        v = order.argsort(-1).to(phi.dtype) - 0.5 * (n - 1)
        jj, kk = _pairs(n)
        on0 = cid1[:, jj] == cid1[:, kk]  # [P, A]: roots vanishing at bar
        on1 = cid0[:, jj] == cid0[:, kk]  # roots vanishing at phi' (a subset)
        n0, n1 = on0.sum(-1), on1.sum(-1)
        J = int(n1.max())
        box = _images(n, k, bar, t)
        x = bar[:, None, :] + 2 * math.pi * box[None]  # [P, T, n]
        tt = t[:, None]
        expo = -(x**2).sum(-1) / (2 * tt)
        shift = expo.detach().amax(-1, keepdim=True)
        # exp(-|x + s eps + u v|^2 / 2t) = exp(expo) exp(a s + b u + c s^2 + e s u + f u^2)
        a = -(x * eps[:, None, :]).sum(-1) / tt
        b = -(x * v[:, None, :]).sum(-1) / tt
        c = (-(eps**2).sum(-1) / (2 * t))[:, None]
        e = (-(eps * v).sum(-1) / t)[:, None]
        f = (-(v**2).sum(-1) / (2 * t))[:, None]
        live = (expo - shift).detach() > -60
        rate = torch.where(live, a.detach().abs(), torch.zeros_like(a)).amax(-1) + c.detach().abs().sqrt()[:, 0]
        need = 2 * math.e * (rate + e.detach().abs()[:, 0]) + 40  # [P]: terms beyond are below e^-40 of the largest
        # at least A orders, so no product term of the roots is cut; a point needing more than 200 is not resolved
        A = len(jj)
        K = max(math.ceil(min(float(need.max()), 200)), A)
        Ks = min(K, A)
        # [s^i u^j] Delta(x + s eps + u v) = prod_a (d_a + c_a s + w_a u), i <= Ks, j <= J
        d = x[..., jj] - x[..., kk]  # [P, T, A]
        ca = (eps[:, jj] - eps[:, kk])[:, None, :].expand_as(d)
        wa = (v[:, jj] - v[:, kk])[:, None, :].expand_as(d)
        poly = torch.zeros(*d.shape[:2], Ks + 1, J + 1, dtype=phi.dtype, device=phi.device)
        poly[..., 0, 0] = 1.0
        for r in range(A):
            ps = torch.nn.functional.pad(poly, (0, 0, 1, 0))[..., :-1, :]
            pu = torch.nn.functional.pad(poly, (1, 0))[..., :-1]
            poly = d[..., r, None, None] * poly + ca[..., r, None, None] * ps + wa[..., r, None, None] * pu
        # [s^i u^j] of the exponential's series: d/du gives column 0, d/ds the rows
        ser = [[torch.ones_like(a)]]
        for j in range(J):
            prev = ser[0][j - 1] if j >= 1 else 0.0
            ser[0].append((b * ser[0][j] + 2 * f * prev) / (j + 1))
        for i in range(K):
            row = []
            for j in range(J + 1):
                acc = a * ser[i][j] + (2 * c * ser[i - 1][j] if i >= 1 else 0.0) + (e * ser[i][j - 1] if j >= 1 else 0.0)
                row.append(acc / (i + 1))
            ser.append(row)
        E = torch.stack([torch.stack(row, -1) for row in ser], -2)  # [P, T, K+1, J+1]
        # tails S[q] = sum_{q' >= q} E[q'] (summed from the small end), so sum_{k >= N0 - N1} [s^k u^N1] is
        # sum_{i, l} poly[i, l] S[max(N0 - N1 - i, 0), N1 - l]: the orders below N0 - N1, zero in exact
        # arithmetic but not image by image, are never formed
        S = E.flip(-2).cumsum(-2).flip(-2)
        kmin = (n0 - n1)[:, None, None]  # [P, 1, 1]
        ii = torch.arange(Ks + 1, device=phi.device)[None, :, None]
        ll = torch.arange(J + 1, device=phi.device)[None, None, :]
        qi = (kmin - ii).clamp_min(0).expand(-1, -1, J + 1)  # [P, Ks+1, J+1]
        lj = (n1[:, None, None] - ll).expand(-1, Ks + 1, -1)
        use = (lj >= 0).to(phi.dtype)
        flat = (qi * (J + 1) + lj.clamp_min(0)).reshape(qi.shape[0], 1, -1).expand(-1, S.shape[1], -1)
        picked = torch.gather(S.flatten(-2), -1, flat).reshape(poly.shape)
        lead = (poly * picked * use[:, None]).sum((-2, -1))  # [P, T]
        terms = lead * torch.exp(expo - shift)
        total = terms.sum(-1)
        # [u^N1] D(phi' + u v) = prod_{on1} alpha(v) prod_{not on1} 2 sin(alpha(phi')/2)
        # roots vanishing at bar take alpha(eps), equal to alpha(bar + eps) there (bar's entries coincide) and the same
        # floating-point number the numerator's factors use, which alpha(bar + eps) rounds differently
        alpha = torch.where(on0, eps[:, jj] - eps[:, kk], (bar + eps)[:, jj] - (bar + eps)[:, kk])
        den = torch.where(on1, v[:, jj] - v[:, kk], 2 * torch.sin(0.5 * alpha)).prod(-1)
        ratio = (-1.0) ** ((n + 1) * k) * total / den
        cancel = terms.detach().abs().sum(-1) / total.detach().abs().clamp_min(1e-300)
        ok = (ratio.detach() > 0) & (cancel < 1e6) & (need <= K)
        log_p = (
            -0.5 * self.dim * (_LOG_2PI + torch.log(t))
            + 0.5 * self.rho2 * t
            + shift[:, 0]
            + torch.log(torch.where(ok, ratio, torch.ones_like(ratio)))
        )
        return log_p, ok

    # Gaussian proposals in the Lie algebra ------------------------------------------------------------

    def _proposal_terms(self, psi: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""Per preimage :math:`\psi_m = \psi + 2\pi m` (:math:`m` in the coroot lattice) of :math:`e^{i\psi}`:
        ``(E, L, sign)`` with :math:`E_m = -|\psi_m|^2/2t`, :math:`L_m = \sum_{\alpha>0}\log|y_\alpha/\sin y_\alpha|`,
        :math:`y_\alpha = \alpha(\psi_m)/2`, and the sign of :math:`\prod_\alpha y_\alpha/\sin y_\alpha`; ``psi`` [P, n]
        with sum zero, replaced by the least-norm representative (the set of preimages is the same). Images with
        :math:`|\psi_m|^2 > |\psi|^2 + 80t` (weight below :math:`e^{-40}` of the :math:`m = 0` term) are left out."""
        n = self.n
        psi = su_angles(torch.polar(torch.ones_like(psi), psi))
        r = float(psi.norm(dim=-1).max())
        reach = r + math.sqrt(r * r + 80 * float(t.max()))  # |2 pi m| <= |psi| + |psi_m|
        box = _lattice(n, 0, math.ceil(2 * reach / (2 * math.pi)) / 2).to(psi.device)  # [T, n], sum zero
        expo = -((psi[:, None, :] + 2 * math.pi * box[None]) ** 2).sum(-1) / (2 * t[:, None])
        jj, kk = _pairs(n)
        y0 = 0.5 * (psi[:, jj] - psi[:, kk])  # [P, A]
        mjk = box[:, jj] - box[:, kk]  # [T, A]
        ym = y0[:, None, :] + math.pi * mjk[None]
        # sin(y_m) = (-1)^{m_jk} sin(y_0), exact in floating point (sin(y_0 + pi m) computed directly is not)
        sm = (1 - 2 * torch.remainder(mjk, 2))[None] * torch.sin(y0)[:, None, :]
        same = (mjk == 0)[None]
        lead = _x_over_sin(y0)[:, None, :]  # y/sin y with the series at 0 (roots with m_jk = 0 share y_0)
        tiny = torch.finfo(psi.dtype).tiny
        log_abs = torch.where(
            same, torch.log(lead.abs()), torch.log(ym.abs().clamp_min(tiny)) - torch.log(sm.abs().clamp_min(tiny))
        )
        sign = torch.where(same, torch.sign(lead), torch.sign(ym) * torch.sign(sm))
        return expo, log_abs.sum(-1), sign.prod(-1)

    def proposal_log_prob(self, psi: Tensor, t: Tensor) -> Tensor:
        r""":math:`\log q_t(e^{i\psi})`, the density (Riemannian volume, like :math:`p_t`) of :math:`e^X`,
        :math:`X \sim N(0, tI)` on :math:`\mathfrak{su}(n)`: :math:`q_t = (2\pi t)^{-D/2}\sum_m e^{-|\psi_m|^2/2t}/J(\psi_m)`,
        :math:`J(Y) = \prod_{\alpha>0}(\sin(\alpha(Y)/2)/(\alpha(Y)/2))^2` the Jacobian of exp. ``psi`` [P, n], sum zero."""
        expo, log_abs, _ = self._proposal_terms(psi, t)
        return -0.5 * self.dim * (_LOG_2PI + torch.log(t)) + torch.logsumexp(expo + 2 * log_abs, -1)

    def log_bound(self, t: Tensor) -> Tensor:
        r""":math:`\log M_t = |\rho|^2t/2`: each path term of :math:`p_t` is :math:`e^{|\rho|^2t/2}\prod_\alpha
        \sin y_\alpha/y_\alpha` (:math:`|\cdot| \le 1`) times the term of :math:`q_t` of the same preimage, so
        :math:`p_t \le M_t q_t`."""
        return 0.5 * self.rho2 * t

    def acceptance(self, psi: Tensor, t: Tensor) -> Tensor:
        r""":math:`p_t/(M_t q_t) = \sum_m s_m e^{E_m + L_m} / \sum_m e^{E_m + 2L_m} \in [0, 1]` at ``psi`` [P, n]
        (sum zero): the sum over paths of :math:`p_t` and :math:`q_t` over the same preimages, constants cancelled."""
        out = []
        for start in range(0, psi.shape[0], _PROPOSAL_BLOCK):  # blocks bound the [P, images, roots] memory
            expo, log_abs, sign = self._proposal_terms(psi[start : start + _PROPOSAL_BLOCK], t[start : start + _PROPOSAL_BLOCK])
            den = expo + 2 * log_abs
            shift = den.amax(-1, keepdim=True)
            out.append((sign * torch.exp(expo + log_abs - shift)).sum(-1) / torch.exp(den - shift).sum(-1))
        # >= 0 up to round-off (it is p_t / (M q_t)); <= 1 since |y / sin y| >= 1
        return torch.cat(out).clamp(0.0, 1.0) if out else psi.sum(-1)

    def propose(self, t: Tensor, generator) -> Tensor:
        r"""Eigenvalues :math:`\psi` (sum zero) of :math:`X/i`, :math:`X \sim N(0, tI)` in :math:`\mathfrak{su}(n)`
        (Frobenius): a traceless Hermitian matrix with :math:`N(0, t)` diagonal directions and off-diagonal
        entries of variance :math:`t/2` in their real and imaginary parts, diagonalised."""
        n = self.n
        a = randn((t.numel(), n, n), generator, dtype=torch.float64, device=t.device)
        b = randn((t.numel(), n, n), generator, dtype=torch.float64, device=t.device)
        h = torch.complex(0.5 * (a + a.mT), 0.5 * (b - b.mT)) * torch.sqrt(t)[:, None, None]
        psi = torch.linalg.eigvalsh(h)
        return psi - psi.mean(-1, keepdim=True)  # the trace, removed after diagonalising (same law)

    # characters ---------------------------------------------------------------------------------------

    def _converged(self, L: int, t_min: float) -> bool:
        """Whether partitions with first row <= ``L`` hold every weight above e^-42 of the largest at ``t_min``."""
        shell = [(L, *rest, 0) for rest in itertools.combinations_with_replacement(range(L, -1, -1), self.n - 2)]
        worst = max(2 * math.log(su_dimension(lam)) - 0.5 * su_casimir(lam) * t_min for lam in shell)
        return worst < -_CUT - 5 and su_casimir((L,) + (0,) * (self.n - 1)) * t_min > 2 * self.n

    def eigen_rows(self, t_min: float, cap: int | None = None) -> int:
        """The first row at which the character series converges at ``t_min``, or ``cap`` if it is reached first."""
        L = 2
        while (cap is None or L < cap) and not self._converged(L, t_min):
            L += 1
        return L

    def eigen(
        self, phi: Tensor, t: Tensor, rows: int | None = None, remedy: str | None = "use estimator='auto', which is exact there"
    ) -> tuple[Tensor, Tensor]:
        """``(log p, resolved)`` by the character expansion; where it cancels beyond float64 it raises with ``remedy``,
        or with ``remedy=None`` reports the point as not resolved (its log p is then a placeholder)."""
        n = self.n
        L = rows or self.eigen_rows(float(t.detach().min()))
        lams = su_partitions(n, L)
        mu = torch.tensor([[l + n - 1 - j for j, l in enumerate(lam)] for lam in lams], dtype=torch.long, device=phi.device)
        logd = torch.tensor([math.log(su_dimension(lam)) for lam in lams], dtype=phi.dtype, device=phi.device)
        cas = torch.tensor([su_casimir(lam) for lam in lams], dtype=phi.dtype, device=phi.device)
        z = torch.polar(torch.ones_like(phi), phi)  # [P, n]
        top = L + n
        # h_m(z_1..z_j) for m < top, j = 1..n, by h_m(z_1..z_j) = h_m(z_1..z_{j-1}) + z_j h_{m-1}(z_1..z_j)
        rows_h = []
        prev = None
        for j in range(n):
            cols = []
            for m in range(top):
                below = prev[m] if prev is not None else (torch.ones_like(z[:, 0]) if m == 0 else torch.zeros_like(z[:, 0]))
                cols.append(below + z[:, j] * cols[m - 1] if m > 0 else below)
            prev = cols
            rows_h.append(torch.stack(cols, -1))
        h = torch.stack(rows_h, 1)  # [P, n, top]
        h = torch.cat([h, torch.zeros_like(h[..., :1])], -1)  # index -1 -> 0
        idx = mu[:, None, :] - torch.arange(n, device=phi.device)[None, :, None]  # [R, j, k]
        idx = torch.where(idx < 0, torch.full_like(idx, top), idx)
        log_w = logd[None] - 0.5 * cas[None] * t[:, None]  # [P, R]
        shift = log_w.detach().amax(-1, keepdim=True)
        w = torch.exp(log_w - shift)
        sgn = (-1.0) ** (n * (n - 1) // 2)
        total = torch.zeros_like(phi[:, 0])
        absum = torch.zeros_like(phi[:, 0])
        for start in range(0, len(lams), 256):
            sl = slice(start, start + 256)
            ii = idx[sl]  # [r, n, n]
            d = torch.gather(h[:, None].expand(-1, ii.shape[0], -1, -1), -1, ii[None].expand(h.shape[0], -1, -1, -1))
            chi = sgn * torch.linalg.det(d)  # [P, r]
            total = total + (w[:, sl] * chi.real).sum(-1)
            absum = absum + (w[:, sl] * chi.detach().abs()).sum(-1)
        bound = _SU_EIGEN_MAX_CANCELLATION
        if remedy is not None:
            _check_resolved(f"the character series of SU({n})", absum, total, phi.abs().amax(-1), t, remedy, bound)
        resolved = _resolved(absum, total, bound)
        log_p = shift[:, 0] + torch.log(torch.where(resolved, total, torch.ones_like(total))) - self.log_volume
        return log_p, resolved

    def varadhan(self, phi: Tensor, t: Tensor) -> Tensor:
        from geodiffusion.manifolds.lie import su_angles

        theta = su_angles(torch.polar(torch.ones_like(phi), phi))
        return -(theta**2).sum(-1) / (2 * t) - 0.5 * self.dim * (_LOG_2PI + torch.log(t))

    def schwinger_dewitt(self, phi: Tensor, t: Tensor) -> Tensor:
        r"""The minimal-geodesic term :math:`(2\pi t)^{-D/2}e^{|\rho|^2t/2}e^{-|\theta|^2/2t}\prod_{\alpha>0}
        \frac{\alpha(\theta)/2}{\sin(\alpha(\theta)/2)}` (:math:`\theta` the least-norm logarithm): the whole
        Schwinger-DeWitt series on a compact group, exact up to the other paths' weight; it diverges on the cut locus."""
        from geodiffusion.manifolds.lie import su_angles

        theta = su_angles(torch.polar(torch.ones_like(phi), phi))
        jj, kk = _pairs(self.n)
        main = torch.log(_x_over_sin(0.5 * (theta[:, jj] - theta[:, kk])).abs()).sum(-1)
        return self.varadhan(phi, t) + 0.5 * self.rho2 * t + main

    def log_p(self, phi: Tensor, t: Tensor, estimator: str = "auto") -> Tensor:
        """log p_t at eigenangles ``phi`` [P, n] (any representatives) and times ``t`` [P]."""
        if phi.shape[0] == 0:
            return phi.sum(-1)
        if estimator == "eigen":
            return self.eigen(phi, t)[0]
        if estimator == "sum_over_paths":
            return self.paths(phi, t)[0]
        if estimator == "varadhan":
            return self.varadhan(phi, t)
        if estimator == "schwinger_dewitt":
            return self.schwinger_dewitt(phi, t)
        # exact estimators, in the order they are cheapest and best conditioned at each t: every point takes the first
        # that resolves it (the sum over paths and its wall limit cancel little at small t, the characters at large
        # t; at a centre element of SU(n), n >= 5, just above _SU_PATHS_UP_TO the characters cancel beyond float64
        # and the wall limit still resolves it)
        small = t <= _SU_PATHS_UP_TO.get(self.n, _SU_PATHS_UP_TO_DEFAULT)
        near = self._near_wall(phi, t)
        stages = [
            (small & near, self.wall),
            (small, self.paths),
            (small & ~near, self.wall),
            (None, self._eigen_auto),
            (~small, self.paths),
            (~small, self.wall),
        ]
        out = torch.zeros_like(t)
        done = torch.zeros_like(small)
        for where, fn in stages:
            sel = ~done if where is None else where & ~done
            if bool(sel.any()):
                lp, ok = fn(phi[sel], t[sel])
                idx = sel.nonzero()[:, 0][ok]
                out = out.index_put((idx,), lp[ok])
                done = done.index_put((idx,), torch.ones_like(idx, dtype=torch.bool))
        raise_unresolved(
            f"auto on SU({self.n})",
            ~done,
            phi.detach().abs().amax(-1),
            t,
            "the sum over paths, its limit on the walls and the character series (to first row "
            f"{_MAX_ROWS}) all cancel beyond float64 there or do not converge",
            "no exact estimator of this package applies",
        )
        return out

    def _eigen_auto(self, phi: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The character series for auto, one per octave of t (the rows needed fall like t^{-1/2}, the cost like
        their square), up to first row ``_MAX_ROWS``: ``(log p, resolved)``, a series cut there before it
        converges resolving nothing."""
        out = torch.zeros_like(t)
        ok = torch.zeros_like(t, dtype=torch.bool)
        octave = torch.floor(torch.log2(t.detach() / t.detach().min())).clamp_max(4)
        for b in torch.unique(octave).tolist():
            sel = octave == b
            t_min = float(t[sel].min())
            if not self._converged(_MAX_ROWS, t_min):  # the weights fall with the first row beyond their peak
                continue
            rows = self.eigen_rows(t_min, _MAX_ROWS)
            lp, good = self.eigen(phi[sel], t[sel], rows=rows, remedy=None)
            out = out.masked_scatter(sel, lp)
            ok = ok.masked_scatter(sel, good)
        return out, ok

    def grad(self, phi: Tensor, t: Tensor, estimator: str = "auto") -> Tensor:
        """Gradient of log p_t in the eigenangles, projected onto sum zero (the torus of SU(n))."""
        with torch.enable_grad():
            p = phi.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_p(p, t.detach(), estimator).sum(), p)
        return g - g.mean(-1, keepdim=True)


@functools.lru_cache(maxsize=16)
def _su_torus(n: int) -> _SUTorus:
    return _SUTorus(n)


# --- the kernels ----------------------------------------------------------------------------------------


def _time(t, batch: torch.Size, like: Tensor) -> Tensor:
    """t as a float64 tensor of shape ``batch``; rejects non-finite, t <= 0 and shapes that are not a prefix."""
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
    elif t.device != like.device:
        raise ValueError(f"t is on {t.device} but x is on {like.device}")
    if t.is_complex():
        raise ValueError("t: expected real times")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError("t: the heat kernel needs finite times t > 0")
    if t.dim() > len(batch) or tuple(t.shape) != tuple(batch[: t.dim()]):
        raise ValueError(f"t: expected shape [] or a prefix of the batch shape {list(batch)}, got {list(t.shape)}")
    return t.reshape(t.shape + (1,) * (len(batch) - t.dim())).expand(batch)


class _LieHeatKernel(HeatKernel):
    """Common input handling: points on the group, broadcasting, float64 inside."""

    _group: type

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, self._group):
            raise ValueError(f"{type(self).__name__} needs a {self._group.__name__}, got {type(manifold).__name__}")
        self._manifold = manifold

    @property
    def manifold(self):
        return self._manifold

    def _inputs(self, x0: Tensor, x: Tensor, t) -> tuple[Tensor, Tensor, Tensor]:
        m = self._manifold
        check_tensor("x0", x0)
        check_tensor("x", x)
        m.check_point("x0", x0)
        m.check_point("x", x)
        check_same_device_dtype(x0=x0, x=x)
        if x0.dtype != x.dtype:
            raise ValueError(f"x has dtype {x.dtype} but x0 has {x0.dtype}; cast them to one dtype")
        tol = max(1e-6, 1e3 * torch.finfo(real_dtype(x.dtype)).eps)
        for name, v in (("x0", x0), ("x", x)):
            if not (v.is_floating_point() or v.is_complex()) or not bool(m.belongs(v, atol=tol).all()):
                raise ValueError(f"{name}: points must lie on {m!r} (to {tol:.0e})")
        try:
            batch = torch.broadcast_shapes(x0.shape[:-2], x.shape[:-2])
        except RuntimeError as err:
            raise ValueError(f"x0 and x: batch shapes {list(x0.shape[:-2])} and {list(x.shape[:-2])} do not broadcast") from err
        tt = _time(t, batch, x)
        wide = torch.complex128 if x.is_complex() else torch.float64
        shape = batch + tuple(m.point_shape)
        return x0.to(wide).expand(shape), x.to(wide).expand(shape), tt

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        r""":math:`\nabla_x \log p_t = \partial_d \log p_t\,(-\log_x x_0)/d`, the radial derivative in closed form."""
        a, b, tt = self._inputs(x0, x, t)
        with torch.no_grad():
            out = self._score(a, b, tt)
        return out.to(x.dtype)

    def sample(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        r"""Exact draws :math:`x = x_0\,V e^{i\Theta}V^H`: eigenangles from the exact law on the maximal torus,
        conjugated by a Haar-random :math:`V`."""
        m = self._manifold
        check_tensor("x0", x0)
        m.check_point("x0", x0)
        tol = max(1e-6, 1e3 * torch.finfo(real_dtype(x0.dtype)).eps)
        if not bool(m.belongs(x0, atol=tol).all()):
            raise ValueError(f"x0: points must lie on {m!r} (to {tol:.0e})")
        batch = x0.shape[:-2]
        tt = _time(t, batch, x0).reshape(-1)
        g = self._sample_g(tt, generator).reshape(batch + tuple(m.point_shape))
        wide = torch.complex128 if x0.is_complex() else torch.float64
        return (x0.to(wide) @ g.to(wide)).to(x0.dtype)


class SO3HeatKernel(_LieHeatKernel, kind="so3_heat"):
    r"""Heat kernel of SO(3): :math:`p_t(\theta) = 2^{-9/2}[P_{t/8}(\theta/2) + P_{t/8}(\pi - \theta/2)]` with
    :math:`P_s` the unit-:math:`S^3` kernel (module docstring); equivalently
    :math:`\frac{1}{16\sqrt2\pi^2}\sum_l (2l+1)e^{-l(l+1)t/4}\frac{\sin((l+1/2)\theta)}{\sin(\theta/2)}`.

    >>> k = SO3().heat_kernel()
    >>> e = torch.eye(3, dtype=torch.float64)
    >>> round(float(k.log_prob(e, e, 50.0).exp()) * 16 * 2**0.5 * math.pi**2, 6)  # uniform at large t
    1.0
    """

    _group = SO3

    class Spec(Spec):
        """Heat kernel of SO(3) (Frobenius metric, generator Laplacian/2)."""

        manifold: component_spec(Manifold) = Field(default_factory=lambda: SO3.Spec())
        estimator: Estimator = Field("auto", description="eigen | sum_over_paths | varadhan | schwinger_dewitt | auto (per t)")

        @model_validator(mode="after")
        def _check(self):
            kind = getattr(self.manifold, "kind", None)
            if kind != "so3":
                raise ValueError(f"SO3HeatKernel needs an so3 manifold spec, got kind {kind!r}")
            return self

    @classmethod
    def examples(cls):
        # no estimator="eigen" example: the registry's check evaluates p_t at t = 0.3 at uniform points, where the
        # character series cannot resolve the far tail and raises (checked at t >= 1 in tests/test_heat_lie.py)
        return [cls.Spec()]

    def radial_log_prob(self, theta: Tensor, t: Tensor) -> Tensor:
        r""":math:`\log p_t` at rotation angles :math:`\theta \in [0, \pi]` (float64, broadcast)."""
        theta, t = torch.broadcast_tensors(theta.to(torch.float64), t.to(torch.float64))
        est = self.spec.estimator
        if est == "varadhan":
            return -(theta**2) / t - 1.5 * (_LOG_2PI + torch.log(t))
        s = t / 8
        if est == "eigen":  # SO(3)'s characters chi_l(theta) = U_2l(cos theta/2): the S^3 series' even terms
            series = "the character series of SO(3) (here in S^3's angle theta/2 and time t/8)"
            return _s3_eigen(0.5 * theta, s, even=True, series=series) - 3.5 * math.log(2.0)
        a = s3_log_kernel(0.5 * theta, s, est)
        if est == "schwinger_dewitt":  # the minimal geodesic only: the lift at pi - theta/2 is another path
            return a - 4.5 * math.log(2.0)
        b = s3_log_kernel(math.pi - 0.5 * theta, s, est)
        return torch.logaddexp(a, b) - 4.5 * math.log(2.0)

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        a, b, tt = self._inputs(x0, x, t)
        theta = self._manifold.rotation_angle(a, b)
        return self.radial_log_prob(theta, tt).to(x.dtype)

    def _score(self, a: Tensor, b: Tensor, tt: Tensor) -> Tensor:
        theta = self._manifold.rotation_angle(a, b)
        with torch.enable_grad():
            th = theta.clamp_min(1e-8).detach().requires_grad_(True)
            (d,) = torch.autograd.grad(self.radial_log_prob(th, tt).sum(), th)
        # d = sqrt(2) theta: (d log p / dd) / d = (d log p / d theta) / (2 theta)
        per = d / (2 * th.detach())
        return per[..., None, None] * -self._manifold.log(b, a)

    def _sample_g(self, t: Tensor, generator) -> Tensor:
        from geodiffusion.heat.sphere import _radial_for, _sample_theta

        psi = _sample_theta(_radial_for(3), t / 8, generator)
        theta = 2 * torch.minimum(psi, math.pi - psi)
        axis = randn((t.numel(), 3), generator, dtype=torch.float64, device=t.device)
        axis = axis / axis.norm(dim=-1, keepdim=True)
        hat = torch.zeros(t.numel(), 3, 3, dtype=torch.float64, device=t.device)
        hat[:, 0, 1], hat[:, 0, 2], hat[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
        hat = hat - hat.mT
        return torch.linalg.matrix_exp(theta[:, None, None] * hat)


class SUHeatKernel(_LieHeatKernel, kind="su_heat"):
    r"""Heat kernel of SU(n): for n = 2, :math:`p_t(\phi) = 2^{-3/2}P_{t/2}(\phi)` (eigenvalues
    :math:`e^{\pm i\phi}`); for n >= 3 the character expansion or the sum over the coroot lattice on the
    maximal torus (module docstring), score by differentiating the torus function in the eigenangles.

    >>> k = SU(n=3).heat_kernel()
    >>> e = torch.eye(3, dtype=torch.complex128)
    >>> round(float(k.log_prob(e, e, 30.0).exp()) * math.exp(SU(n=3).log_volume), 6)  # uniform at large t
    1.0
    """

    _group = SU

    class Spec(Spec):
        """Heat kernel of SU(n) (Frobenius metric, generator Laplacian/2)."""

        manifold: component_spec(Manifold) = Field(default_factory=lambda: SU.Spec(n=2))
        estimator: Estimator = Field("auto", description="eigen | sum_over_paths | varadhan | schwinger_dewitt | auto (per t)")

        @model_validator(mode="after")
        def _check(self):
            kind = getattr(self.manifold, "kind", None)
            if kind != "su":
                raise ValueError(f"SUHeatKernel needs an su manifold spec, got kind {kind!r}")
            return self

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(manifold={"kind": "su", "n": 3})]  # eigen: see SO3HeatKernel.examples

    @property
    def n(self) -> int:
        return self._manifold.n

    def torus_log_prob(self, phi: Tensor, t: Tensor) -> Tensor:
        r""":math:`\log p_t` at eigenangles ``phi`` ``[..., n]`` (any representatives of a group element)."""
        phi, t = phi.to(torch.float64), t.to(torch.float64)
        batch = phi.shape[:-1]
        t = t.expand(batch).reshape(-1)
        phi = phi.reshape(-1, self.n)
        est = self.spec.estimator
        if self.n == 2:
            from geodiffusion.manifolds.lie import su_angles

            ang = su_angles(torch.polar(torch.ones_like(phi), phi))
            half = 0.5 * (ang[:, 0] - ang[:, 1]).abs()  # in [0, pi]
            if est == "varadhan":
                out = -(half**2) / t - 1.5 * (_LOG_2PI + torch.log(t))
            else:
                out = s3_log_kernel(half, t / 2, est) - 1.5 * math.log(2.0)
        else:
            out = _su_torus(self.n).log_p(phi, t, est)
        return out.reshape(batch)

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        a, b, tt = self._inputs(x0, x, t)
        phi = torch.angle(torch.linalg.eigvals(a.mH @ b))
        return self.torus_log_prob(phi, tt).to(real_dtype(x.dtype))

    def _score(self, a: Tensor, b: Tensor, tt: Tensor) -> Tensor:
        vals, vecs = torch.linalg.eig(a.mH @ b)
        phi = torch.angle(vals)
        with torch.enable_grad():
            p = phi.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.torus_log_prob(p, tt).sum(), p)
        g = g - g.mean(-1, keepdim=True)
        # grad on the group at g = V e^{i phi} V^-1 is g V diag(i dlogp/dphi) V^-1 (left-invariant), then x0 in front
        alg = vecs @ torch.diag_embed((1j * g).to(vecs.dtype)) @ torch.linalg.inv(vecs)
        return self._manifold.proj(b, b @ alg)

    # exact sampling ---------------------------------------------------------------------------------------

    def _log_peak(self, t: Tensor) -> Tensor:
        """log(vol * p_t(e)): the rejection bound of Haar proposals (p_t is largest at the identity)."""
        zero = torch.zeros(t.shape + (self.n,), dtype=torch.float64, device=t.device)
        return self.torus_log_prob(zero, t) + self._manifold.log_volume

    def _sample_g(self, t: Tensor, generator) -> Tensor:
        n = self.n
        if n == 2:
            from geodiffusion.heat.sphere import _radial_for, _sample_theta

            half = _sample_theta(_radial_for(3), t / 2, generator)
            phi = torch.stack([half, -half], -1)
        else:
            phi = self._sample_angles(t, generator)
        v = SU(n=n).random_point(t.numel(), generator, dtype=torch.float64, device=t.device)
        return v @ torch.diag_embed(torch.polar(torch.ones_like(phi), phi)) @ v.mH

    def _sample_angles(self, t: Tensor, generator) -> Tensor:
        r"""Exact eigenangles at times ``t``: per time the cheaper rejection sampler (expected proposals per draw:
        :math:`M_t = e^{|\rho|^2t/2}` for Lie-algebra Gaussians, :math:`\mathrm{vol}\,p_t(e)` for Haar), and the
        probability-flow ODE where both need more than ``_MAX_PROPOSALS`` (large n at moderate t)."""
        out = torch.empty(t.shape + (self.n,), dtype=torch.float64, device=t.device)
        cap = math.log(_MAX_PROPOSALS)
        log_gauss = _su_torus(self.n).log_bound(t)
        # the Gaussian bound grows with t and the Haar one falls: Gaussians below the crossing time
        gauss = (t <= _gauss_until(self.n)) & (log_gauss <= cap)
        if bool(gauss.any()):
            out[gauss] = self._gaussian_rejection(t[gauss], generator)
        rest = ~gauss
        if not bool(rest.any()):
            return out
        log_m = torch.full_like(t, math.inf)
        times, index = torch.unique(t[rest], return_inverse=True)
        log_m[rest] = self._log_peak(times)[index]
        direct = rest & (log_m <= cap)
        if bool(direct.any()):
            out[direct] = self._rejection(t[direct], log_m[direct], generator)
        flow = rest & ~direct
        if bool(flow.any()):
            s0 = _flow_start(self)
            s0_t = torch.full_like(t[flow], s0)
            start = self._rejection(s0_t, self._log_peak(s0_t), generator)
            out[flow] = self._flow(start, s0_t, t[flow])
        return out

    def _gaussian_rejection(self, t: Tensor, generator) -> Tensor:
        r"""Exact eigenangles by rejection from :math:`e^X`, :math:`X \sim N(0, tI)` in :math:`\mathfrak{su}(n)`:
        accept :math:`\psi` with probability :math:`p_t/(M_t q_t)` (:meth:`_SUTorus.acceptance`); the acceptance
        rate is :math:`1/M_t = e^{-|\rho|^2t/2}`."""
        torus = _su_torus(self.n)
        out = torch.empty(t.shape + (self.n,), dtype=torch.float64, device=t.device)
        todo = torch.arange(t.numel(), device=t.device)
        for _ in range(10_000):
            if todo.numel() == 0:
                return out
            tt = t[todo]
            # 1.5 M proposals per draw: a point is left without an accepted one with probability ~ e^{-1.5}
            k = int(min(_MAX_PROPOSALS, math.ceil(1.5 * math.exp(float(torus.log_bound(tt).max())))))
            tk = tt[:, None].expand(-1, k).reshape(-1)
            psi = torus.propose(tk, generator)
            u = rand(tk.shape, generator, dtype=torch.float64, device=t.device)
            accept = (u < torus.acceptance(psi, tk)).reshape(-1, k)
            hit = accept.any(-1)
            first = accept.to(torch.int8).argmax(-1)
            out[todo[hit]] = psi.reshape(-1, k, self.n)[hit, first[hit]]
            todo = todo[~hit]
        raise RuntimeError("Gaussian-proposal rejection sampling on SU(n) did not finish")

    def _rejection(self, t: Tensor, log_m: Tensor, generator) -> Tensor:
        """Haar proposals accepted with probability p_t(g) / p_t(e)."""
        out = torch.empty(t.shape + (self.n,), dtype=torch.float64, device=t.device)
        todo = torch.arange(t.numel(), device=t.device)
        su = SU(n=self.n)
        for _ in range(10_000):
            if todo.numel() == 0:
                return out
            k = int(min(_MAX_PROPOSALS, max(1.0, math.ceil(2 * math.exp(float(log_m[todo].max()))))))
            g = su.random_point(todo.numel() * k, generator, dtype=torch.float64, device=t.device)
            phi = torch.angle(torch.linalg.eigvals(g))
            tk = t[todo][:, None].expand(-1, k).reshape(-1)
            log_acc = self.torus_log_prob(phi, tk) + su.log_volume - log_m[todo][:, None].expand(-1, k).reshape(-1)
            accept = (torch.log(rand(log_acc.shape, generator, dtype=torch.float64, device=t.device)) < log_acc).reshape(-1, k)
            hit = accept.any(-1)
            first = accept.float().argmax(-1)
            out[todo[hit]] = phi.reshape(-1, k, self.n)[hit, first[hit]]
            todo = todo[~hit]
        raise RuntimeError("rejection sampling on SU(n) did not finish")

    def _flow(self, phi: Tensor, s0: Tensor, t: Tensor) -> Tensor:
        r"""Probability-flow ODE of the eigenangle process, :math:`d\phi/ds = -\tfrac12\nabla_\phi\log p_s(\phi)`
        (the radial drift :math:`\nabla\log|\Delta|` cancels against the Weyl density :math:`|\Delta|^2`), from
        exact draws at ``s0`` to times ``t``, by Dormand–Prince 5(4) in log-time (rtol = atol = 1e-9)."""
        from torchdiffeq import odeint

        torus = _su_torus(self.n)
        tau0, span = torch.log(s0), torch.log(t) - torch.log(s0)

        def velocity(lam: Tensor, y: Tensor) -> Tensor:
            s = torch.exp(tau0 + lam * span)
            return -0.5 * span[:, None] * s[:, None] * torus.grad(y, s)

        grid = torch.tensor([0.0, 1.0], dtype=torch.float64, device=phi.device)
        with torch.no_grad():
            return odeint(velocity, phi, grid, method="dopri5", rtol=_ODE_TOL, atol=_ODE_TOL)[-1]


@functools.lru_cache(maxsize=16)
def _flow_start_n(n: int) -> float:
    kernel = SUHeatKernel(manifold={"kind": "su", "n": n})
    lo, hi = 1e-4, 10.0
    target = math.log(_MAX_PROPOSALS / 4)
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        if float(kernel._log_peak(torch.tensor([mid], dtype=torch.float64))[0]) > target:
            lo = mid
        else:
            hi = mid
    return hi


@functools.lru_cache(maxsize=16)
def _gauss_until(n: int) -> float:
    """The time where Gaussian and Haar proposals need equally many draws, |rho|^2 t / 2 = log(vol p_t(e))."""
    kernel = SUHeatKernel(manifold={"kind": "su", "n": n})
    torus = _su_torus(n)
    lo, hi = 1e-3, 20.0
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        tm = torch.tensor([mid], dtype=torch.float64)
        if float(torus.log_bound(tm)[0]) < float(kernel._log_peak(tm)[0]):
            lo = mid
        else:
            hi = mid
    return lo


def _flow_start(kernel: SUHeatKernel) -> float:
    """The time at which Haar-proposal rejection needs MAX_PROPOSALS / 4 proposals per draw."""
    return _flow_start_n(kernel.n)
