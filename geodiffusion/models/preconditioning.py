"""Noise-prediction parametrisation of the score of a linear Gaussian process."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import LinearGaussianProcess, Process
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["NoisePredictor"]


class NoisePredictor(ScoreModel, kind="noise_predictor"):
    r""":math:`s_\theta(t, x) = -\epsilon_\theta(t, x) / \sigma_t`: the inner network predicts the
    standard noise :math:`\epsilon` of :math:`x_t = \alpha_t x_0 + \sigma_t \epsilon`, which keeps its
    output O(1) as :math:`t \to 0` (Ho et al., 2020). Equivariance is inherited from the network."""

    class Spec(Spec):
        """Score from a noise-predicting network."""

        net: component_spec(ScoreModel)
        process: component_spec(Process)

    @classmethod
    def examples(cls):
        return [cls.Spec(net={"kind": "mlp", "dim": 2, "hidden": 32, "depth": 2}, process={"kind": "vp"})]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        process = build(self.spec.process, Process)
        if not isinstance(process, LinearGaussianProcess):
            raise ValueError(f"noise prediction needs a linear Gaussian process, got {type(process).__name__}")
        self.process = process
        self.net = build(self.spec.net, ScoreModel)

    @property
    def group(self) -> Group | None:
        return self.net.group

    def forward(self, t: Tensor, x: Tensor, **context: Any) -> Tensor:
        t_x = self.process.time_like(torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0]), x)
        return -self.net(t, x, **context) / self.process.std(t_x)

    def example_input(self, batch: int, generator=None) -> Tensor:
        return self.net.example_input(batch, generator)
