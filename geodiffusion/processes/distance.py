r"""Variance-exploding diffusion of inter-point distances (Zhou et al., 2024, arXiv 2403.01430).

Coordinates are noised isotropically, :math:`C_t = C_0 + \sigma_t \varepsilon` with
:math:`\sigma_t^2 = \sigma(t)^2 - \sigma_{\min}^2`. An edge vector :math:`x_i - x_j` then receives
Gaussian noise of variance :math:`s_t^2 = 2\sigma_t^2` per axis, so each edge distance
:math:`d_t = |x_i - x_j + s_t z|`, :math:`z \sim \mathcal{N}(0, I_3)`, follows a scaled noncentral
chi law with 3 degrees of freedom, and as a process in :math:`t` it is a 3-dimensional Bessel process
run on the clock :math:`s_t^2` (:class:`DistanceVEProcess`).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.processes.base import Process
from geodiffusion.processes.euclidean import _GeometricSigmaSpec, _TimeFromSpec

__all__ = ["NoncentralChi3", "DistanceVEProcess", "log_sinhc", "u_coth_u"]

_LOG_SQRT_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)


def log_sinhc(u: Tensor) -> Tensor:
    r""":math:`\log(\sinh u / u)`, even in :math:`u`, stable (and with finite gradients) for every real :math:`u`."""
    a = u.abs()
    small = a < 0.1
    big = a > 20.0
    # each branch sees only inputs where it is accurate, so unused branches cannot make NaN gradients
    a_s = torch.where(small, a, torch.zeros_like(a))
    a_m = torch.where(small | big, torch.ones_like(a), a)
    a_b = torch.where(big, a, torch.full_like(a, 21.0))
    a2 = a_s * a_s
    series = a2 * (1 / 6 + a2 * (-1 / 180 + a2 * (1 / 2835 + a2 * (-1 / 37800))))
    middle = torch.log(torch.sinh(a_m) / a_m)
    large = a_b - math.log(2.0) - torch.log(a_b) + torch.log1p(-torch.exp(-2.0 * a_b))
    return torch.where(small, series, torch.where(big, large, middle))


def u_coth_u(u: Tensor) -> Tensor:
    r""":math:`u \coth u` (equal to 1 at :math:`u = 0`), stable for every real :math:`u`."""
    a = u.abs()
    small = a < 0.1
    a_s = torch.where(small, a, torch.zeros_like(a))
    a_m = torch.where(small, torch.ones_like(a), a)
    a2 = a_s * a_s
    series = 1 + a2 * (1 / 3 + a2 * (-1 / 45 + a2 * (2 / 945)))
    return torch.where(small, series, a_m / torch.tanh(a_m))


class NoncentralChi3:
    r"""Law of :math:`r = |\mu + s z|`, :math:`z \sim \mathcal{N}(0, I_3)`, :math:`|\mu| = \ell` (``loc``):

    .. math:: p(r) = \sqrt{2/\pi}\; \frac{r}{\ell s}\, e^{-(r^2 + \ell^2)/(2s^2)} \sinh(r\ell/s^2), \qquad r > 0,

    i.e. :math:`(r/s)^2 \sim \chi'^2_3(\ell^2/s^2)`; :math:`\ell = 0` is the Maxwell law. Score
    :math:`\partial_r \log p = (1 + u\coth u)/r - r/s^2` with :math:`u = r\ell/s^2`; moments
    :math:`E r^2 = \ell^2 + 3s^2`,
    :math:`E r = s[\sqrt{2/\pi}\,e^{-\lambda^2/2} + (\lambda + 1/\lambda)\,\mathrm{erf}(\lambda/\sqrt2)]`,
    :math:`\lambda = \ell/s`. The law depends on :math:`|\ell|` only. ``log_prob`` sums over the last
    ``event_ndim`` axes.
    """

    def __init__(self, loc: Tensor, scale: Tensor, event_ndim: int = 0) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        self.event_ndim = event_ndim

    def _reduce(self, x: Tensor) -> Tensor:
        return x.flatten(x.dim() - self.event_ndim).sum(-1) if self.event_ndim else x

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Exact draws :math:`|\\ell e_1 + s z|` (three normals per distance)."""
        z = randn(self.loc.shape + (3,), generator, dtype=self.loc.dtype, device=self.loc.device)
        z = self.scale.unsqueeze(-1) * z
        z[..., 0] = z[..., 0] + self.loc
        return torch.linalg.vector_norm(z, dim=-1)

    def log_prob(self, r: Tensor) -> Tensor:
        r""":math:`\log p = \tfrac12\log\tfrac2\pi + 2\log r - 3\log s - \tfrac{r^2 + \ell^2}{2s^2} + \log\tfrac{\sinh u}{u}`."""
        s2 = self.scale**2
        u = r * self.loc / s2
        out = _LOG_SQRT_2_OVER_PI + 2 * torch.log(r) - 3 * torch.log(self.scale) - (r**2 + self.loc**2) / (2 * s2) + log_sinhc(u)
        return self._reduce(out)

    def score(self, r: Tensor) -> Tensor:
        r""":math:`\partial_r \log p(r) = (1 + u\coth u)/r - r/s^2`: Gaussian :math:`-(r - \ell)/s^2 + 1/r` for
        :math:`\ell \gg s`, Maxwell :math:`2/r - r/s^2` for :math:`\ell \ll s`."""
        s2 = self.scale**2
        return (1 + u_coth_u(r * self.loc / s2)) / r - r / s2

    @property
    def mean(self) -> Tensor:
        r""":math:`E r = s\,[\sqrt{2/\pi}\,e^{-\lambda^2/2} + (\lambda + 1/\lambda)\,\mathrm{erf}(\lambda/\sqrt2)]`."""
        lam = self.loc.abs() / self.scale
        small = lam < 1e-2
        lam_s = torch.where(small, lam, torch.zeros_like(lam))
        lam_b = torch.where(small, torch.ones_like(lam), lam)
        # lambda -> 0: the two terms' 1/lambda singularities cancel; series sqrt(2/pi) (2 + l^2/3 - l^4/60)
        series = math.sqrt(2 / math.pi) * (2 + lam_s**2 / 3 - lam_s**4 / 60)
        exact = math.sqrt(2 / math.pi) * torch.exp(-(lam_b**2) / 2) + (lam_b + 1 / lam_b) * torch.erf(lam_b / math.sqrt(2))
        return self.scale * torch.where(small, series, exact)

    @property
    def second_moment(self) -> Tensor:
        r""":math:`E r^2 = \ell^2 + 3 s^2`."""
        return self.loc**2 + 3 * self.scale**2

    @property
    def variance(self) -> Tensor:
        return self.second_moment - self.mean**2


