r"""Samplers and likelihoods that stay on the process's manifold.

Every step is "a Euclidean step in the tangent space, then :math:`\exp`" (De Bortoli et al., 2022; Lou et al.,
2310.20030), so each iterate is a point of :math:`M` up to the rounding of ``exp``:

- the reverse SDE by geodesic Euler–Maruyama,
  :math:`x \leftarrow \exp_x\big(P_x[-(f - g^2 s)\,\delta + g\sqrt{\delta}\,z]\big)`, :math:`z \sim \mathcal N(0, I)`;
- the probability-flow ODE :math:`\dot x = V(x, t) = P_x[f - \tfrac12 g^2 s]` by a Runge–Kutta method (any
  torchdiffeq solver) in normal coordinates: on each step :math:`[t_k, t_{k+1}]` the chart
  :math:`u = \log_{x_k} y` turns the flow into the ODE :math:`\dot u = d(\log_{x_k})_y[V(y, t)]`,
  :math:`y = \exp_{x_k} u`, on the vector space :math:`T_{x_k}M`, which keeps the solver's order;
- log-likelihoods :math:`\log p_\varepsilon(x) = \log \pi(x_T) + \int_\varepsilon^T \mathrm{div}_M V(x_t, t)\,dt`
  along the same flow, with the Riemannian divergence :math:`\mathrm{div}_M V = \mathrm{tr}(P_x\,\partial V/\partial x)`
  of an ambient extension of :math:`V` (exact, one backward pass per ambient coordinate, or Hutchinson's
  estimator :math:`\mathbb E_z[(P_x z)^\top \partial V/\partial x\,(P_x z)]`).

A process without a manifold (:math:`\mathbb R^d`) is handled with :math:`P = I`, :math:`\exp_x v = x + v`, where
these reduce to Euler–Maruyama and Runge–Kutta.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor
from torchdiffeq import odeint

from geodiffusion._random import rand, randn
from geodiffusion.manifolds.base import Manifold
from geodiffusion.processes.base import Process, ScoreFn
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.ode import ADAPTIVE_METHODS, ODEMethod
from geodiffusion.spec import Spec

__all__ = [
    "GeodesicEulerMaruyama",
    "RiemannianProbabilityFlow",
    "ChartODEOptions",
    "riemannian_divergence",
    "riemannian_log_likelihood",
]


# --- geometry of a process: its manifold, or R^d ---------------------------------------------------------


def _proj(manifold: Manifold | None, x: Tensor, v: Tensor) -> Tensor:
    return v if manifold is None else manifold.proj(x, v)


def _exp(manifold: Manifold | None, x: Tensor, v: Tensor) -> Tensor:
    return x + v if manifold is None else manifold.exp(x, v)


def _ambient_normal(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal ambient vectors shaped like ``x``; for complex points (SU(n), metric Re tr(u^H v)) the real and
    imaginary parts are independent standard normals: the real coordinates are orthonormal."""
    if x.is_complex():
        parts = randn((2,) + tuple(x.shape), generator, dtype=x.real.dtype, device=x.device)
        return torch.complex(parts[0], parts[1])
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def _real_basis(x: Tensor) -> Tensor:
    """Orthonormal basis ``[K, *x.shape[1:]]`` of the ambient space of one point, as a real vector space (K = numel, or
    2 numel for complex points: 1 and i per entry)."""
    n = x[0].numel()
    eye = torch.eye(n, dtype=x.real.dtype, device=x.device)
    if x.is_complex():
        eye = torch.cat([eye.to(x.dtype), 1j * eye.to(x.dtype)])
    return eye.reshape((-1,) + tuple(x.shape[1:]))


