r"""Conditional sampling and likelihoods of function marginals under an OU process with a GP limit.

Given context values :math:`y_c` at inputs :math:`x_c`, draw values :math:`y_*` at target inputs :math:`x_*`
from :math:`p(y_* \mid y_c)` with a score network of the joint :math:`p_t([y_c, y_*])` over
:math:`x = [x_c, x_*]` (Geometric Neural Diffusion Processes, Mathieu et al., 2023, Sec. 3.3 and Alg. 1):
the context is re-noised by the forward transition at each time, :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)`,
a reverse step moves :math:`[y_{c,t}, y_{*,t}]`, and Langevin steps on :math:`y_*` alone target
:math:`\nabla_{y_*} \log p_t(y_* \mid y_{c,t}) = \nabla_{y_*} \log p_t([y_{c,t}, y_*])`.
Replacement sampling is the same scheme without the Langevin steps.

Functions with values on a manifold :math:`M` (GeomNDP, Sec. 3.4), noised independently at every point by a
process on :math:`M` (``process.manifold`` is not None, e.g. :class:`~geodiffusion.processes.BrownianProcess`), are
sampled by the Riemannian version of the same scheme: the context is noised by the process's exact marginal
(the heat kernel), reverse steps are geodesic Euler-Maruyama steps
:math:`z \leftarrow \exp_z(P_z[-(f - g^2 s)\,\delta + g\sqrt\delta\,\xi])` on the joint state, and Langevin steps are
:math:`y_* \leftarrow \exp_{y_*}(\tfrac\gamma2 s_* + \sqrt\gamma\, P_{y_*}\xi)`, so every iterate lies on :math:`M`.

Score functions are called like score networks: ``score(t [B], y [B, n, d], inputs=x [B, n, m])`` returning
the output in the process's parametrisation (:class:`~geodiffusion.testing.GPScore` is an exact one); on a manifold,
``y [B, n, *point_shape]`` and the output is the score itself, tangent at each value
(:class:`~geodiffusion.models.TangentFunctionScore` is such a network).
"""

from __future__ import annotations

import functools
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion._validation import check_finite
from geodiffusion.manifolds.base import Manifold
from geodiffusion.processes.base import Process
from geodiffusion.processes.gp import FullGaussian, KernelFactor, OUGaussianProcess, gaussian_conditional
from geodiffusion.registry import Component
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.ode import ODEOptions, log_likelihood
from geodiffusion.samplers.riemannian import _ambient_normal, geodesic_reverse_step
from geodiffusion.spec import Spec

__all__ = [
    "ConditionalSampler",
    "LangevinConditional",
    "ReplacementConditional",
    "marginal_log_likelihood",
    "conditional_log_likelihood",
]

FunctionScore = Callable[..., Tensor]
"""``score(t, y, inputs=x) -> output``: a score network over sets of (x, y) pairs."""


