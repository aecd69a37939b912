r"""A gauge-equivariant score model for lattice gauge fields: the Riemannian gradient of a gauge-invariant potential."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.data.lattice import n_links, n_wilson_loops, wilson_loops
from geodiffusion.groups.gauge import LatticeGauge
from geodiffusion.manifolds.product import ProductManifold
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, mlp
from geodiffusion.spec import Spec

__all__ = ["GaugePotential"]


class GaugePotential(ScoreModel, kind="gauge_potential"):
    r""":math:`s_\theta(t, U) = \operatorname{grad}_U f_\theta(t, \phi(U))` on :math:`SU(n)^{2L(L-1)}`, with
    :math:`\phi(U)` the real and imaginary parts of :math:`\tfrac1n\mathrm{tr}\,W_C(U)` over the rectangular Wilson
    loops :math:`C` of the lattice (:func:`~geodiffusion.data.lattice.wilson_loops`) and :math:`f_\theta` an MLP.

    Gauge transformations are isometries of :math:`SU(n)^k` that fix every :math:`\phi`, so the score is
    gauge-equivariant by construction, as the score of a density invariant under isometries is (Structure Preserving
    Diffusion), and is a gradient field, as :math:`\nabla\log p_t` is. A gauge-invariant function of the open lattice is
    a function of the plaquettes parallel-transported to one site, up to a common conjugation, so rectangular loops
    give the plaquette classes and the simplest couplings between them, not every invariant. For :math:`n \le 3`,
    :math:`\mathrm{tr}\,U` fixes the class of :math:`U \in SU(n)`; for :math:`n \ge 4` it does not, and
    :math:`\mathrm{tr}\,U^k` would be needed too. No :math:`1/\sigma_t` factor: a smooth density of full support
    (the Wilson action) has a score bounded uniformly in :math:`t`.

    Shapes: ``t [B]`` or ``[]``, ``x [B, 2L(L-1), n, n]`` complex -> same.
    """

    class Spec(Spec):
        """Riemannian gradient of an MLP on Wilson-loop traces (gauge-equivariant)."""

        size: int = Field(3, ge=2, le=8, description="lattice side L")
        n: int = Field(3, ge=2, le=16, description="gauge group SU(n)")
        max_extent: int | None = Field(
            None, ge=1, description="longest side of the Wilson loops fed to the potential (None: every rectangle)"
        )
        hidden: int = Field(128, ge=1, description="width of hidden layers")
        depth: int = Field(3, ge=1, description="number of hidden layers")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = Field("silu", description="a smooth activation keeps the divergence (NLL) defined")

        @model_validator(mode="after")
        def _extent_fits(self):
            if self.max_extent is not None and self.max_extent > self.size - 1:
                raise ValueError(f"max_extent: a loop side is at most L - 1 = {self.size - 1}, got {self.max_extent}")
            return self

    @classmethod
    def examples(cls):
        return [cls.Spec(size=2, n=2, hidden=16, depth=2), cls.Spec(size=3, n=3, max_extent=1, hidden=16, depth=1)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.manifold = ProductManifold(factor={"kind": "su", "n": s.n}, power=n_links(s.size))
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        width = 2 * n_wilson_loops(s.size, s.max_extent) + s.time_embedding_dim
        # no output bias: a constant shift of f leaves the score unchanged
        self.net = mlp(width, s.hidden, s.depth, 1, s.activation, out_bias=False)

    @property
    def group(self) -> LatticeGauge:
        return LatticeGauge(size=self.spec.size, n=self.spec.n)

    def potential(self, t: Tensor, x: Tensor) -> Tensor:
        r""":math:`f_\theta(t, \phi(U))`, ``[B]``."""
        shape = tuple(self.manifold.point_shape)
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape or not x.is_complex():
            want = ", ".join(map(str, shape))
            raise ValueError(f"GaugePotential: expected complex links of shape [B, {want}], got {list(x.shape)} {x.dtype}")
        real = x.real.dtype
        t = torch.as_tensor(t, device=x.device).to(real).expand(x.shape[0])
        loops = wilson_loops(x, self.spec.size, self.spec.max_extent)
        phi = torch.cat([loops.real, loops.imag, self.time_embedding(t).to(real)], -1)
        return self.net(phi).squeeze(-1)

    def forward(self, t: Tensor, x: Tensor, **context: Any) -> Tensor:
        # keep the graph of the gradient whenever the caller differentiates (training: w.r.t. theta; the NLL's
        # divergence: w.r.t. x), and drop it under no_grad (sampling)
        if torch.is_inference_mode_enabled():
            raise RuntimeError("GaugePotential differentiates its potential: call it under torch.no_grad, not inference_mode")
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            z = x if x.requires_grad else x.detach().requires_grad_()
            # for real f of complex z, autograd returns df/dRe z + i df/dIm z: the Euclidean gradient for the
            # metric Re tr(u^H v) of SU(n)^k, which proj turns into the Riemannian one
            (grad,) = torch.autograd.grad(self.potential(t, z).sum(), z, create_graph=keep)
        return self.manifold.proj(x, grad)

    def example_input(self, batch: int, generator=None) -> Tensor:
        return self.manifold.random_point(batch, generator)
