"""Continuous groups of R^d: SO(d), O(d), SE(d), E(d) and translations, acting
on vectors ``[..., d]`` or on point clouds ``[..., N, d]`` (one element moves every point)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.spec import Spec

__all__ = ["SpecialOrthogonal", "Orthogonal", "SpecialEuclidean", "EuclideanGroup", "Translations", "haar_orthogonal"]

SpaceAction = Literal["vector", "point_cloud"]


def haar_orthogonal(n: int, d: int, generator=None, *, special: bool, device=None, dtype=None) -> Tensor:
    """``n`` Haar-random matrices of O(d) (or SO(d)): QR of a Gaussian with the sign of diag(R) fixed."""
    dtype = dtype or torch.get_default_dtype()
    a = torch.randn((n, d, d), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if special:
        # flipping one column maps the det = -1 half of O(d) onto SO(d), keeping Haar measure
        det = torch.linalg.det(q)
        q[..., :, 0] = q[..., :, 0] * det.unsqueeze(-1)
    return q.to(device=device, dtype=dtype)


class _SpaceSpec(Spec):
    dim: int = Field(3, ge=1, description="dimension d of the space R^d")
    action: SpaceAction = Field("vector", description="act on vectors [..., d] or point clouds [..., N, d]")


class _SpaceGroup(Group):
    """Shared plumbing for groups acting on R^d."""

    @property
    def event_ndim(self) -> int:
        return 1 if self.spec.action == "vector" else 2

    def _check_points(self, x: Tensor) -> None:
        nd, d = self.event_ndim, self.spec.dim
        if x.dim() < nd or x.shape[-1] != d:
            expected = f"[..., {d}]" if nd == 1 else f"[..., N, {d}]"
            raise ValueError(f"{type(self).__name__}: expected points of shape {expected}, got {list(x.shape)}")

    def _apply_linear(self, m: Tensor, x: Tensor) -> Tensor:
        self._check_points(x)
        m = m.to(x.dtype)
        if self.spec.action == "vector":
            return (m @ x.unsqueeze(-1)).squeeze(-1)
        return x @ m.transpose(-1, -2)

    def _shift(self, t: Tensor, x: Tensor) -> Tensor:
        t = t.to(x.dtype)
        return x + (t if self.spec.action == "vector" else t.unsqueeze(-2))

    def random_points(self, n, generator=None, *, dtype=torch.float32) -> Tensor:
        shape = (n, self.spec.dim) if self.spec.action == "vector" else (n, 5, self.spec.dim)
        return torch.randn(shape, generator=generator, dtype=dtype)


class _MatrixGroup(_SpaceGroup):
    special: bool = True

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (self.spec.dim, self.spec.dim)

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        eye = torch.eye(self.spec.dim, device=device, dtype=dtype or torch.get_default_dtype())
        return eye.expand(tuple(batch_shape) + eye.shape).clone()

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return g @ h

    def inverse(self, g: Tensor) -> Tensor:
        return g.transpose(-1, -2)

    def sample(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        return haar_orthogonal(n, self.spec.dim, generator, special=self.special, device=device, dtype=dtype)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        return self._apply_linear(g, x)


class SpecialOrthogonal(_MatrixGroup, kind="so"):
    r""":math:`SO(d) = \{R : R^\top R = I, \det R = 1\}`, elements ``[d, d]``, action :math:`x \mapsto Rx`."""

    special = True

    class Spec(_SpaceSpec):
        """Rotation group SO(d)."""

        dim: int = Field(3, ge=2, description="dimension d")

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=2), cls.Spec(dim=3), cls.Spec(dim=3, action="point_cloud"), cls.Spec(dim=5)]


class Orthogonal(_MatrixGroup, kind="o"):
    r""":math:`O(d) = \{R : R^\top R = I\}` (rotations and reflections), elements ``[d, d]``."""

    special = False

    class Spec(_SpaceSpec):
        """Orthogonal group O(d)."""

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=2), cls.Spec(dim=3), cls.Spec(dim=3, action="point_cloud")]


class _RigidGroup(_SpaceGroup):
    r"""Elements are homogeneous matrices :math:`\begin{pmatrix} R & t \\ 0 & 1\end{pmatrix}`, action :math:`x \mapsto Rx + t`."""

    linear_action = False
    special: bool = True

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (self.spec.dim + 1, self.spec.dim + 1)

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        eye = torch.eye(self.spec.dim + 1, device=device, dtype=dtype or torch.get_default_dtype())
        return eye.expand(tuple(batch_shape) + eye.shape).clone()

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return g @ h

    def inverse(self, g: Tensor) -> Tensor:
        d = self.spec.dim
        rot_t = g[..., :d, :d].transpose(-1, -2)
        out = torch.zeros_like(g)
        out[..., :d, :d] = rot_t
        out[..., :d, d] = -(rot_t @ g[..., :d, d].unsqueeze(-1)).squeeze(-1)
        out[..., d, d] = 1
        return out

    def sample(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        d = self.spec.dim
        dtype = dtype or torch.get_default_dtype()
        rot = haar_orthogonal(n, d, generator, special=self.special, dtype=torch.float64)
        shift = self.spec.translation_scale * torch.randn((n, d), generator=generator, dtype=torch.float64)
        g = torch.zeros((n, d + 1, d + 1), dtype=torch.float64)
        g[:, :d, :d], g[:, :d, d], g[:, d, d] = rot, shift, 1.0
        return g.to(device=device, dtype=dtype)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        d = self.spec.dim
        return self._shift(g[..., :d, d], self._apply_linear(g[..., :d, :d], x))

    def act_on_vectors(self, g: Tensor, v: Tensor) -> Tensor:
        return self._apply_linear(g[..., : self.spec.dim, : self.spec.dim], v)


class _RigidSpec(_SpaceSpec):
    action: SpaceAction = Field("point_cloud", description="act on vectors [..., d] or point clouds [..., N, d]")
    translation_scale: float = Field(1.0, gt=0, description="std of the translations drawn by sample()")


class SpecialEuclidean(_RigidGroup, kind="se"):
    r""":math:`SE(d) = SO(d) \ltimes \mathbb{R}^d`: rigid motions :math:`x \mapsto Rx + t`."""

    special = True

    class Spec(_RigidSpec):
        """Rigid-motion group SE(d); translations for sample() are N(0, translation_scale^2)."""

        dim: int = Field(3, ge=2, description="dimension d")

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(dim=2, action="vector")]


class EuclideanGroup(_RigidGroup, kind="e"):
    r""":math:`E(d) = O(d) \ltimes \mathbb{R}^d`: isometries :math:`x \mapsto Rx + t`, reflections included."""

    special = False

    class Spec(_RigidSpec):
        """Isometry group E(d); translations for sample() are N(0, translation_scale^2)."""

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(dim=2, action="vector")]


class Translations(_SpaceGroup, kind="translation"):
    r"""The translation group :math:`(\mathbb{R}^d, +)`, action :math:`x \mapsto x + t`; elements ``[d]``."""

    linear_action = False

    class Spec(_SpaceSpec):
        """Translations of R^d; sample() draws N(0, translation_scale^2)."""

        translation_scale: float = Field(1.0, gt=0, description="std of the translations drawn by sample()")

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (self.spec.dim,)

    @classmethod
    def examples(cls):
        return [cls.Spec(), cls.Spec(dim=2, action="point_cloud")]

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return torch.zeros(tuple(batch_shape) + (self.spec.dim,), device=device, dtype=dtype)

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return g + h

    def inverse(self, g: Tensor) -> Tensor:
        return -g

    def sample(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        dtype = dtype or torch.get_default_dtype()
        t = self.spec.translation_scale * torch.randn((n, self.spec.dim), generator=generator, dtype=torch.float64)
        return t.to(device=device, dtype=dtype)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        self._check_points(x)
        return self._shift(g, x)

    def act_on_vectors(self, g: Tensor, v: Tensor) -> Tensor:
        self._check_points(v)
        batch = torch.broadcast_shapes(g.shape[:-1], v.shape[: v.dim() - self.event_ndim])
        return v.expand(batch + v.shape[v.dim() - self.event_ndim :])
