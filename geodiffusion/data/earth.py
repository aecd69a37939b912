r"""Earth-science events on :math:`S^2` (volcano, earthquake, flood, fire), shipped with the package.

A location (latitude :math:`\phi`, longitude :math:`\lambda`) is the unit vector
:math:`x = (\cos\phi\cos\lambda,\ \cos\phi\sin\lambda,\ \sin\phi)`. Provenance, licences and checksums are
in ``geodiffusion/data/files/earth/PROVENANCE.md``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
from importlib import resources
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["EARTH_DATASETS", "EarthName", "load_events", "lat_lon_to_sphere", "sphere_to_lat_lon", "random_split", "load_earth"]

EarthName = Literal["volcano", "earthquake", "flood", "fire"]

# name -> (rows, SHA-256 of the uncompressed CSV)
EARTH_DATASETS: dict[str, tuple[int, str]] = {
    "volcano": (827, "38fd467d104fb0693aa558c13b89388d8fc11e9e940fa75c4a3b969cb82ec117"),
    "earthquake": (6120, "a633e81ba576bf8fbccd1bfec8ca454b02bd5be96472a917e731bf5732993a5c"),
    "flood": (4875, "aa51e9db41c739291bc8f66500730a507943f21dbca2430ea0c3779f3b628153"),
    "fire": (12809, "a39988c7ed48bfbf4d1b3e1ba440f7425fb042ad5899fef299599b0e26c97e0a"),
}


def load_events(name: str) -> np.ndarray:
    """The ``[N, 2]`` (latitude, longitude) table of dataset ``name`` in degrees, checksum-verified."""
    if name not in EARTH_DATASETS:
        raise ValueError(f"name: expected one of {sorted(EARTH_DATASETS)}, got {name!r}")
    rows, digest = EARTH_DATASETS[name]
    raw = gzip.decompress(resources.files("geodiffusion.data").joinpath(f"files/earth/{name}.csv.gz").read_bytes())
    if hashlib.sha256(raw).hexdigest() != digest:
        raise RuntimeError(f"{name}.csv.gz: checksum mismatch, the packaged data are corrupted")
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    assert table.shape == (rows, 2), table.shape  # guaranteed by the checksum
    return table


def lat_lon_to_sphere(lat: Tensor, lon: Tensor) -> Tensor:
    r"""Degrees to unit vectors :math:`(\cos\phi\cos\lambda, \cos\phi\sin\lambda, \sin\phi)`, shape ``[..., 3]``."""
    phi, lam = torch.deg2rad(lat), torch.deg2rad(lon)
    return torch.stack([torch.cos(phi) * torch.cos(lam), torch.cos(phi) * torch.sin(lam), torch.sin(phi)], -1)


def sphere_to_lat_lon(x: Tensor) -> tuple[Tensor, Tensor]:
    """Unit vectors ``[..., 3]`` to (latitude, longitude) in degrees, the inverse of :func:`lat_lon_to_sphere`."""
    lat = torch.rad2deg(torch.asin(x[..., 2].clamp(-1.0, 1.0)))
    lon = torch.rad2deg(torch.atan2(x[..., 1], x[..., 0]))
    return lat, lon


def random_split(n: int, seed: int, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> tuple[Tensor, Tensor, Tensor]:
    """Disjoint train/val/test index sets covering ``range(n)``, a seeded random permutation cut at ``fractions``."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions: expected three non-negative numbers summing to 1, got {fractions}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def load_earth(name: str, seed: int = 0, *, dtype: torch.dtype = torch.float64, device=None) -> tuple[Tensor, Tensor, Tensor]:
    """Train/val/test points ``[N_k, 3]`` on :math:`S^2` of dataset ``name``: the literature's random 80/10/10 split."""
    table = torch.from_numpy(load_events(name))
    x = lat_lon_to_sphere(table[:, 0], table[:, 1]).to(dtype=dtype, device=device)
    return tuple(x[idx.to(x.device)] for idx in random_split(len(x), seed))  # type: ignore[return-value]
