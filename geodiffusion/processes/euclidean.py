"""VP, sub-VP and VE processes on R^d (Song et al., 2021) with exact marginals."""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.processes.base import LinearGaussianProcess
from geodiffusion.spec import Spec

__all__ = ["VPProcess", "SubVPProcess", "VEProcess"]


class _TimeSpec(Spec):
    T: float = Field(1.0, gt=0, description="terminal time")


class _EuclideanSpec(_TimeSpec):
    event_ndim: int = Field(1, ge=0, description="trailing axes of x forming one sample")


class _LinearBetaSpec(_EuclideanSpec):
    beta_min: float = Field(0.1, ge=0, description="beta(0)")
    beta_max: float = Field(20.0, gt=0, description="beta(T)")

    @model_validator(mode="after")
    def _ordered(self):
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
        return self


class _GeometricSigmaSpec(_TimeSpec):
    r"""Fields of a geometric schedule :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T}`, shared by
    :class:`VEProcess` and :class:`~geodiffusion.processes.DistanceVEProcess` so both validate alike."""

    sigma_min: float = Field(0.01, gt=0, description="sigma(0)")
    sigma_max: float = Field(50.0, gt=0, description="sigma(T), the prior std")

    @model_validator(mode="after")
    def _sigma_ordered(self):
        if self.sigma_max <= self.sigma_min:
            raise ValueError(f"sigma_max ({self.sigma_max}) must exceed sigma_min ({self.sigma_min})")
        return self


class _TimeFromSpec:
    """``T`` and ``event_ndim`` of a process, read off its spec's fields of the same names."""

    @property
    def T(self) -> float:
        return self.spec.T

    @property
    def event_ndim(self) -> int:
        return self.spec.event_ndim


class _LinearBeta(_TimeFromSpec, LinearGaussianProcess):
    r"""Shared schedule :math:`\beta(t) = \beta_0 + (\beta_1 - \beta_0) t / T` and
    drift :math:`f = -\tfrac12 \beta(t) x`, so :math:`\alpha_t = e^{-B(t)/2}`, :math:`B = \int_0^t \beta`."""

    def beta(self, t: Tensor) -> Tensor:
        s = self.spec
        return s.beta_min + (s.beta_max - s.beta_min) * t / s.T

    def integrated_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = \int_0^t \beta(s)\,ds`."""
        s = self.spec
        return s.beta_min * t + 0.5 * (s.beta_max - s.beta_min) * t**2 / s.T

    def drift(self, x: Tensor, t) -> Tensor:
        return -0.5 * self.beta(self.time_like(t, x)) * x

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.integrated_beta(t))

    @property
    def prior_std(self) -> float:
        return 1.0


class VPProcess(_LinearBeta, kind="vp"):
    r"""Variance preserving: :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dW`,
    :math:`\sigma_t^2 = 1 - e^{-B(t)}`, prior :math:`\mathcal{N}(0, I)`."""

    class Spec(_LinearBetaSpec):
        """Variance-preserving SDE with a linear beta schedule."""

    def diffusion(self, t) -> Tensor:
        return torch.sqrt(self.beta(torch.as_tensor(t)))

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))


class SubVPProcess(_LinearBeta, kind="subvp"):
    r"""Sub-VP: :math:`dx = -\tfrac12\beta x\,dt + \sqrt{\beta(t)(1 - e^{-2B(t)})}\,dW`,
    :math:`\sigma_t = 1 - e^{-B(t)}`, prior :math:`\mathcal{N}(0, I)`."""

    class Spec(_LinearBetaSpec):
        """Sub-variance-preserving SDE with a linear beta schedule."""

    def diffusion(self, t) -> Tensor:
        t = torch.as_tensor(t)
        return torch.sqrt(self.beta(t) * -torch.expm1(-2.0 * self.integrated_beta(t)))

    def std(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.integrated_beta(t))


class VEProcess(_TimeFromSpec, LinearGaussianProcess, kind="ve"):
    r"""Variance exploding: :math:`\sigma(t) = \sigma_{\min}(\sigma_{\max}/\sigma_{\min})^{t/T}`,
    :math:`dx = \sqrt{d\sigma^2/dt}\,dW`, exact :math:`\sigma_t^2 = \sigma(t)^2 - \sigma_{\min}^2`,
    prior :math:`\mathcal{N}(0, \sigma_{\max}^2 I)`."""

    # base order gives the fields T, event_ndim, sigma_min, sigma_max, as before the schedule fields were shared
    class Spec(_GeometricSigmaSpec, _EuclideanSpec):
        """Variance-exploding SDE with a geometric noise schedule."""

    @property
    def _log_ratio(self) -> float:
        return math.log(self.spec.sigma_max / self.spec.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        r"""Noise level :math:`\sigma(t)`."""
        return self.spec.sigma_min * torch.exp(self._log_ratio * t / self.spec.T)

    def drift(self, x: Tensor, t) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> Tensor:
        return self.sigma(torch.as_tensor(t)) * math.sqrt(2.0 * self._log_ratio / self.spec.T)

    def mean_scale(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def std(self, t: Tensor) -> Tensor:
        return self.spec.sigma_min * torch.sqrt(torch.expm1(2.0 * self._log_ratio * t / self.spec.T))

    @property
    def prior_std(self) -> float:
        return self.spec.sigma_max
