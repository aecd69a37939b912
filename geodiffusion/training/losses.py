"""Denoising score matching (Vincent, 2011; Song et al., 2021)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor

from geodiffusion._random import rand
from geodiffusion._validation import check_tensor
from geodiffusion.processes.base import LinearGaussianProcess, Process, ScoreFn

__all__ = ["dsm_loss", "Weighting", "WEIGHTINGS"]

Weighting = Literal["sigma2", "likelihood", "none"]
WEIGHTINGS: tuple[str, ...] = ("sigma2", "likelihood", "none")


def _weight(process: Process, t: Tensor, weighting: str) -> Tensor:
    if weighting == "sigma2":
        return process.std(t) ** 2
    if weighting == "likelihood":
        return process.diffusion(t) ** 2
    return torch.ones_like(t)


def _check_weighting_and_eps(
    process: Process, weighting: str, eps: float, *, sigma2_missing: str | None, eps_positive: bool
) -> None:
    """Checks shared by the DSM losses: ``weighting`` is one of :data:`WEIGHTINGS` (``"sigma2"`` only when
    ``sigma2_missing`` is None, else it names what the process lacks) and ``eps`` lies in ``[0, T)``, or ``(0, T)``
    with ``eps_positive`` (where the marginal at ``t = 0`` is a point mass)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {list(WEIGHTINGS)}, got {weighting!r}")
    if weighting == "sigma2" and sigma2_missing is not None:
        raise ValueError(
            f"weighting='sigma2' needs {sigma2_missing}, got {type(process).__name__}; use weighting='likelihood' or 'none'"
        )
    lower_ok = eps > 0.0 if eps_positive else eps >= 0.0  # False for a NaN eps too
    if not (lower_ok and eps < process.T):
        bounds = f"(0, T={process.T}) (the marginal at t = 0 is a point mass)" if eps_positive else f"[0, T={process.T})"
        raise ValueError(f"eps: expected a value in {bounds}, got {eps}")


def _noised_prediction(
    model: ScoreFn,
    process: Process,
    x0: Tensor,
    *,
    eps: float,
    generator: torch.Generator | None,
    context: Mapping[str, Any] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""One DSM draw per sample: :math:`t \sim U[\varepsilon, T]`, :math:`x_t \sim p_{t|0}(\cdot \mid x_0)`, the target
    :math:`\nabla_{x_t} \log p_{t|0}(x_t \mid x_0)` and the model's :math:`s_\theta(t, x_t)`, returned as
    ``(t, x_t, target, prediction)``; the model's output must have the shape of ``x_t``."""
    # real dtype: complex points (SU(n)) still get real times
    t = eps + (process.T - eps) * rand((x0.shape[0],), generator, dtype=x0.real.dtype, device=x0.device)
    marginal = process.marginal(x0, t)
    x_t = marginal.sample(generator)
    target = marginal.score(x_t)
    prediction = model(t, x_t, **(dict(context) if context else {}))
    if not isinstance(prediction, Tensor) or prediction.shape != x_t.shape:
        got = list(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
        raise ValueError(f"model output: expected the shape of x {list(x_t.shape)}, got {got}")
    return t, x_t, target, prediction


def dsm_loss(
    model: ScoreFn,
    process: Process,
    x0: Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: Weighting = "sigma2",
    eps: float = 1e-3,
    context: Mapping[str, Any] | None = None,
) -> Tensor:
    r"""Denoising score matching loss
    :math:`\mathbb{E}_{t \sim U[\varepsilon, T]}\,\mathbb{E}_{x_t \sim p_{t|0}(\cdot\mid x_0)}
    \lambda(t)\,\|s_\theta(t, x_t) - \nabla_{x_t} \log p_{t|0}(x_t \mid x_0)\|^2`,
    one :math:`t` per sample, the squared norm summed over the event axes and averaged over the rest.

    Weightings :math:`\lambda(t)`: ``"sigma2"`` :math:`\sigma_t^2` (needs a :class:`LinearGaussianProcess`;
    equals noise prediction :math:`\|\sigma_t s_\theta + \epsilon\|^2`), ``"likelihood"`` :math:`g(t)^2`
    (Song et al., 2021, bounds the KL), ``"none"`` :math:`1`.

    ``t`` and the noise are drawn from ``generator`` (device-independent values); ``context`` is passed to
    ``model`` as keyword arguments. Returns a scalar, differentiable in the model's parameters.

    Shapes: ``x0 [B, *event_shape]`` (at least ``process.event_ndim`` axes after the batch axis).
    """
    check_tensor("x0", x0)
    _check_weighting_and_eps(
        process,
        weighting,
        eps,
        sigma2_missing=None if isinstance(process, LinearGaussianProcess) else "a LinearGaussianProcess (with std(t))",
        eps_positive=False,
    )
    process.check_inputs(x0, eps, name="x0")
    if x0.dim() < process.event_ndim + 1:
        raise ValueError(f"x0: expected a batch axis before {process.event_ndim} event axes, got shape {list(x0.shape)}")
    batch = x0.shape[0]
    if batch == 0:
        raise ValueError("x0: expected a non-empty batch")

    t, _, target, prediction = _noised_prediction(model, process, x0, eps=eps, generator=generator, context=context)
    squared = (prediction - target) ** 2
    nd = process.event_ndim
    per_event = squared.flatten(squared.dim() - nd).sum(-1) if nd else squared
    lam = _weight(process, t, weighting).to(per_event.dtype)
    # per-sample weights broadcast over any non-event axes between batch and event (e.g. points of a set)
    lam = lam.reshape((batch,) + (1,) * (per_event.dim() - 1))
    return (lam * per_event).mean()
