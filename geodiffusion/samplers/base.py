"""The Sampler abstraction: integrating the reverse dynamics from the prior to data."""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor

from geodiffusion.processes.base import Process, ScoreFn
from geodiffusion.registry import Component

__all__ = ["Sampler"]


class Sampler(Component, family=True):
    r"""Draws :math:`x_0` by integrating the reverse-time dynamics of a :class:`Process`
    driven by a score :math:`s(t, x)` from :math:`x_T \sim \pi` down to :math:`t = \varepsilon`."""

    @abstractmethod
    def sample(
        self,
        score: ScoreFn,
        process: Process,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
        x_T: Tensor | None = None,
        progress: bool = False,
    ) -> Tensor:
        """Samples of ``shape`` (batch first); ``x_T`` overrides the prior draw."""

    def initial_state(self, process: Process, shape, generator, device, dtype, x_T: Tensor | None) -> Tensor:
        """``x_T`` validated, or a draw from the prior."""
        if x_T is None:
            return process.prior(tuple(shape), device=device, dtype=dtype).sample(generator)
        process.check_inputs(x_T, process.T, name="x_T")
        if dtype is not None and x_T.dtype != dtype:
            raise ValueError(f"x_T has dtype {x_T.dtype} but dtype={dtype} was requested")
        if device is not None and x_T.device != torch.device(device):
            raise ValueError(f"x_T is on {x_T.device} but device={device} was requested")
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T: expected shape {list(shape)}, got {list(x_T.shape)}")
        return x_T