def riemannian_divergence(manifold: Manifold | None, v: Tensor, x: Tensor, probes: Tensor | None = None) -> Tensor:
    r"""Riemannian divergence :math:`\mathrm{div}_M v(x) = \mathrm{tr}(P_x\,\partial v/\partial x)` per sample of a
    tangent field ``v`` computed from ``x`` (which requires grad); :math:`P_x` is ``manifold.proj`` (the identity for
    None). With orthonormal tangent :math:`e_i`, :math:`\mathrm{tr}(P_x J) = \sum_i \langle e_i, J e_i\rangle` involves
    only derivatives along :math:`M`, so any ambient extension of :math:`v` gives the same value, and a constant
    rescaling of the metric leaves it unchanged.

    Exact when ``probes`` is None (one vector-Jacobian product per ambient coordinate); else Hutchinson's
    :math:`(P_x z)^\top (\partial v/\partial x) (P_x z)` with the given ambient probes :math:`z`
    (:math:`\mathbb E[zz^\top] = I`), averaged over probes ``[m, B, *point_shape]`` (or one, ``[B, *point_shape]``).
    Shapes: ``x, v [B, *point_shape]`` -> ``[B]``.
    """
    xd = x.detach()
    # complex points: torch's vector-Jacobian products are the real-linear adjoints for <a, b> = Re sum(conj(a) b)
    if probes is not None:
        probes = probes if probes.dim() > x.dim() else probes.unsqueeze(0)
        total = torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
        for probe in probes:
            z = _proj(manifold, xd, probe)
            (vjp,) = torch.autograd.grad(v, x, z, retain_graph=True)
            total = total + (vjp.conj() * z).real.flatten(1).sum(-1)
        return total / probes.shape[0]
    total = torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
    for e in _real_basis(x):
        # <e, P J e> is the vector-Jacobian product with P e (P is self-adjoint), read off along e
        cotangent = _proj(manifold, xd, e.expand_as(x))
        (row,) = torch.autograd.grad(v, x, cotangent, retain_graph=True)
        total = total + (row.conj() * e).real.flatten(1).sum(-1)
    return total


def _chart_velocity(manifold: Manifold | None, x: Tensor, w: Tensor, y: Tensor, u: Tensor) -> Tensor:
    r""":math:`\dot u = d(\log_x)_y[w]` for the tangent vector :math:`w \in T_yM`, :math:`y = \exp_x u`."""
    return w if manifold is None else manifold.log_differential(x, u, y, w)


def _chart_step(
    manifold: Manifold | None,
    x: Tensor,
    field: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]],
    t0: float,
    t1: float,
    options: ChartODEOptions,
    with_density: bool,
) -> tuple[Tensor, Tensor | None]:
    """One step of the flow from ``t0`` to ``t1`` in normal coordinates at ``x``; returns the new point and, when
    ``with_density``, the integral of the divergence along the step (from ``t0`` to ``t1``)."""

    # complex charts (SU(n)) are integrated in real coordinates
    to_real = torch.view_as_real if x.is_complex() else (lambda a: a)
    from_real = torch.view_as_complex if x.is_complex() else (lambda a: a)

    def velocity(t: Tensor, state):
        u = from_real(state[0] if with_density else state)
        y = _exp(manifold, x, u)
        w, div = field(t, y)
        du = to_real(_chart_velocity(manifold, x, w, y, u))
        return (du, div) if with_density else du

    u0 = to_real(torch.zeros_like(x))
    state0 = (u0, torch.zeros(x.shape[0], dtype=u0.dtype, device=x.device)) if with_density else u0
    ts = torch.tensor([t0, t1], dtype=u0.dtype, device=x.device)
    kwargs: dict = {"method": options.method}
    if options.method in ADAPTIVE_METHODS:
        kwargs.update(rtol=options.rtol, atol=options.atol)
    out = odeint(velocity, state0, ts, **kwargs)
    if with_density:
        u, integral = out[0][-1], out[1][-1]
    else:
        u, integral = out[-1], None
    # a fresh tensor: solver outputs may be views at odd offsets, which view_as_complex rejects
    return _exp(manifold, x, from_real(u.clone())), integral


def _check_eps(eps: float, process: Process) -> None:
    if not 0 <= eps < process.T:
        raise ValueError(f"eps: expected a value in [0, T={process.T}), got {eps}")


def _time_grid(process: Process, eps: float, steps: int) -> list[float]:
    return torch.linspace(process.T, eps, steps + 1, dtype=torch.float64).tolist()


