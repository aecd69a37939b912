"""Reverse-SDE samplers: every torchsde method, and a predictor-corrector scheme."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchsde
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn, seed_from
from geodiffusion.processes.base import Process, ScoreFn, TorchsdeReverse
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.ode import _require_euclidean
from geodiffusion.spec import Spec

__all__ = ["SDESampler", "PredictorCorrector"]

TorchsdeMethod = Literal["euler", "milstein", "srk", "midpoint", "heun", "euler_heun", "reversible_heun", "log_ode"]
_LEVY_AREA = {"srk": "space-time", "log_ode": "foster"}


class _ReverseSpec(Spec):
    steps: int = Field(500, ge=1, description="number of time steps from T to eps")
    eps: float = Field(1e-3, ge=0, description="final time; the reverse dynamics stop at t = eps")


def _check_eps(sampler_eps: float, process: Process) -> None:
    if not 0 <= sampler_eps < process.T:
        raise ValueError(f"eps: expected a value in [0, T={process.T}), got {sampler_eps}")


class SDESampler(Sampler, kind="reverse_sde"):
    r"""Integrates the reverse SDE :math:`dx = [f - g^2 s(t, x)]dt + g\,d\bar W` from :math:`T`
    to :math:`\varepsilon` with ``torchsde.sdeint`` (Euler–Maruyama by default, fixed step
    :math:`(T-\varepsilon)/\text{steps}`), seeding torchsde's Brownian motion from the generator."""

    class Spec(_ReverseSpec):
        """Reverse-SDE sampler backed by torchsde."""

        method: TorchsdeMethod = Field("euler", description="torchsde solver")

    def sample(self, score, process, shape, *, generator=None, device=None, dtype=None, x_T=None, progress=False) -> Tensor:
        s = self.spec
        _require_euclidean(process, "reverse_sde")
        _check_eps(s.eps, process)
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        event_shape = tuple(x.shape[1:])
        counted = CountingScore(score, progress, None, f"reverse SDE ({s.method})")
        sde = TorchsdeReverse(process, counted, event_shape, s.method)
        y0 = x.reshape(x.shape[0], -1)
        # torchsde compares times in the state's dtype: round the span there first
        span = float(torch.tensor(process.T - s.eps, dtype=y0.dtype))
        bm = torchsde.BrownianInterval(
            t0=0.0,
            t1=span,
            size=y0.shape,
            dtype=y0.dtype,
            device=y0.device,
            entropy=seed_from(generator),
            levy_area_approximation=_LEVY_AREA.get(s.method, "none"),
        )
        ts = torch.tensor([0.0, span], dtype=y0.dtype, device=y0.device)
        try:
            ys = torchsde.sdeint(sde, y0, ts, bm=bm, method=s.method, dt=span / s.steps)
        finally:
            counted.close()
        return ys[-1].reshape(x.shape)


class PredictorCorrector(Sampler, kind="predictor_corrector"):
    r"""Euler–Maruyama predictor on the reverse SDE, then ``corrector_steps`` Langevin
    corrector steps :math:`x \leftarrow x + \delta s + \sqrt{2\delta} z` at each time, with
    :math:`\delta = 2 (r \|z\| / \|s\|)^2` set by the signal-to-noise ratio :math:`r` (Song et al., 2021)."""

    class Spec(_ReverseSpec):
        """Predictor-corrector sampler with a Langevin corrector."""

        corrector_steps: int = Field(1, ge=0, description="Langevin steps after each predictor step")
        snr: float = Field(0.16, gt=0, description="signal-to-noise ratio r of the corrector")

    def sample(self, score, process, shape, *, generator=None, device=None, dtype=None, x_T=None, progress=False) -> Tensor:
        s = self.spec
        _require_euclidean(process, "predictor_corrector")
        _check_eps(s.eps, process)
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        score = CountingScore(score, progress, s.steps * (1 + s.corrector_steps), "predictor-corrector")
        times = torch.linspace(process.T, s.eps, s.steps + 1, dtype=torch.float64).tolist()
        batch = x.shape[0]
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                dt = t_now - t_next
                t = torch.full((batch,), t_now, dtype=x.dtype, device=x.device)
                z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
                x = (
                    x
                    - process.reverse_drift(x, t, score(t, x)) * dt
                    + process.diffusion(process.time_like(t, x)) * math.sqrt(dt) * z
                )
                t = torch.full((batch,), t_next, dtype=x.dtype, device=x.device)
                for _ in range(s.corrector_steps):
                    x = self._langevin(x, t, score, generator)
        finally:
            score.close()
        return x

    def _langevin(self, x: Tensor, t: Tensor, score: ScoreFn, generator) -> Tensor:
        grad = score(t, x)
        z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        norm = lambda v: v.flatten(1).norm(dim=-1).mean()  # noqa: E731
        step = 2 * (self.spec.snr * norm(z) / norm(grad).clamp_min(torch.finfo(x.dtype).tiny)) ** 2
        return x + step * grad + torch.sqrt(2 * step) * z
