"""Groups acting on kernel inputs: the linear part of an element, and the common subgroup of several kernels.

The kernels shipped here declare one of the nested groups of isometries of R^m acting on vectors,
:math:`\\mathbb{R}^m \\subset SE(m) \\subset E(m)`; a sum or product of kernels is equivariant under the
smallest of its terms' groups, into which elements of the smaller group embed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.groups.matrix import EuclideanGroup, Orthogonal, SpecialEuclidean, SpecialOrthogonal, Translations

__all__ = ["linear_part", "common_group", "embed"]

# subgroup chain of the isometries of R^m (acting on vectors), smallest first
_CHAIN: tuple[type[Group], ...] = (Translations, SpecialEuclidean, EuclideanGroup)


def linear_part(group: Group, g: Tensor) -> Tensor:
    r"""The matrix :math:`R` of :math:`x \mapsto Rx + t`, ``[..., m, m]``: how vectors attached to inputs transform."""
    if isinstance(group, EuclideanGroup | SpecialEuclidean):
        d = group.spec.dim
        return g[..., :d, :d]
    if isinstance(group, Orthogonal | SpecialOrthogonal):
        return g
    if isinstance(group, Translations):
        eye = torch.eye(group.spec.dim, dtype=g.dtype, device=g.device)
        return eye.expand(g.shape[:-1] + eye.shape)
    raise ValueError(f"no linear part known for {type(group).__name__}; expected E(m), SE(m), O(m), SO(m) or translations")


def _rank(group: Group) -> int:
    for i, cls in enumerate(_CHAIN):
        if type(group) is cls and group.spec.action == "vector":
            return i
    raise ValueError(
        f"{group!r}: kernels can only be combined when each is equivariant under translations, SE(m) or E(m) acting on vectors"
    )


def common_group(groups: list[Group]) -> Group:
    """The smallest group of the chain translations < SE(m) < E(m) among ``groups`` (all on the same R^m)."""
    dims = {g.spec.dim for g in groups}
    if len(dims) != 1:
        raise ValueError(f"kernels act on inputs of different dimensions {sorted(dims)}")
    return min(groups, key=_rank)


def embed(g: Tensor, source: Group, target: Group) -> Tensor:
    """Elements of ``source`` (a subgroup of ``target`` in the chain) as elements of ``target``."""
    if _rank(source) > _rank(target):
        raise ValueError(f"{source!r} is not a subgroup of {target!r}")
    if type(source) is type(target) or not isinstance(source, Translations):
        return g  # SE(m) -> E(m): same homogeneous matrices
    d = source.spec.dim
    out = torch.eye(d + 1, dtype=g.dtype, device=g.device).expand(g.shape[:-1] + (d + 1, d + 1)).clone()
    out[..., :d, d] = g
    return out
