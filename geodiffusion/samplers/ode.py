"""Probability-flow ODE: a deterministic sampler and exact likelihoods (torchdiffeq)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor
from torchdiffeq import odeint

from geodiffusion._random import rand
from geodiffusion.processes.base import Process, ScoreFn
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.base import Sampler
from geodiffusion.spec import Spec

__all__ = ["ProbabilityFlowSampler", "ODEOptions", "log_likelihood", "divergence"]

ODEMethod = Literal["dopri5", "dopri8", "bosh3", "adaptive_heun", "euler", "midpoint", "rk4", "heun3"]
ADAPTIVE_METHODS = frozenset({"dopri5", "dopri8", "bosh3", "adaptive_heun"})


class ODEOptions(Spec):
    """How the probability-flow ODE is integrated: adaptive (rtol/atol) or fixed-step (steps)."""

    method: ODEMethod = Field("dopri5", description="torchdiffeq solver; dopri5/dopri8/bosh3/adaptive_heun are adaptive")
    steps: int = Field(100, ge=1, description="number of steps for fixed-step methods")
    rtol: float = Field(1e-5, gt=0, description="relative tolerance of adaptive methods")
    atol: float = Field(1e-5, gt=0, description="absolute tolerance of adaptive methods")
    eps: float = Field(1e-3, ge=0, description="the end of the flow near the data, t = eps")

    def odeint_kwargs(self, span: float) -> dict:
        if self.method in ADAPTIVE_METHODS:
            return {"method": self.method, "rtol": self.rtol, "atol": self.atol}
        return {"method": self.method, "options": {"step_size": span / self.steps}}


def _require_euclidean(process: Process, caller: str) -> None:
    """Refuse a process on a manifold: the Euclidean dynamics would step off it and mis-measure densities."""
    if process.manifold is not None:
        raise ValueError(
            f"{caller} integrates the reverse dynamics in flat ambient coordinates, but {type(process).__name__} lives on "
            f"{type(process.manifold).__name__} (process.manifold is not None); use the Riemannian samplers: "
            "geodesic_euler_maruyama (GeodesicEulerMaruyama), riemannian_probability_flow (RiemannianProbabilityFlow) "
            "or riemannian_log_likelihood"
        )


def _check_eps(eps: float, process: Process) -> None:
    if not 0 <= eps < process.T:
        raise ValueError(f"eps: expected a value in [0, T={process.T}), got {eps}")


def _within(t: Tensor, process: Process, eps: float) -> Tensor:
    # Adaptive RK solvers step past the last output time and interpolate back;
    # the vector field is continued as constant beyond [eps, T] so that overshoot
    # never evaluates sqrt(beta(t < 0)) or a score preconditioned by 1/sigma_0.
    return t.clamp(eps, process.T)


class ProbabilityFlowSampler(Sampler, kind="probability_flow"):
    r"""Integrates :math:`\dot x = f(x, t) - \tfrac12 g(t)^2 s(t, x)` from :math:`T` to
    :math:`\varepsilon` with torchdiffeq; the map from :math:`x_T` to :math:`x_\varepsilon` is deterministic."""

    class Spec(ODEOptions):
        """Probability-flow ODE sampler."""

    def sample(self, score, process, shape, *, generator=None, device=None, dtype=None, x_T=None, progress=False) -> Tensor:
        s = self.spec
        _require_euclidean(process, "probability_flow")
        _check_eps(s.eps, process)
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        counted = CountingScore(score, progress, None, f"probability flow ({s.method})")
        batch = x.shape[0]

        def velocity(t: Tensor, y: Tensor) -> Tensor:
            tb = _within(t, process, s.eps).to(y.dtype).expand(batch)
            return process.probability_flow_drift(y, tb, counted(tb, y))

        ts = torch.tensor([process.T, s.eps], dtype=x.dtype, device=x.device)
        try:
            with torch.no_grad():
                return odeint(velocity, x, ts, **s.odeint_kwargs(process.T - s.eps))[-1]
        finally:
            counted.close()


def divergence(v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    r""":math:`\nabla \cdot v(x)` per sample: exact (one backward pass per dimension) when
    ``probes`` is None, else Hutchinson's :math:`\mathbb{E}_z[z^\top (\partial v/\partial x) z]` with the given probes."""
    if probes is not None:
        (vjp,) = torch.autograd.grad(v, x, probes, create_graph=False)
        return (vjp * probes).flatten(1).sum(-1)
    flat_v = v.flatten(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat_v.shape[1]):
        (grad,) = torch.autograd.grad(flat_v[:, i].sum(), x, retain_graph=True)
        total = total + grad.flatten(1)[:, i]
    return total


def log_likelihood(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    *,
    options: ODEOptions | None = None,
    estimator: Literal["auto", "exact", "hutchinson"] = "auto",
    exact_max_dim: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Model log-density :math:`\log p_\varepsilon(x)` in nats per sample, by the probability flow:
    :math:`\log p_\varepsilon(x_\varepsilon) = \log \pi(x_T) + \int_\varepsilon^T \nabla\cdot \tilde f(x_t, t)\,dt`.

    The divergence is exact up to ``exact_max_dim`` dimensions (``"auto"``), else Hutchinson's
    estimator with one Rademacher probe per sample held fixed along the path (FFJORD).
    """
    options = options or ODEOptions()
    _require_euclidean(process, "log_likelihood")
    _check_eps(options.eps, process)
    process.check_inputs(x, options.eps)
    batch = x.shape[0]
    dim = x[0].numel()
    if estimator == "auto":
        estimator = "exact" if dim <= exact_max_dim else "hutchinson"
    if estimator not in ("exact", "hutchinson"):
        raise ValueError(f"estimator: expected 'auto', 'exact' or 'hutchinson', got {estimator!r}")
    probes = None
    if estimator == "hutchinson":
        probes = rand(x.shape, generator, dtype=x.dtype, device=x.device).lt(0.5).to(x.dtype) * 2 - 1

    def augmented(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0]
        tb = _within(t, process, options.eps).to(y.dtype).expand(batch)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = process.probability_flow_drift(y, tb, score(tb, y))
            div = divergence(v, y, probes)
        return v.detach(), div.detach()

    ts = torch.tensor([options.eps, process.T], dtype=x.dtype, device=x.device)
    zero = torch.zeros(batch, dtype=x.dtype, device=x.device)
    x_T, integral = (s[-1] for s in odeint(augmented, (x, zero), ts, **options.odeint_kwargs(process.T - options.eps)))
    return process.prior(tuple(x.shape), device=x.device, dtype=x.dtype).log_prob(x_T) + integral
