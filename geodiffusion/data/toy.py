r"""Toy densities with exact symmetry and exact log-density.

The ring of Gaussians :math:`p(x) = \frac1k \sum_{j<k} \mathcal{N}(x;\, r\,u(2\pi j/k + \phi),\, s^2 I)`,
:math:`u(\theta) = (\cos\theta, \sin\theta)`, is invariant under the rotations of :math:`C_k`
(rotating by :math:`2\pi/k` permutes the components), and under no other rotation about the origin
when :math:`k \ge 2` and :math:`r > 0`.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion._validation import check_event_shape, check_finite
from geodiffusion.spec import Spec

__all__ = ["ring_of_gaussians", "ring_of_gaussians_log_prob", "ring_centres", "RingOfGaussians"]


def _check_params(k: int, radius: float, std: float) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if not radius >= 0:
        raise ValueError(f"radius: expected a value >= 0, got {radius}")
    if not std > 0:
        raise ValueError(f"std: expected a positive value, got {std}")


def ring_centres(k: int, radius: float, offset: float = 0.0, *, dtype=None, device=None) -> Tensor:
    r"""The ``[k, 2]`` centres :math:`c_j = r\,(\cos(2\pi j/k + \phi), \sin(2\pi j/k + \phi))`."""
    # angles in float64 so that every dtype gets correctly rounded centres
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k + offset
    centres = radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return centres.to(dtype=dtype or torch.get_default_dtype(), device=device)


def ring_of_gaussians(
    n: int,
    k: int,
    radius: float,
    std: float,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    *,
    offset: float = 0.0,
    device=None,
) -> Tensor:
    r"""``n`` draws ``[n, 2]`` from the mixture of ``k`` Gaussians :math:`\mathcal{N}(c_j, s^2 I)`, :math:`j \sim U\{0..k-1\}`.

    Values depend only on ``generator``'s state, not on ``device``.
    """
    _check_params(k, radius, std)
    if n < 0:
        raise ValueError(f"n: expected a non-negative count, got {n}")
    dtype = dtype or torch.get_default_dtype()
    centres = ring_centres(k, radius, offset, dtype=dtype, device=device)
    component = (rand((n,), generator, dtype=torch.float64, device=device) * k).long().clamp_max(k - 1)
    return centres[component] + std * randn((n, 2), generator, dtype=dtype, device=device)


def ring_of_gaussians_log_prob(x: Tensor, k: int, radius: float, std: float, *, offset: float = 0.0) -> Tensor:
    r"""Exact :math:`\log p(x) = \operatorname{logsumexp}_j\big(-\|x - c_j\|^2 / 2s^2\big) - \log k - \log(2\pi s^2)`.

    Shapes: ``x [..., 2]`` -> ``[...]``, on ``x``'s device and dtype.
    """
    _check_params(k, radius, std)
    check_finite("x", x)
    check_event_shape("x", x, (2,))
    centres = ring_centres(k, radius, offset, dtype=x.dtype, device=x.device)
    sq = ((x.unsqueeze(-2) - centres) ** 2).sum(-1)
    return torch.logsumexp(-sq / (2 * std**2), -1) - math.log(k) - math.log(2 * math.pi * std**2)


class RingOfGaussians(Spec):
    """A ring of ``k`` isotropic Gaussians (the data of an experiment), with sampling and exact log-density."""

    k: int = Field(6, ge=1, description="number of components; the density is C_k-invariant")
    radius: float = Field(1.5, ge=0, description="distance of the centres from the origin")
    std: float = Field(0.2, gt=0, description="std of each component")
    offset: float = Field(0.0, description="angle of the first centre (radians)")

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype | None = None, *, device=None
    ) -> Tensor:
        """``n`` draws ``[n, 2]``."""
        return ring_of_gaussians(n, self.k, self.radius, self.std, generator, dtype, offset=self.offset, device=device)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density, ``[..., 2]`` -> ``[...]``."""
        return ring_of_gaussians_log_prob(x, self.k, self.radius, self.std, offset=self.offset)
