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


def _check_output(output: str) -> None:
    if output not in ("vector", "point", "invariant"):
        raise ValueError(f"output: expected 'vector', 'point' or 'invariant', got {output!r}")


def _transform_output(group: Group, g: Tensor, y: Tensor, output: Output) -> Tensor:
    r""":math:`\rho(g)\,y` for outputs that transform as ``output`` says."""
    if output == "vector":
        return group.act_on_vectors(g, y)
    if output == "point":
        return group.act(g, y)
    _check_output(output)
    return y


def _transformed_outputs(
    fn: Callable[[Tensor], Tensor], group: Group, x: Tensor, fx: Tensor, g: Tensor, output: Output
) -> tuple[Tensor, Tensor]:
    r"""Both sides of :math:`f(g \cdot x) = \rho(g) f(x)` for a stack of elements ``g [m, *element_shape]``:
    ``(f(g.x), rho(g) f(x))``, each ``[m, *fx.shape]``, with ``fx = fn(x)`` given. ``fn`` sees all elements in
    one call of ``[m * B, ...]`` points (just ``x``'s shape when ``m = 1``). Shared by
    :func:`equivariance_error` and :func:`geodiffusion.testing.equivariance_errors`; no input checks.
    """
    nd, element_shape = group.event_ndim, tuple(group.element_shape)
    m = g.shape[0]
    # one element per copy of the batch: [m, 1, ..., 1, *element_shape] against [1, B, *event_shape]
    g = g.to(x.device).reshape((m,) + (1,) * (x.dim() - nd) + element_shape)
    gx = group.act(g, x.unsqueeze(0))
    f_gx = fn(gx.reshape((m * x.shape[0],) + tuple(x.shape[1:]))).reshape((m,) + tuple(fx.shape))
    return f_gx, _transform_output(group, g, fx.unsqueeze(0), output)


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
    _check_output(output)
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
    with torch.no_grad():
        fx = fn(x)
        f_gx, expected = _transformed_outputs(fn, group, x, fx, g, output)
        error = (f_gx - expected).abs().max()
        scale = fx.abs().max() + torch.finfo(fx.dtype).tiny
    return float(error / scale)
