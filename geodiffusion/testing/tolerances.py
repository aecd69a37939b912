"""One table of tolerances, keyed by dtype: no tolerance literals scattered in tests."""

from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "tolerance"]

TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {
        "exact": 2e-5,  # identities that hold exactly in real arithmetic (group axioms, exp/log)
        "equivariance": 1e-5,  # s(g x) vs g s(x), relative to the output scale
        "autograd": 1e-4,  # closed-form derivative vs autograd
        "pde": 5e-3,  # PDE residuals built from second derivatives
    },
    torch.float64: {
        "exact": 1e-10,
        "equivariance": 1e-10,
        "autograd": 1e-8,
        "pde": 1e-6,
    },
}


def tolerance(dtype: torch.dtype, kind: str) -> float:
    """The tolerance of ``kind`` for ``dtype`` (a complex dtype takes its real precision's)."""
    dtype = dtype.to_real() if dtype.is_complex else dtype
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerances for dtype {dtype}; expected one of {list(TOLERANCES)}")
    return TOLERANCES[dtype][kind]