# --- the reverse SDE ---------------------------------------------------------------------------------


def geodesic_reverse_step(process: Process, x: Tensor, t: Tensor, score: Tensor, dt: float, generator) -> Tensor:
    r"""One geodesic Euler–Maruyama step of the reverse SDE from ``t`` to ``t - dt`` given ``score`` :math:`= s(t, x)`:
    :math:`x \leftarrow \exp_x\big(P_x[-(f - g^2 s)\,\delta + g\sqrt\delta\,z]\big)`."""
    z = _ambient_normal(x, generator)
    g = process.diffusion(process.time_like(t, x))
    step = -process.reverse_drift(x, t, score) * dt + g * math.sqrt(dt) * z
    return _exp(process.manifold, x, _proj(process.manifold, x, step))


class GeodesicEulerMaruyama(Sampler, kind="geodesic_euler_maruyama"):
    r"""Reverse SDE :math:`dX = [f - g^2 s(t, X)]\,dt + g\,d\bar B^M` by geodesic Euler–Maruyama from :math:`T` to
    :math:`\varepsilon` with ``steps`` equal steps :math:`\delta`:
    :math:`x \leftarrow \exp_x\big(P_x[-(f - g^2 s)\,\delta + g\sqrt\delta\,z]\big)`, :math:`z \sim \mathcal N(0, I)`
    ambient (so :math:`P_x z` is standard Gaussian in :math:`T_xM`). Weak order 1; on :math:`\mathbb R^d` it is
    Euler–Maruyama. Every iterate lies on the manifold (``exp`` is the only update)."""

    weak_order = 1.0

    class Spec(Spec):
        """Geodesic Euler-Maruyama reverse-SDE sampler on manifolds."""

        steps: int = Field(500, ge=1, description="number of time steps from T to eps")
        eps: float = Field(1e-3, ge=0, description="final time; the reverse dynamics stop at t = eps")

    def sample(self, score, process, shape, *, generator=None, device=None, dtype=None, x_T=None, progress=False) -> Tensor:
        s = self.spec
        _check_eps(s.eps, process)
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        counted = CountingScore(score, progress, s.steps, "geodesic Euler-Maruyama")
        times = _time_grid(process, s.eps, s.steps)
        batch = x.shape[0]
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                dt = t_now - t_next
                t = torch.full((batch,), t_now, dtype=x.real.dtype, device=x.device)
                x = geodesic_reverse_step(process, x, t, counted(t, x), dt, generator)
        finally:
            counted.close()
        return x


# --- the probability-flow ODE --------------------------------------------------------------------------


class ChartODEOptions(Spec):
    r"""How the Riemannian probability-flow ODE is integrated: ``steps`` normal-coordinate charts from :math:`T` to
    :math:`\varepsilon`, each integrated by the torchdiffeq ``method`` (a fixed method takes one step per chart;
    an adaptive one works to ``rtol``/``atol`` within it)."""

    method: ODEMethod = Field(
        "rk4", description="torchdiffeq solver in each chart; dopri5/dopri8/bosh3/adaptive_heun are adaptive"
    )
    steps: int = Field(100, ge=1, description="number of charts (equal time steps) from T to eps")
    rtol: float = Field(1e-6, gt=0, description="relative tolerance of adaptive methods")
    atol: float = Field(1e-6, gt=0, description="absolute tolerance of adaptive methods")
    eps: float = Field(1e-3, ge=0, description="the end of the flow near the data, t = eps")
    hutchinson_probes: int = Field(
        1, ge=1, description="NLL only: Rademacher probes per point of Hutchinson's divergence (variance falls as 1/m)"
    )


def _flow_field(process: Process, score: ScoreFn, batch: int, eps: float):
    manifold = process.manifold

    def field(t: Tensor, y: Tensor) -> Tensor:
        # adaptive solvers may overshoot [eps, T]: continue the field as constant there
        tb = t.clamp(eps, process.T).to(y.real.dtype).expand(batch)
        return _proj(manifold, y, process.probability_flow_drift(y, tb, score(tb, y)))

    return field


