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
        r""":math:`\rho(g)` ``[..., d, d]``: how outputs transform; the identity (invariant kernel) unless overridden.

        Follows ``g``'s device and (floating) dtype; integer elements (finite groups) give the default dtype."""
        dtype = g.dtype if g.is_floating_point() else torch.get_default_dtype()
        eye = torch.eye(self.output_dim, dtype=dtype, device=g.device)
        return eye.expand(g.shape[: g.dim() - len(self.group.element_shape)] + eye.shape)

    def check_pair(self, x1: Tensor, x2: Tensor) -> None:
        """Raise ValueError unless ``x1 [..., n1, m]`` and ``x2 [..., n2, m]`` are floating inputs of dimension m."""
        for name, x in (("x1", x1), ("x2", x2)):
            if not isinstance(x, Tensor) or not x.is_floating_point():
                raise ValueError(f"{name}: expected a floating torch.Tensor, got {type(x).__name__}")
            if x.dim() < 2 or x.shape[-1] != self.input_dim:
                raise ValueError(f"{name}: expected shape [..., n, {self.input_dim}], got {list(x.shape)}")
        if x1.dtype != x2.dtype or x1.device != x2.device:
            raise ValueError(f"x1 ({x1.dtype}, {x1.device}) and x2 ({x2.dtype}, {x2.device}) must share dtype and device")

    def gram(self, x: Tensor) -> Tensor:
        """The Gram matrix :math:`K(x, x)` flattened to ``[..., n*d, n*d]`` (point-major)."""
        k = self(x, x)
        n, d = k.shape[-4], k.shape[-1]
        return k.transpose(-3, -2).reshape(k.shape[:-4] + (n * d, n * d))
