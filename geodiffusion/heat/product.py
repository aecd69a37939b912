r"""Heat kernel of a power :math:`M^k`: Brownian motion on a product is independent Brownian motions, so
:math:`p_t(x_0, x) = \prod_i p^M_t(x_{0,i}, x_i)` and the score is the factor scores stacked."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.heat.base import HeatKernel
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.product import ProductManifold
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["ProductHeatKernel"]


class ProductHeatKernel(HeatKernel, kind="product_heat"):
    r""":math:`\log p_t(x_0, x) = \sum_i \log p^M_t(x_{0,i}, x_i)` with the factor's heat kernel built from
    ``factor_options`` (e.g. ``{"estimator": "eigen"}``); exact sampling factor by factor."""

    class Spec(Spec):
        """Heat kernel of a product manifold M^k."""

        manifold: component_spec(Manifold)
        factor_options: dict[str, Any] = Field(default_factory=dict, description="options of the factor's heat kernel")

        @model_validator(mode="after")
        def _check(self):
            kind = getattr(self.manifold, "kind", None)
            if kind != "product":
                raise ValueError(f"ProductHeatKernel needs a product manifold spec, got kind {kind!r}")
            return self

    @classmethod
    def examples(cls):
        return [cls.Spec(manifold={"kind": "product", "factor": {"kind": "so3"}, "power": 2})]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, ProductManifold):
            raise ValueError(f"ProductHeatKernel needs a ProductManifold, got {type(manifold).__name__}")
        self._manifold = manifold
        self.factor_kernel = manifold.factor.heat_kernel(**self.spec.factor_options)

    @property
    def manifold(self) -> ProductManifold:
        return self._manifold

    def _t(self, t, x: Tensor) -> Tensor | float:
        # per-point times [batch...] gain one axis so that they broadcast over the k factors
        if isinstance(t, Tensor) and t.dim() > 0:
            batch = x.shape[: x.dim() - len(self._manifold.point_shape)]
            if t.dim() > len(batch) or tuple(t.shape) != tuple(batch[: t.dim()]):
                raise ValueError(f"t: expected shape [] or a prefix of the batch shape {list(batch)}, got {list(t.shape)}")
            t = t.reshape(t.shape + (1,) * (len(batch) - t.dim())).expand(batch)
            return t[..., None].expand(batch + (self._manifold.power,))
        return t

    def _check(self, name: str, x: Tensor) -> None:
        self._manifold.check_point(name, x)

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        self._check("x0", x0)
        self._check("x", x)
        return self.factor_kernel.log_prob(x0, x, self._t(t, x)).sum(-1)

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        self._check("x0", x0)
        self._check("x", x)
        return self.factor_kernel.score(x0, x, self._t(t, x))

    def sample(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        self._check("x0", x0)
        return self.factor_kernel.sample(x0, self._t(t, x0), generator)