class RiemannianProbabilityFlow(Sampler, kind="riemannian_probability_flow"):
    r"""Probability-flow ODE :math:`\dot x = P_x[f - \tfrac12 g^2 s(t, x)]` from :math:`T` to :math:`\varepsilon`,
    integrated in normal coordinates (see :mod:`geodiffusion.samplers.riemannian`): with a fixed method of order
    :math:`p` the global error is :math:`O(\delta^p)`, and each iterate is :math:`\exp_{x_k}(u)`, a point of
    :math:`M`. Deterministic given :math:`x_T`."""

    class Spec(ChartODEOptions):
        """Riemannian probability-flow ODE sampler (normal-coordinate Runge-Kutta)."""

    def sample(self, score, process, shape, *, generator=None, device=None, dtype=None, x_T=None, progress=False) -> Tensor:
        s = self.spec
        _check_eps(s.eps, process)
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        counted = CountingScore(score, progress, None, f"Riemannian probability flow ({s.method})")
        field = _flow_field(process, counted, x.shape[0], s.eps)
        times = _time_grid(process, s.eps, s.steps)
        try:
            with torch.no_grad():
                for t0, t1 in zip(times[:-1], times[1:], strict=True):
                    x, _ = _chart_step(process.manifold, x, lambda t, y: (field(t, y), None), t0, t1, s, False)
        finally:
            counted.close()
        return x


def riemannian_log_likelihood(
    score: ScoreFn,
    process: Process,
    x: Tensor,
    *,
    options: ChartODEOptions | None = None,
    estimator: Literal["auto", "exact", "hutchinson"] = "auto",
    exact_max_dim: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Model log-density :math:`\log p_\varepsilon(x)` (w.r.t. the Riemannian volume) in nats per sample, by the
    Riemannian probability flow from :math:`\varepsilon` to :math:`T`:
    :math:`\log p_\varepsilon(x_\varepsilon) = \log \pi(x_T) + \int_\varepsilon^T \mathrm{div}_M V(x_t, t)\,dt`.

    The divergence (:func:`riemannian_divergence`) is exact while the ambient dimension is at most
    ``exact_max_dim`` (``"auto"``), else Hutchinson's estimator with ``options.hutchinson_probes`` Rademacher probes
    per sample, held fixed along the path and projected onto each tangent space. Shapes: ``x [B, *point_shape]`` ->
    ``[B]``.
    """
    options = options or ChartODEOptions()
    _check_eps(options.eps, process)
    process.check_inputs(x, options.eps)
    manifold = process.manifold
    if manifold is not None:
        manifold.check_point("x", x)
        off = ~manifold.belongs(x, atol=max(1e-6, 1e3 * torch.finfo(x.real.dtype).eps))
        if bool(off.any()):
            raise ValueError(f"x: {int(off.sum())} of {len(x)} points are not on {type(manifold).__name__}")
    if estimator == "auto":
        estimator = "exact" if x[0].numel() <= exact_max_dim else "hutchinson"
    if estimator not in ("exact", "hutchinson"):
        raise ValueError(f"estimator: expected 'auto', 'exact' or 'hutchinson', got {estimator!r}")
    probes = None
    if estimator == "hutchinson":
        m = options.hutchinson_probes
        # one draw of 2m probes' worth of signs, so that m = 1 reproduces the single-probe stream
        signs = rand((2 * m,) + tuple(x.shape), generator, dtype=x.real.dtype, device=x.device).lt(0.5).to(x.real.dtype) * 2 - 1
        probes = torch.complex(signs[:m], signs[m:]) if x.is_complex() else signs[:m]
    flow = _flow_field(process, score, x.shape[0], options.eps)

    def field(t: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            w = flow(t, y)
            div = riemannian_divergence(manifold, w, y, probes)
        return w.detach(), div.detach()

    times = _time_grid(process, options.eps, options.steps)[::-1]
    total = torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)
    for t0, t1 in zip(times[:-1], times[1:], strict=True):
        x, integral = _chart_step(manifold, x, field, t0, t1, options, True)
        total = total + integral
    return process.prior(tuple(x.shape), device=x.device, dtype=x.dtype).log_prob(x) + total