class ConditionalSampler(Component, family=True):
    r"""Draws :math:`y_* \sim p(y_* \mid y_c)` at target inputs :math:`x_*` given context :math:`(x_c, y_c)`
    (none: unconditional samples of the finite marginal) by integrating the reverse dynamics of an
    :class:`~geodiffusion.processes.gp.OUGaussianProcess` from its GP limit, or of a process on a manifold applied
    at every point from its reference law, down to :math:`t = \varepsilon`."""

    @abstractmethod
    def sample(
        self,
        score: FunctionScore,
        process: Process,
        inputs: Tensor,
        *,
        context_inputs: Tensor | None = None,
        context_values: Tensor | None = None,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Samples ``[n_samples, n, d]`` at ``inputs [n, m]`` given ``context_values [nc, d]`` at ``context_inputs [nc, m]``
        (on a manifold: ``[n_samples, n, *point_shape]`` given ``context_values [nc, *point_shape]`` on it)."""


class _ReverseSpec(Spec):
    steps: int = Field(100, ge=1, description="outer (reverse) steps from T to eps")
    eps: float = Field(1e-3, ge=0, description="final time t = eps")
    reverse: Literal["sde", "ode"] = Field(
        "sde", description="outer step: reverse SDE (Euler-Maruyama) or probability-flow ODE (Euler)"
    )


class _ReverseConditional(ConditionalSampler):
    """Outer loop shared by the Langevin and replacement schemes; :meth:`_correct` is the inner loop. The geometry
    (the OU-to-GP process on R^d, or a process on a manifold at every point) lives in the run's context object."""

    def _correct(self, ctx: _Context, y: Tensor, t: float, dt: float) -> Tensor:
        """Inner steps at time ``t`` after a reverse step of size ``dt``; none by default (replacement)."""
        return y

    def _inner_evaluations(self) -> int:
        return 0

    def _divergence_hint(self) -> str:
        return "the reverse steps are too large for this score (raise steps), or the score grows too fast in y"

    def sample(
        self,
        score,
        process,
        inputs,
        *,
        context_inputs=None,
        context_values=None,
        n_samples=1,
        generator=None,
        progress=False,
    ) -> Tensor:
        s = self.spec
        if getattr(process, "manifold", None) is not None:
            context: type[_Context] = _ManifoldContext
        elif isinstance(process, OUGaussianProcess):
            context = _GPContext
        else:
            raise ValueError(f"process: expected an OUGaussianProcess or a process on a manifold, got {type(process).__name__}")
        if not 0 <= s.eps < process.T:
            raise ValueError(f"eps: expected a value in [0, T={process.T}), got {s.eps}")
        if n_samples < 1:
            raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
        ctx = context(process, inputs, context_inputs, context_values, n_samples, generator)
        total = s.steps * (1 + self._inner_evaluations())
        counted = CountingScore(lambda t, z: score(t, z, inputs=ctx.batch_inputs), progress, total, type(self).__name__)
        ctx.score = counted
        times = torch.linspace(process.T, s.eps, s.steps + 1, dtype=torch.float64).tolist()
        y = ctx.prior_sample()
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                z = ctx.reverse_step(ctx.joint(y, t_now), t_now, t_now - t_next, s.reverse)
                y = self._correct(ctx, z[:, ctx.n_context :], t_next, t_now - t_next)
                # one host sync per outer step: a diverged chain stops with the time it broke at, not as NaN output
                if not bool(torch.isfinite(y).all()):
                    raise FloatingPointError(
                        f"{type(self).__name__}: the samples became non-finite at t = {t_next:.4g}; {self._divergence_hint()}"
                    )
        finally:
            counted.close()
        return y


class _Context(ABC):
    """Inputs, context values and geometry of one conditional sampling run: the steps the samplers are made of."""

    score: Callable[[Tensor, Tensor], Tensor]
    n_context: int
    batch_inputs: Tensor

    def _check_inputs(self, inputs: Tensor, context_inputs: Tensor | None, context_values: Tensor | None) -> bool:
        """Checks shared by both geometries; True when there is a (non-empty) context."""
        check_finite("inputs", inputs)
        if inputs.dim() != 2:
            raise ValueError(f"inputs: expected target inputs [n, m], got {list(inputs.shape)}")
        if (context_inputs is None) != (context_values is None):
            raise ValueError("context_inputs and context_values: pass both or neither")
        if context_inputs is None or context_inputs.shape[-2] == 0:
            return False
        check_finite("context_inputs", context_inputs)
        check_finite("context_values", context_values)
        if context_inputs.dim() != 2 or context_inputs.shape[-1] != inputs.shape[-1]:
            raise ValueError(f"context_inputs: expected [nc, {inputs.shape[-1]}], got {list(context_inputs.shape)}")
        if context_inputs.dtype != inputs.dtype or context_values.dtype != inputs.dtype:
            raise ValueError(f"context_inputs and context_values: expected the inputs' dtype {inputs.dtype}")
        if context_inputs.device != inputs.device or context_values.device != inputs.device:
            raise ValueError(f"context_inputs and context_values: expected the inputs' device {inputs.device}")
        return True

    def output(self, t: Tensor, z: Tensor) -> Tensor:
        out = self.score(t, z)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score output: expected the shape of the values {list(z.shape)}, got {got}")
        return out

    def joint(self, y: Tensor, t: float) -> Tensor:
        r""":math:`[y_{c,t}, y_*]` with a fresh draw :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)`."""
        if not self.n_context:
            return y
        return torch.cat([self.noised_context(t), y], 1)

    @abstractmethod
    def noised_context(self, t: float) -> Tensor:
        r"""One draw :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)` per sample."""

    @abstractmethod
    def prior_sample(self) -> Tensor:
        """Target values drawn from the reference law at ``T``."""

    @abstractmethod
    def reverse_step(self, z: Tensor, t: float, dt: float, kind: str) -> Tensor:
        """One reverse step of the joint state ``z`` from ``t`` to ``t - dt`` (``kind``: ``"sde"`` or ``"ode"``)."""

    @abstractmethod
    def langevin_step(self, y: Tensor, t: float, gamma: float, preconditioner: str) -> Tensor:
        r"""One Langevin step of size :math:`\gamma` on the targets ``y`` at time ``t`` (fresh noised context)."""

    @abstractmethod
    def g2(self, t: float) -> float:
        r""":math:`g(t)^2`, the scalar noise rate setting the Langevin step :math:`\gamma = \psi g^2 \Delta t`."""


class _GPContext(_Context):
    """The OU-to-GP process on R^d: kernel factors of the inputs, kernel-correlated noise."""

    def __init__(self, process, inputs, context_inputs, context_values, n_samples, generator) -> None:
        has_context = self._check_inputs(inputs, context_inputs, context_values)
        self.process, self.generator, self.n_samples = process, generator, n_samples
        self.inputs = inputs
        self.target = process.factor(inputs)
        self.n_target, self.d = self.target.n, self.target.d
        if not has_context:
            self.n_context, self.all_inputs, self.joint_factor = 0, inputs, self.target
            self.context_values = None
        else:
            if context_values.shape != (context_inputs.shape[0], self.d):
                raise ValueError(
                    f"context_values: expected [{context_inputs.shape[0]}, {self.d}], got {list(context_values.shape)}"
                )
            self.n_context = context_inputs.shape[0]
            self.context = process.factor(context_inputs)
            self.context_values = context_values.expand((n_samples,) + context_values.shape)
            self.all_inputs = torch.cat([context_inputs, inputs], 0)
            self.joint_factor = process.factor(self.all_inputs)
        self.batch_inputs = self.all_inputs.expand((n_samples,) + self.all_inputs.shape)

    def noised_context(self, t: float) -> Tensor:
        return self.process.marginal(self.context_values, t, inputs=self.context).sample(self.generator)

    def prior_sample(self) -> Tensor:
        shape = (self.n_samples, self.n_target, self.d)
        prior = self.process.prior(shape, inputs=self.target, device=self.inputs.device, dtype=self.inputs.dtype)
        return prior.sample(self.generator)

    def g2(self, t: float) -> float:
        return self.process.beta(torch.tensor(t, dtype=torch.float64)).item()

    def reverse_step(self, z: Tensor, t: float, dt: float, kind: str) -> Tensor:
        process = self.process
        tb = torch.full((self.n_samples,), t, dtype=z.dtype, device=z.device)
        ks = process.kernel_score(self.output(tb, z), tb, inputs=self.joint_factor)
        beta = self.g2(t)
        if kind == "sde":
            noise = self.joint_factor.sqrt_matvec(randn(z.shape, self.generator, dtype=torch.float64, device=z.device))
            return z - dt * (process.drift(z, tb) - beta * ks) + math.sqrt(beta * dt) * noise.to(z.dtype)
        return z - dt * (process.drift(z, tb) - 0.5 * beta * ks)

    @functools.cached_property
    def conditional(self) -> KernelFactor:
        r""":math:`K_{*|c} = K_{**} - K_{*c} K_{cc}^{-1} K_{c*}` of the process kernel and its Cholesky factor."""
        if self.n_context == 0:
            return self.target
        k = self.n_context * self.d
        _, schur = gaussian_conditional(self.joint_factor.gram, k, context_cholesky=self.joint_factor.cholesky[:k, :k])
        chol, info = torch.linalg.cholesky_ex(schur)
        if bool((info > 0).any()):
            raise ValueError("preconditioner='conditional': K(x*, x*) given the context is not positive definite")
        return KernelFactor(self.inputs, schur, chol, self.n_target, self.d, self.target.dtype)

    def langevin_step(self, y: Tensor, t: float, gamma: float, preconditioner: str) -> Tensor:
        tb = torch.full((self.n_samples,), t, dtype=y.dtype, device=y.device)
        z = self.joint(y, t)
        grad = self.process.score_from_output(self.output(tb, z), tb, inputs=self.joint_factor)[:, self.n_context :]
        xi = randn(y.shape, self.generator, dtype=torch.float64, device=y.device)
        if preconditioner == "identity":
            step, noise = grad, xi
        else:
            factor = self.target if preconditioner == "kernel" else self.conditional
            step, noise = factor.matvec(grad), factor.sqrt_matvec(xi)
        return y + (0.5 * gamma * step + math.sqrt(gamma) * noise).to(y.dtype)


class _ManifoldContext(_Context):
    r"""A process on a manifold :math:`M` applied independently at every point: values ``[S, n, *point_shape]``,
    noise independent per point (so both preconditioners are :math:`I`), steps by :math:`\exp` of tangent vectors."""

    def __init__(self, process, inputs, context_inputs, context_values, n_samples, generator) -> None:
        has_context = self._check_inputs(inputs, context_inputs, context_values)
        self.process, self.generator, self.n_samples = process, generator, n_samples
        self.manifold: Manifold = process.manifold
        self.inputs, self.point_shape = inputs, tuple(self.manifold.point_shape)
        self.n_target = inputs.shape[0]
        all_inputs = inputs
        self.n_context, self.context_values = 0, None
        if has_context:
            nc = context_inputs.shape[0]
            if tuple(context_values.shape) != (nc,) + self.point_shape:
                expected = ", ".join(map(str, (nc,) + self.point_shape))
                raise ValueError(
                    f"context_values: expected [{expected}] (points of {type(self.manifold).__name__}), "
                    f"got {list(context_values.shape)}"
                )
            atol = max(1e-6, 1e3 * torch.finfo(context_values.real.dtype).eps)
            off = ~self.manifold.belongs(context_values, atol=atol)
            if bool(off.any()):
                raise ValueError(f"context_values: {int(off.sum())} of {nc} values are not on {type(self.manifold).__name__}")
            self.n_context = nc
            self.context_values = context_values.expand((n_samples,) + tuple(context_values.shape))
            all_inputs = torch.cat([context_inputs, inputs], 0)
        self.batch_inputs = all_inputs.expand((n_samples,) + all_inputs.shape)

    def noised_context(self, t: float) -> Tensor:
        if t == 0:  # the forward law at t = 0 is the point mass at the context
            return self.context_values
        return self.process.marginal(self.context_values, t).sample(self.generator)

    def prior_sample(self) -> Tensor:
        shape = (self.n_samples, self.n_target) + self.point_shape
        return self.process.prior(shape, device=self.inputs.device, dtype=self.inputs.dtype).sample(self.generator)

    def g2(self, t: float) -> float:
        return float(self.process.diffusion(torch.tensor(t, dtype=torch.float64))) ** 2

    def _times(self, t: float, z: Tensor) -> Tensor:
        return torch.full((self.n_samples,), t, dtype=z.real.dtype, device=z.device)

    def reverse_step(self, z: Tensor, t: float, dt: float, kind: str) -> Tensor:
        process, tb = self.process, self._times(t, z)
        score = self.output(tb, z)
        if kind == "sde":
            return geodesic_reverse_step(process, z, tb, score, dt, self.generator)
        step = -process.probability_flow_drift(z, tb, score) * dt
        return self.manifold.exp(z, self.manifold.proj(z, step))

    def langevin_step(self, y: Tensor, t: float, gamma: float, preconditioner: str) -> Tensor:
        # Riemannian Langevin: y <- exp_y(gamma/2 s + sqrt(gamma) P_y xi), P_y xi standard Gaussian in T_y M
        score = self.output(self._times(t, y), self.joint(y, t))[:, self.n_context :]
        step = 0.5 * gamma * score + math.sqrt(gamma) * _ambient_normal(y, self.generator)
        return self.manifold.exp(y, self.manifold.proj(y, step))


class LangevinConditional(_ReverseConditional, kind="langevin_conditional"):
    r"""GeomNDP's conditional sampler: after each reverse step to time :math:`t`, ``inner_steps`` Langevin steps

    .. math:: y_* \leftarrow y_* + \tfrac{\gamma}2 P\, \nabla_{y_*} \log p_t([y_{c,t}, y_*]) + \sqrt{\gamma}\, P^{1/2}\xi,
       \qquad \gamma = \psi\, g(t)^2\, \Delta t,

    each with a fresh noised context :math:`y_{c,t} \sim p_{t|0}(\cdot\mid y_c)`, preconditioned by
    :math:`P = K(x_*, x_*)` (``preconditioner="kernel"``), by the process kernel's conditional covariance
    :math:`P = K_{*|c} = K_{**} - K_{*c} K_{cc}^{-1} K_{c*}` (``"conditional"``), or :math:`P = I`; :math:`g^2 = \beta(t)`
    for the OU-to-GP process. ``"conditional"`` is the covariance of the target law itself when the data are the
    process's GP, so every direction mixes at the same rate; with ``"kernel"``, a smooth direction pinned by close
    context points is stiffer by the ratio :math:`K_{**}/K_{*|c}` along it. The target block of the joint score is
    the score of :math:`p_t(y_* \mid y_{c,t})`, so each inner loop targets that conditional; it tends to
    :math:`p(y_* \mid y_c)` as :math:`t \to 0`. On a manifold (a process with ``manifold``, noise independent per
    point: :math:`P = I` either way) the step is Riemannian Langevin,
    :math:`y_* \leftarrow \exp_{y_*}(\tfrac\gamma2 \nabla_{y_*} \log p_t + \sqrt\gamma\, P_{y_*}\xi)`."""

    class Spec(_ReverseSpec):
        """Langevin conditional sampler (noised context, outer reverse steps, inner Langevin steps).

        The defaults (50 outer steps, 100 Langevin steps of psi = 10 at t <= 0.03, preconditioned by K(x*, x* | x_c))
        suit the default schedule beta in [0.1, 20], T = 1: the Langevin steps must mix where the noised context is
        close to the data. Preconditioned by K(x*, x*) instead, psi = 10 overflows on gp-1d's SE data between context
        points 0.25 apart, with the exact score.
        With exact GP scores they reproduce the GP posterior (variance within 2% at 16000 samples), whereas the
        paper's 100 x 5 steps at psi = 1 left a mean bias of 6 standard errors at 2000 samples. The step must stay
        below a few times the variance of the conditional law it targets (gamma / var < 4 for a Gaussian): data
        concentrated near a manifold's points (small heat-kernel times) need smaller psi."""

        steps: int = Field(50, ge=1, description="outer (reverse) steps from T to eps")
        inner_steps: int = Field(100, ge=0, description="Langevin steps after each reverse step")
        psi: float = Field(10.0, gt=0, description="Langevin step size gamma = psi * g(t)^2 * dt")
        tau: float | None = Field(0.03, gt=0, description="Langevin steps only at times t <= tau (None: at every time)")
        preconditioner: Literal["kernel", "conditional", "identity"] = Field(
            "conditional",
            description="Langevin preconditioner P: the OU-GP's K(x*, x*), its conditional K(x*, x* | x_c), or I "
            "(on a manifold all are I)",
        )

    @classmethod
    def examples(cls):
        return [
            cls.Spec(steps=20, inner_steps=2),
            cls.Spec(steps=10, reverse="ode", preconditioner="identity", tau=None, psi=1.0),
        ]

    def _inner_evaluations(self) -> int:
        return self.spec.inner_steps

    def _divergence_hint(self) -> str:
        return (
            f"raise steps, or lower psi (now {self.spec.psi:g}): a Langevin step gamma = psi g^2 dt must stay below a "
            "few times the target's variance"
        )

    def _correct(self, ctx: _Context, y: Tensor, t: float, dt: float) -> Tensor:
        s = self.spec
        if s.tau is not None and t > s.tau:
            return y
        gamma = s.psi * ctx.g2(t) * dt
        for _ in range(s.inner_steps):
            y = ctx.langevin_step(y, t, gamma, s.preconditioner)
        return y


class ReplacementConditional(_ReverseConditional, kind="replacement_conditional"):
    r"""The replacement baseline: reverse steps of :math:`[y_{c,t}, y_{*,t}]` with the context replaced by a
    fresh forward draw :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)` at every step, no Langevin correction
    (geodesic Euler-Maruyama steps on a manifold)."""

    class Spec(_ReverseSpec):
        """Replacement conditional sampler."""

    @classmethod
    def examples(cls):
        return [cls.Spec(steps=20)]


# --- likelihoods by the probability flow -------------------------------------------------------------------


class _AtInputs(Process):
    """The OU-to-GP process with its inputs bound, seen as a plain :class:`Process` by :func:`log_likelihood`."""

    def __init__(self, process: OUGaussianProcess, factor: KernelFactor) -> None:
        super().__init__()
        self.gp, self.bound = process, factor

    @property
    def T(self) -> float:
        return self.gp.T

    @property
    def event_ndim(self) -> int:
        return 2

    def drift(self, x: Tensor, t) -> Tensor:
        return self.gp.drift(x, t)

    def diffusion(self, t) -> Tensor:
        return self.gp.diffusion(t)

    def marginal(self, x0: Tensor, t) -> FullGaussian:
        return self.gp.marginal(x0, t, inputs=self.bound)

    def prior(self, shape, *, device=None, dtype=None) -> FullGaussian:
        return self.gp.prior(shape, inputs=self.bound, device=device, dtype=dtype)

    def reverse_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        return self.gp.reverse_drift(x, t, score, inputs=self.bound)

    def probability_flow_drift(self, x: Tensor, t, score: Tensor) -> Tensor:
        return self.gp.probability_flow_drift(x, t, score, inputs=self.bound)


def marginal_log_likelihood(
    score: FunctionScore,
    process: OUGaussianProcess,
    values: Tensor,
    inputs: Tensor,
    *,
    options: ODEOptions | None = None,
    estimator: Literal["auto", "exact", "hutchinson"] = "auto",
    exact_max_dim: int = 16,
    generator: torch.Generator | None = None,
) -> Tensor:
    r""":math:`\log p_\varepsilon(y \mid x)` of ``values [B, n, d]`` at ``inputs [n, m]`` or ``[B, n, m]``, in nats
    per function, by the probability flow :math:`\dot y = f - \tfrac12\beta K \nabla\log p_t` and
    :func:`~geodiffusion.samplers.log_likelihood` (exact divergence up to ``exact_max_dim`` = n*d). Not finite (with a
    ``RuntimeWarning``) for a function whose flow blows up, with fixed-step and adaptive solvers alike; under an
    adaptive solver a merely stiff flow whose step underflows is reported the same way."""
    if not isinstance(process, OUGaussianProcess):
        raise ValueError(f"process: expected an OUGaussianProcess, got {type(process).__name__}")
    if values.dim() != 3:
        raise ValueError(f"values: expected [B, n, d], got {list(values.shape)}")
    kwargs = {"options": options, "estimator": estimator, "exact_max_dim": exact_max_dim, "generator": generator}

    def solve(values: Tensor, inputs: Tensor) -> Tensor:
        factor = process.factor(inputs)
        batch_inputs = inputs.expand((values.shape[0],) + inputs.shape[-2:])

        def plain(t: Tensor, y: Tensor) -> Tensor:
            return process.score_from_output(score(t, y, inputs=batch_inputs), t, inputs=factor)

        return log_likelihood(plain, _AtInputs(process, factor), values, **kwargs)

    def bisect(values: Tensor, inputs: Tensor) -> Tensor:
        # an adaptive solver stops the whole batch where one function's flow blows up ("underflow in dt"): the
        # functions are independent, so halve the batch until the diverged ones stand alone, and give them NaN.
        # The retries draw fresh Hutchinson probes: a finite function's estimate then depends on the seed *and*
        # on which others diverged (only on this path; exact divergences are unaffected)
        try:
            return solve(values, inputs)
        except AssertionError as err:
            if "underflow in dt" not in str(err):
                raise
            if values.shape[0] == 1:
                return torch.full((1,), math.nan, dtype=values.dtype, device=values.device)
            half = values.shape[0] // 2
            # inputs [n, m] or [1, n, m] are shared (one factor for the batch); [B, n, m] split with the values
            per_function = inputs.dim() == 3 and inputs.shape[0] == values.shape[0] > 1
            first, second = (inputs[:half], inputs[half:]) if per_function else (inputs, inputs)
            return torch.cat([bisect(values[:half], first), bisect(values[half:], second)])

    ll = bisect(values, inputs)
    if not bool(torch.isfinite(ll).all()):
        warnings.warn(
            f"marginal_log_likelihood: the probability flow of {int((~torch.isfinite(ll)).sum())} of {ll.numel()} "
            "functions blew up; their log-likelihood is not finite",
            RuntimeWarning,
            stacklevel=2,
        )
    return ll


def conditional_log_likelihood(
    score: FunctionScore,
    process: OUGaussianProcess,
    values: Tensor,
    inputs: Tensor,
    context_values: Tensor,
    context_inputs: Tensor,
    **kwargs,
) -> Tensor:
    r""":math:`\log p(y_* \mid y_c) = \log p([y_c, y_*]) - \log p(y_c)`, both by the probability flow
    (:func:`marginal_log_likelihood`); ``values [B, n, d]``, ``context_values [B, nc, d]``, inputs unbatched or batched."""
    if context_values.dim() != 3 or context_values.shape[0] != values.shape[0]:
        raise ValueError(f"context_values: expected [{values.shape[0]}, nc, d], got {list(context_values.shape)}")
    batch = values.shape[0]
    joint_inputs = torch.cat(
        [context_inputs.expand((batch,) + context_inputs.shape[-2:]), inputs.expand((batch,) + inputs.shape[-2:])], -2
    )
    joint = marginal_log_likelihood(score, process, torch.cat([context_values, values], 1), joint_inputs, **kwargs)
    return joint - marginal_log_likelihood(score, process, context_values, context_inputs, **kwargs)
