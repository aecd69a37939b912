r"""Heat kernel of the flat torus :math:`T^n`: a product of circle kernels.

On :math:`S^1 = \mathbb{R}/2\pi\mathbb{Z}` with generator :math:`\tfrac12 \partial_\theta^2` two exact series give
:math:`p_t(\theta)`: the sum over paths (wrapped Gaussian)
:math:`(2\pi t)^{-1/2}\sum_k e^{-(\theta + 2\pi k)^2/2t}`, whose terms are all positive, and the Fourier
(eigen) series :math:`\tfrac{1}{2\pi}(1 + 2\sum_{k \ge 1} e^{-k^2 t/2}\cos k\theta)`. The first needs
:math:`O(\sqrt t)` terms, the second :math:`O(t^{-1/2})`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion._validation import check_same_device_dtype, check_time, expand_time
from geodiffusion.heat.base import HeatKernel, raise_unresolved
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.torus import Torus, wrap
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["TorusHeatKernel"]

_LOG_2PI = math.log(2 * math.pi)
# auto: the sum over paths up to this time (at most 9 images), Fourier beyond (at most 5 terms)
_PATHS_UP_TO = 5.0


def _n_images(t_max: float) -> int:
    # |theta| <= pi, so image k has |theta + 2 pi k| >= (2|k| - 1) pi: below e^-45 of the largest beyond this
    return int(math.ceil((math.sqrt(90 * t_max) + math.pi) / (2 * math.pi)))


def _paths(theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """log p_t(theta) and d/dtheta log p_t on S^1 by the wrapped Gaussian (t broadcast against theta)."""
    K = _n_images(float(t.detach().max()))
    shifts = 2 * math.pi * torch.arange(-K, K + 1, dtype=theta.dtype, device=theta.device)
    phi = theta[..., None] + shifts
    expo = -(phi**2) / (2 * t[..., None])
    log_p = torch.logsumexp(expo, -1) - 0.5 * (_LOG_2PI + torch.log(t))
    weights = torch.softmax(expo, -1)
    return log_p, -(weights * phi).sum(-1) / t


def _fourier(theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """log p_t(theta) and d/dtheta log p_t on S^1 by the Fourier series (t broadcast against theta)."""
    L = max(1, int(math.ceil(math.sqrt(90 / float(t.detach().min())))))
    k = torch.arange(1, L + 1, dtype=theta.dtype, device=theta.device)
    w = torch.exp(-0.5 * k**2 * t[..., None])
    kt = k * theta[..., None]
    p = 0.5 + (w * torch.cos(kt)).sum(-1)  # pi p_t
    dp = -(w * k * torch.sin(kt)).sum(-1)
    # the terms alternate in the tail at small t: once their sum is within rounding of 0.5 + sum w, the series
    # no longer resolves p (it can even come out negative); say so rather than return a meaningless log
    floor = 8 * (L + 1) * torch.finfo(torch.float64).eps * (0.5 + w.sum(-1))
    raise_unresolved(
        "estimator='eigen' (the Fourier series)",
        p <= floor,
        theta,
        t,
        "p_t is below its rounding error there",
        "use estimator='auto' or 'sum_over_paths', which are exact there",
    )
    return torch.log(p) - math.log(math.pi), dp / p


class TorusHeatKernel(HeatKernel, kind="torus_heat"):
    r""":math:`p_t(x_0, x) = \prod_i p^{S^1}_t(\mathrm{wrap}(x_i - x_{0,i}))`, score
    :math:`\partial_{x_i}\log p = \partial_\theta \log p^{S^1}_t(\theta_i)`; exact draws
    :math:`\mathrm{wrap}(x_0 + \sqrt t\,z)`. ``auto`` sums over paths for :math:`t \le 5` and uses the Fourier
    series beyond, both exact (float64).

    >>> k = Torus(dim=1).heat_kernel()
    >>> x0 = torch.zeros(1, dtype=torch.float64)
    >>> round(float(k.log_prob(x0, x0, 1e-2).exp()) * (2 * math.pi * 1e-2) ** 0.5, 12)  # Gaussian peak
    1.0
    """

    class Spec(Spec):
        """Heat kernel of the torus T^n."""

        manifold: component_spec(Manifold)
        estimator: Literal["auto", "sum_over_paths", "eigen"] = Field(
            "auto", description="sum_over_paths: wrapped Gaussians; eigen: Fourier series; auto: by t"
        )

        @model_validator(mode="after")
        def _check(self):
            kind = getattr(self.manifold, "kind", None)
            if kind != "torus":
                raise ValueError(f"TorusHeatKernel needs a torus manifold spec, got kind {kind!r}")
            return self

    @classmethod
    def examples(cls):
        torus = {"kind": "torus"}
        return [
            cls.Spec(manifold={**torus, "dim": 2}),
            cls.Spec(manifold={**torus, "dim": 3}, estimator="eigen"),
            cls.Spec(manifold={**torus, "dim": 1}, estimator="sum_over_paths"),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, Torus):
            raise ValueError(f"TorusHeatKernel needs a Torus, got {type(manifold).__name__}")
        self._manifold = manifold

    @property
    def manifold(self) -> Torus:
        return self._manifold

    def _angles(self, x0: Tensor, x: Tensor, t) -> tuple[Tensor, Tensor]:
        """wrap(x - x0) in float64 with a batch shape, and t expanded to [batch..., 1]."""
        m = self._manifold
        m.check_point("x0", x0)
        m.check_point("x", x)
        check_same_device_dtype(x0=x0, x=x)
        for name, v in (("x0", x0), ("x", x)):
            ok = m.belongs(v, atol=_tol(v.dtype)) if v.is_floating_point() else torch.zeros((), dtype=torch.bool)
            if not bool(ok.all()):
                raise ValueError(f"{name}: points of T^{m.dim} are finite angles in [-pi, pi]; {int((~ok).sum())} are not")
        try:
            batch = torch.broadcast_shapes(x0.shape[:-1], x.shape[:-1])
        except RuntimeError as err:
            raise ValueError(f"x0 and x: batch shapes {list(x0.shape[:-1])} and {list(x.shape[:-1])} do not broadcast") from err
        t = _time(t, x0.new_empty(batch + (1,)))
        theta = wrap(x.to(torch.float64) - x0.to(torch.float64)).expand(batch + x.shape[-1:])
        return theta, t.to(torch.float64)[..., None].expand(theta.shape)

    def _circle(self, theta: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        est = self.spec.estimator
        if est == "sum_over_paths":
            return _paths(theta, t)
        if est == "eigen":
            return _fourier(theta, t)
        small = t <= _PATHS_UP_TO
        log_p = torch.zeros_like(theta)
        dlogp = torch.zeros_like(theta)
        if bool(small.any()):
            lp, dl = _paths(theta[small], t[small])
            log_p = log_p.masked_scatter(small, lp)
            dlogp = dlogp.masked_scatter(small, dl)
        if bool((~small).any()):
            lp, dl = _fourier(theta[~small], t[~small])
            log_p = log_p.masked_scatter(~small, lp)
            dlogp = dlogp.masked_scatter(~small, dl)
        return log_p, dlogp

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        r""":math:`\sum_i \log p^{S^1}_t(\theta_i)`."""
        theta, tt = self._angles(x0, x, t)
        return self._circle(theta, tt)[0].sum(-1).to(x.dtype)

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        r""":math:`\partial_\theta \log p^{S^1}_t(\theta_i)` per angle, in closed form."""
        theta, tt = self._angles(x0, x, t)
        with torch.no_grad():
            return self._circle(theta, tt)[1].to(x.dtype)

    def sample(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        r"""Exact: :math:`\mathrm{wrap}(x_0 + \sqrt t\,z)`, :math:`z \sim \mathcal N(0, I_n)`."""
        m = self._manifold
        m.check_point("x0", x0)
        t = _time(t, x0)
        z = randn(x0.shape, generator, dtype=torch.float64, device=x0.device)
        return wrap(x0.to(torch.float64) + torch.sqrt(t.to(torch.float64))[..., None] * z).to(x0.dtype)


def _tol(dtype: torch.dtype) -> float:
    return max(1e-6, 1e3 * torch.finfo(dtype).eps)


def _time(t, like: Tensor) -> Tensor:
    """t as a tensor of the batch shape of ``like`` (points with a trailing event dim); rejects t <= 0."""
    t = check_time(t, math.inf, like, lower=0.0)
    if bool((t <= 0).any()):
        raise ValueError("t: the heat kernel needs t > 0")
    batch = like[..., 0]
    return expand_time(t, batch).expand(batch.shape) if t.dim() else t.expand(batch.shape)
