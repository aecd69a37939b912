"""The Ornstein–Uhlenbeck process on the finite marginals of a function, converging to a Gaussian process.

For values :math:`Y \\in \\mathbb{R}^{n \\times d}` of a function at inputs :math:`x \\in \\mathbb{R}^{n \\times m}`
(flattened point-major to :math:`nd` coordinates), Geometric Neural Diffusion Processes (Mathieu et al., 2023) noise with

.. math:: dY_t = -\\tfrac12 \\beta(t) (Y_t - m(x))\\,dt + \\sqrt{\\beta(t)}\\, K(x, x)^{1/2}\\, dW_t,

whose transition law is :math:`\\mathcal{N}(m + e^{-B(t)/2}(y_0 - m),\\, (1 - e^{-B(t)}) K)` with
:math:`B(t) = \\int_0^t \\beta`, converging geometrically to :math:`\\pi = \\mathcal{N}(m(x), K(x, x))`.
The inputs are context: every method that needs :math:`K(x, x)` takes ``inputs`` (a tensor ``[..., n, m]``
or a :class:`KernelFactor` computed once by :meth:`OUGaussianProcess.factor` and reused).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion._validation import check_finite
from geodiffusion.kernels.base import Kernel
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["OUGaussianProcess", "KernelFactor", "FullGaussian", "Parametrisation", "gaussian_conditional", "shared_inputs"]

Parametrisation = Literal["plain", "kernel_preconditioned", "st_preconditioned"]


@dataclass(frozen=True)
class KernelFactor:
    r""":math:`K = K(x, x) + \text{jitter}\, I` ``[..., nd, nd]`` (point-major) and its Cholesky factor
    :math:`L`, both float64, for inputs ``[..., n, m]``; ``dtype`` is the inputs' dtype, that of results."""

    inputs: Tensor
    gram: Tensor
    cholesky: Tensor
    n: int
    d: int
    dtype: torch.dtype

    def matvec(self, v: Tensor) -> Tensor:
        """:math:`K v` for ``v [..., n, d]``, in float64."""
        return _unflat(self.gram @ _flat(v).unsqueeze(-1), self.d)

    def solve(self, v: Tensor) -> Tensor:
        r""":math:`K^{-1} v` for ``v [..., n, d]``, in float64."""
        return _unflat(torch.cholesky_solve(_flat(v).unsqueeze(-1), self.cholesky), self.d)

    def sqrt_matvec(self, v: Tensor) -> Tensor:
        """:math:`L v` for ``v [..., n, d]``, in float64."""
        return _unflat(self.cholesky @ _flat(v).unsqueeze(-1), self.d)

    def sqrt_t_solve(self, v: Tensor) -> Tensor:
        r""":math:`L^{-\top} v` for ``v [..., n, d]``, in float64."""
        return _unflat(torch.linalg.solve_triangular(self.cholesky.mT, _flat(v).unsqueeze(-1), upper=True), self.d)

    def sqrt_t_matvec(self, v: Tensor) -> Tensor:
        r""":math:`L^\top v` for ``v [..., n, d]``, in float64."""
        return _unflat(self.cholesky.mT @ _flat(v).unsqueeze(-1), self.d)

    def sqrt_solve(self, v: Tensor) -> Tensor:
        r""":math:`L^{-1} v` for ``v [..., n, d]``, in float64."""
        return _unflat(torch.linalg.solve_triangular(self.cholesky, _flat(v).unsqueeze(-1), upper=False), self.d)

    def logdet(self) -> Tensor:
        r""":math:`\log\det K` ``[...]``."""
        return 2 * torch.log(torch.diagonal(self.cholesky, dim1=-2, dim2=-1)).sum(-1)


