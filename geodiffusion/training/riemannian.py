r"""Riemannian denoising score matching with the exact heat-kernel target (De Bortoli et al., 2022; Lou et al.,
2310.20030)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from geodiffusion._validation import check_tensor
from geodiffusion.processes.base import Process, ScoreFn
from geodiffusion.training.losses import WEIGHTINGS, _check_weighting_and_eps, _noised_prediction, _weight

__all__ = ["riemannian_dsm_loss", "RiemannianWeighting", "RIEMANNIAN_WEIGHTINGS"]

RiemannianWeighting = Literal["sigma2", "likelihood", "none"]
RIEMANNIAN_WEIGHTINGS: tuple[str, ...] = WEIGHTINGS


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
    _check_weighting_and_eps(
        process,
        weighting,
        eps,
        sigma2_missing=None if callable(getattr(process, "sigma", None)) else "a process with sigma(t)",
        eps_positive=True,
    )
    manifold.check_point("x0", x0)
    process.check_inputs(x0, eps, name="x0")
    if x0.dim() != len(manifold.point_shape) + 1 or x0.shape[0] == 0:
        raise ValueError(
            f"x0: expected a non-empty batch of points [B, {', '.join(map(str, manifold.point_shape))}], got {list(x0.shape)}"
        )
    off = ~manifold.belongs(x0, atol=max(1e-6, 1e3 * torch.finfo(x0.real.dtype).eps))
    if bool(off.any()):
        raise ValueError(f"x0: {int(off.sum())} of {len(x0)} points are not on {type(manifold).__name__}")

    t, x_t, target, prediction = _noised_prediction(model, process, x0, eps=eps, generator=generator, context=context)
    diff = manifold.proj(x_t, prediction) - target
    per_sample = manifold.inner(x_t, diff, diff)
    lam = process.sigma(t) ** 2 if weighting == "sigma2" else _weight(process, t, weighting)
    return (lam.to(per_sample.dtype) * per_sample).mean()
