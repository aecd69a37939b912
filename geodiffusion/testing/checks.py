"""Property checks for every abstraction: ``check_*`` raise, ``*_errors`` return the numbers.

Each check is a deterministic function of ``seed``; it computes identities that
hold exactly in real arithmetic (or statistically, with a stated z-score) and
compares the worst violation with the dtype's tolerance from
:mod:`geodiffusion.testing.tolerances`. Errors are measured in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.heat.base import HeatKernel
from geodiffusion.kernels.base import Kernel
from geodiffusion.manifolds.base import Manifold
from geodiffusion.metrics.equivariance import Output, _check_output, _transformed_outputs
from geodiffusion.processes.base import LinearGaussianProcess, Process
from geodiffusion.samplers.base import Sampler
from geodiffusion.testing.oracles import GaussianScore
from geodiffusion.testing.tolerances import tolerance

__all__ = [
    "CheckError",
    "group_errors",
    "check_group",
    "manifold_errors",
    "check_manifold",
    "heat_kernel_errors",
    "check_heat_kernel",
    "kernel_errors",
    "check_kernel",
    "process_errors",
    "check_process",
    "equivariance_errors",
    "check_equivariant",
    "sampler_errors",
    "check_sampler",
]


class CheckError(AssertionError):
    """A property check failed; the message names the object, the identity and the error."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _err(a: Tensor, b: Tensor) -> float:
    r"""Mixed absolute/relative error :math:`\max|a - b| / \max(1, \max|b|)` in float64."""
    if a.is_complex() or b.is_complex():  # complex tensors (SU(n) points): compare real and imaginary parts
        a, b = (torch.view_as_real(v.detach().to(torch.complex128).resolve_conj().contiguous()) for v in (a, b))
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if a64.shape != b64.shape:
        a64, b64 = torch.broadcast_tensors(a64, b64)
    if not a64.numel():
        return 0.0
    if not (torch.isfinite(a64).all() and torch.isfinite(b64).all()):
        return math.inf
    return float((a64 - b64).abs().max() / b64.abs().max().clamp_min(1.0))


def _z_score(diff: Tensor, se: Tensor) -> float:
    return float(diff.abs() / se.clamp_min(1e-300))


def _raise_if_exceeds(owner: object, errors: dict[str, float], limits: dict[str, float]) -> None:
    bad = {k: (v, limits[k]) for k, v in errors.items() if not v <= limits[k]}
    if bad:
        lines = "; ".join(f"{k}: error {v:.3g} > tolerance {tol:.3g}" for k, (v, tol) in bad.items())
        raise CheckError(f"{owner!r} violates {lines}")


# --- groups ----------------------------------------------------------------


