"""A time-conditioned MLP score model on R^d."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, mlp
from geodiffusion.spec import Spec

__all__ = ["TimeMLP"]


class TimeMLP(ScoreModel, kind="mlp"):
    r""":math:`s_\theta(t, x) = \mathrm{MLP}([x, \gamma(t)])` with sinusoidal time features :math:`\gamma`.

    Shapes: ``t [B]`` or ``[]``, ``x [B, dim]`` -> ``[B, dim]``.
    """

    class Spec(Spec):
        """Time-conditioned multilayer perceptron."""

        dim: int = Field(ge=1, description="dimension d of x")
        hidden: int = Field(128, ge=1, description="width of hidden layers")
        depth: int = Field(3, ge=1, description="number of hidden layers")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = "silu"

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=3, hidden=32, depth=2)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        self.net = mlp(s.dim + s.time_embedding_dim, s.hidden, s.depth, s.dim, s.activation)

    def forward(self, t: Tensor, x: Tensor, **context) -> Tensor:
        if x.dim() != 2 or x.shape[-1] != self.spec.dim:
            raise ValueError(f"TimeMLP: expected x of shape [B, {self.spec.dim}], got {list(x.shape)}")
        emb = self.time_embedding(torch.as_tensor(t, device=x.device).to(x.dtype).expand(x.shape[0]))
        return self.net(torch.cat([x, emb.to(x.dtype)], -1))

    def example_input(self, batch: int, generator=None) -> Tensor:
        return randn((batch, self.spec.dim), generator)
