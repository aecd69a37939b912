"""Seeded random tensors whose values do not depend on the target device."""

from __future__ import annotations

import torch
from torch import Tensor


def randn(shape, generator: torch.Generator | None = None, *, dtype=None, device=None) -> Tensor:
    """Standard normal draws; with a generator, drawn on the generator's device then moved."""
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def rand(shape, generator: torch.Generator | None = None, *, dtype=None, device=None) -> Tensor:
    """Uniform [0, 1) draws, device-independent under a generator."""
    if generator is None:
        return torch.rand(shape, dtype=dtype, device=device)
    return torch.rand(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def seed_from(generator: torch.Generator | None) -> int:
    """A 63-bit seed drawn from ``generator`` (fresh entropy when None), for libraries taking ints."""
    return int(torch.randint(0, 2**62, (), generator=generator).item())


def random_permutations(n: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` uniform permutations of ``range(k)``, ``[n, k]``."""
    return torch.argsort(rand((n, k), generator, dtype=torch.float64), dim=-1)