def group_errors(group: Group, *, n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Worst violation of each group axiom and action identity on random elements and points."""
    gen = _gen(seed)
    g, h, k = (group.sample(n, gen, dtype=dtype) for _ in range(3))
    x = group.random_points(n, gen, dtype=dtype)
    e = group.identity((n,), dtype=dtype)
    gh = group.compose(g, h)
    errors = {
        "associativity (gh)k = g(hk)": _err(group.compose(gh, k), group.compose(g, group.compose(h, k))),
        "left identity eg = g": _err(group.compose(e, g), g),
        "right identity ge = g": _err(group.compose(g, e), g),
        "inverse g g^-1 = e": _err(group.compose(g, group.inverse(g)), e),
        "inverse g^-1 g = e": _err(group.compose(group.inverse(g), g), e),
        "action of identity e.x = x": _err(group.act(e, x), x),
        "action is a homomorphism g.(h.x) = (gh).x": _err(group.act(g, group.act(h, x)), group.act(gh, x)),
        "vector action is a homomorphism": _err(group.act_on_vectors(g, group.act_on_vectors(h, x)), group.act_on_vectors(gh, x)),
        "batched action equals stacked single actions": _err(
            group.act(g, x), torch.stack([group.act(g[i], x[i]) for i in range(n)])
        ),
    }
    if group.finite:
        elements = group.elements()
        errors["elements() has order rows"] = float(elements.shape[0] != group.order)
        if group.order <= 64:
            flat = elements.reshape(group.order, -1).to(torch.float64)
            distinct = torch.cdist(flat, flat) + torch.eye(group.order, dtype=torch.float64)
            errors["elements are distinct"] = float((distinct == 0).any())
            products = group.compose(elements[:, None], elements[None, :]).reshape(-1, flat.shape[1]).to(torch.float64)
            errors["closure under compose"] = float(torch.cdist(products, flat).min(-1).values.max())
    return errors


def check_group(group: Group, *, n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
    """Raise :class:`CheckError` unless ``group`` satisfies the group axioms and its action is a homomorphism."""
    errors = group_errors(group, n=n, seed=seed, dtype=dtype)
    _raise_if_exceeds(group, errors, dict.fromkeys(errors, tolerance(dtype, "exact")))


# --- manifolds -------------------------------------------------------------


def manifold_errors(manifold: Manifold, *, n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """Worst violation of the exp/log/dist/proj identities on random points and tangent vectors, and of distance
    preservation by the manifold's ``random_isometry`` where it has one."""
    gen = _gen(seed)
    x = manifold.random_point(n, gen, dtype=dtype)
    y = manifold.random_point(n, gen, dtype=dtype)
    v = manifold.random_tangent(x, gen)
    # keep |v| below the injectivity radius of any manifold we ship (pi on unit spheres)
    v = v / manifold.norm(x, v).clamp_min(1e-12).reshape((n,) + (1,) * len(manifold.point_shape)) * 0.7
    log_xy = manifold.log(x, y)
    zero = torch.zeros(n, dtype=dtype)
    errors = {
        "random points belong": float((~manifold.belongs(x)).any()),
        "exp stays on the manifold": float((~manifold.belongs(manifold.exp(x, v))).any()),
        "exp_x(log_x y) = y": _err(manifold.exp(x, log_xy), y),
        "log_x(exp_x v) = v": _err(manifold.log(x, manifold.exp(x, v)), v),
        "log is tangent: proj(x, log_x y) = log_x y": _err(manifold.proj(x, log_xy), log_xy),
        "proj is idempotent": _err(manifold.proj(x, manifold.proj(x, 3 * v)), manifold.proj(x, 3 * v)),
        "d(x, y) = d(y, x)": _err(manifold.dist(x, y), manifold.dist(y, x)),
        "d(x, x) = 0": _err(manifold.dist(x, x), zero),
        "d(x, y) = |log_x y|": _err(manifold.dist(x, y), manifold.norm(x, log_xy)),
        "batched exp equals stacked single exps": _err(
            manifold.exp(x, v), torch.stack([manifold.exp(x[i], v[i]) for i in range(n)])
        ),
    }
    try:
        manifold.random_uniform(1, gen, dtype=dtype)
        uniform_ok = manifold.compact
    except ValueError:
        uniform_ok = not manifold.compact
    errors["random_uniform exists iff compact"] = float(not uniform_ok)
    # drawn last, so that the identities above see the same points with or without isometries
    try:
        g = manifold.random_isometry(n, gen)
    except NotImplementedError:
        return errors
    errors["random isometries stay on the manifold"] = float((~manifold.belongs(g(x))).any())
    errors["random isometries keep distances: d(gx, gy) = d(x, y)"] = _err(manifold.dist(g(x), g(y)), manifold.dist(x, y))
    return errors


def check_manifold(manifold: Manifold, *, n: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
    """Raise :class:`CheckError` unless the manifold's maps satisfy their defining identities."""
    errors = manifold_errors(manifold, n=n, seed=seed, dtype=dtype)
    _raise_if_exceeds(manifold, errors, dict.fromkeys(errors, tolerance(dtype, "exact")))


# --- heat kernels ----------------------------------------------------------


def heat_kernel_errors(
    heat_kernel: HeatKernel,
    *,
    times: tuple[float, ...] = (0.3, 1.0),
    n: int = 6,
    n_mc: int = 20000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    r"""Symmetry, score = autograd, heat equation :math:`\partial_t \log p = \tfrac12(\Delta \log p + |\nabla \log p|^2)`
    (where the manifold defines its Laplacian), normalisation :math:`\int p_t = 1` by importance sampling from the
    manifold's reference law and the sampler's :math:`E\,d^2`, as z-scores; isometry invariance
    :math:`p_t(g x_0, g x) = p_t(x_0, x)` (an infinite error where no isometries are known), and the semigroup
    :math:`p_t(x_0, x) = E_{y \sim p_s(x_0, \cdot)}\, p_{t-s}(y, x)`, :math:`s = t/4`, as a z-score over ``n_mc // 4``
    draws of the kernel's own sampler."""
    m = heat_kernel.manifold
    gen = _gen(seed)
    x0 = m.random_point(n, gen, dtype=dtype)
    x = m.random_point(n, gen, dtype=dtype)
    errors: dict[str, float] = {}
    for t in times:
        tt = torch.full((n,), t, dtype=dtype)
        errors[f"symmetry p_t(x0, x) = p_t(x, x0) at t={t}"] = _err(
            heat_kernel.log_prob(x0, x, tt), heat_kernel.log_prob(x, x0, tt)
        )
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(heat_kernel.log_prob(x0, xr, tt).sum(), xr)
        errors[f"score = grad log p at t={t}"] = _err(heat_kernel.score(x0, x, tt), m.proj(x, grad))
        try:
            with torch.enable_grad():
                tr = tt.detach().requires_grad_(True)
                (dt_logp,) = torch.autograd.grad(heat_kernel.log_prob(x0, x, tr).sum(), tr)
            score = heat_kernel.score(x0, x, tt)
            lap = m.laplace_beltrami(lambda z, tt=tt: heat_kernel.log_prob(x0, z, tt), x)
            rhs = 0.5 * (lap + m.inner(x, score, score))
            errors[f"heat equation at t={t}"] = _err(dt_logp, rhs)
        except NotImplementedError:
            pass
        # importance sampling from the reference law: Z = E_ref[p_t / ref] should be 1, and
        # E_{y ~ sample}[d(x0, y)^2] should equal E_ref[d(x0, y)^2 p_t / ref]
        start = x0[:1].expand((n_mc,) + x0.shape[1:])
        y = m.random_point(n_mc, gen, dtype=dtype)
        ratio = torch.exp(heat_kernel.log_prob(start, y, t) - m.reference_log_prob(y))
        errors[f"normalisation z-score at t={t}"] = _z_score(ratio.mean() - 1.0, ratio.std() / math.sqrt(n_mc))
        weighted = m.dist(start, y) ** 2 * ratio
        drawn = m.dist(start, heat_kernel.sample(start, t, gen)) ** 2
        se = torch.sqrt(weighted.var() / n_mc + drawn.var() / n_mc)
        errors[f"sample matches log_prob (E d^2) z-score at t={t}"] = _z_score(drawn.mean() - weighted.mean(), se)
    # drawn after the checks above, so that their random numbers (and values) do not depend on these
    try:
        isometry = m.random_isometry(n, gen)
    except NotImplementedError:
        isometry = None
    direction = m.random_tangent(x0[:1], gen)
    direction = direction / m.norm(x0[:1], direction).reshape((1,) * (1 + len(m.point_shape)))
    n_semigroup = max(2, n_mc // 4)
    for t in times:
        tt = torch.full((n,), t, dtype=dtype)
        key = f"isometry invariance p_t(g x0, g x) = p_t(x0, x) at t={t}"
        if isometry is None:
            key += f": no isometries known for {type(m).__name__} (give it a random_isometry(n, generator))"
            errors[key] = math.inf
        else:
            errors[key] = _err(heat_kernel.log_prob(isometry(x0), isometry(x), tt), heat_kernel.log_prob(x0, x, tt))
        # w = p_{t-s}(y, x) / p_t(x0, x) has mean 1 over y ~ p_s(x0, .); s = t/4 and d(x0, x) = sqrt(t) keep its
        # variance small (on R^d, E w^2 = (16/15)^{d/2} e^{d(x0, x)^2 / 5t}; sd(w) <= 0.7 on every shipped kernel,
        # against up to 30 for the importance weights above), so a quarter of the draws suffices
        target = m.exp(x0[:1], math.sqrt(t) * direction)
        start = x0[:1].expand((n_semigroup,) + x0.shape[1:])
        y = heat_kernel.sample(start, t / 4, gen)
        log_w = heat_kernel.log_prob(y, target.expand_as(start), 0.75 * t) - heat_kernel.log_prob(x0[:1], target, t)
        w = torch.exp(log_w.to(torch.float64))
        errors[f"semigroup p_t(x0, x) = E_(y ~ p_(t/4)(x0)) p_(3t/4)(y, x) z-score at t={t}"] = _z_score(
            w.mean() - 1.0, w.std() / math.sqrt(n_semigroup)
        )
    return errors


def check_heat_kernel(
    heat_kernel: HeatKernel, *, z: float = 5.0, seed: int = 0, dtype: torch.dtype = torch.float64, **kwargs
) -> None:
    """Raise :class:`CheckError` unless the heat kernel is symmetric, normalised, invariant under isometries, solves
    the heat equation, is a semigroup, and its score and sampler agree with its density (z-scores below ``z``)."""
    errors = heat_kernel_errors(heat_kernel, seed=seed, dtype=dtype, **kwargs)
    limits = {k: (z if "z-score" in k else tolerance(dtype, "pde" if "heat equation" in k else "autograd")) for k in errors}
    _raise_if_exceeds(heat_kernel, errors, limits)


# --- kernels ---------------------------------------------------------------


def kernel_errors(kernel: Kernel, *, n: int = 7, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    r"""Symmetry :math:`k(x, x') = k(x', x)^\top`, PSD Gram matrices (most negative eigenvalue,
    relative), and equivariance :math:`k(gx, gx') = \rho(g) k(x, x') \rho(g)^\top` on random elements;
    also the contract: output ``[n1, n2, d, d]`` in the inputs' dtype, batched call = stacked calls,
    :math:`\rho(g)` in the elements' dtype."""
    gen = _gen(seed)
    x1 = torch.randn((n, kernel.input_dim), generator=gen, dtype=dtype)
    x2 = torch.randn((n + 2, kernel.input_dim), generator=gen, dtype=dtype)
    k12 = kernel(x1, x2)
    d = kernel.output_dim
    if tuple(k12.shape) != (n, n + 2, d, d) or k12.dtype != dtype:
        # the other identities are meaningless on a wrongly shaped output (broadcasting would hide the error)
        return {f"output of shape [n1, n2, {d}, {d}] and the inputs' dtype": 1.0}
    errors = {f"output of shape [n1, n2, {d}, {d}] and the inputs' dtype": 0.0}
    errors["symmetry k(x, x') = k(x', x)^T"] = _err(k12, kernel(x2, x1).transpose(0, 1).transpose(-1, -2))
    batched = kernel(torch.stack([x1, x1.flip(0)]), torch.stack([x2, x2.flip(0)]))
    errors["batched call equals stacked single calls"] = _err(batched, torch.stack([k12, kernel(x1.flip(0), x2.flip(0))]))
    gram = kernel.gram(torch.cat([x1, x2]))
    eig = torch.linalg.eigvalsh(0.5 * (gram + gram.transpose(-1, -2)))
    errors["positive semi-definite Gram"] = float((-eig.min()).clamp_min(0) / eig.abs().max().clamp_min(1e-300))
    group = kernel.group
    worst, rho_dtype_ok = 0.0, True
    for g in group.sample(4, gen, dtype=dtype):
        rho = kernel.output_representation(g)
        rho_dtype_ok &= rho.dtype == dtype or not g.is_floating_point()
        rho = rho.to(dtype)
        lhs = kernel(group.act(g, x1), group.act(g, x2))
        worst = max(worst, _err(lhs, rho @ k12 @ rho.transpose(-1, -2)))
    errors["equivariance k(gx, gx') = rho k rho^T"] = worst
    errors["output_representation follows the elements' dtype"] = float(not rho_dtype_ok)
    return errors


def check_kernel(kernel: Kernel, *, n: int = 7, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
    """Raise :class:`CheckError` unless the kernel is symmetric, positive semi-definite and equivariant."""
    errors = kernel_errors(kernel, n=n, seed=seed, dtype=dtype)
    _raise_if_exceeds(kernel, errors, dict.fromkeys(errors, tolerance(dtype, "autograd")))


# --- processes -------------------------------------------------------------


def _example_data(process: Process, n: int, gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    if process.manifold is not None:
        return process.manifold.random_point(n, gen, dtype=dtype)
    return torch.randn((n,) + (3,) * process.event_ndim, generator=gen, dtype=dtype)


def _manifold_score_and_fokker_planck(process: Process, x0: Tensor, gen: torch.Generator) -> tuple[float, float | None]:
    r"""Worst errors of :math:`s = P_x \nabla \log p` and of the Fokker–Planck equation on :math:`M`,
    :math:`\partial_t \log p = -\mathrm{div}_M f - \langle f, s\rangle + \tfrac12 g^2(\Delta_M \log p + |s|^2)`
    (None when the manifold does not define its Laplace–Beltrami operator)."""
    from geodiffusion.samplers.riemannian import riemannian_divergence

    m = process.manifold
    n, dtype = x0.shape[0], x0.real.dtype  # times and densities are real, also for complex points (SU(n))
    fp_worst: float | None = 0.0
    score_worst = 0.0
    for frac in (0.05, 0.3, 0.8):
        t = torch.full((n,), frac * process.T, dtype=dtype)
        marginal = process.marginal(x0, t)
        x = marginal.sample(gen)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            tr = t.detach().requires_grad_(True)
            grad_x, grad_t = torch.autograd.grad(process.marginal(x0, tr).log_prob(xr).sum(), (xr, tr))
            drift = process.drift(xr, t)
            div = riemannian_divergence(m, drift, xr) if drift.requires_grad else torch.zeros(n, dtype=dtype)
        score = m.proj(x, grad_x)
        score_worst = max(score_worst, _err(marginal.score(x), score))
        if fp_worst is None:
            continue
        try:
            lap = m.laplace_beltrami(lambda z, t=t: process.marginal(x0, t).log_prob(z), x)
        except NotImplementedError:
            fp_worst = None
            continue
        drift = drift.detach()
        rhs = -div - m.inner(x, drift, score) + 0.5 * process.diffusion(t) ** 2 * (lap + m.inner(x, score, score))
        fp_worst = max(fp_worst, _err(grad_t, rhs))
    return score_worst, fp_worst


def process_errors(
    process: Process, *, n: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64, n_mc: int = 4000
) -> dict[str, float]:
    r"""For the transition law :math:`p_t = p_{t|0}(\cdot \mid x_0)`: its score equals autograd of its
    log-density; it solves the Fokker–Planck equation
    :math:`\partial_t \log p = -\nabla\cdot f - f\cdot\nabla\log p
    + \tfrac12 \mathrm{tr}(D \nabla^2 \log p) + \tfrac12 \nabla\log p^\top D \nabla\log p`
    of the declared drift and noise covariance :math:`D = g g^\top` (:math:`g^2 I` for scalar noise), the methods
    given ``process.example_context``; and :math:`\mathrm{KL}(p_T \| \pi)` per dimension is small.
    For a process on a manifold (``process.manifold``) the data are its points, the score is the projected
    gradient, and the equation uses the Riemannian divergence, metric and Laplace–Beltrami operator."""
    gen = _gen(seed)
    x0 = _example_data(process, n, gen, dtype)
    ctx = process.example_context(x0, gen)
    T = process.T
    errors: dict[str, float] = {}
    fp_worst = score_worst = 0.0
    # Euclidean processes: the loop below; on a manifold, the Riemannian score, divergence and Laplacian
    frac_loop = (0.05, 0.3, 0.8) if process.manifold is None else ()
    if process.manifold is not None:
        score_worst, fp_worst = _manifold_score_and_fokker_planck(process, x0, gen)
    t = torch.full((n,), 0.8 * T, dtype=dtype)
    for frac in frac_loop:
        t = torch.full((n,), frac * T, dtype=dtype)
        marginal = process.marginal(x0, t, **ctx)
        x = marginal.sample(gen)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            tr = t.detach().requires_grad_(True)
            logp = process.marginal(x0, tr, **ctx).log_prob(xr)
            grad_x, grad_t = torch.autograd.grad(logp.sum(), (xr, tr), create_graph=True)
            score = marginal.score(x)
            score_worst = max(score_worst, _err(score, grad_x))
            drift = process.drift(xr, t)
            drift_depends_on_x = drift.requires_grad
            lap = torch.zeros(n, dtype=dtype)
            div = torch.zeros(n, dtype=dtype)
            flat_grad, flat_drift = grad_x.flatten(1), drift.flatten(1)
            for i in range(flat_grad.shape[1]):
                (second,) = torch.autograd.grad(flat_grad[:, i].sum(), xr, retain_graph=True)
                # tr(D H) row by row: (D H_i)_i, with D applied by the process
                lap = lap + process.noise_covariance(second, t, **ctx).flatten(1)[:, i]
                if drift_depends_on_x:
                    (ddrift,) = torch.autograd.grad(flat_drift[:, i].sum(), xr, retain_graph=True)
                    div = div + ddrift.flatten(1)[:, i]
        sq = (grad_x * process.noise_covariance(grad_x, t, **ctx)).flatten(1).sum(-1)
        rhs = -div - (drift * grad_x).flatten(1).sum(-1) + 0.5 * (lap + sq)
        fp_worst = max(fp_worst, _err(grad_t, rhs))
    errors["marginal score = grad log marginal"] = score_worst
    if fp_worst is not None:
        errors["Fokker-Planck equation of drift and diffusion"] = fp_worst
    # KL(p_T(.|x0) || prior) by Monte Carlo, per dimension
    xs = x0[:1].expand((n_mc,) + x0.shape[1:])
    marginal_T = process.marginal(xs, T, **ctx)
    samples = marginal_T.sample(gen)
    prior = process.prior(tuple(samples.shape), dtype=dtype, **ctx)
    dim = process.manifold.dim if process.manifold is not None else x0[0].numel()
    kl = (marginal_T.log_prob(samples) - prior.log_prob(samples)).mean() / dim
    errors["KL(marginal at T || prior) per dimension"] = float(kl.abs())
    shapes_ok = process.drift(x0, t).shape == x0.shape and process.drift(x0, t).dtype == x0.dtype
    errors["drift has the shape and dtype of x"] = float(not shapes_ok)
    try:
        process.marginal(x0, 1.5 * T, **ctx)
        errors["t > T is rejected"] = 1.0
    except ValueError:
        errors["t > T is rejected"] = 0.0
    return errors


def check_process(process: Process, *, seed: int = 0, dtype: torch.dtype = torch.float64, kl_tol: float = 1e-2, **kwargs) -> None:
    """Raise :class:`CheckError` unless the marginal's score is its log-density's gradient, the marginal
    solves the Fokker–Planck equation of the drift and diffusion, and the marginal at T matches the prior
    (KL per dimension below ``kl_tol``)."""
    errors = process_errors(process, seed=seed, dtype=dtype, **kwargs)
    limits = dict.fromkeys(errors, 0.0)
    limits["marginal score = grad log marginal"] = tolerance(dtype, "autograd")
    limits["Fokker-Planck equation of drift and diffusion"] = tolerance(dtype, "pde")
    limits["KL(marginal at T || prior) per dimension"] = kl_tol
    _raise_if_exceeds(process, errors, limits)


# --- equivariance ----------------------------------------------------------


def equivariance_errors(
    fn: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    *,
    output: Output = "vector",
    elements: Tensor | None = None,
    n: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    r"""Relative error of :math:`f(g \cdot x) = \rho(g) f(x)` for each element (all of a small finite
    group, else ``n`` random ones), the output transforming as ``output`` says."""
    if elements is None:
        if group.finite and group.order <= 64:
            elements = group.elements(device=x.device)
        else:
            elements = group.sample(n, _gen(seed), dtype=x.dtype, device=x.device)
    _check_output(output)
    y = fn(x)
    errors = {}
    # one element per call of fn, on x's own shape: fn may close over per-sample context of x's batch size
    for i, g in enumerate(elements):
        lhs, rhs = _transformed_outputs(fn, group, x, y, g.unsqueeze(0), output)
        errors[f"{output} equivariance under {group!r}, element {i}"] = _err(lhs[0], rhs[0])
    return errors


def check_equivariant(
    fn: Callable[[Tensor], Tensor],
    group: Group,
    x: Tensor,
    *,
    output: Output = "vector",
    elements: Tensor | None = None,
    n: int = 4,
    seed: int = 0,
    atol: float | None = None,
) -> None:
    """Raise :class:`CheckError` unless ``fn(g.x) = rho(g) fn(x)`` on every tested element."""
    errors = equivariance_errors(fn, group, x, output=output, elements=elements, n=n, seed=seed)
    limit = atol if atol is not None else tolerance(x.dtype, "equivariance")
    _raise_if_exceeds(getattr(fn, "__self__", fn), errors, dict.fromkeys(errors, limit))


# --- samplers --------------------------------------------------------------


def sampler_errors(
    sampler: Sampler,
    process: LinearGaussianProcess,
    *,
    dim: int = 2,
    n_samples: int = 4000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> dict[str, float]:
    r"""Sample with the exact score of Gaussian data :math:`\mathcal{N}(\mu, \Sigma)` and compare with the
    exact law at the sampler's end time,
    :math:`\mathcal{N}(\alpha_\varepsilon\mu, \alpha_\varepsilon^2\Sigma + \sigma_\varepsilon^2 I)`.

    Returns, for the mean and the covariance, the worst entrywise error divided by
    its Monte Carlo standard error (a z-score), and the worst relative error.
    """
    gen = _gen(seed)
    mean = 2.0 * torch.randn(dim, generator=gen, dtype=dtype)
    a = torch.randn(dim, dim, generator=gen, dtype=dtype)
    cov = a @ a.T / dim + 0.25 * torch.eye(dim, dtype=dtype)
    oracle = GaussianScore(process, mean, cov)
    eps = getattr(sampler.spec, "eps", 0.0)
    m, c = oracle.marginal_moments(torch.tensor(eps, dtype=dtype))
    x = sampler.sample(oracle, process, (n_samples, dim), generator=gen, dtype=dtype)
    if not bool(torch.isfinite(x).all()):
        return {
            "mean z-score": math.inf,
            "covariance z-score": math.inf,
            "mean relative error": math.inf,
            "covariance relative error": math.inf,
        }
    emp_m = x.mean(0)
    emp_c = torch.cov(x.T)
    se_m = torch.sqrt(torch.diagonal(c) / n_samples)
    se_c = torch.sqrt((torch.diagonal(c)[:, None] * torch.diagonal(c)[None, :] + c**2) / n_samples)
    scale = torch.diagonal(c).sqrt()
    return {
        "mean z-score": float(((emp_m - m).abs() / se_m).max()),
        "covariance z-score": float(((emp_c - c).abs() / se_c).max()),
        "mean relative error": float(((emp_m - m).abs() / scale).max()),
        "covariance relative error": float(((emp_c - c).abs() / (scale[:, None] * scale[None, :])).max()),
    }


def check_sampler(
    sampler: Sampler,
    process: LinearGaussianProcess,
    *,
    z: float = 5.0,
    bias: float = 0.01,
    dim: int = 2,
    n_samples: int = 4000,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> None:
    """Raise :class:`CheckError` unless, driven by the exact score of Gaussian data, ``sampler``
    reproduces the target mean and covariance: each error must be within ``z`` Monte Carlo standard
    errors or within ``bias`` (relative, the allowance for time discretisation)."""
    errors = sampler_errors(sampler, process, dim=dim, n_samples=n_samples, seed=seed, dtype=dtype)
    failures = {}
    for what in ("mean", "covariance"):
        zs, rel = errors[f"{what} z-score"], errors[f"{what} relative error"]
        if not (zs <= z or rel <= bias):
            failures[f"{what}: z-score {zs:.3g} > {z} and relative error {rel:.3g} > {bias}"] = (zs, rel)
    if failures:
        raise CheckError(f"{sampler!r} with {process!r} on Gaussian data: " + "; ".join(failures))
