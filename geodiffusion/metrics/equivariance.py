"""Equivariance error of a function under a group action, as a number for experiment reports.

:func:`geodiffusion.testing.check_equivariant` is the asserting check for tests; this is the metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from geodiffusion._validation import check_finite
from geodiffusion.groups.base import Group

__all__ = ["equivariance_error", "DEFAULT_SAMPLED_ELEMENTS", "EQUIVARIANCE_SEED"]

Output = Literal["vector", "point", "invariant"]
DEFAULT_SAMPLED_ELEMENTS = 8
EQUIVARIANCE_SEED = 0


def _default_elements(group: Group, x: Tensor) -> Tensor:
    if group.finite:
        return group.elements(device=x.device)
    generator = torch.Generator().manual_seed(EQUIVARIANCE_SEED)
    return group.sample(DEFAULT_SAMPLED_ELEMENTS, generator, device=x.device, dtype=x.dtype)


def equivariance_error(
    fn: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    *,
    output: Output = "vector",
    elements: Tensor | None = None,
) -> float:
    r"""Relative equivariance error
    :math:`\max_{g} \max |f(g \cdot x) - \rho(g) f(x)| \,/\, (\max |f(x)| + \text{tiny})`.

    :math:`\rho(g)` is ``group.act_on_vectors`` for ``output="vector"`` (scores, velocities),
    ``group.act`` for ``"point"`` (maps of points to points) and the identity for ``"invariant"``.
    ``elements`` defaults to all elements of a finite group, else 8 drawn with a fixed seed.
    All elements go through ``fn`` in one batched call of ``[m * B, *event_shape]`` points.

    Shapes: ``x [B, *event_shape]`` (or one point ``[*event_shape]``), elements ``[m, *element_shape]``.
    """
    if output not in ("vector", "point", "invariant"):
        raise ValueError(f"output: expected 'vector', 'point' or 'invariant', got {output!r}")
    check_finite("x", x)
    nd = group.event_ndim
    if x.dim() < nd:
        raise ValueError(f"x: expected points with {nd} event axes for {type(group).__name__}, got shape {list(x.shape)}")
    if x.dim() == nd:
        x = x.unsqueeze(0)
    g = _default_elements(group, x) if elements is None else elements
    element_shape = tuple(group.element_shape)
    if g.dim() != len(element_shape) + 1 or tuple(g.shape[1:]) != element_shape or len(g) == 0:
        raise ValueError(f"elements: expected a non-empty stack [m, {', '.join(map(str, element_shape))}], got {list(g.shape)}")
    m, batch = g.shape[0], x.shape[0]
    # one element per copy of the batch: [m, 1, ..., 1, *element_shape] against [1, B, *event_shape]
    g = g.to(x.device).reshape((m,) + (1,) * (x.dim() - nd) + element_shape)

    with torch.no_grad():
        fx = fn(x)
        gx = group.act(g, x.unsqueeze(0))
        f_gx = fn(gx.reshape((m * batch,) + tuple(x.shape[1:])))
        f_gx = f_gx.reshape((m,) + tuple(fx.shape))
        if output == "vector":
            expected = group.act_on_vectors(g, fx.unsqueeze(0))
        elif output == "point":
            expected = group.act(g, fx.unsqueeze(0))
        else:
            expected = fx.unsqueeze(0)
        error = (f_gx - expected).abs().max()
        scale = fx.abs().max() + torch.finfo(fx.dtype).tiny
    return float(error / scale)
