r"""Riemannian denoising score matching with the exact heat-kernel target (De Bortoli et al., 2022; Lou et al.,
2310.20030)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from geodiffusion._random import rand
from geodiffusion._validation import check_tensor
from geodiffusion.processes.base import Process, ScoreFn

__all__ = ["riemannian_dsm_loss", "RiemannianWeighting", "RIEMANNIAN_WEIGHTINGS"]

RiemannianWeighting = Literal["sigma2", "likelihood", "none"]
RIEMANNIAN_WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood", "none")


def riemannian_dsm_loss(
    model: ScoreFn,
    process: Process,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: RiemannianWeighting = "sigma2",
    eps: float = 1e-3,
    context: Mapping[str, Any] | None = None,
) -> Tensor:
    r"""Riemannian denoising score matching
    :math:`\mathbb{E}_{t \sim U[\varepsilon, T]}\,\mathbb{E}_{x_t \sim p_{\tau(t)}(x_0, \cdot)}\,
    \lambda(t)\,\|s_\theta(t, x_t) - \nabla_{x_t} \log p_{\tau(t)}(x_0, x_t)\|^2_{x_t}`
    for a process on a manifold (``process.manifold``), e.g. :class:`~geodiffusion.processes.BrownianProcess`: the
    marginal's ``sample`` and ``score`` are the heat kernel's exact draw and score, the norm is the Riemannian metric
    ``manifold.inner`` at :math:`x_t`, and only the tangent part :math:`P_{x_t} s_\theta` of the model's output counts.
    One :math:`t` per sample; the result is the batch mean, differentiable in the model's parameters.

    Weightings :math:`\lambda(t)`: ``"sigma2"`` :math:`\sigma_t^2` (``process.sigma(t)``, :math:`\tau(t)` for Brownian
    motion: the target's variance is :math:`\sim n/\sigma_t^2`, so every :math:`t` contributes O(n)),
    ``"likelihood"`` :math:`g(t)^2 = \beta(t)` (bounds the KL), ``"none"`` :math:`1`.
    Its minimum over all functions is attained by the marginal score :math:`\nabla \log p_t`, at the value
    :math:`\mathbb E\,\lambda\|\nabla \log p_{t|0} - \nabla \log p_t\|^2` (zero for data at a single point).

    Shapes: ``x0 [B, *point_shape]``.
    """
    check_tensor("x0", x0)
    manifold = getattr(process, "manifold", None)
    if manifold is None:
        raise ValueError(f"riemannian_dsm_loss needs a process on a manifold, got {type(process).__name__}; use dsm_loss on R^d")
    if weighting not in RIEMANNIAN_WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {list(RIEMANNIAN_WEIGHTINGS)}, got {weighting!r}")
    if weighting == "sigma2" and not callable(getattr(process, "sigma", None)):
        raise ValueError(f"weighting='sigma2' needs a process with sigma(t), got {type(process).__name__}")
    if not 0.0 < eps < process.T:
        raise ValueError(f"eps: expected a value in (0, T={process.T}) (the marginal at t = 0 is a point mass), got {eps}")
    manifold.check_point("x0", x0)
    process.check_inputs(x0, eps, name="x0")
    if x0.dim() != len(manifold.point_shape) + 1 or x0.shape[0] == 0:
        raise ValueError(
            f"x0: expected a non-empty batch of points [B, {', '.join(map(str, manifold.point_shape))}], got {list(x0.shape)}"
        )
    off = ~manifold.belongs(x0, atol=max(1e-6, 1e3 * torch.finfo(x0.real.dtype).eps))
    if bool(off.any()):
        raise ValueError(f"x0: {int(off.sum())} of {len(x0)} points are not on {type(manifold).__name__}")

    batch = x0.shape[0]
    t = eps + (process.T - eps) * rand((batch,), generator, dtype=x0.real.dtype, device=x0.device)
    marginal = process.marginal(x0, t)
    x_t = marginal.sample(generator)
    target = marginal.score(x_t)
    prediction = model(t, x_t, **(dict(context) if context else {}))
    if not isinstance(prediction, Tensor) or prediction.shape != x_t.shape:
        got = list(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
        raise ValueError(f"model output: expected the shape of x {list(x_t.shape)}, got {got}")
    diff = manifold.proj(x_t, prediction) - target
    per_sample = manifold.inner(x_t, diff, diff)
    if weighting == "sigma2":
        lam = process.sigma(t) ** 2
    elif weighting == "likelihood":
        lam = process.diffusion(t) ** 2
    else:
        lam = torch.ones_like(t)
    return (lam.to(per_sample.dtype) * per_sample).mean()
