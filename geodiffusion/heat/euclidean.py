"""The Gaussian heat kernel of R^d."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion._validation import check_same_device_dtype, check_time, expand_time
from geodiffusion.heat.base import HeatKernel
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.euclidean import Euclidean
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["EuclideanHeatKernel"]


class EuclideanHeatKernel(HeatKernel, kind="euclidean_heat"):
    r""":math:`p_t(x_0, x) = (2\pi t)^{-d/2} \exp(-\|x - x_0\|^2 / 2t)`, score :math:`-(x - x_0)/t`."""

    class Spec(Spec):
        """Heat kernel of R^d."""

        manifold: component_spec(Manifold)

    @classmethod
    def examples(cls):
        return [cls.Spec(manifold={"kind": "euclidean", "dim": 2}), cls.Spec(manifold={"kind": "euclidean", "dim": 5})]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, Euclidean):
            raise ValueError(f"EuclideanHeatKernel needs a Euclidean manifold, got {type(manifold).__name__}")
        self._manifold = manifold

    @property
    def manifold(self) -> Euclidean:
        return self._manifold

    def _time(self, t, x: Tensor) -> Tensor:
        t = check_time(t, math.inf, x, lower=0.0)
        if bool((t <= 0).any()):
            raise ValueError("t: the heat kernel needs t > 0")
        return expand_time(t, x[..., 0])

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        self._manifold.check_point("x", x)
        self._manifold.check_point("x0", x0)
        check_same_device_dtype(x0=x0, x=x)
        t = self._time(t, x)
        d = self._manifold.dim
        return -((x - x0) ** 2).sum(-1) / (2 * t) - 0.5 * d * torch.log(2 * math.pi * t)

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        check_same_device_dtype(x0=x0, x=x)
        return -(x - x0) / self._time(t, x).unsqueeze(-1)

    def sample(self, x0: Tensor, t, generator=None) -> Tensor:
        t = self._time(t, x0)
        return x0 + torch.sqrt(t).unsqueeze(-1) * randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
