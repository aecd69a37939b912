r"""Heat kernels of products :math:`M^k` and :math:`M_1 \times \dots \times M_k`: Brownian motion on a product is
independent Brownian motions, so :math:`p_t(x_0, x) = \prod_i p^{M_i}_t(x_{0,i}, x_i)` and the score is the factor
scores stacked."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.heat.base import HeatKernel
from geodiffusion.manifolds.base import Manifold
from geodiffusion.manifolds.product import MixedProductManifold, ProductManifold
from geodiffusion.registry import build, spec_owner
from geodiffusion.spec import Spec, component_spec

__all__ = ["ProductHeatKernel", "MixedProductHeatKernel"]


def _check_owner(spec: Spec, cls: type, kernel: str, kind: str) -> None:
    """Accept the spec of ``cls`` or of a user's subclass of it (registered under its own kind)."""
    owner = spec_owner(type(spec))
    if owner is None or not issubclass(owner, cls):
        raise ValueError(f"{kernel} needs a {kind} manifold spec (or a subclass's), got kind {getattr(spec, 'kind', None)!r}")


class ProductHeatKernel(HeatKernel, kind="product_heat"):
    r""":math:`\log p_t(x_0, x) = \sum_i \log p^M_t(x_{0,i}, x_i)` with the factor's heat kernel built from
    ``factor_options`` (e.g. ``{"estimator": "eigen"}``); exact sampling factor by factor."""

    class Spec(Spec):
        """Heat kernel of a product manifold M^k."""

        manifold: component_spec(Manifold)
        factor_options: dict[str, Any] = Field(default_factory=dict, description="options of the factor's heat kernel")

        @model_validator(mode="after")
        def _check(self):
            _check_owner(self.manifold, ProductManifold, "ProductHeatKernel", "product")
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


class MixedProductHeatKernel(HeatKernel, kind="mixed_product_heat"):
    r""":math:`\log p_t(x_0, x) = \sum_i \log p^{M_i}_t(x_{0,i}, x_i)` with factor ``i``'s heat kernel built from
    ``factor_options[i]`` (all defaults when omitted); exact sampling factor by factor."""

    class Spec(Spec):
        """Heat kernel of a product manifold M_1 x ... x M_k."""

        manifold: component_spec(Manifold)
        factor_options: list[dict[str, Any]] | None = Field(
            None, description="options of each factor's heat kernel, one dict per factor (None: the defaults)"
        )

        @model_validator(mode="after")
        def _check(self):
            _check_owner(self.manifold, MixedProductManifold, "MixedProductHeatKernel", "mixed_product")
            if self.factor_options is not None and len(self.factor_options) != len(self.manifold.factors):
                raise ValueError(
                    f"factor_options: expected one dict per factor ({len(self.manifold.factors)}), got {len(self.factor_options)}"
                )
            return self

    @classmethod
    def examples(cls):
        return [
            cls.Spec(manifold={"kind": "mixed_product", "factors": [{"kind": "sphere", "dim": 2}, {"kind": "so3"}]}),
            cls.Spec(manifold={"kind": "mixed_product", "factors": [{"kind": "su", "n": 2}, {"kind": "sphere", "dim": 1}]}),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        manifold = build(self.spec.manifold, Manifold)
        if not isinstance(manifold, MixedProductManifold):
            raise ValueError(f"MixedProductHeatKernel needs a MixedProductManifold, got {type(manifold).__name__}")
        self._manifold = manifold
        options = self.spec.factor_options or [{}] * len(manifold.factors)
        self.factor_kernels = [f.heat_kernel(**o) for f, o in zip(manifold.factors, options, strict=True)]

    @property
    def manifold(self) -> MixedProductManifold:
        return self._manifold

    def log_prob(self, x0: Tensor, x: Tensor, t) -> Tensor:
        pairs = zip(self.factor_kernels, self._manifold.split(x0), self._manifold.split(x), strict=True)
        return sum(k.log_prob(a, b, t) for k, a, b in pairs)

    def score(self, x0: Tensor, x: Tensor, t) -> Tensor:
        pairs = zip(self.factor_kernels, self._manifold.split(x0), self._manifold.split(x), strict=True)
        return self._manifold.join([k.score(a, b, t) for k, a, b in pairs]).to(x.dtype)

    def sample(self, x0: Tensor, t, generator: torch.Generator | None = None) -> Tensor:
        parts = zip(self.factor_kernels, self._manifold.split(x0), strict=True)
        return self._manifold.join([k.sample(a, t, generator) for k, a in parts]).to(x0.dtype)
