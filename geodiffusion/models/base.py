"""The ScoreModel abstraction: a network approximating the score of the noised marginals."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor, nn

from geodiffusion.groups.base import Group
from geodiffusion.registry import Component

__all__ = ["ScoreModel"]


class ScoreModel(Component, nn.Module, family=True):
    r"""An ``nn.Module`` :math:`s_\theta(t, x) \approx \nabla_x \log p_t(x)`.

    Shapes: ``t [B]`` or ``[]``, ``x [B, *event_shape]`` :math:`\to` ``[B, *event_shape]``.
    ``group`` is the group the model claims equivariance for,
    :math:`s_\theta(t, g \cdot x) = g \cdot s_\theta(t, x)` (None: no claim), which
    :func:`geodiffusion.testing.check_equivariant` verifies.
    """

    @abstractmethod
    def forward(self, t: Tensor, x: Tensor, **context: Any) -> Tensor:
        r""":math:`s_\theta(t, x)`."""

    @property
    def group(self) -> Group | None:
        return None

    def example_input(self, batch: int, generator=None) -> Tensor:
        """A random input ``x`` of the shape the model expects, for property tests."""
        raise NotImplementedError(f"{type(self).__name__} does not declare an example input shape")
