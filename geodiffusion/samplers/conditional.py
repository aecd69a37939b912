"""Conditional sampling and likelihoods of function marginals under an OU process with a GP limit.

Given context values :math:`y_c` at inputs :math:`x_c`, draw values :math:`y_*` at target inputs :math:`x_*`
from :math:`p(y_* \\mid y_c)` with a score network of the joint :math:`p_t([y_c, y_*])` over
:math:`x = [x_c, x_*]` (Geometric Neural Diffusion Processes, Mathieu et al., 2023, Sec. 3.3 and Alg. 1):
the context is re-noised by the forward transition at each time, :math:`y_{c,t} \\sim p_{t|0}(\\cdot \\mid y_c)`,
a reverse step moves :math:`[y_{c,t}, y_{*,t}]`, and Langevin steps on :math:`y_*` alone target
:math:`\\nabla_{y_*} \\log p_t(y_* \\mid y_{c,t}) = \\nabla_{y_*} \\log p_t([y_{c,t}, y_*])`.
Replacement sampling is the same scheme without the Langevin steps.

Score functions are called like score networks: ``score(t [B], y [B, n, d], inputs=x [B, n, m])`` returning
the output in the process's parametrisation (:class:`~geodiffusion.testing.GPScore` is an exact one).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion._validation import check_finite
from geodiffusion.processes.base import Process
from geodiffusion.processes.gp import FullGaussian, KernelFactor, OUGaussianProcess
from geodiffusion.registry import Component
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.ode import ODEOptions, log_likelihood
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
    :class:`~geodiffusion.processes.gp.OUGaussianProcess` from its GP limit down to :math:`t = \varepsilon`."""

    @abstractmethod
    def sample(
        self,
        score: FunctionScore,
        process: OUGaussianProcess,
        inputs: Tensor,
        *,
        context_inputs: Tensor | None = None,
        context_values: Tensor | None = None,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Samples ``[n_samples, n, d]`` at ``inputs [n, m]`` given ``context_values [nc, d]`` at ``context_inputs [nc, m]``."""


class _ReverseSpec(Spec):
    steps: int = Field(100, ge=1, description="outer (reverse) steps from T to eps")
    eps: float = Field(1e-3, ge=0, description="final time t = eps")
    reverse: Literal["sde", "ode"] = Field(
        "sde", description="outer step: reverse SDE (Euler-Maruyama) or probability-flow ODE (Euler)"
    )


class _ReverseConditional(ConditionalSampler):
    """Outer loop shared by the Langevin and replacement schemes; :meth:`_correct` is the inner loop."""

    def _correct(self, ctx: _Context, y: Tensor, t: float, dt: float) -> Tensor:
        """Inner steps at time ``t`` after a reverse step of size ``dt``; none by default (replacement)."""
        return y

    def _inner_evaluations(self) -> int:
        return 0

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
        if not isinstance(process, OUGaussianProcess):
            raise ValueError(f"process: expected an OUGaussianProcess, got {type(process).__name__}")
        if not 0 <= s.eps < process.T:
            raise ValueError(f"eps: expected a value in [0, T={process.T}), got {s.eps}")
        if n_samples < 1:
            raise ValueError(f"n_samples: expected a positive integer, got {n_samples}")
        ctx = _Context(process, inputs, context_inputs, context_values, n_samples, generator)
        total = s.steps * (1 + self._inner_evaluations())
        counted = CountingScore(lambda t, z: score(t, z, inputs=ctx.batch_inputs), progress, total, type(self).__name__)
        ctx.score = counted
        times = torch.linspace(process.T, s.eps, s.steps + 1, dtype=torch.float64).tolist()
        y = process.prior((n_samples, ctx.n_target, ctx.d), inputs=ctx.target, device=inputs.device, dtype=inputs.dtype)
        y = y.sample(generator)
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                dt = t_now - t_next
                z = ctx.joint(y, t_now)
                t = torch.full((n_samples,), t_now, dtype=y.dtype, device=y.device)
                ks = process.kernel_score(ctx.output(t, z), t, inputs=ctx.joint_factor)
                beta = process.beta(torch.tensor(t_now, dtype=torch.float64)).item()
                if s.reverse == "sde":
                    noise = ctx.joint_factor.sqrt_matvec(randn(z.shape, generator, dtype=torch.float64, device=z.device))
                    z = z - dt * (process.drift(z, t) - beta * ks) + math.sqrt(beta * dt) * noise.to(z.dtype)
                else:
                    z = z - dt * (process.drift(z, t) - 0.5 * beta * ks)
                y = self._correct(ctx, z[:, ctx.n_context :], t_next, dt)
        finally:
            counted.close()
        return y


class _Context:
    """Inputs, their kernel factors and the context values of one conditional sampling run."""

    score: Callable[[Tensor, Tensor], Tensor]

    def __init__(self, process, inputs, context_inputs, context_values, n_samples, generator) -> None:
        check_finite("inputs", inputs)
        if inputs.dim() != 2:
            raise ValueError(f"inputs: expected target inputs [n, m], got {list(inputs.shape)}")
        if (context_inputs is None) != (context_values is None):
            raise ValueError("context_inputs and context_values: pass both or neither")
        self.process, self.generator, self.n_samples = process, generator, n_samples
        self.target = process.factor(inputs)
        self.n_target, self.d = self.target.n, self.target.d
        if context_inputs is None or context_inputs.shape[-2] == 0:
            self.n_context, self.all_inputs, self.joint_factor = 0, inputs, self.target
            self.context_values = None
        else:
            check_finite("context_values", context_values)
            if context_inputs.dim() != 2 or context_inputs.shape[-1] != inputs.shape[-1]:
                raise ValueError(f"context_inputs: expected [nc, {inputs.shape[-1]}], got {list(context_inputs.shape)}")
            if context_values.shape != (context_inputs.shape[0], self.d):
                raise ValueError(
                    f"context_values: expected [{context_inputs.shape[0]}, {self.d}], got {list(context_values.shape)}"
                )
            if context_inputs.dtype != inputs.dtype or context_values.dtype != inputs.dtype:
                raise ValueError(f"context_inputs and context_values: expected the inputs' dtype {inputs.dtype}")
            self.n_context = context_inputs.shape[0]
            self.context = process.factor(context_inputs)
            self.context_values = context_values.expand((n_samples,) + context_values.shape)
            self.all_inputs = torch.cat([context_inputs, inputs], 0)
            self.joint_factor = process.factor(self.all_inputs)
        self.batch_inputs = self.all_inputs.expand((n_samples,) + self.all_inputs.shape)

    def joint(self, y: Tensor, t: float) -> Tensor:
        r""":math:`[y_{c,t}, y_*]` with a fresh draw :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)`."""
        if not self.n_context:
            return y
        noised = self.process.marginal(self.context_values, t, inputs=self.context).sample(self.generator)
        return torch.cat([noised, y], 1)

    def output(self, t: Tensor, z: Tensor) -> Tensor:
        out = self.score(t, z)
        if not isinstance(out, Tensor) or out.shape != z.shape:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"score output: expected the shape of the values {list(z.shape)}, got {got}")
        return out


class LangevinConditional(_ReverseConditional, kind="langevin_conditional"):
    r"""GeomNDP's conditional sampler: after each reverse step to time :math:`t`, ``inner_steps`` Langevin steps

    .. math:: y_* \leftarrow y_* + \tfrac{\gamma}2 P\, \nabla_{y_*} \log p_t([y_{c,t}, y_*]) + \sqrt{\gamma}\, P^{1/2}\xi,
       \qquad \gamma = \psi\, \beta(t)\, \Delta t,

    each with a fresh noised context :math:`y_{c,t} \sim p_{t|0}(\cdot\mid y_c)`, preconditioned by
    :math:`P = K(x_*, x_*)` (``preconditioner="kernel"``) or :math:`P = I`. The target block of the joint score is
    the score of :math:`p_t(y_* \mid y_{c,t})`, so each inner loop targets that conditional; it tends to
    :math:`p(y_* \mid y_c)` as :math:`t \to 0`."""

    class Spec(_ReverseSpec):
        """Langevin conditional sampler (noised context, outer reverse steps, inner Langevin steps).

        The defaults (50 outer steps, 100 Langevin steps of psi = 10 at t <= 0.03) suit the default schedule
        beta in [0.1, 20], T = 1: the Langevin steps must mix where the noised context is close to the data.
        With exact GP scores they reproduce the GP posterior (variance within 2% at 16000 samples), whereas the
        paper's 100 x 5 steps at psi = 1 left a mean bias of 6 standard errors at 2000 samples."""

        steps: int = Field(50, ge=1, description="outer (reverse) steps from T to eps")
        inner_steps: int = Field(100, ge=0, description="Langevin steps after each reverse step")
        psi: float = Field(10.0, gt=0, description="Langevin step size gamma = psi * beta(t) * dt")
        tau: float | None = Field(0.03, gt=0, description="Langevin steps only at times t <= tau (None: at every time)")
        preconditioner: Literal["kernel", "identity"] = Field("kernel", description="Langevin preconditioner P")

    @classmethod
    def examples(cls):
        return [
            cls.Spec(steps=20, inner_steps=2),
            cls.Spec(steps=10, reverse="ode", preconditioner="identity", tau=None, psi=1.0),
        ]

    def _inner_evaluations(self) -> int:
        return self.spec.inner_steps

    def _correct(self, ctx: _Context, y: Tensor, t: float, dt: float) -> Tensor:
        s = self.spec
        if s.tau is not None and t > s.tau:
            return y
        process = ctx.process
        gamma = s.psi * process.beta(torch.tensor(t, dtype=torch.float64)).item() * dt
        tb = torch.full((ctx.n_samples,), t, dtype=y.dtype, device=y.device)
        for _ in range(s.inner_steps):
            z = ctx.joint(y, t)
            grad = process.score_from_output(ctx.output(tb, z), tb, inputs=ctx.joint_factor)[:, ctx.n_context :]
            xi = randn(y.shape, ctx.generator, dtype=torch.float64, device=y.device)
            if s.preconditioner == "kernel":
                step, noise = ctx.target.matvec(grad), ctx.target.sqrt_matvec(xi)
            else:
                step, noise = grad, xi
            y = y + (0.5 * gamma * step + math.sqrt(gamma) * noise).to(y.dtype)
        return y


class ReplacementConditional(_ReverseConditional, kind="replacement_conditional"):
    r"""The replacement baseline: reverse steps of :math:`[y_{c,t}, y_{*,t}]` with the context replaced by a
    fresh forward draw :math:`y_{c,t} \sim p_{t|0}(\cdot \mid y_c)` at every step, no Langevin correction."""

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
    :func:`~geodiffusion.samplers.log_likelihood` (exact divergence up to ``exact_max_dim`` = n*d)."""
    if not isinstance(process, OUGaussianProcess):
        raise ValueError(f"process: expected an OUGaussianProcess, got {type(process).__name__}")
    if values.dim() != 3:
        raise ValueError(f"values: expected [B, n, d], got {list(values.shape)}")
    factor = process.factor(inputs)
    batch_inputs = inputs.expand((values.shape[0],) + inputs.shape[-2:])

    def plain(t: Tensor, y: Tensor) -> Tensor:
        return process.score_from_output(score(t, y, inputs=batch_inputs), t, inputs=factor)

    return log_likelihood(
        plain,
        _AtInputs(process, factor),
        values,
        options=options,
        estimator=estimator,
        exact_max_dim=exact_max_dim,
        generator=generator,
    )


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
