"""Sums and products of kernels: again kernels (PSD by closure and the Schur product theorem)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.groups.matrix import Translations
from geodiffusion.kernels._groups import common_group, embed
from geodiffusion.kernels.base import Kernel
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["Sum", "Product"]


class _CombinationSpec(Spec):
    kernels: list[component_spec(Kernel)] = Field(min_length=2, description="the kernels combined (nested specs)")


class _Combination(Kernel):
    """Shared plumbing: build the terms, find the group all of them respect and how outputs transform."""

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.kernels: list[Kernel] = [build(s, Kernel) for s in self.spec.kernels]
        dims = {k.input_dim for k in self.kernels}
        if len(dims) != 1:
            raise ValueError(f"kernels: expected one input dimension, got {sorted(dims)}")
        self._validate_outputs()
        self._group = self._find_group()

    def _validate_outputs(self) -> None:
        """Raise ValueError unless the terms' output dimensions can be combined (per subclass)."""

    def _carrier(self) -> list[Kernel]:
        """The terms whose output representation must agree (all of them for a sum)."""
        return self.kernels

    def _find_group(self) -> Group:
        # The smallest declared group, unless the terms transform their outputs differently under it
        # (a scalar kernel times I_n plus a curl-free kernel, say): then only translations (rho = I) remain.
        group = common_group([k.group for k in self.kernels])
        if self._representations_agree(group):
            return group
        fallback = Translations(dim=group.spec.dim, action="vector")
        if self._representations_agree(fallback):
            return fallback
        raise ValueError(f"{type(self).__name__}: the terms' output representations disagree even on translations")

    def _rho_of(self, kernel: Kernel, g: Tensor, group: Group) -> Tensor:
        return kernel.output_representation(embed(g, group, kernel.group))

    def _representations_agree(self, group: Group) -> bool:
        g = group.sample(3, torch.Generator().manual_seed(0), dtype=torch.float64)
        rhos = [self._rho_of(k, g, group) for k in self._carrier()]
        return all(torch.allclose(r, rhos[0], atol=1e-12) for r in rhos[1:])

    @property
    def input_dim(self) -> int:
        return self.kernels[0].input_dim

    @property
    def group(self) -> Group:
        return self._group

    def output_representation(self, g: Tensor) -> Tensor:
        return self._rho_of(self._carrier()[0], g, self._group)


class Sum(_Combination, kind="kernel_sum"):
    r""":math:`k = \sum_i k_i` (all with the same output dimension); equivariant under the smallest of the
    terms' groups on which their output representations agree."""

    class Spec(_CombinationSpec):
        """Sum of kernels."""

    @classmethod
    def examples(cls):
        return [
            cls.Spec(kernels=[{"kind": "squared_exponential", "lengthscale": 0.5}, {"kind": "white_noise", "variance": 0.1}]),
            cls.Spec(kernels=[{"kind": "curl_free"}, {"kind": "divergence_free", "lengthscale": 0.5}]),
        ]

    def _validate_outputs(self) -> None:
        dims = {k.output_dim for k in self.kernels}
        if len(dims) != 1:
            raise ValueError(f"kernels: a sum needs one output dimension, got {sorted(dims)}")

    @property
    def output_dim(self) -> int:
        return self.kernels[0].output_dim

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        self.check_pair(x1, x2)
        out = self.kernels[0](x1, x2)
        for k in self.kernels[1:]:
            out = out + k(x1, x2)
        return out


class Product(_Combination, kind="kernel_product"):
    r""":math:`k = \prod_i k_i` where every factor but at most one is scalar (output_dim 1): scalar kernels
    multiply the matrix-valued one, e.g. the weakly periodic :math:`k_{SE} k_{per}`. PSD by the Schur product
    theorem; outputs transform as the matrix-valued factor's.

    >>> import geodiffusion as gd
    >>> weakly_periodic = gd.build({"kind": "kernel_product", "kernels": [{"kind": "squared_exponential"}, {"kind": "periodic"}]})
    >>> type(weakly_periodic.group).__name__  # SE is E(1)-invariant, the periodic kernel only translation-invariant
    'Translations'
    """

    class Spec(_CombinationSpec):
        """Product of kernels (at most one matrix-valued)."""

    @classmethod
    def examples(cls):
        return [
            cls.Spec(kernels=[{"kind": "squared_exponential", "lengthscale": 2.0}, {"kind": "periodic", "period": 0.7}]),
            cls.Spec(kernels=[{"kind": "matern52", "input_dim": 2, "lengthscale": 2.0}, {"kind": "curl_free"}]),
        ]

    def _validate_outputs(self) -> None:
        matrix = [k for k in self.kernels if k.output_dim > 1]
        if len(matrix) > 1:
            raise ValueError(
                "kernels: a product takes at most one matrix-valued factor, "
                f"got output dims {[k.output_dim for k in self.kernels]}"
            )

    def _carrier(self) -> list[Kernel]:
        return [max(self.kernels, key=lambda k: k.output_dim)]

    @property
    def output_dim(self) -> int:
        return max(k.output_dim for k in self.kernels)

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        self.check_pair(x1, x2)
        return math.prod((k(x1, x2) for k in self.kernels[1:]), start=self.kernels[0](x1, x2))
