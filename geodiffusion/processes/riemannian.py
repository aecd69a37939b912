r"""Brownian motion on a manifold with a heat kernel, time-changed by a noise schedule.

Following Lou et al., *Scaling Riemannian diffusion models* (2310.20030), and De Bortoli et al. (2022), the
forward process is :math:`dX_t = \sqrt{\beta(t)}\,dB^M_t` with :math:`B^M` Brownian motion on :math:`M`
(generator :math:`\Delta/2`), so :math:`X_t \mid X_0 = x_0` has the heat-kernel law
:math:`p_{\tau(t)}(x_0, \cdot)` with :math:`\tau(t) = \int_0^t \beta(s)\,ds`. Denoising score matching then has the
exact target :math:`\nabla_{x_t} \log p_{\tau(t)}(x_0, x_t)`, and on a compact :math:`M` the reference law
:math:`\pi` is the uniform one, :math:`\log \pi = -\log \mathrm{vol}(M)`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion._validation import check_finite
from geodiffusion.heat.base import HeatKernel
from geodiffusion.manifolds.base import Manifold
from geodiffusion.processes.base import Process
from geodiffusion.registry import build, spec_owner
from geodiffusion.spec import Spec, component_spec

__all__ = ["BrownianProcess", "HeatKernelMarginal", "UniformPrior", "HeatKernelScore"]


class HeatKernelMarginal:
    r"""The transition law :math:`p_{\tau}(x_0, \cdot)` of Brownian motion at (per-sample) times :math:`\tau`,
    with the interface of :class:`~geodiffusion.processes.DiagonalGaussian`: ``sample``, ``log_prob``, ``score``.

    Shapes: ``x0 [*batch, *point_shape]``, ``tau [*batch]``; ``log_prob`` returns ``[*batch]``.
    """

    def __init__(self, heat_kernel: HeatKernel, x0: Tensor, tau: Tensor) -> None:
        self.heat_kernel, self.x0, self.tau = heat_kernel, x0, tau

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        r"""One exact draw :math:`x \sim p_\tau(x_0, \cdot)` per point of ``x0``."""
        return self.heat_kernel.sample(self.x0, self.tau, generator)

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p_\tau(x_0, x)` w.r.t. the Riemannian volume."""
        return self.heat_kernel.log_prob(self.x0, x, self.tau)

    def score(self, x: Tensor) -> Tensor:
        r""":math:`\nabla_x \log p_\tau(x_0, x) \in T_x M`, the exact denoising target."""
        return self.heat_kernel.score(self.x0, x, self.tau)