def gaussian_conditional(
    gram: Tensor, n_context: int, residual: Tensor | None = None, context_cholesky: Tensor | None = None
) -> tuple[Tensor | None, Tensor]:
    r"""Given the first ``n_context`` coordinates of :math:`\mathcal{N}(0, K)`, ``gram`` :math:`K` ``[..., N, N]``:
    the mean :math:`K_{*c} K_{cc}^{-1} r` of the rest (``None`` without ``residual`` :math:`r` ``[..., n_context]``)
    and the covariance :math:`K_{**} - K_{*c} K_{cc}^{-1} K_{c*}`, symmetric, through the Cholesky factor of
    :math:`K_{cc}` (``context_cholesky`` if known, e.g. the leading block of the joint factor)."""
    k = n_context
    if not 0 < k < gram.shape[-1]:
        raise ValueError(f"n_context: expected 1 to {gram.shape[-1] - 1} of the {gram.shape[-1]} coordinates, got {k}")
    chol = torch.linalg.cholesky(gram[..., :k, :k]) if context_cholesky is None else context_cholesky
    cross = torch.linalg.solve_triangular(chol, gram[..., :k, k:], upper=False)  # L_cc^{-1} K_{c*}
    cov = gram[..., k:, k:] - cross.mT @ cross
    cov = 0.5 * (cov + cov.mT)
    if residual is None:
        return None, cov
    whitened = torch.linalg.solve_triangular(chol, residual.unsqueeze(-1), upper=False)
    return (cross.mT @ whitened).squeeze(-1), cov


def shared_inputs(inputs: Tensor) -> Tensor:
    """``inputs [B, n, m]`` as ``[1, n, m]`` when every batch entry holds the same input set (an expanded
    tensor, as samplers pass to score networks), so that K is built and factorised once, not B times."""
    if inputs.dim() == 3 and inputs.shape[0] > 1 and (inputs.stride(0) == 0 or bool((inputs == inputs[:1]).all())):
        return inputs[:1]
    return inputs


def _flat(v: Tensor) -> Tensor:
    return v.to(torch.float64).reshape(v.shape[:-2] + (v.shape[-2] * v.shape[-1],))


