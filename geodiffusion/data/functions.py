r"""Generated function datasets: finite marginals :math:`(x_i, y_i)_{i \le N}` of random functions, drawn from seeds.

Scalar functions on :math:`\mathbb{R}` (the 1-d regression benchmarks of neural diffusion processes,
Dutordoir et al., 2023): Gaussian processes with squared-exponential, Matérn-5/2 and weakly periodic
(SE :math:`\times` periodic) kernels, and two non-Gaussian families, sawtooth :math:`y = (\omega x + \phi) \bmod 1`
and step :math:`y = a\,\mathrm{sign}(x - s)`. Vector fields on :math:`\mathbb{R}^2` (GeomNDP, Sec. 5): curl-free and
divergence-free GP fields. Tracks :math:`[0, 1] \to S^2` (GeomNDP, Sec. 5.3, manifold codomains): noisy
great-circle arcs. Every observation carries Gaussian noise of std ``noise``; for the GP families the exact
law of the data is the GP with kernel :func:`data_kernel` (signal plus white noise).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion.kernels.base import Kernel
from geodiffusion.registry import build

__all__ = [
    "SCALAR_FUNCTIONS",
    "VECTOR_FIELDS",
    "ScalarFunction",
    "VectorField",
    "data_kernel",
    "sample_functions",
    "sample_vector_fields",
    "sample_sphere_tracks",
]

ScalarFunction = Literal["se", "matern52", "weakly_periodic", "sawtooth", "step"]
VectorField = Literal["curl_free", "divergence_free"]
SCALAR_FUNCTIONS: tuple[str, ...] = ("se", "matern52", "weakly_periodic", "sawtooth", "step")
VECTOR_FIELDS: tuple[str, ...] = ("curl_free", "divergence_free")

_SIGNAL_KERNELS = {
    "se": {"kind": "squared_exponential", "lengthscale": 0.25},
    "matern52": {"kind": "matern52", "lengthscale": 0.25},
    "weakly_periodic": {
        "kind": "kernel_product",
        "kernels": [{"kind": "squared_exponential", "lengthscale": 1.0}, {"kind": "periodic", "period": 0.5, "lengthscale": 0.5}],
    },
    "curl_free": {"kind": "curl_free", "dim": 2, "lengthscale": 1.0},
    "divergence_free": {"kind": "divergence_free", "dim": 2, "lengthscale": 1.0},
}


def data_kernel(name: str, noise: float = 0.05) -> Kernel | None:
    r"""The kernel of the exact law of dataset ``name``, :math:`k + \text{noise}^2 \delta` (None: not a GP)."""
    if name in ("sawtooth", "step"):
        return None
    if name not in _SIGNAL_KERNELS:
        raise ValueError(f"name: expected one of {SCALAR_FUNCTIONS + VECTOR_FIELDS}, got {name!r}")
    signal = _SIGNAL_KERNELS[name]
    if noise <= 0:
        return build(signal, Kernel)
    d = 2 if name in VECTOR_FIELDS else 1
    white = {"kind": "white_noise", "variance": noise**2, "input_dim": d, "output_dim": d}
    return build({"kind": "kernel_sum", "kernels": [signal, white]}, Kernel)


def _gp_values(kernel: Kernel, inputs: Tensor, generator: torch.Generator | None) -> Tensor:
    gram = kernel.gram(inputs.to(torch.float64))
    # a tiny jitter only for noise-free kernels; with noise the Gram is well conditioned
    chol = torch.linalg.cholesky(gram + 1e-9 * torch.eye(gram.shape[-1], dtype=torch.float64))
    xi = randn(gram.shape[:-1] + (1,), generator, dtype=torch.float64)
    flat = (chol @ xi).squeeze(-1)
    return flat.reshape(inputs.shape[:-1] + (kernel.output_dim,))


def sample_functions(
    name: ScalarFunction,
    n_functions: int,
    n_points: int,
    *,
    low: float = -2.0,
    high: float = 2.0,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""``n_functions`` functions of family ``name`` observed at ``n_points`` inputs uniform in ``[low, high]``:
    inputs ``[M, N, 1]`` and noisy values ``[M, N, 1]`` (computed in float64, returned in ``dtype``).

    Sawtooth: :math:`\omega \sim U[3, 5]`, :math:`\phi \sim U[0, 1]`, a random sign of slope,
    :math:`y = \pm((\omega x + \phi) \bmod 1 - \tfrac12)`; step: :math:`s \sim U[\text{low}, \text{high}]`,
    :math:`a = \pm 1`, :math:`y = a\,\mathrm{sign}(x - s)`."""
    if name not in SCALAR_FUNCTIONS:
        raise ValueError(f"name: expected one of {SCALAR_FUNCTIONS}, got {name!r}")
    if n_functions < 1 or n_points < 1:
        raise ValueError(f"n_functions and n_points: expected positive integers, got {n_functions} and {n_points}")
    if not high > low:
        raise ValueError(f"high ({high}) must exceed low ({low})")
    if noise < 0:
        raise ValueError(f"noise: expected a non-negative std, got {noise}")
    x = low + (high - low) * rand((n_functions, n_points, 1), generator, dtype=torch.float64)
    if name in _SIGNAL_KERNELS:
        y = _gp_values(data_kernel(name, noise), x, generator)
    else:
        u = rand((n_functions, 3, 1, 1), generator, dtype=torch.float64)
        sign = torch.where(u[:, 2] < 0.5, -1.0, 1.0).to(torch.float64)
        if name == "sawtooth":
            omega, phi = 3.0 + 2.0 * u[:, 0], u[:, 1]
            y = sign * (torch.remainder(omega * x + phi, 1.0) - 0.5)
        else:
            s = low + (high - low) * u[:, 0]
            y = sign * torch.sign(x - s)
        y = y + noise * randn(y.shape, generator, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def sample_vector_fields(
    name: VectorField,
    n_functions: int,
    n_points: int,
    *,
    radius: float = 3.0,
    noise: float = 0.05,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""``n_functions`` GP vector fields :math:`\mathbb{R}^2 \to \mathbb{R}^2` (curl- or divergence-free kernel plus
    noise) at ``n_points`` inputs uniform in the disc of ``radius`` (a rotation-invariant input law):
    inputs and values ``[M, N, 2]``."""
    if name not in VECTOR_FIELDS:
        raise ValueError(f"name: expected one of {VECTOR_FIELDS}, got {name!r}")
    if n_functions < 1 or n_points < 1:
        raise ValueError(f"n_functions and n_points: expected positive integers, got {n_functions} and {n_points}")
    u = rand((n_functions, n_points, 2), generator, dtype=torch.float64)
    r, theta = radius * torch.sqrt(u[..., 0]), 2 * math.pi * u[..., 1]
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1)
    y = _gp_values(data_kernel(name, noise), x, generator)
    return x.to(dtype), y.to(dtype)


def sample_sphere_tracks(
    n_functions: int,
    n_points: int,
    *,
    speed: tuple[float, float] = (0.5, 1.5),
    noise: float = 0.02,
    grid: bool = False,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    r"""Tracks :math:`y: [0, 1] \to S^2`, :math:`y(x) = \exp_{y'}(\text{noise}\, P_{y'}\xi)` around the great-circle
    arc :math:`y'(x) = \cos(\omega x)\,p + \sin(\omega x)\,v` with :math:`p` uniform on :math:`S^2`, :math:`v` a
    uniform unit tangent at :math:`p` and :math:`\omega \sim U[\text{speed}]` (radians per unit input). Inputs
    ``[M, N, 1]`` uniform in :math:`[0, 1]` (or the regular grid if ``grid``), values ``[M, N, 3]`` on the sphere."""
    from geodiffusion.manifolds.sphere import Sphere

    if n_functions < 1 or n_points < 1:
        raise ValueError(f"n_functions and n_points: expected positive integers, got {n_functions} and {n_points}")
    if not 0 <= speed[0] <= speed[1]:
        raise ValueError(f"speed: expected 0 <= low <= high, got {speed}")
    if noise < 0:
        raise ValueError(f"noise: expected a non-negative std, got {noise}")
    sphere = Sphere(dim=2)
    p = sphere.random_point(n_functions, generator, dtype=torch.float64)
    v = sphere.proj(p, randn((n_functions, 3), generator, dtype=torch.float64))
    v = v / v.norm(dim=-1, keepdim=True)
    omega = speed[0] + (speed[1] - speed[0]) * rand((n_functions, 1, 1), generator, dtype=torch.float64)
    if grid:
        x = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64).reshape(1, n_points, 1).expand(n_functions, n_points, 1)
    else:
        x = rand((n_functions, n_points, 1), generator, dtype=torch.float64)
    y = torch.cos(omega * x) * p[:, None] + torch.sin(omega * x) * v[:, None]
    y = sphere.exp(y, sphere.proj(y, noise * randn(y.shape, generator, dtype=torch.float64)))
    return x.to(dtype), y.to(dtype)
