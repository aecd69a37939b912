r"""Samplers of diffusion bridges (DDBM): from a given :math:`x_T` back to :math:`x_\varepsilon \approx x_0`.

Both integrate in reverse time, from :math:`T` to :math:`\varepsilon`, with the bridge score
:math:`s(t, x, x_T) \approx \nabla_x \log q(x_t \mid x_T)` and the pinning score :math:`h` of
:class:`~geodiffusion.processes.DiffusionBridge`. The bridge marginal is a point mass at :math:`T`, where
:math:`s` and :math:`h` are singular, so the model is evaluated at times clamped to :math:`T - \delta`
(``start_gap``; DDBM starts at :math:`\sigma_{\max} - 10^{-4}`).

Equivariant noise (SPDM, App. E): with ``group`` set, each standard draw :math:`\epsilon_n` is turned by the
frame of the current state, :math:`z_n = h(x_n) \cdot \epsilon_n` (:func:`~geodiffusion.samplers.equivariant_noise`),
so with a :math:`G`-equivariant score and the same seed the sample from :math:`g \cdot x_T` is :math:`g \cdot x_0(x_T)`.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor
from torchdiffeq import odeint
from tqdm.auto import tqdm

from geodiffusion._random import randn
from geodiffusion.groups.base import Group
from geodiffusion.processes.bridges import BridgeScoreFn, DiffusionBridge
from geodiffusion.registry import Component, build
from geodiffusion.samplers.equivariant_noise import equivariant_noise
from geodiffusion.spec import Spec, component_spec

__all__ = ["BridgeSampler", "BridgeSDESampler", "BridgeODESampler"]


class _BridgeSamplerSpec(Spec):
    steps: int = Field(100, ge=1, description="number of time steps from T to eps")
    eps: float = Field(1e-3, ge=0, description="final time; the reverse dynamics stop at t = eps")
    grid: Literal["cosine", "uniform"] = Field(
        "cosine", description="time grid: cosine is quadratic at both ends (uniform in sqrt(T - t) near T), or uniform"
    )
    start_gap: float = Field(1e-5, gt=0, description="delta: the first score evaluation is at T - delta (singular at T)")
    group: component_spec(Group) | None = Field(
        None, description="finite group with a linear action: noise aligned to the state's frame (None: ordinary noise)"
    )
    reference_seed: int = Field(0, ge=0, description="seed of the fixed pattern r that defines the frame h(x)")


class BridgeSampler(Component, family=True):
    r"""Draws :math:`x_\varepsilon \sim q(\cdot \mid x_T)` for each given :math:`x_T` by integrating the reverse dynamics of a
    :class:`~geodiffusion.processes.DiffusionBridge` driven by a bridge score ``score(t, x, x_T=x_T)``."""

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        group_spec = getattr(self.spec, "group", None)
        self.group: Group | None = None
        if group_spec is not None:
            group = build(group_spec, Group)
            if not group.finite or not group.linear_action:
                raise ValueError(f"group: equivariant noise needs a finite group with a linear action, got {group!r}")
            self.group = group

    @abstractmethod
    def sample(
        self,
        score: BridgeScoreFn,
        bridge: DiffusionBridge,
        x_T: Tensor,
        *,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Samples ``[B, *event_shape]``, one per row of ``x_T``, in ``x_T``'s dtype and device."""

    # --- shared steps -----------------------------------------------------------------------------------

    def _check(self, bridge: DiffusionBridge, x_T: Tensor) -> None:
        s = self.spec
        if not 0 <= s.eps < bridge.T - s.start_gap:
            raise ValueError(f"eps: expected a value in [0, T - start_gap = {bridge.T - s.start_gap}), got {s.eps}")
        bridge.check_inputs(x_T, bridge.T, x_T, name="x_T")
        if x_T.dim() < bridge.event_ndim + 1:
            raise ValueError(f"x_T: expected a batch axis before {bridge.event_ndim} event axes, got shape {list(x_T.shape)}")
        times = self._times(bridge)
        if len(times) > 2 and times[1] > bridge.T - s.start_gap:
            raise ValueError(
                f"start_gap: the second grid time {times[1]:.3g} lies within start_gap = {s.start_gap} of T; use fewer steps "
                "or a smaller start_gap"
            )
        if self.group is not None:
            self.group.act(self.group.identity(device=x_T.device), x_T)  # the group must act on these samples: fail before work

    def _times(self, bridge: DiffusionBridge) -> list[float]:
        r"""Times :math:`T = t_0 > \dots > t_N = \varepsilon`. The cosine grid
        :math:`t_k = \varepsilon + (T - \varepsilon)(1 + \cos(\pi k/N))/2` is fine at both ends: near :math:`T` the bridge
        spreads like :math:`\sqrt{T - t}` (the pinning drift :math:`\tfrac12 g^2 h` is singular there), near
        :math:`\varepsilon` the score is sharpest."""
        s = self.spec
        u = torch.linspace(0.0, 1.0, s.steps + 1, dtype=torch.float64)
        if s.grid == "uniform":
            return (bridge.T + (s.eps - bridge.T) * u).tolist()
        return (s.eps + (bridge.T - s.eps) * 0.5 * (1.0 + torch.cos(math.pi * u))).tolist()

    def _model_time(self, bridge: DiffusionBridge, t: float, x: Tensor) -> Tensor:
        # only t_0 = T is clamped (checked: every later grid time is below T - start_gap)
        return torch.full((x.shape[0],), min(t, bridge.T - self.spec.start_gap), dtype=x.dtype, device=x.device)

    def _reference(self, x: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(self.spec.reference_seed)
        return torch.randn(tuple(x.shape[1:]), generator=generator, dtype=torch.float64).to(x.device)

    def _noise(self, x: Tensor, generator: torch.Generator | None, reference: Tensor) -> Tensor:
        z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        return z if self.group is None else equivariant_noise(self.group, x, z, reference)

    def _sde_step(self, score, bridge, x, x_T, t_now, t_next, generator, reference) -> Tensor:
        r"""Euler–Maruyama step :math:`x \leftarrow x - [f + g^2 h - g^2 s]\Delta t + g\sqrt{\Delta t}\,z`."""
        dt = t_now - t_next
        t = self._model_time(bridge, t_now, x)
        z = self._noise(x, generator, reference)
        drift = bridge.reverse_drift(x, t, score(t, x, x_T=x_T), x_T)
        return x - drift * dt + bridge.diffusion(bridge._time(t, x)) * math.sqrt(dt) * z

    def _first_step(self, score, bridge, x_T, t_next, generator, reference) -> Tensor:
        r"""Leave the point mass at :math:`T`: draw
        :math:`x_{t_1} \sim q(\cdot \mid \hat x_0, x_T) = \mathcal N(a x_T + b \hat x_0, c^2 I)` with
        :math:`\hat x_0 = (x_T - a_\delta x_T + c_\delta^2 s)/b_\delta`, the data prediction implied by the score at
        :math:`T - \delta` (Tweedie). Its variance misses only :math:`b_{t_1}^2 \mathrm{Cov}(x_0 \mid x_T) = O(\Delta t^2)`,
        where an Euler–Maruyama step from the singular end is off by :math:`O(\Delta t)` relative to the bridge's own
        :math:`O(\Delta t)` variance."""
        t = self._model_time(bridge, bridge.T, x_T)
        a, b, c, _ = bridge.coefficients(bridge._time(t, x_T))
        x0_hat = (x_T - a * x_T + c**2 * score(t, x_T, x_T=x_T)) / b
        a1, b1, c1, _ = bridge.coefficients(bridge._time(torch.full_like(t, t_next), x_T))
        return a1 * x_T + b1 * x0_hat + c1 * self._noise(x_T, generator, reference)


class BridgeSDESampler(BridgeSampler, kind="bridge_sde"):
    r"""Euler–Maruyama on the reverse bridge SDE :math:`dx = [f + g^2 h - g^2 s]\,dt + g\,d\bar W` from :math:`x_T` at
    :math:`T` to :math:`\varepsilon` (weak order 1), with ordinary or equivariant noise. The first interval leaves the point
    mass at :math:`T` by a draw from the bridge marginal given the score's data prediction (see ``_first_step``)."""

    weak_order = 1.0

    class Spec(_BridgeSamplerSpec):
        """Reverse-SDE (Euler-Maruyama) sampler of a diffusion bridge."""

    @classmethod
    def examples(cls):
        return [cls.Spec(steps=200), cls.Spec(steps=50, group={"kind": "cyclic", "n": 4, "action": "image"})]

    def sample(self, score, bridge, x_T, *, generator=None, progress=False) -> Tensor:
        self._check(bridge, x_T)
        x, reference = x_T, self._reference(x_T)
        times = self._times(bridge)
        with torch.no_grad():
            x = self._first_step(score, bridge, x_T, times[1], generator, reference)
            steps = list(zip(times[1:-1], times[2:], strict=True))
            for t_now, t_next in tqdm(steps, desc="bridge SDE", leave=False, disable=not progress):
                x = self._sde_step(score, bridge, x, x_T, t_now, t_next, generator, reference)
        return x


class BridgeODESampler(BridgeSampler, kind="bridge_ode"):
    r"""Probability-flow ODE of the bridge, :math:`\dot x = f + g^2 h - \tfrac12 g^2 s`, integrated by torchdiffeq with one
    ``method`` step per grid interval. The flow cannot leave the point mass at :math:`T` deterministically, so the first
    interval is stochastic (DDBM's stochastic first step; here a draw from the bridge marginal given the score's data
    prediction, see ``_first_step``); the rest is deterministic."""

    class Spec(_BridgeSamplerSpec):
        """Probability-flow ODE sampler of a diffusion bridge with a stochastic first step."""

        method: Literal["euler", "midpoint", "rk4", "heun3"] = Field("midpoint", description="fixed-step torchdiffeq solver")

        @model_validator(mode="after")
        def _two_steps(self):
            if self.steps < 2:
                raise ValueError(f"steps: the ODE sampler needs >= 2 (one stochastic step, then the flow), got {self.steps}")
            return self

    @classmethod
    def examples(cls):
        return [cls.Spec(steps=100), cls.Spec(steps=20, method="rk4", group={"kind": "dihedral", "n": 4, "action": "image"})]

    def sample(self, score, bridge, x_T, *, generator=None, progress=False) -> Tensor:
        self._check(bridge, x_T)
        reference = self._reference(x_T)
        times = self._times(bridge)
        with torch.no_grad():
            x = self._first_step(score, bridge, x_T, times[1], generator, reference)
        bar = tqdm(desc="bridge ODE", unit="eval", leave=False, disable=not progress)

        def velocity(t: Tensor, y: Tensor) -> Tensor:
            bar.update(1)
            tb = self._model_time(bridge, float(t), y)
            return bridge.probability_flow_drift(y, tb, score(tb, y, x_T=x_T), x_T)

        grid = torch.tensor(times[1:], dtype=x.dtype, device=x.device)
        try:
            with torch.no_grad():
                return odeint(velocity, x, grid, method=self.spec.method)[-1]
        finally:
            bar.close()