class DistanceVEProcess(_TimeFromSpec, Process, kind="distance_ve"):
    r"""Edge distances of coordinates under VE noise :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T}`.

    Each distance solves the 3-dimensional Bessel SDE :math:`dd = \frac{a(t)}{d}\,dt + \sqrt{a(t)}\,dW` with
    :math:`a(t) = \frac{d}{dt}s_t^2`, :math:`s_t^2 = 2(\sigma(t)^2 - \sigma_{\min}^2)`; its exact transition law is
    :class:`NoncentralChi3` (loc :math:`d_0`, scale :math:`s_t`), whose ``score`` is the denoising target of an
    edge score model; the prior is the Maxwell law of scale :math:`s_T`. Shapes: ``x [..., E]`` (distances).
    """

    class Spec(_GeometricSigmaSpec):
        """VE diffusion of edge distances (coordinate noise with a geometric sigma schedule)."""

        # fields T, sigma_min, sigma_max, event_ndim in that order; sigma_max keeps its own default and units
        sigma_max: float = Field(10.0, gt=0, description="coordinate noise sigma(T); in the units of the coordinates")
        event_ndim: int = Field(1, ge=0, description="trailing axes of x forming one sample (0: per-edge log-probs)")

    @property
    def _rate(self) -> float:
        # 2 log(sigma_max / sigma_min) / T: sigma(t)^2 = sigma_min^2 exp(rate t)
        return 2.0 * math.log(self.spec.sigma_max / self.spec.sigma_min) / self.spec.T

    def sigma(self, t: Tensor) -> Tensor:
        r"""Coordinate noise level :math:`\sigma(t)`."""
        return self.spec.sigma_min * torch.exp(0.5 * self._rate * torch.as_tensor(t))

    def coordinate_std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t = \sqrt{\sigma(t)^2 - \sigma_{\min}^2}`, the std of each coordinate of :math:`C_t | C_0`."""
        return self.spec.sigma_min * torch.sqrt(torch.expm1(self._rate * torch.as_tensor(t)))

    def distance_variance(self, t: Tensor) -> Tensor:
        r""":math:`s_t^2 = 2\sigma_t^2`, the noise variance per axis of an edge vector :math:`x_i - x_j`."""
        return 2.0 * self.spec.sigma_min**2 * torch.expm1(self._rate * torch.as_tensor(t))

    def scale(self, t: Tensor) -> Tensor:
        r""":math:`s_t`, the scale of :class:`NoncentralChi3` marginals."""
        return torch.sqrt(self.distance_variance(t))

    def drift(self, x: Tensor, t) -> Tensor:
        r"""Bessel drift :math:`a(t)/d`, the mean push outward that isotropic 3-D noise gives a distance."""
        return self.diffusion(self.time_like(t, x)) ** 2 / x

    def diffusion(self, t) -> Tensor:
        r""":math:`g(t) = \sqrt{a(t)}`, :math:`a(t) = \tfrac{d}{dt}s_t^2 = 2 r \sigma_{\min}^2 e^{r t}`,
        :math:`r = 2\log(\sigma_{\max}/\sigma_{\min})/T`."""
        t = torch.as_tensor(t)
        return self.spec.sigma_min * torch.sqrt(2.0 * self._rate * torch.exp(self._rate * t))

    def marginal(self, x0: Tensor, t) -> NoncentralChi3:
        t = self.check_inputs(x0, t, name="x0")
        return NoncentralChi3(x0, self.scale(t), self.event_ndim)

    def prior(self, shape, *, device=None, dtype=None) -> NoncentralChi3:
        zero = torch.zeros(shape, device=device, dtype=dtype)
        scale = self.scale(torch.tensor(self.T, dtype=torch.float64)).to(device=zero.device, dtype=zero.dtype)
        return NoncentralChi3(zero, scale, self.event_ndim)

    @property
    def coordinate_prior_std(self) -> float:
        r""":math:`\sigma_T`: initial coordinates of a sampler are :math:`\mathcal{N}(0, \sigma_T^2 I)`."""
        return float(self.coordinate_std(torch.tensor(self.T, dtype=torch.float64)))
