"""Hypothesis strategies for seeds, group elements, points, times and batch shapes.

The checks in :mod:`geodiffusion.testing` are deterministic functions of a seed;
these strategies let hypothesis search over seeds, elements and shapes, for
built-in and user classes alike, because every Group and Manifold can sample itself.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from geodiffusion.groups.base import Group
from geodiffusion.manifolds.base import Manifold

__all__ = ["seeds", "generators", "group_elements", "group_points", "manifold_points", "times", "batch_shapes", "dtypes"]


def seeds() -> st.SearchStrategy[int]:
    return st.integers(min_value=0, max_value=2**31 - 1)


def generators() -> st.SearchStrategy[torch.Generator]:
    return seeds().map(lambda s: torch.Generator().manual_seed(s))


def dtypes() -> st.SearchStrategy[torch.dtype]:
    return st.sampled_from([torch.float32, torch.float64])


def group_elements(group: Group, n: int = 4, dtype: torch.dtype = torch.float64) -> st.SearchStrategy:
    """``n`` elements of ``group`` (finite groups: any element, by index)."""
    if group.finite and group.order <= 10_000:
        elements = group.elements()
        return st.lists(st.integers(0, group.order - 1), min_size=n, max_size=n).map(lambda idx: elements[torch.tensor(idx)])
    return seeds().map(lambda s: group.sample(n, torch.Generator().manual_seed(s), dtype=dtype))


def group_points(group: Group, n: int = 4, dtype: torch.dtype = torch.float64) -> st.SearchStrategy:
    """``n`` points of the space ``group`` acts on."""
    return seeds().map(lambda s: group.random_points(n, torch.Generator().manual_seed(s), dtype=dtype))


def manifold_points(manifold: Manifold, n: int = 4, dtype: torch.dtype = torch.float64) -> st.SearchStrategy:
    """``n`` points of ``manifold`` from its reference law."""
    return seeds().map(lambda s: manifold.random_point(n, torch.Generator().manual_seed(s), dtype=dtype))


def times(T: float = 1.0, eps: float = 1e-3) -> st.SearchStrategy[float]:
    """Diffusion times in ``[eps, T]``."""
    return st.floats(min_value=eps, max_value=T, allow_nan=False, allow_infinity=False)


def batch_shapes(max_dims: int = 2, max_side: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """Leading batch shapes, including the scalar batch ``()``."""
    return st.lists(st.integers(1, max_side), min_size=0, max_size=max_dims).map(tuple)
