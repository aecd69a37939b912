"""Stationary scalar kernels :math:`k(x, x') = \\kappa(x - x')\\, I_d` on :math:`\\mathbb{R}^m` inputs.

Isotropic ones (squared exponential, Matérn, white noise) depend on :math:`\\|x - x'\\|` only and are
invariant under E(m); the periodic kernel depends on each coordinate of :math:`x - x'` and is invariant
under translations. Outputs are :math:`d` independent copies (:math:`\\rho = I_d`).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.groups.matrix import EuclideanGroup, Translations
from geodiffusion.kernels.base import Kernel
from geodiffusion.spec import Spec

__all__ = ["SquaredExponential", "Matern12", "Matern32", "Matern52", "Periodic", "WhiteNoise"]


class _ScalarSpec(Spec):
    input_dim: int = Field(1, ge=1, description="dimension m of inputs")
    output_dim: int = Field(1, ge=1, description="dimension d of outputs")
    variance: float = Field(1.0, gt=0, description="signal variance sigma^2")


class _LengthscaleSpec(_ScalarSpec):
    lengthscale: float = Field(1.0, gt=0, description="lengthscale l")


def _sq_dist(x1: Tensor, x2: Tensor) -> Tensor:
    # exact differences rather than |x|^2 + |x'|^2 - 2 x.x': no cancellation, so k(gx, gx') = k(x, x') to rounding
    return ((x1.unsqueeze(-2) - x2.unsqueeze(-3)) ** 2).sum(-1)


def _dist(x1: Tensor, x2: Tensor) -> Tensor:
    sq = _sq_dist(x1, x2)
    # clamp keeps the gradient of sqrt finite at r = 0 (where the Matern kernels are not differentiable anyway)
    return sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt()


class _ScalarStationary(Kernel):
    """Shared plumbing: :math:`\\kappa` times :math:`I_d`, E(m)-invariant unless a subclass says otherwise."""

    isotropic: bool = True

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        m = self.spec.input_dim
        self._group: Group = EuclideanGroup(dim=m, action="vector") if self.isotropic else Translations(dim=m, action="vector")

    @property
    def input_dim(self) -> int:
        return self.spec.input_dim

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    @property
    def group(self) -> Group:
        return self._group

    @abstractmethod
    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        r"""The scalar kernel :math:`\kappa(x - x')`, ``[..., n1, n2]``."""

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        self.check_pair(x1, x2)
        k = self.scalar(x1, x2)
        eye = torch.eye(self.output_dim, dtype=k.dtype, device=k.device)
        return k[..., None, None] * eye


class SquaredExponential(_ScalarStationary, kind="squared_exponential"):
    r""":math:`k(x, x') = \sigma^2 \exp(-\|x - x'\|^2 / 2\ell^2)\, I_d`; depends on :math:`\|x - x'\|`
    only, so it is invariant under E(m) acting on inputs (:math:`\rho = I`)."""

    class Spec(_LengthscaleSpec):
        """Squared-exponential (RBF) kernel."""

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(input_dim=2, output_dim=2, lengthscale=0.7, variance=2.0)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.spec.variance * torch.exp(-0.5 * _sq_dist(x1, x2) / self.spec.lengthscale**2)


class Matern12(_ScalarStationary, kind="matern12"):
    r"""Matérn-1/2 (exponential, OU): :math:`k = \sigma^2 e^{-r/\ell}\, I_d`, :math:`r = \|x - x'\|`; E(m)-invariant."""

    class Spec(_LengthscaleSpec):
        """Matérn kernel of smoothness 1/2."""

    @classmethod
    def examples(cls):
        return [cls.Spec(input_dim=2, lengthscale=0.5)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.spec.variance * torch.exp(-_dist(x1, x2) / self.spec.lengthscale)


class Matern32(_ScalarStationary, kind="matern32"):
    r"""Matérn-3/2: :math:`k = \sigma^2 (1 + \sqrt3 r/\ell) e^{-\sqrt3 r/\ell}\, I_d`; E(m)-invariant."""

    class Spec(_LengthscaleSpec):
        """Matérn kernel of smoothness 3/2."""

    @classmethod
    def examples(cls):
        return [cls.Spec(input_dim=3, output_dim=2, lengthscale=1.3)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        a = math.sqrt(3.0) * _dist(x1, x2) / self.spec.lengthscale
        return self.spec.variance * (1 + a) * torch.exp(-a)


class Matern52(_ScalarStationary, kind="matern52"):
    r"""Matérn-5/2: :math:`k = \sigma^2 (1 + \sqrt5 r/\ell + 5r^2/3\ell^2) e^{-\sqrt5 r/\ell}\, I_d`; E(m)-invariant."""

    class Spec(_LengthscaleSpec):
        """Matérn kernel of smoothness 5/2."""

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(input_dim=2, lengthscale=0.8, variance=1.5)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        a = math.sqrt(5.0) * _dist(x1, x2) / self.spec.lengthscale
        return self.spec.variance * (1 + a + a**2 / 3) * torch.exp(-a)


class Periodic(_ScalarStationary, kind="periodic"):
    r"""Periodic (MacKay) kernel, a product over input coordinates:
    :math:`k = \sigma^2 \exp(-2 \sum_i \sin^2(\pi (x_i - x'_i)/p) / \ell^2)\, I_d`.
    It depends on each coordinate of :math:`x - x'`, so it is invariant under translations (not rotations)."""

    isotropic = False

    class Spec(_LengthscaleSpec):
        """Periodic kernel with period p in every input coordinate."""

        period: float = Field(1.0, gt=0, description="period p")

    @classmethod
    def examples(cls):
        return [cls.Spec(period=2.0, lengthscale=0.8), cls.Spec(input_dim=2, output_dim=2)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        s = torch.sin(math.pi * (x1.unsqueeze(-2) - x2.unsqueeze(-3)) / self.spec.period)
        return self.spec.variance * torch.exp(-2.0 * (s**2).sum(-1) / self.spec.lengthscale**2)


class WhiteNoise(_ScalarStationary, kind="white_noise"):
    r"""White noise :math:`k(x, x') = \sigma^2\, \mathbb{1}[x = x']\, I_d`: independent values at distinct
    inputs; invariant under every bijection of the inputs, E(m) in particular."""

    class Spec(_ScalarSpec):
        """White-noise kernel."""

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(input_dim=2, output_dim=2, variance=0.3)]

    def scalar(self, x1: Tensor, x2: Tensor) -> Tensor:
        same = (x1.unsqueeze(-2) == x2.unsqueeze(-3)).all(-1)
        return self.spec.variance * same.to(x1.dtype)
