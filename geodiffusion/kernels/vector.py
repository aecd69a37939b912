"""E(n)-equivariant matrix kernels for vector fields :math:`\\mathbb{R}^n \\to \\mathbb{R}^n`, n = 2 or 3.

With :math:`u = (x - x')/\\ell` and :math:`\\kappa = \\sigma^2 e^{-\\|u\\|^2/2}`, each kernel is built from
:math:`I` and :math:`u u^\\top`, so :math:`k(Rx + t, Rx' + t) = R\\, k(x, x')\\, R^\\top` for every
:math:`R \\in O(n)`: the output representation is the linear part of the E(n) element.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.groups.matrix import EuclideanGroup
from geodiffusion.kernels._groups import linear_part
from geodiffusion.kernels.base import Kernel
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["CurlFree", "DivergenceFree", "Diagonal"]


class _VectorSpec(Spec):
    dim: int = Field(2, ge=2, le=3, description="dimension n of inputs and outputs (2 or 3)")
    lengthscale: float = Field(1.0, gt=0, description="lengthscale l")
    variance: float = Field(1.0, gt=0, description="signal variance sigma^2")


class _VectorField(Kernel):
    """Shared plumbing of kernels from R^n to n x n matrices, equivariant under E(n) with rho(g) = R."""

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self._group = EuclideanGroup(dim=self.spec.dim, action="vector")

    @property
    def input_dim(self) -> int:
        return self.spec.dim

    @property
    def output_dim(self) -> int:
        return self.spec.dim

    @property
    def group(self) -> Group:
        return self._group

    def output_representation(self, g: Tensor) -> Tensor:
        return linear_part(self.group, g)

    def _parts(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(kappa / l^2 [..., n1, n2, 1, 1], |u|^2 [..., n1, n2, 1, 1], u u^T, I)``."""
        self.check_pair(x1, x2)
        u = (x1.unsqueeze(-2) - x2.unsqueeze(-3)) / self.spec.lengthscale
        sq = (u**2).sum(-1)[..., None, None]
        scale = self.spec.variance / self.spec.lengthscale**2 * torch.exp(-0.5 * sq)
        eye = torch.eye(self.spec.dim, dtype=u.dtype, device=u.device)
        return scale, sq, u.unsqueeze(-1) * u.unsqueeze(-2), eye


class CurlFree(_VectorField, kind="curl_free"):
    r"""Gradients of a squared-exponential GP, :math:`f = \nabla \phi`:
    :math:`k(x, x') = -\nabla\nabla^\top \kappa(x - x') = \tfrac{\sigma^2}{\ell^2} e^{-\|u\|^2/2} (I - u u^\top)`."""

    class Spec(_VectorSpec):
        """Curl-free squared-exponential vector-field kernel."""

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(dim=3, lengthscale=0.7, variance=2.0)]

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        scale, _, uu, eye = self._parts(x1, x2)
        return scale * (eye - uu)


class DivergenceFree(_VectorField, kind="divergence_free"):
    r"""Curls of a squared-exponential vector potential (rotated gradients in 2D):
    :math:`k(x, x') = (\nabla\nabla^\top - \Delta I)\kappa = \tfrac{\sigma^2}{\ell^2} e^{-\|u\|^2/2}
    \big((n - 1 - \|u\|^2) I + u u^\top\big)`."""

    class Spec(_VectorSpec):
        """Divergence-free squared-exponential vector-field kernel."""

    @classmethod
    def examples(cls):
        return [cls.Spec(lengthscale=0.6), cls.Spec(dim=3)]

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        scale, sq, uu, eye = self._parts(x1, x2)
        return scale * ((self.spec.dim - 1 - sq) * eye + uu)


class Diagonal(Kernel, kind="diagonal"):
    r"""Independent components :math:`k(x, x') = \kappa(x, x')\, I_n` from a scalar kernel :math:`\kappa` on
    :math:`\mathbb{R}^n` (n = 2, 3), read as a vector-field kernel: :math:`R \kappa I R^\top = \kappa I`, so it
    is equivariant under the scalar kernel's group with :math:`\rho(g) = R`, E(n) for isotropic :math:`\kappa`."""

    class Spec(Spec):
        """Scalar kernel times the identity, for vector fields."""

        base: component_spec(Kernel) = Field(
            default_factory=lambda: {"kind": "squared_exponential", "input_dim": 2},
            description="scalar kernel (output_dim 1) on inputs of dimension 2 or 3",
        )

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(base={"kind": "matern52", "input_dim": 3, "lengthscale": 0.5})]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.base: Kernel = build(self.spec.base, Kernel)
        if self.base.output_dim != 1 or self.base.input_dim not in (2, 3):
            raise ValueError(
                f"base: expected a scalar kernel (output_dim 1) on R^2 or R^3, got input_dim={self.base.input_dim}, "
                f"output_dim={self.base.output_dim}"
            )

    @property
    def input_dim(self) -> int:
        return self.base.input_dim

    @property
    def output_dim(self) -> int:
        return self.base.input_dim

    @property
    def group(self) -> Group:
        return self.base.group

    def output_representation(self, g: Tensor) -> Tensor:
        return linear_part(self.group, g)

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        k = self.base(x1, x2)
        return k * torch.eye(self.output_dim, dtype=k.dtype, device=k.device)