class UniformPrior:
    r"""The uniform law :math:`\pi = \mathrm{vol}(M)^{-1}` of a compact manifold over samples of ``shape``
    ``[*batch, *point_shape]``: ``sample``, ``log_prob`` :math:`= -\log\mathrm{vol}(M)`, ``score`` :math:`= 0`."""

    def __init__(self, manifold: Manifold, shape: tuple[int, ...], *, device=None, dtype=None) -> None:
        nd = len(manifold.point_shape)
        if len(shape) < nd or tuple(shape[len(shape) - nd :]) != tuple(manifold.point_shape):
            raise ValueError(f"shape: expected [..., {', '.join(map(str, manifold.point_shape))}], got {list(shape)}")
        self.manifold, self.shape = manifold, tuple(shape)
        self.device, self.dtype = device, dtype if dtype is not None else torch.get_default_dtype()

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        batch = self.shape[: len(self.shape) - len(self.manifold.point_shape)]
        x = self.manifold.random_uniform(math.prod(batch), generator, device=self.device, dtype=self.dtype)
        return x.reshape(self.shape)

    def log_prob(self, x: Tensor) -> Tensor:
        return self.manifold.reference_log_prob(x)

    def score(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


class BrownianProcess(Process, kind="brownian"):
    r"""Time-changed Brownian motion :math:`dX_t = \sqrt{\beta(t)}\,dB^M_t` on a compact manifold :math:`M` with
    a heat kernel: drift :math:`f = 0`, diffusion :math:`g(t) = \sqrt{\beta(t)}`, linear schedule
    :math:`\beta(t) = \beta_{\min} + (\beta_{\max} - \beta_{\min})\,t/T`, time change
    :math:`\tau(t) = \beta_{\min} t + \tfrac12(\beta_{\max} - \beta_{\min})t^2/T`, marginal
    :math:`p_{t|0}(x \mid x_0) = p_{\tau(t)}(x_0, x)` (the manifold's heat kernel), prior uniform on :math:`M`.

    Choose :math:`\tau(T)` a few times the inverse spectral gap (:math:`1/\lambda_1 = 2/n` on :math:`S^n`, 2 on the
    torus) so that :math:`p_{\tau(T)}` is uniform to the accuracy needed: the defaults give :math:`\tau(T) \approx 5`.

    >>> import geodiffusion as gd
    >>> process = gd.build({"kind": "brownian", "manifold": {"kind": "sphere", "dim": 2}})
    >>> x0 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    >>> bool(process.manifold.belongs(process.marginal(x0, 0.5).sample(torch.Generator().manual_seed(0))).all())
    True
    """

    class Spec(Spec):
        """Brownian motion on a compact manifold with a linear beta schedule."""

        manifold: component_spec(Manifold)
        T: float = Field(1.0, gt=0, description="terminal time")
        beta_min: float = Field(1e-3, ge=0, description="beta(0)")
        beta_max: float = Field(10.0, gt=0, description="beta(T); tau(T) = T (beta_min + beta_max) / 2")
        heat_kernel: dict[str, Any] = Field(
            default_factory=dict, description="options of manifold.heat_kernel(...), e.g. {'estimator': 'eigen'}"
        )

        @model_validator(mode="after")
        def _check(self):
            if self.beta_max < self.beta_min:
                raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
            owner = spec_owner(type(self.manifold))
            # capabilities may depend on the instance (a product is compact when its factor is): ask a built one
            manifold = owner(self.manifold) if owner is not None else None
            if manifold is None or not manifold.compact or not manifold.has_heat_kernel:
                name = getattr(owner, "__name__", type(self.manifold).__name__)
                raise ValueError(
                    f"manifold: Brownian noising needs a compact manifold with a heat kernel (a uniform prior and "
                    f"exact marginals); {name} has compact={getattr(manifold, 'compact', None)}, "
                    f"has_heat_kernel={getattr(manifold, 'has_heat_kernel', None)}"
                )
            return self

    @classmethod
    def examples(cls):
        return [
            cls.Spec(manifold={"kind": "sphere", "dim": 2}),
            # the circle mixes slowest (lambda_1 = 1/2): tau(T) = 10 makes p_T uniform to ~1e-4 in KL
            cls.Spec(manifold={"kind": "torus", "dim": 2}, beta_max=20.0),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self._manifold = build(self.spec.manifold, Manifold)
        self._heat_kernel = self._manifold.heat_kernel(**self.spec.heat_kernel)

    # --- geometry and schedule -------------------------------------------------

    @property
    def manifold(self) -> Manifold:
        return self._manifold

    @property
    def heat_kernel(self) -> HeatKernel:
        r"""The heat kernel :math:`p_\tau(x_0, x)` giving the marginals."""
        return self._heat_kernel

    @property
    def T(self) -> float:
        return self.spec.T

    @property
    def event_ndim(self) -> int:
        return len(self._manifold.point_shape)

    def beta(self, t: Tensor | float) -> Tensor:
        r""":math:`\beta(t) = \beta_{\min} + (\beta_{\max} - \beta_{\min})\,t/T`."""
        s = self.spec
        return s.beta_min + (s.beta_max - s.beta_min) * torch.as_tensor(t) / s.T

    def tau(self, t: Tensor | float) -> Tensor:
        r"""The Brownian time :math:`\tau(t) = \int_0^t \beta(s)\,ds`."""
        s, t = self.spec, torch.as_tensor(t)
        return s.beta_min * t + 0.5 * (s.beta_max - s.beta_min) * t**2 / s.T

    def sigma(self, t: Tensor | float) -> Tensor:
        r""":math:`\sigma_t = \sqrt{\tau(t)}`: the spread of :math:`p_{t|0}` as :math:`t \to 0`, where
        :math:`\|\nabla \log p_{\tau}\| \sim \sqrt{n}/\sigma_t`; the scale used to precondition and weight scores."""
        return torch.sqrt(self.tau(t))

    # --- the Process interface ---------------------------------------------------

    def drift(self, x: Tensor, t) -> Tensor:
        return torch.zeros_like(x)

    def diffusion(self, t) -> Tensor:
        return torch.sqrt(self.beta(t))

    def _batch_time(self, x: Tensor, t, name: str) -> Tensor:
        """``t`` validated in [0, T] and broadcast to the batch shape of points ``x``."""
        self._manifold.check_point(name, x)
        t = self.check_inputs(x, t, name=name)
        batch_ndim = x.dim() - self.event_ndim
        return t.reshape(t.shape[:batch_ndim]).expand(x.shape[:batch_ndim])

    def marginal(self, x0: Tensor, t: Tensor | float) -> HeatKernelMarginal:
        r""":math:`p_{\tau(t)}(x_0, \cdot)`; needs :math:`\tau(t) > 0` (at :math:`\tau = 0` the law is a point mass)."""
        t = self._batch_time(x0, t, "x0")
        tau = self.tau(t)
        if tau.numel() and bool((tau <= 0).any()):
            raise ValueError("t: the marginal at tau(t) = 0 is a point mass; expected t > 0 (or beta_min > 0 and t > 0)")
        return HeatKernelMarginal(self._heat_kernel, x0, tau)

    def prior(self, shape, *, device=None, dtype=None) -> UniformPrior:
        r""":math:`\pi`: uniform on :math:`M`, :math:`\log\pi = -\log\mathrm{vol}(M)`."""
        return UniformPrior(self._manifold, tuple(shape), device=device, dtype=dtype)


class HeatKernelScore:
    r"""Exact score of heat-kernel data noised by a :class:`BrownianProcess`: for data
    :math:`x_0 \sim p_{s_0}(\mu, \cdot)` (:math:`s_0 = 0`: the single point :math:`\mu`) the semigroup property gives
    every marginal in closed form, :math:`p_t = p_{s_0 + \tau(t)}(\mu, \cdot)`, so
    :math:`\nabla \log p_t(x) = \nabla_x \log p_{s_0 + \tau(t)}(\mu, x)`: a training-free reference for samplers,
    likelihoods and losses on manifolds (the analogue of :class:`~geodiffusion.testing.GaussianScore`).

    Shapes: ``t [B]`` or ``[]``, ``x [B, *point_shape]`` -> ``[B, *point_shape]``; ``mu [*point_shape]``.
    """

    def __init__(self, process: BrownianProcess, mu: Tensor, s0: float = 0.0) -> None:
        if not isinstance(getattr(process, "heat_kernel", None), HeatKernel):
            raise ValueError(
                f"HeatKernelScore needs a process with a heat kernel (BrownianProcess), got {type(process).__name__}"
            )
        check_finite("mu", mu)
        if tuple(mu.shape) != tuple(process.manifold.point_shape):
            raise ValueError(f"mu: expected one point of shape {list(process.manifold.point_shape)}, got {list(mu.shape)}")
        if not bool(process.manifold.belongs(mu).all()):
            raise ValueError(f"mu: expected a point of {type(process.manifold).__name__}")
        if not s0 >= 0:
            raise ValueError(f"s0: expected a time >= 0, got {s0}")
        self.process, self.mu, self.s0 = process, mu, float(s0)

    def time(self, t: Tensor) -> Tensor:
        r"""The Brownian time :math:`s_0 + \tau(t)` of the noised data law."""
        return self.s0 + self.process.tau(t)

    def _args(self, t, x: Tensor) -> tuple[Tensor, Tensor]:
        batch = x.shape[: x.dim() - len(self.process.manifold.point_shape)]
        t = torch.as_tensor(t, dtype=x.real.dtype, device=x.device)
        return self.mu.to(x).expand(x.shape), self.time(t).expand(batch)

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        mu, s = self._args(t, x)
        heat = self.process.heat_kernel
        if not (torch.is_grad_enabled() and x.requires_grad):
            return heat.score(mu, x, s)
        # differentiable in x (closed-form scores may be computed without a graph): divergences need it
        (grad,) = torch.autograd.grad(heat.log_prob(mu, x, s).sum(), x, create_graph=True)
        return self.process.manifold.proj(x, grad)

    def log_prob(self, t: Tensor, x: Tensor) -> Tensor:
        r""":math:`\log p_t(x) = \log p_{s_0 + \tau(t)}(\mu, x)`."""
        mu, s = self._args(t, x)
        return self.process.heat_kernel.log_prob(mu, x, s)

    def sample_data(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` data points :math:`x_0 \sim p_{s_0}(\mu, \cdot)` (copies of :math:`\mu` when :math:`s_0 = 0`)."""
        mu = self.mu.expand((n,) + tuple(self.mu.shape))
        if self.s0 == 0:
            return mu.clone()
        return self.process.heat_kernel.sample(
            mu, torch.full((n,), self.s0, dtype=self.mu.real.dtype, device=self.mu.device), generator
        )
