"""A permutation-equivariant score model over sets of points."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from geodiffusion._random import randn
from geodiffusion.groups.permutation import Permutations
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import SinusoidalTimeEmbedding
from geodiffusion.spec import Spec

__all__ = ["SetTransformer"]


class SetTransformer(ScoreModel, kind="set_transformer"):
    r"""Self-attention over the points of a set, with no positional encoding, so
    :math:`s_\theta(t, \sigma \cdot x) = \sigma \cdot s_\theta(t, x)` for every permutation :math:`\sigma`.

    Shapes: ``t [B]``, ``x [B, N, dim]`` -> ``[B, N, dim]``; any ``N``.
    """

    class Spec(Spec):
        """Permutation-equivariant transformer over sets."""

        dim: int = Field(ge=1, description="feature dimension of each point")
        hidden: int = Field(64, ge=1, description="token width")
        heads: int = Field(4, ge=1, description="attention heads (must divide hidden)")
        layers: int = Field(2, ge=1, description="number of attention blocks")
        n_points: int = Field(8, ge=1, description="set size of example inputs and of the claimed group S_n")

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=3, hidden=16, heads=2, n_points=5)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        if s.hidden % s.heads:
            raise ValueError(f"hidden ({s.hidden}) must be divisible by heads ({s.heads})")
        self.embed = nn.Linear(s.dim, s.hidden)
        self.time_embedding = nn.Sequential(
            SinusoidalTimeEmbedding(32), nn.Linear(32, s.hidden), nn.SiLU(), nn.Linear(s.hidden, s.hidden)
        )
        block = nn.TransformerEncoderLayer(
            s.hidden, s.heads, dim_feedforward=2 * s.hidden, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, s.layers, enable_nested_tensor=False)
        self.out = nn.Linear(s.hidden, s.dim)
        self._group = Permutations(n=s.n_points, feature_ndim=1)

    @property
    def group(self) -> Permutations:
        return self._group

    def forward(self, t: Tensor, x: Tensor, **context) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.spec.dim:
            raise ValueError(f"SetTransformer: expected x of shape [B, N, {self.spec.dim}], got {list(x.shape)}")
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        h = self.embed(x) + self.time_embedding(t).unsqueeze(1)
        return self.out(self.blocks(h))

    def example_input(self, batch: int, generator=None) -> Tensor:
        return randn((batch, self.spec.n_points, self.spec.dim), generator)
