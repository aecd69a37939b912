"""The symmetric group S_n acting on sets of n points by reordering the point axis."""

from __future__ import annotations

import itertools
import math

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion.groups.base import FiniteGroup
from geodiffusion.spec import Spec

__all__ = ["Permutations"]


class Permutations(FiniteGroup, kind="permutation"):
    r""":math:`S_n`; an element is the index tensor :math:`\sigma` (``[n]``, long) and
    :math:`(\sigma \cdot x)_{\sigma(i)} = x_i` on sets ``[..., n, *features]``,
    so that :math:`\sigma \cdot (\tau \cdot x) = (\sigma\tau) \cdot x` with :math:`(\sigma\tau)(i) = \sigma(\tau(i))`."""

    class Spec(Spec):
        """Permutations of a set of ``n`` points, each with ``feature_ndim`` trailing feature axes."""

        n: int = Field(ge=1, description="number of points in the set")
        feature_ndim: int = Field(1, ge=0, description="number of feature axes after the point axis")

    @classmethod
    def examples(cls):
        return [cls.Spec(n=4), cls.Spec(n=5, feature_ndim=0), cls.Spec(n=3, feature_ndim=2)]

    @property
    def order(self) -> int:
        return math.factorial(self.spec.n)

    @property
    def element_shape(self) -> tuple[int, ...]:
        return (self.spec.n,)

    @property
    def event_ndim(self) -> int:
        return 1 + self.spec.feature_ndim

    def identity(self, batch_shape=(), *, device=None, dtype=None) -> Tensor:
        return torch.arange(self.spec.n, device=device).expand(tuple(batch_shape) + (self.spec.n,)).clone()

    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        g, h = torch.broadcast_tensors(g, h)
        return torch.gather(g, -1, h)

    def inverse(self, g: Tensor) -> Tensor:
        return torch.argsort(g, dim=-1)

    def elements(self, *, device=None) -> Tensor:
        return torch.tensor(list(itertools.permutations(range(self.spec.n))), dtype=torch.long, device=device)

    def sample(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        return torch.argsort(torch.rand((n, self.spec.n), generator=generator), dim=-1).to(device)

    def act(self, g: Tensor, x: Tensor) -> Tensor:
        nd = self.event_ndim
        if x.dim() < nd or x.shape[x.dim() - nd] != self.spec.n:
            raise ValueError(
                f"Permutations(n={self.spec.n}): expected sets [..., {self.spec.n}, *features] "
                f"with {self.spec.feature_ndim} feature axes, got {list(x.shape)}"
            )
        features = x.shape[x.dim() - self.spec.feature_ndim :] if self.spec.feature_ndim else ()
        batch = torch.broadcast_shapes(g.shape[:-1], x.shape[: x.dim() - nd])
        index = self.inverse(g).expand(batch + (self.spec.n,))
        index = index.reshape(index.shape + (1,) * len(features)).expand(batch + (self.spec.n,) + tuple(features))
        return torch.gather(x.expand(batch + x.shape[x.dim() - nd :]), len(batch), index)

    def random_points(self, n, generator=None, *, dtype=torch.float32) -> Tensor:
        shape = (n, self.spec.n) + (2,) * self.spec.feature_ndim
        return torch.randn(shape, generator=generator, dtype=dtype)
