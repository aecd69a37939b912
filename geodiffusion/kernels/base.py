"""The Kernel abstraction: matrix-valued covariance functions of Gaussian processes."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.registry import Component

__all__ = ["Kernel"]


class Kernel(Component, family=True):
    r"""A matrix-valued kernel :math:`k(x, x') \in \mathbb{R}^{d \times d}` on inputs :math:`x \in \mathbb{R}^{m}`.

    Equivariance under ``group`` (checked by :func:`geodiffusion.testing.check_kernel`):
    :math:`k(g x, g x') = \rho(g)\, k(x, x')\, \rho(g)^\top`, with :math:`\rho` = :meth:`output_representation`.
    """

    @property
    @abstractmethod
    def input_dim(self) -> int:
        """Dimension :math:`m` of the inputs."""

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Dimension :math:`d` of the outputs."""

    @property
    @abstractmethod
    def group(self) -> Group:
        """The group acting on inputs (as vectors) under which the kernel is equivariant."""

    @abstractmethod
    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        r"""Shapes: ``x1 [..., n1, m]``, ``x2 [..., n2, m]`` :math:`\to` ``[..., n1, n2, d, d]``."""

    def output_representation(self, g: Tensor) -> Tensor:
        r""":math:`\rho(g)` ``[..., d, d]``: how outputs transform; the identity (invariant kernel) unless overridden."""
        eye = torch.eye(self.output_dim, dtype=torch.get_default_dtype(), device=g.device)
        return eye.expand(g.shape[: g.dim() - len(self.group.element_shape)] + eye.shape)

    def gram(self, x: Tensor) -> Tensor:
        """The Gram matrix :math:`K(x, x)` flattened to ``[..., n*d, n*d]`` (point-major)."""
        k = self(x, x)
        n, d = k.shape[-4], k.shape[-1]
        return k.transpose(-3, -2).reshape(k.shape[:-4] + (n * d, n * d))
