r"""The gauge group of a lattice gauge field: one :math:`SU(n)` element per site, acting on the links."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.data.lattice import link_sites, n_links
from geodiffusion.groups.base import Group
from geodiffusion.manifolds.lie import SU, complex_dtype
from geodiffusion.spec import Spec

__all__ = ["LatticeGauge"]


class LatticeGauge(Group, kind="lattice_gauge"):
    r""":math:`\mathcal G = SU(n)^{L^2}` acting on the links of an open :math:`L \times L` lattice
    (:mod:`geodiffusion.data.lattice`) by :math:`U_{s,\mu} \mapsto g_s\,U_{s,\mu}\,g_{s+\hat\mu}^H`.

    Elements ``[L^2, n, n]`` complex (site ``x L + y``), points ``[..., 2L(L-1), n, n]`` complex. The action is
    linear and an isometry of the bi-invariant metric of :math:`SU(n)^k`, so scores transform like points. Real
    ``dtype`` arguments select the complex dtype of the same precision.
    """

    class Spec(Spec):
        """Site-wise SU(n) gauge transformations of a two-dimensional lattice."""

        size: int = Field(3, ge=2, le=8, description="lattice side L")
        n: int = Field(3, ge=2, le=16, description="gauge group SU(n)")

    @classmethod
    def examples(cls):
        return [cls.Spec(size=2, n=2), cls.Spec(size=3, n=3)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self._start, self._end = link_sites(self.spec.size)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (self.spec.size**2, self.spec.n, self.spec.n)

    @property
    def event_ndim(self) -> int:
        return 3

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        eye = torch.eye(self.spec.n, device=device, dtype=complex_dtype(dtype))
        return eye.expand(tuple(batch_shape) + self.element_shape).clone()

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return g @ h

    def inverse(self, g: Tensor) -> Tensor:
        return g.mH

    def sample(self, n: int, generator=None, *, device=None, dtype=None) -> Tensor:
        """Haar on every site."""
        sites = self.spec.size**2
        points = SU(n=self.spec.n).random_point(n * sites, generator, device=device, dtype=complex_dtype(dtype))
        return points.reshape((n,) + self.element_shape)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        k, n = n_links(self.spec.size), self.spec.n
        if x.dim() < 3 or tuple(x.shape[-3:]) != (k, n, n):
            raise ValueError(f"LatticeGauge: expected links of shape [..., {k}, {n}, {n}], got {list(x.shape)}")
        if g.dim() < 3 or tuple(g.shape[-3:]) != self.element_shape:
            raise ValueError(
                f"LatticeGauge: expected elements of shape [..., {self.spec.size**2}, {n}, {n}], got {list(g.shape)}"
            )
        start, end = self._start.to(g.device), self._end.to(g.device)
        return g[..., start, :, :].to(x.dtype) @ x @ g[..., end, :, :].mH.to(x.dtype)

    def random_points(self, n: int, generator=None, *, dtype=torch.float32) -> Tensor:
        k = n_links(self.spec.size)
        points = SU(n=self.spec.n).random_point(n * k, generator, dtype=complex_dtype(dtype))
        return points.reshape(n, k, self.spec.n, self.spec.n)
