"""Cyclic C_n and dihedral D_n: rotations (and reflections) of the plane, of
planar point clouds, or (n in {1, 2, 4}) of square images by exact rot90/flip."""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.groups.base import FiniteGroup
from geodiffusion.spec import Spec

__all__ = ["CyclicGroup", "DihedralGroup"]

PlanarAction = Literal["vector", "point_cloud", "image"]
_EVENT_NDIM = {"vector": 1, "point_cloud": 2, "image": 3}


class _PlanarSpec(Spec):
    n: int = Field(ge=1, description="number of rotations; the rotation angle is 2*pi/n")
    action: PlanarAction = Field("vector", description="points of R^2, point clouds [..., N, 2] or images [..., C, H, W]")

    @model_validator(mode="after")
    def _image_needs_quarter_turns(self):
        if self.action == "image" and self.n not in (1, 2, 4):
            raise ValueError(f"action='image' acts exactly only for n in (1, 2, 4), got n={self.n}")
        return self


def _rotation_matrix(angle: Tensor) -> Tensor:
    c, s = torch.cos(angle), torch.sin(angle)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def _apply_matrix(m: Tensor, x: Tensor, action: str) -> Tensor:
    if action == "vector":
        return (m @ x.unsqueeze(-1)).squeeze(-1)
    return x @ m.transpose(-1, -2)


def _rot90_batched(quarter_turns: Tensor, x: Tensor) -> Tensor:
    """rot90 of the last two axes by a per-batch number of quarter turns."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"image actions need square images, got shape {list(x.shape)}")
    q = (quarter_turns % 4).reshape(quarter_turns.shape + (1, 1, 1))
    out = x.expand(torch.broadcast_shapes(q.shape, x.shape))
    for j in (1, 2, 3):
        out = torch.where(q == j, torch.rot90(x, j, dims=(-2, -1)), out)
    return out


def _check_points(x: Tensor, action: str) -> None:
    nd = _EVENT_NDIM[action]
    if x.dim() < nd or (action != "image" and x.shape[-1] != 2):
        expected = {"vector": "[..., 2]", "point_cloud": "[..., N, 2]", "image": "[..., C, H, W]"}[action]
        raise ValueError(f"expected points of shape {expected}, got {list(x.shape)}")


def _random_planar_points(action: str, n: int, generator, dtype) -> Tensor:
    shape = {"vector": (n, 2), "point_cloud": (n, 5, 2), "image": (n, 2, 6, 6)}[action]
    return torch.randn(shape, generator=generator, dtype=dtype)


class CyclicGroup(FiniteGroup, kind="cyclic"):
    r""":math:`C_n = \{r^k\}_{k<n}`, :math:`r` the rotation by :math:`2\pi/n`; elements are ``k`` (long, shape ``[]``)."""

    class Spec(_PlanarSpec):
        """Cyclic group C_n."""

    @classmethod
    def examples(cls):
        return [cls.Spec(n=5), cls.Spec(n=3, action="point_cloud"), cls.Spec(n=4, action="image"), cls.Spec(n=2, action="image")]

    @property
    def order(self) -> int:
        return self.spec.n

    @property
    def element_shape(self) -> tuple[int, ...]:
        return ()

    @property
    def event_ndim(self) -> int:
        return _EVENT_NDIM[self.spec.action]

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return torch.zeros(batch_shape, dtype=torch.long, device=device)

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        return (g + h) % self.spec.n

    def inverse(self, g: Tensor) -> Tensor:
        return (-g) % self.spec.n

    def elements(self, *, device=None) -> Tensor:
        return torch.arange(self.spec.n, device=device)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        _check_points(x, self.spec.action)
        if self.spec.action == "image":
            return _rot90_batched(g * (4 // self.spec.n), x)
        angle = g.to(x.dtype) * (2 * math.pi / self.spec.n)
        return _apply_matrix(_rotation_matrix(angle), x, self.spec.action)

    def random_points(self, n, generator=None, *, dtype=torch.float32) -> Tensor:
        return _random_planar_points(self.spec.action, n, generator, dtype)


class DihedralGroup(FiniteGroup, kind="dihedral"):
    r""":math:`D_n = \{r^k f^s\}`, :math:`f` the reflection :math:`(x, y) \mapsto (x, -y)`
    (images: flip of the last axis), :math:`f r f = r^{-1}`; elements are ``[k, s]`` (long)."""

    class Spec(_PlanarSpec):
        """Dihedral group D_n of order 2n."""

    @classmethod
    def examples(cls):
        return [cls.Spec(n=5), cls.Spec(n=3, action="point_cloud"), cls.Spec(n=4, action="image"), cls.Spec(n=2, action="image")]

    @property
    def order(self) -> int:
        return 2 * self.spec.n

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def event_ndim(self) -> int:
        return _EVENT_NDIM[self.spec.action]

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return torch.zeros(tuple(batch_shape) + (2,), dtype=torch.long, device=device)

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        # r^a f^s r^b f^u = r^(a + (-1)^s b) f^(s xor u)
        sign = 1 - 2 * g[..., 1]
        k = (g[..., 0] + sign * h[..., 0]) % self.spec.n
        return torch.stack(torch.broadcast_tensors(k, (g[..., 1] + h[..., 1]) % 2), -1)

    def inverse(self, g: Tensor) -> Tensor:
        # (r^k)^-1 = r^-k, (r^k f)^-1 = r^k f
        k = torch.where(g[..., 1] == 1, g[..., 0], (-g[..., 0]) % self.spec.n)
        return torch.stack([k, g[..., 1]], -1)

    def elements(self, *, device=None) -> Tensor:
        k, s = torch.meshgrid(torch.arange(self.spec.n, device=device), torch.arange(2, device=device), indexing="xy")
        return torch.stack([k.reshape(-1), s.reshape(-1)], -1)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        _check_points(x, self.spec.action)
        k, s = g[..., 0], g[..., 1]
        if self.spec.action == "image":
            flipped = torch.where((s == 1).reshape(s.shape + (1, 1, 1)), x.flip(-1), x)
            return _rot90_batched(k * (4 // self.spec.n), flipped)
        angle = k.to(x.dtype) * (2 * math.pi / self.spec.n)
        reflect = torch.stack([torch.ones_like(angle), 1.0 - 2.0 * s.to(x.dtype)], -1)
        return _apply_matrix(_rotation_matrix(angle) * reflect.unsqueeze(-2), x, self.spec.action)

    def random_points(self, n, generator=None, *, dtype=torch.float32) -> Tensor:
        return _random_planar_points(self.spec.action, n, generator, dtype)