def _unflat(v: Tensor, d: int) -> Tensor:
    v = v.squeeze(-1)
    return v.reshape(v.shape[:-1] + (v.shape[-1] // d, d))


def _event_coef(c: Tensor) -> Tensor:
    """Per-sample coefficients ``[B]`` or ``[]`` as ``[B, 1, 1]`` against ``[B, n, d]`` values."""
    return c.reshape(c.shape + (1, 1)) if c.dim() else c


class FullGaussian:
    r""":math:`\mathcal{N}(\mu, s^2 K)` over values ``[..., n, d]`` with :math:`K = LL^\top` (a :class:`KernelFactor`)
    and per-sample scale ``std`` (``[]`` or ``[B]``); the marginals and prior of :class:`OUGaussianProcess`."""

    def __init__(self, mean: Tensor, factor: KernelFactor, std: Tensor) -> None:
        self.mean, self.factor = mean, factor
        self.std = torch.as_tensor(std, dtype=torch.float64, device=mean.device)
        self.event_ndim = 2

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """:math:`\\mu + s L \\xi`."""
        noise = randn(self.mean.shape, generator, dtype=torch.float64, device=self.mean.device)
        out = self.mean.to(torch.float64) + _event_coef(self.std) * self.factor.sqrt_matvec(noise)
        return out.to(self.mean.dtype)

    def log_prob(self, y: Tensor) -> Tensor:
        r""":math:`-\tfrac12 \|L^{-1}(y - \mu)\|^2 / s^2 - \tfrac12 \log\det K - nd \log s - \tfrac{nd}2 \log 2\pi`."""
        z = self.factor.sqrt_solve(y.to(torch.float64) - self.mean.to(torch.float64))
        nd = z.shape[-1] * z.shape[-2]
        maha = (z**2).flatten(-2).sum(-1) / self.std**2
        out = -0.5 * maha - 0.5 * self.factor.logdet() - nd * torch.log(self.std) - 0.5 * nd * math.log(2 * math.pi)
        return out.to(y.dtype)

    def score(self, y: Tensor) -> Tensor:
        r""":math:`\nabla_y \log p = -K^{-1}(y - \mu) / s^2`."""
        r = self.factor.solve(y.to(torch.float64) - self.mean.to(torch.float64))
        return (-r / _event_coef(self.std) ** 2).to(y.dtype)


class OUGaussianProcess(Process, kind="ou_gp"):
    r""":math:`dY = -\tfrac12\beta(t)(Y - m)\,dt + \sqrt{\beta(t)} K(x, x)^{1/2} dW`, linear
    :math:`\beta(t) = \beta_0 + (\beta_1 - \beta_0)t/T`; :math:`p_{t|0} = \mathcal{N}(m + e^{-B/2}(y_0 - m), (1 - e^{-B})K)`,
    prior :math:`\mathcal{N}(m, K)`. Values ``[..., n, d]`` (``event_ndim = 2``), inputs ``[..., n, m]``.

    ``diffusion(t)`` is the scalar :math:`g(t) = \sqrt{\beta(t)}`; the noise covariance is :math:`\beta(t) K`
    (:meth:`noise_covariance`). Score parametrisations (``spec.parametrisation``) of a network output
    :math:`o`, with :math:`\Sigma_t = (1 - e^{-B})K = S_t S_t^\top`, :math:`S_t = \sigma_t L`:
    ``plain`` :math:`o = \nabla \log p_t`; ``kernel_preconditioned`` :math:`o = K \nabla \log p_t` (the paper's
    best: the reverse drift needs no solve); ``st_preconditioned`` :math:`o = S_t^\top \nabla\log p_t` (for the
    transition, :math:`-\xi` in :math:`y_t = \mu_t + S_t \xi`).

    >>> import torch, geodiffusion as gd
    >>> process = gd.build({"kind": "ou_gp", "kernel": {"kind": "matern52", "lengthscale": 0.5}})
    >>> x = torch.linspace(-1, 1, 4, dtype=torch.float64).reshape(4, 1)
    >>> y0 = process.prior((2, 4, 1), inputs=x, dtype=torch.float64).sample(torch.Generator().manual_seed(0))
    >>> law = process.marginal(y0, 0.5, inputs=x)  # N(m + e^{-B/2}(y0 - m), (1 - e^{-B}) K)
    >>> law.sample().shape, law.log_prob(y0).shape
    (torch.Size([2, 4, 1]), torch.Size([2]))
    """

    class Spec(Spec):
        """OU process on function marginals with a GP limit."""

        kernel: component_spec(Kernel) = Field(
            default_factory=lambda: {"kind": "squared_exponential"}, description="limiting kernel k of the GP prior"
        )
        mean: float = Field(0.0, description="constant limiting mean m(x)")
        beta_min: float = Field(0.1, ge=0, description="beta(0)")
        beta_max: float = Field(20.0, gt=0, description="beta(T)")
        T: float = Field(1.0, gt=0, description="terminal time")
        jitter: float = Field(
            1e-6, ge=0, description="added to the diagonal of K(x, x): the limit is N(m, K + jitter I), used everywhere"
        )
        parametrisation: Parametrisation = Field("kernel_preconditioned", description="what a score network outputs")

        @model_validator(mode="after")
        def _ordered(self):
            if self.beta_max < self.beta_min:
                raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
            return self

    @classmethod
    def examples(cls):
        # Three outputs per point, so that the generic checks' example data [n, 3, 3] are 3 points of R^3 values.
        # The checks start from arbitrary (non-GP) data: the convergence of p_T to N(m, K) is then only as fast
        # as e^{-B(T)/2} relative to K's smallest eigenvalue, so K is kept well conditioned (a noise term).
        se = {"kind": "squared_exponential", "lengthscale": 0.5, "output_dim": 3}
        return [
            cls.Spec(kernel={"kind": "kernel_sum", "kernels": [se, {"kind": "white_noise", "variance": 0.1, "output_dim": 3}]}),
            cls.Spec(kernel={"kind": "curl_free", "dim": 3}, mean=0.5, jitter=0.05, parametrisation="st_preconditioned"),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.kernel: Kernel = build(self.spec.kernel, Kernel)

    # --- the schedule --------------------------------------------------------

    @property
    def T(self) -> float:
        return self.spec.T

    @property
    def event_ndim(self) -> int:
        return 2

    def beta(self, t: Tensor) -> Tensor:
        r""":math:`\beta(t)`."""
        s = self.spec
        return s.beta_min + (s.beta_max - s.beta_min) * t / s.T

    def integrated_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = \int_0^t \beta(s)\,ds`."""
        s = self.spec
        return s.beta_min * t + 0.5 * (s.beta_max - s.beta_min) * t**2 / s.T

    def mean_scale(self, t: Tensor) -> Tensor:
        r""":math:`e^{-B(t)/2}`."""
        return torch.exp(-0.5 * self.integrated_beta(t))

    def std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t = \sqrt{1 - e^{-B(t)}}`, so that :math:`\Sigma_t = \sigma_t^2 K`."""
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    # --- inputs as context -----------------------------------------------------

    def factor(self, inputs: Tensor | KernelFactor) -> KernelFactor:
        """:math:`K(x, x) + \\text{jitter}\\, I` and its Cholesky factor in float64, for inputs ``[..., n, m]``."""
        if isinstance(inputs, KernelFactor):
            return inputs
        check_finite("inputs", inputs)
        if not inputs.is_floating_point() or inputs.dim() < 2 or inputs.shape[-1] != self.kernel.input_dim:
            raise ValueError(f"inputs: expected a floating tensor [..., n, {self.kernel.input_dim}], got {list(inputs.shape)}")
        x64 = shared_inputs(inputs).to(torch.float64)
        gram = self.kernel.gram(x64)
        gram = gram + self.spec.jitter * torch.eye(gram.shape[-1], dtype=torch.float64, device=gram.device)
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool((info > 0).any()):
            raise ValueError(
                "inputs: K(x, x) is not positive definite in float64 (repeated inputs with a noise-free kernel?); "
                "raise spec.jitter or add a white_noise term to the kernel"
            )
        return KernelFactor(inputs, gram, chol, inputs.shape[-2], self.kernel.output_dim, inputs.dtype)

    def _values(self, y: Tensor, factor: KernelFactor, name: str) -> None:
        if y.shape[-2:] != (factor.n, factor.d):
            expected = f"[..., {factor.n}, {factor.d}]"
            raise ValueError(f"{name}: expected values {expected} at the {factor.n} inputs, got {list(y.shape)}")

    def example_context(self, x0: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Standard normal ``inputs [n, m]`` for example values ``x0 [..., n, d]``."""
        return {"inputs": randn((x0.shape[-2], self.kernel.input_dim), generator, dtype=x0.dtype, device=x0.device)}

    def limit_mean(self, y: Tensor) -> Tensor:
        """:math:`m(x)` broadcast to the values ``y``."""
        return torch.full_like(y, self.spec.mean)

    # --- the SDE ---------------------------------------------------------------

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        r""":math:`f(y, t) = -\tfrac12 \beta(t) (y - m)` (the mean is constant, so no inputs are needed)."""
        return -0.5 * self.beta(self.time_like(t, x)) * (x - self.spec.mean)

    def diffusion(self, t: Tensor | float) -> Tensor:
        r"""The scalar part :math:`\sqrt{\beta(t)}` of :math:`g(t) = \sqrt{\beta(t)} K^{1/2}`."""
        return torch.sqrt(self.beta(torch.as_tensor(t)))

    def noise_covariance(self, v: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> Tensor:
        r""":math:`g g^\top v = \beta(t) K v` for ``v [..., n, d]``."""
        factor = self.factor(inputs)
        return (self.beta(self.time_like(t, v)) * factor.matvec(v)).to(v.dtype)

    def marginal(self, x0: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> FullGaussian:
        r""":math:`p_{t|0}(\cdot \mid y_0) = \mathcal{N}(m + e^{-B/2}(y_0 - m), \sigma_t^2 K)`."""
        tt = self.check_inputs(x0, t, name="x0")
        factor = self.factor(inputs)
        self._values(x0, factor, "x0")
        mean = self.spec.mean + self.mean_scale(tt) * (x0 - self.spec.mean)
        t_flat = tt.reshape(tt.shape[: max(tt.dim() - 2, 0)])
        return FullGaussian(mean, factor, self.std(t_flat.to(torch.float64)))

    def prior(self, shape: tuple[int, ...], *, inputs: Tensor | KernelFactor, device=None, dtype=None) -> FullGaussian:
        r""":math:`\pi = \mathcal{N}(m(x), K(x, x))` over values of ``shape`` ``[..., n, d]``."""
        factor = self.factor(inputs)
        mean = torch.full(tuple(shape), self.spec.mean, device=device, dtype=dtype)
        self._values(mean, factor, "shape")
        return FullGaussian(mean, factor, torch.ones((), dtype=torch.float64, device=mean.device))

    def reverse_drift(self, x: Tensor, t: Tensor | float, score: Tensor, *, inputs: Tensor | KernelFactor) -> Tensor:
        r"""Reverse-SDE drift in forward time, :math:`f - \beta K \nabla \log p_t` (``score`` is the plain score)."""
        return self.drift(x, t) - self.noise_covariance(score, t, inputs=inputs)

    def probability_flow_drift(self, x: Tensor, t: Tensor | float, score: Tensor, *, inputs: Tensor | KernelFactor) -> Tensor:
        r"""Probability-flow velocity :math:`f - \tfrac12 \beta K \nabla \log p_t` (``score`` is the plain score)."""
        return self.drift(x, t) - 0.5 * self.noise_covariance(score, t, inputs=inputs)

    # --- score parametrisations --------------------------------------------------

    def denoising_pair(
        self, y0: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""A draw :math:`y_t = \mu_t + \sigma_t L \xi` from :math:`p_{t|0}(\cdot \mid y_0)` and the denoising
        score-matching target for a network in ``spec.parametrisation``: the output for
        :math:`\nabla \log p_{t|0}(y_t \mid y_0)`, i.e. :math:`-L^{-\top}\xi/\sigma_t`, :math:`-L\xi/\sigma_t` or :math:`-\xi`."""
        law = self.marginal(y0, t, inputs=inputs)
        xi = randn(y0.shape, generator, dtype=torch.float64, device=y0.device)
        sigma = _event_coef(law.std)
        y_t = (law.mean.to(torch.float64) + sigma * law.factor.sqrt_matvec(xi)).to(y0.dtype)
        kind = self.spec.parametrisation
        if kind == "st_preconditioned":
            target = -xi
        elif kind == "kernel_preconditioned":
            target = -law.factor.sqrt_matvec(xi) / sigma
        else:
            target = -law.factor.sqrt_t_solve(xi) / sigma
        return y_t, target.to(y0.dtype)

    def kernel_score(self, output: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> Tensor:
        r""":math:`K \nabla \log p_t` from a network output in ``spec.parametrisation``: :math:`Ko`, :math:`o`,
        or :math:`L o / \sigma_t` (since :math:`K S_t^{-\top} = L / \sigma_t`); no linear solve in any case."""
        factor = self.factor(inputs)
        kind = self.spec.parametrisation
        if kind == "kernel_preconditioned":
            return output
        if kind == "plain":
            return factor.matvec(output).to(output.dtype)
        sigma = self.std(self.time_like(t, output).to(torch.float64))
        return (factor.sqrt_matvec(output) / sigma).to(output.dtype)

    def score_from_output(self, output: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> Tensor:
        r""":math:`\nabla \log p_t` from a network output: :math:`o`, :math:`K^{-1} o` or :math:`S_t^{-\top} o`."""
        factor = self.factor(inputs)
        kind = self.spec.parametrisation
        if kind == "plain":
            return output
        if kind == "kernel_preconditioned":
            return factor.solve(output).to(output.dtype)
        sigma = self.std(self.time_like(t, output).to(torch.float64))
        return (factor.sqrt_t_solve(output) / sigma).to(output.dtype)

    def limit_output(self, y: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> Tensor:
        r"""The output for the limit's score :math:`\nabla \log \pi(y) = -K^{-1}(y - m)`: :math:`-(y - m)`
        (``kernel_preconditioned``, no solve), :math:`-K^{-1}(y - m)` or :math:`-\sigma_t L^{-1}(y - m)`."""
        residual = y - self.spec.mean
        kind = self.spec.parametrisation
        if kind == "kernel_preconditioned":
            return -residual
        factor = self.factor(inputs)
        self._values(y, factor, "y")
        if kind == "plain":
            return (-factor.solve(residual)).to(y.dtype)
        sigma = self.std(self.time_like(t, y).to(torch.float64))
        return (-sigma * factor.sqrt_solve(residual)).to(y.dtype)

    def output_from_score(self, score: Tensor, t: Tensor | float, *, inputs: Tensor | KernelFactor) -> Tensor:
        r"""What an exact network outputs for the score :math:`s`: :math:`s`, :math:`K s` or :math:`S_t^\top s`
        (the denoising target when :math:`s` is the transition's score)."""
        factor = self.factor(inputs)
        kind = self.spec.parametrisation
        if kind == "plain":
            return score
        if kind == "kernel_preconditioned":
            return factor.matvec(score).to(score.dtype)
        sigma = self.std(self.time_like(t, score).to(torch.float64))
        return (sigma * factor.sqrt_t_matvec(score)).to(score.dtype)
