"""The Group abstraction: a group G and its action on a space X.

Elements are tensors of trailing shape ``element_shape``; points are tensors of
trailing shape ``event_shape`` (``event_ndim`` axes). Leading axes of both are
batch axes and broadcast against each other, so ``act(g[:, None], x[None])``
applies every element to every point.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import torch
from torch import Tensor

from geodiffusion.registry import Component

__all__ = ["Group", "FiniteGroup", "Action"]

Action = Literal["vector", "point_cloud", "image"]


class Group(Component, family=True):
    r"""A group :math:`G` acting on a space :math:`X`.

    Axioms (checked by :func:`geodiffusion.testing.check_group`):
    :math:`(gh)k = g(hk)`, :math:`eg = g`, :math:`g g^{-1} = e`, and the action
    is a homomorphism, :math:`g \cdot (h \cdot x) = (gh) \cdot x`, :math:`e \cdot x = x`.
    """

    finite: ClassVar[bool] = False
    linear_action: ClassVar[bool] = True
    """Whether :math:`x \\mapsto g \\cdot x` is linear, so that vectors (scores)
    transform like points; affine actions (translations) set this False."""

    @property
    @abstractmethod
    def element_shape(self) -> tuple[int, ...]:
        """Trailing shape of one group element."""

    @property
    @abstractmethod
    def event_ndim(self) -> int:
        """Number of trailing axes of a point of X that the action consumes."""

    @abstractmethod
    def identity(self, batch_shape: tuple[int, ...] = (), *, device=None, dtype=None) -> Tensor:
        """The neutral element :math:`e`, repeated over ``batch_shape``."""

    @abstractmethod
    def compose(self, g: Tensor, h: Tensor) -> Tensor:
        """The product :math:`gh` (apply :math:`h` first)."""

    @abstractmethod
    def inverse(self, g: Tensor) -> Tensor:
        """The inverse :math:`g^{-1}`."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=None) -> Tensor:
        """``n`` random elements, Haar-distributed where a Haar probability exists."""

    @abstractmethod
    def act(self, g: Tensor, x: Tensor) -> Tensor:
        """The action :math:`g \\cdot x`."""

    @abstractmethod
    def random_points(self, n: int, generator: torch.Generator | None = None, *, dtype=torch.float32) -> Tensor:
        """``n`` points of X in a typical shape, for property tests."""

    # --- template methods -------------------------------------------------

    def elements_close(self, g: Tensor, h: Tensor, atol: float = 0.0) -> Tensor:
        """Per-batch boolean: do ``g`` and ``h`` denote the same element (to ``atol``)?"""
        nd = len(self.element_shape)
        diff = (g.to(torch.float64) - h.to(torch.float64)).abs()
        return (diff.flatten(diff.dim() - nd) <= atol).all(-1) if nd else diff <= atol

    def act_on_vectors(self, g: Tensor, v: Tensor) -> Tensor:
        """How vectors attached to points (scores, velocities) transform: the
        linear part of the action; equal to :meth:`act` for linear actions."""
        if not self.linear_action:
            raise NotImplementedError(f"{type(self).__name__} has an affine action and must define act_on_vectors")
        return self.act(g, v)


class FiniteGroup(Group):
    """A finite group, enumerable by :meth:`elements`; random elements are uniform."""

    finite: ClassVar[bool] = True

    @property
    @abstractmethod
    def order(self) -> int:
        """:math:`|G|`."""

    @abstractmethod
    def elements(self, *, device=None) -> Tensor:
        """All :math:`|G|` elements, stacked on axis 0."""

    def sample(self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=None) -> Tensor:
        idx = torch.randint(self.order, (n,), generator=generator)
        return self.elements(device=device)[idx.to(device) if device is not None else idx]
