"""Stationary isotropic scalar kernels, times the identity on R^d outputs."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.matrix import EuclideanGroup
from geodiffusion.kernels.base import Kernel
from geodiffusion.spec import Spec

__all__ = ["SquaredExponential"]


class SquaredExponential(Kernel, kind="squared_exponential"):
    r""":math:`k(x, x') = \sigma^2 \exp(-\|x - x'\|^2 / 2\ell^2)\, I_d`; depends on :math:`\|x - x'\|`
    only, so it is invariant under E(m) acting on inputs (:math:`\rho = I`)."""

    class Spec(Spec):
        """Squared-exponential (RBF) kernel."""

        input_dim: int = Field(1, ge=1, description="dimension m of inputs")
        output_dim: int = Field(1, ge=1, description="dimension d of outputs")
        lengthscale: float = Field(1.0, gt=0, description="lengthscale l")
        variance: float = Field(1.0, gt=0, description="signal variance sigma^2")

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(input_dim=2, output_dim=2, lengthscale=0.7, variance=2.0)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self._group = EuclideanGroup(dim=self.spec.input_dim, action="vector")

    @property
    def input_dim(self) -> int:
        return self.spec.input_dim

    @property
    def output_dim(self) -> int:
        return self.spec.output_dim

    @property
    def group(self) -> EuclideanGroup:
        return self._group

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        for name, x in (("x1", x1), ("x2", x2)):
            if x.dim() < 2 or x.shape[-1] != self.input_dim:
                raise ValueError(f"{name}: expected shape [..., n, {self.input_dim}], got {list(x.shape)}")
        sq = ((x1.unsqueeze(-2) - x2.unsqueeze(-3)) ** 2).sum(-1)
        k = self.spec.variance * torch.exp(-0.5 * sq / self.spec.lengthscale**2)
        eye = torch.eye(self.output_dim, dtype=k.dtype, device=k.device)
        return k[..., None, None] * eye
