r"""Denoising diffusion bridges (DDBM; Zhou et al., 2023) between paired distributions, VP and VE.

A linear forward SDE :math:`dX = f(t) X\,dt + g(t)\,dW` with :math:`p(x_t \mid x_0) = \mathcal N(\alpha_t x_0, \sigma_t^2 I)`
is pinned at a given end point :math:`x_T` by Doob's h-transform,

.. math:: dX_t = [f(X_t, t) + g(t)^2 h(X_t, t, x_T)]\,dt + g(t)\,dW_t, \qquad h = \nabla_{x_t} \log p(x_T \mid x_t),

whose marginals started at :math:`x_0` are Gaussian, :math:`q(x_t \mid x_0, x_T) = \mathcal N(a_t x_T + b_t x_0, c_t^2 I)`
with :math:`r_t = \mathrm{SNR}_T / \mathrm{SNR}_t` (:math:`\mathrm{SNR}_t = \alpha_t^2/\sigma_t^2`),
:math:`a_t = r_t \alpha_t / \alpha_T`, :math:`b_t = \alpha_t (1 - r_t)`, :math:`c_t^2 = \sigma_t^2 (1 - r_t)`:
:math:`x_0` at :math:`t = 0` and :math:`x_T` at :math:`t = T`. A model learns the bridge score
:math:`s(t, x, x_T) \approx \nabla_{x_t} \log q(x_t \mid x_T)` by bridge score matching against
:math:`\nabla_{x_t} \log q(x_t \mid x_0, x_T)`, and samples run the reverse SDE
:math:`dx = [f + g^2 h - g^2 s]\,dt + g\,d\bar W` (or its probability flow, :math:`f + g^2 h - \tfrac12 g^2 s`)
from :math:`x_T` (:mod:`geodiffusion.samplers.bridges`).

Structure preservation (SPDM, 2402.19369): every coefficient is a scalar per time, so with a
:math:`G`-equivariant model :math:`s(t, g x, g x_T) = g\, s(t, x, x_T)` and equivariant noise, :math:`g \cdot x_T`
is carried to :math:`g \cdot x_0`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from geodiffusion._random import rand, randn
from geodiffusion._validation import check_finite, check_same_device_dtype, check_time, expand_time
from geodiffusion.processes.base import LinearGaussianProcess
from geodiffusion.processes.distributions import DiagonalGaussian
from geodiffusion.processes.euclidean import VEProcess, VPProcess, _EuclideanSpec, _GeometricSigmaSpec
from geodiffusion.registry import Component
from geodiffusion.spec import Spec

__all__ = [
    "DiffusionBridge",
    "VPBridge",
    "VEBridge",
    "BridgeScoreFn",
    "BridgeWeighting",
    "bridge_score_matching_loss",
    "DenoiserBridgeScore",
    "GaussianBridgeScore",
    "bridge_errors",
    "check_bridge",
]

BridgeScoreFn = Callable[..., Tensor]
"""``score(t, x, x_T=x_T) -> s(t, x, x_T)``, shaped like ``x``: the bridge score :math:`\\nabla_x \\log q(x_t \\mid x_T)`."""

BridgeWeighting = Literal["x0", "score"]


class DiffusionBridge(Component, family=True):
    r"""Diffusion bridge of a linear Gaussian :attr:`process` pinned at :math:`x_T` (Doob h-transform).

    Template methods give the pinned drift :math:`f + g^2 h`, the closed-form marginal
    :math:`q(x_t \mid x_0, x_T) = \mathcal N(a_t x_T + b_t x_0, c_t^2 I)` and the reverse drifts; a concrete bridge
    supplies only its forward process. Shapes: ``x, x0, x_T [B, *event_shape]``, ``t`` scalar or ``[B]``.
    """

    @property
    @abstractmethod
    def process(self) -> LinearGaussianProcess:
        r"""The unpinned forward process :math:`dX = f\,dt + g\,dW`,
        :math:`p(x_t \mid x_0) = \mathcal N(\alpha_t x_0, \sigma_t^2 I)`."""

    # --- the schedule ---------------------------------------------------------------------------------

    @property
    def T(self) -> float:
        """Terminal time :math:`T`, where the bridge is pinned."""
        return self.process.T

    @property
    def event_ndim(self) -> int:
        return self.process.event_ndim

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r""":math:`(a_t, b_t, c_t, k_t)`: the marginal's weights of :math:`x_T` and :math:`x_0`, its std, and
        :math:`k_t = \alpha_T / \alpha_t`. Computed in float64 from log-SNRs (:math:`1 - r_t` by ``expm1``, so the
        coefficients stay accurate as :math:`t \to T`), returned in ``t``'s dtype."""
        p = self.process
        t64 = t.to(torch.float64)
        T = torch.full((), p.T, dtype=torch.float64, device=t.device)
        log_alpha_t, log_alpha_T = torch.log(p.mean_scale(t64)), torch.log(p.mean_scale(T))
        log_snr_t = 2 * (log_alpha_t - torch.log(p.std(t64)))  # +inf at t = 0 (sigma_0 = 0)
        log_snr_T = 2 * (log_alpha_T - torch.log(p.std(T)))
        one_minus_r = -torch.expm1(log_snr_T - log_snr_t)  # 1 - r_t, in [0, 1]
        a = torch.exp(log_snr_T - log_snr_t + log_alpha_t - log_alpha_T)
        b = torch.exp(log_alpha_t) * one_minus_r
        c = p.std(t64) * torch.sqrt(one_minus_r)
        k = torch.exp(log_alpha_T - log_alpha_t)
        return a.to(t.dtype), b.to(t.dtype), c.to(t.dtype), k.to(t.dtype)

    def transition_variance(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_{T|t}^2 = \sigma_T^2 - k_t^2 \sigma_t^2 = \sigma_T^2 (1 - r_t)`, the variance of :math:`x_T`
        given :math:`x_t`."""
        p = self.process
        t64 = t.to(torch.float64)
        T = torch.full((), p.T, dtype=torch.float64, device=t.device)
        log_snr = lambda s: 2 * (torch.log(p.mean_scale(s)) - torch.log(p.std(s)))  # noqa: E731
        return (p.std(T) ** 2 * -torch.expm1(log_snr(T) - log_snr(t64))).to(t.dtype)

    # --- inputs ---------------------------------------------------------------------------------------

    def check_inputs(self, x: Tensor, t: Tensor | float, x_T: Tensor, *, name: str = "x") -> Tensor:
        """Validate ``x`` and ``x_T`` (finite, same shape, device and dtype) and ``t`` in [0, T];
        return ``t`` broadcast to ``x``."""
        check_finite(name, x)
        check_finite("x_T", x_T)
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a floating tensor, got {x.dtype}")
        check_same_device_dtype(**{name: x, "x_T": x_T})
        if x.dim() < self.event_ndim:
            raise ValueError(f"{name}: expected at least {self.event_ndim} axes, got shape {list(x.shape)}")
        if x_T.shape != x.shape:
            raise ValueError(f"x_T: expected the shape of {name} {list(x.shape)}, got {list(x_T.shape)}")
        return expand_time(check_time(t, self.T, x), x)

    def _time(self, t: Tensor | float, x: Tensor) -> Tensor:
        # idempotent: times already broadcast against x (one entry per sample, trailing ones) pass through
        if isinstance(t, Tensor) and t.dim() == x.dim() and x.dim() > 0:
            return t.to(dtype=x.dtype, device=x.device)
        return self.process.time_like(t, x)

    # --- the pinned SDE -------------------------------------------------------------------------------

    def diffusion(self, t: Tensor | float) -> Tensor:
        r""":math:`g(t)`, the forward process's diffusion coefficient (pinning changes only the drift)."""
        return self.process.diffusion(t)

    def pinning_score(self, x: Tensor, t: Tensor | float, x_T: Tensor) -> Tensor:
        r""":math:`h(x, t, x_T) = \nabla_x \log p(x_T \mid x_t = x) = k_t (x_T - k_t x) / \sigma_{T|t}^2`
        (infinite at :math:`t = T`)."""
        t = self._time(t, x)
        _, _, _, k = self.coefficients(t)
        return k * (x_T - k * x) / self.transition_variance(t)

    def drift(self, x: Tensor, t: Tensor | float, x_T: Tensor) -> Tensor:
        r"""Drift of the pinned SDE, :math:`f(x, t) + g(t)^2 h(x, t, x_T)`."""
        t = self._time(t, x)
        # the forward process takes times of shape [] or [B]: its drift is a per-sample scalar field here
        t_batch = t.reshape(()) if x.dim() <= 1 else t.flatten(1)[:, 0].expand(x.shape[0])
        return self.process.drift(x, t_batch) + self.diffusion(t) ** 2 * self.pinning_score(x, t, x_T)

    def marginal(self, x0: Tensor, t: Tensor | float, x_T: Tensor) -> DiagonalGaussian:
        r"""The bridge marginal :math:`q(x_t \mid x_0, x_T) = \mathcal N(a_t x_T + b_t x_0, c_t^2 I)`; its ``score`` is the
        bridge score-matching target :math:`\nabla_{x_t} \log q(x_t \mid x_0, x_T)`."""
        t = self.check_inputs(x0, t, x_T, name="x0")
        a, b, c, _ = self.coefficients(t)
        return DiagonalGaussian(a * x_T + b * x0, c, self.event_ndim)

    def reverse_drift(self, x: Tensor, t: Tensor | float, score: Tensor, x_T: Tensor) -> Tensor:
        r"""Drift of the reverse SDE in forward time, :math:`f + g^2 h - g^2 s` (:math:`s` the bridge score)."""
        t = self._time(t, x)
        return self.drift(x, t, x_T) - self.diffusion(t) ** 2 * score

    def probability_flow_drift(self, x: Tensor, t: Tensor | float, score: Tensor, x_T: Tensor) -> Tensor:
        r"""Velocity of the probability-flow ODE of :math:`q(x_t \mid x_T)`, :math:`f + g^2 h - \tfrac12 g^2 s`."""
        t = self._time(t, x)
        return self.drift(x, t, x_T) - 0.5 * self.diffusion(t) ** 2 * score

    def score_from_denoiser(self, x: Tensor, t: Tensor | float, x_T: Tensor, x0_hat: Tensor) -> Tensor:
        r"""Bridge score of a data prediction :math:`\hat x_0 \approx \mathbb E[x_0 \mid x_t, x_T]`,
        :math:`s = -(x - a_t x_T - b_t \hat x_0) / c_t^2` (Tweedie's formula for the bridge marginal)."""
        a, b, c, _ = self.coefficients(self._time(t, x))
        return -(x - a * x_T - b * x0_hat) / c**2


class _LinearBetaBridgeSpec(Spec):
    T: float = Field(1.0, gt=0, description="terminal time, where the bridge is pinned at x_T")
    event_ndim: int = Field(1, ge=0, description="trailing axes of x forming one sample")
    beta_min: float = Field(0.1, ge=0, description="beta(0) of the VP forward process")
    beta_max: float = Field(2.0, gt=0, description="beta(T) of the VP forward process")

    @model_validator(mode="after")
    def _ordered(self):
        if self.beta_max < self.beta_min:
            raise ValueError(f"beta_max ({self.beta_max}) must be >= beta_min ({self.beta_min})")
        return self


class VPBridge(DiffusionBridge, kind="vp_bridge"):
    r"""VP diffusion bridge: :class:`~geodiffusion.processes.VPProcess`
    (:math:`f = -\tfrac12\beta(t)x`, :math:`g = \sqrt{\beta(t)}`) pinned at :math:`x_T`.
    The default :math:`\beta \in [0.1, 2]` is DDBM's: the end points stay informative."""

    class Spec(_LinearBetaBridgeSpec):
        """VP denoising diffusion bridge (DDBM) with a linear beta schedule."""

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self._process = VPProcess(T=s.T, event_ndim=s.event_ndim, beta_min=s.beta_min, beta_max=s.beta_max)

    @property
    def process(self) -> VPProcess:
        return self._process


class VEBridge(DiffusionBridge, kind="ve_bridge"):
    r"""VE diffusion bridge: :class:`~geodiffusion.processes.VEProcess` (:math:`f = 0`) pinned at :math:`x_T`;
    :math:`q(x_t \mid x_0, x_T) = \mathcal N(r_t x_T + (1 - r_t) x_0, \sigma_t^2 (1 - r_t) I)`,
    :math:`r_t = \sigma_t^2/\sigma_T^2` (a Brownian bridge in the time :math:`\sigma_t^2`)."""

    class Spec(_GeometricSigmaSpec, _EuclideanSpec):
        """VE denoising diffusion bridge (DDBM) with a geometric noise schedule."""

        T: float = Field(1.0, gt=0, description="terminal time, where the bridge is pinned at x_T")
        sigma_max: float = Field(1.0, gt=0, description="sigma(T): the bridge's std peaks at about sigma_max / 2")

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self._process = VEProcess(T=s.T, event_ndim=s.event_ndim, sigma_min=s.sigma_min, sigma_max=s.sigma_max)

    @property
    def process(self) -> VEProcess:
        return self._process


# --- bridge score matching ----------------------------------------------------------------------------


def bridge_score_matching_loss(
    score: BridgeScoreFn,
    bridge: DiffusionBridge,
    x0: Tensor,
    x_T: Tensor,
    *,
    generator: torch.Generator | None = None,
    weighting: BridgeWeighting = "x0",
    eps: float = 1e-3,
) -> Tensor:
    r"""Bridge score matching :math:`\mathbb E_{t \sim U[\varepsilon, T - \varepsilon]}\,\lambda(t)\,
    \|s_\theta(t, x_t, x_T) - \nabla_{x_t} \log q(x_t \mid x_0, x_T)\|^2` with :math:`x_t \sim q(\cdot \mid x_0, x_T)`,
    one :math:`t` per pair, summed over the event axes and averaged over the batch.

    Weightings: ``"score"`` :math:`\lambda = c_t^2` (noise prediction, :math:`\|c_t s + z\|^2`); ``"x0"``
    :math:`\lambda = c_t^4 / b_t^2`, which for :math:`s = -(x - a_t x_T - b_t \hat x_0)/c_t^2` is :math:`\|\hat x_0 - x_0\|^2`
    (DDBM's data-prediction loss; it is evaluated as :math:`\|(c_t^2 s + c_t z)/b_t\|^2`, finite for :math:`t < T`)."""
    if weighting not in ("x0", "score"):
        raise ValueError(f"weighting: expected 'x0' or 'score', got {weighting!r}")
    if not 0.0 < eps < 0.5 * bridge.T:
        raise ValueError(f"eps: expected a value in (0, T/2 = {bridge.T / 2}), got {eps}")
    bridge.check_inputs(x0, eps, x_T, name="x0")
    if x0.dim() < bridge.event_ndim + 1 or x0.shape[0] == 0:
        raise ValueError(f"x0: expected a non-empty batch before {bridge.event_ndim} event axes, got shape {list(x0.shape)}")
    batch = x0.shape[0]
    t = eps + (bridge.T - 2 * eps) * rand((batch,), generator, dtype=x0.dtype, device=x0.device)
    tt = bridge._time(t, x0)
    a, b, c, _ = bridge.coefficients(tt)
    z = randn(x0.shape, generator, dtype=x0.dtype, device=x0.device)
    x_t = a * x_T + b * x0 + c * z
    prediction = score(t, x_t, x_T=x_T)
    if not isinstance(prediction, Tensor) or prediction.shape != x_t.shape:
        got = list(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
        raise ValueError(f"score output: expected the shape of x {list(x_t.shape)}, got {got}")
    # target score is -z / c; residuals scaled so each weighting is a well-conditioned regression
    residual = c * prediction + z if weighting == "score" else (c**2 * prediction + c * z) / b
    nd = bridge.event_ndim
    return residual.pow(2).flatten(residual.dim() - nd).sum(-1).mean() if nd else residual.pow(2).mean()


class DenoiserBridgeScore(nn.Module):
    r"""Bridge score from an image network that predicts data: :math:`\hat x_0 = N_\theta(t, [x_t, x_T])_{:C}`, the
    network seeing :math:`x_t` and :math:`x_T` stacked as channels (so it has ``image_channels = 2C``) and its first
    :math:`C` output channels taken as :math:`\hat x_0`; then :math:`s = -(x - a_t x_T - b_t \hat x_0)/c_t^2`.

    Stacking channels and selecting them commute with any action on the spatial axes, so a :math:`G`-equivariant
    network (weight-tied or frame-averaged) gives :math:`s(t, g x, g x_T) = g\, s(t, x, x_T)`.
    Shapes: ``t [B]`` or ``[]``, ``x, x_T [B, C, H, W]``.
    """

    def __init__(self, net: nn.Module, bridge: DiffusionBridge) -> None:
        super().__init__()
        if not isinstance(bridge, DiffusionBridge):
            raise TypeError(f"bridge: expected a DiffusionBridge, got {type(bridge).__name__}")
        self.net, self.bridge = net, bridge

    def denoise(self, t: Tensor, x: Tensor, x_T: Tensor) -> Tensor:
        r""":math:`\hat x_0(t, x_t, x_T)`."""
        if x.dim() != 4 or x_T.shape != x.shape:
            raise ValueError(f"x and x_T: expected equal shapes [B, C, H, W], got {list(x.shape)} and {list(x_T.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        stacked = torch.cat([x, x_T], 1)
        out = self.net(t, stacked)
        if out.shape != stacked.shape:
            raise ValueError(f"net: expected an image network on 2C = {stacked.shape[1]} channels, got output {list(out.shape)}")
        return out[:, : x.shape[1]]

    def forward(self, t: Tensor, x: Tensor, x_T: Tensor) -> Tensor:
        return self.bridge.score_from_denoiser(x, t, x_T, self.denoise(t, x, x_T))


# --- exact-score oracle ---------------------------------------------------------------------------------


class GaussianBridgeScore:
    r"""Exact bridge score for Gaussian paired data :math:`x_0 \mid x_T \sim \mathcal N(A x_T + m, C)` on
    :math:`\mathbb R^d`: :math:`q(x_t \mid x_T) = \mathcal N(\mu_t, \Sigma_t)` with :math:`\mu_t = a_t x_T + b_t (A x_T + m)`,
    :math:`\Sigma_t = b_t^2 C + c_t^2 I`, so :math:`s(t, x, x_T) = -\Sigma_t^{-1}(x - \mu_t)`. A bridge sampler driven by it
    must reproduce the conditional law :math:`q(x_\varepsilon \mid x_T)` (:meth:`moments`) without any training.

    Shapes: ``x, x_T [B, d]``; ``A [d, d]``, ``m [d]``, ``C [d, d]`` (positive definite)."""

    def __init__(self, bridge: DiffusionBridge, A: Tensor, m: Tensor, C: Tensor) -> None:
        d = m.shape[-1]
        if bridge.event_ndim != 1 or A.shape != (d, d) or C.shape != (d, d) or m.shape != (d,):
            got = f"{bridge.event_ndim}, {list(A.shape)}, {list(C.shape)}, {list(m.shape)}"
            raise ValueError(f"expected event_ndim 1, A and C [d, d] and m [d]; got {got}")
        self.bridge, self.A, self.m, self.C = bridge, A, m, C

    def moments(self, t: Tensor | float, x_T: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`(\mu_t [B, d], \Sigma_t [B, d, d])` of :math:`q(x_t \mid x_T)`."""
        t = self.bridge._time(t, x_T)
        a, b, c, _ = self.bridge.coefficients(t)
        mean = a * x_T + b * (x_T @ self.A.T + self.m)
        eye = torch.eye(self.m.shape[0], dtype=x_T.dtype, device=x_T.device)
        cov = b[..., None] ** 2 * self.C + c[..., None] ** 2 * eye
        return mean, cov

    def __call__(self, t: Tensor, x: Tensor, x_T: Tensor) -> Tensor:
        mean, cov = self.moments(t, x_T)
        return -torch.linalg.solve(cov, (x - mean).unsqueeze(-1)).squeeze(-1)


# --- property check ---------------------------------------------------------------------------------------


def bridge_errors(bridge: DiffusionBridge, *, n: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, float]:
    r"""Identities of a bridge on random :math:`x_0, x_T`: the marginal's score equals autograd of its log-density;
    the marginal solves the Fokker–Planck equation of the pinned SDE,
    :math:`\partial_t \log q = -\nabla\cdot b - b\cdot\nabla\log q + \tfrac12 g^2(\Delta \log q + |\nabla \log q|^2)` with
    :math:`b = f + g^2 h`; the marginal is :math:`\delta_{x_0}` at :math:`t = 0` and :math:`\delta_{x_T}` at :math:`t = T`;
    the pinning score is :math:`\nabla_{x_t} \log p(x_T \mid x_t)` of the forward marginal; and ``t > T`` is rejected."""
    from geodiffusion.testing.checks import _err  # testing imports the processes package: import lazily

    gen = torch.Generator().manual_seed(seed)
    shape = (n,) + (3,) * bridge.event_ndim
    x0 = torch.randn(shape, generator=gen, dtype=dtype)
    x_T = torch.randn(shape, generator=gen, dtype=dtype)
    T = bridge.T
    score_worst = fp_worst = pin_worst = 0.0
    for frac in (0.05, 0.4, 0.9):
        t = torch.full((n,), frac * T, dtype=dtype)
        x = bridge.marginal(x0, t, x_T).sample(gen)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            tr = t.detach().requires_grad_(True)
            logq = bridge.marginal(x0, tr, x_T).log_prob(xr)
            grad_x, grad_t = torch.autograd.grad(logq.sum(), (xr, tr), create_graph=True)
            drift = bridge.drift(xr, t, x_T)
            flat_grad, flat_drift = grad_x.flatten(1), drift.flatten(1)
            lap = torch.zeros(n, dtype=dtype)
            div = torch.zeros(n, dtype=dtype)
            for i in range(flat_grad.shape[1]):
                (second,) = torch.autograd.grad(flat_grad[:, i].sum(), xr, retain_graph=True)
                (ddrift,) = torch.autograd.grad(flat_drift[:, i].sum(), xr, retain_graph=True)
                lap = lap + second.flatten(1)[:, i]
                div = div + ddrift.flatten(1)[:, i]
            # h = grad_x log p(x_T | x_t): the forward transition from t to T is N(k x, sigma_{T|t}^2 I)
            _, _, _, k = bridge.coefficients(bridge._time(t, x))
            var = bridge.transition_variance(bridge._time(t, x))
            log_pT = (-0.5 * (x_T - k * xr) ** 2 / var).flatten(1).sum(-1)
            (grad_pin,) = torch.autograd.grad(log_pT.sum(), xr)
        score_worst = max(score_worst, _err(bridge.marginal(x0, t, x_T).score(x), grad_x))
        pin_worst = max(pin_worst, _err(bridge.pinning_score(x, t, x_T), grad_pin))
        g2 = bridge.diffusion(bridge._time(t, x)).flatten(1)[:, 0] ** 2
        sq = grad_x.detach().pow(2).flatten(1).sum(-1)
        rhs = -div - (drift.detach() * grad_x.detach()).flatten(1).sum(-1) + 0.5 * g2 * (lap + sq)
        fp_worst = max(fp_worst, _err(grad_t, rhs))
    ends = {}
    for name, t, target in (("t = 0", 0.0, x0), ("t = T", T, x_T)):
        q = bridge.marginal(x0, t, x_T)
        ends[f"marginal at {name} is a point mass at {'x0' if t == 0.0 else 'x_T'}"] = max(
            _err(q.mean, target), float(q.std.abs().max())
        )
    try:
        bridge.marginal(x0, 1.5 * T, x_T)
        rejected = 1.0
    except ValueError:
        rejected = 0.0
    return {
        "marginal score = grad log marginal": score_worst,
        "pinning score h = grad log p(x_T | x_t)": pin_worst,
        "Fokker-Planck equation of the pinned SDE": fp_worst,
        **ends,
        "t > T is rejected": rejected,
    }


def check_bridge(bridge: DiffusionBridge, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> None:
    """Raise :class:`~geodiffusion.testing.CheckError` unless :func:`bridge_errors` are within the dtype's tolerances."""
    from geodiffusion.testing.checks import _raise_if_exceeds
    from geodiffusion.testing.tolerances import tolerance

    errors = bridge_errors(bridge, seed=seed, dtype=dtype)
    limits = dict.fromkeys(errors, tolerance(dtype, "autograd"))
    limits["Fokker-Planck equation of the pinned SDE"] = tolerance(dtype, "pde")
    limits["t > T is rejected"] = 0.0
    _raise_if_exceeds(bridge, errors, limits)
