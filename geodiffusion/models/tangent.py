"""Score models on manifolds: an ambient network whose output is projected onto the tangent space."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.manifolds.base import Manifold
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, mlp
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["TangentMLP"]

Features = Literal["ambient", "angles"]


class TangentMLP(ScoreModel, kind="tangent_mlp"):
    r""":math:`s_\theta(t, x) = P_x\,\mathrm{MLP}([\phi(x), \gamma(t)]) / \sigma_t \in T_x M`: an MLP on ambient
    features :math:`\phi(x)` and sinusoidal time features :math:`\gamma(t)`, projected by ``manifold.proj`` so that
    the score is a tangent vector wherever the network is evaluated (De Bortoli et al., 2022).

    ``features``: ``"ambient"`` feeds the flattened point, ``"angles"`` feeds :math:`(\cos x_i, \sin x_i)` for
    manifolds stored as angles (the torus), so the network is continuous across the cut at :math:`\pm\pi`.
    With a ``process`` that defines ``sigma(t)`` (e.g. :class:`~geodiffusion.processes.BrownianProcess`,
    :math:`\sigma_t = \sqrt{\tau(t)}`) the output is divided by :math:`\sigma_t`, since
    :math:`\|\nabla \log p_{t|0}\| \sim \sqrt n/\sigma_t` as :math:`t \to 0`: the network's output stays O(1).

    Shapes: ``t [B]`` or ``[]``, ``x [B, *point_shape]`` -> ``[B, *point_shape]``.
    """

    class Spec(Spec):
        """Ambient MLP projected onto the tangent space of a manifold."""

        manifold: component_spec(Manifold)
        hidden: int = Field(128, ge=1, description="width of hidden layers")
        depth: int = Field(3, ge=1, description="number of hidden layers")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = "silu"
        features: Features = Field("ambient", description="ambient: the point itself; angles: (cos, sin) of each coordinate")
        process: component_spec(Process) | None = Field(
            None, description="a process with sigma(t) on the same manifold: divide the output by sigma_t"
        )

        @model_validator(mode="after")
        def _same_manifold(self):
            if self.process is not None:
                other = getattr(self.process, "manifold", None)
                if other != self.manifold:
                    raise ValueError(f"process: its manifold {other!r} differs from the model's manifold {self.manifold!r}")
            return self

    @classmethod
    def examples(cls):
        sphere = {"kind": "sphere", "dim": 2}
        torus = {"kind": "torus", "dim": 2}
        return [
            cls.Spec(manifold=sphere, hidden=32, depth=2, process={"kind": "brownian", "manifold": sphere}),
            cls.Spec(manifold=torus, hidden=32, depth=2, features="angles"),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.manifold = build(s.manifold, Manifold)
        self.process = build(s.process, Process) if s.process is not None else None
        if self.process is not None and not callable(getattr(self.process, "sigma", None)):
            raise ValueError(f"process: {type(self.process).__name__} has no sigma(t) to precondition by")
        # complex points (SU(n)) enter and leave the network as real and imaginary parts
        # (a private generator: building a model must not move the global RNG that seeds its weights)
        self._complex = self.manifold.random_point(1, torch.Generator().manual_seed(0)).is_complex()
        n_ambient = math.prod(self.manifold.point_shape) * (2 if self._complex else 1)
        width = (2 * n_ambient if s.features == "angles" else n_ambient) + s.time_embedding_dim
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        self.net = mlp(width, s.hidden, s.depth, n_ambient, s.activation)

    def forward(self, t: Tensor, x: Tensor, **context: Any) -> Tensor:
        shape = tuple(self.manifold.point_shape)
        if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"TangentMLP: expected x of shape [B, {', '.join(map(str, shape))}], got {list(x.shape)}")
        real = x.real.dtype
        t = torch.as_tensor(t, device=x.device).to(real).expand(x.shape[0])
        flat = (torch.view_as_real(x) if x.is_complex() else x).flatten(1)
        phi = torch.cat([torch.cos(flat), torch.sin(flat)], -1) if self.spec.features == "angles" else flat
        out = self.net(torch.cat([phi, self.time_embedding(t).to(real)], -1))
        out = torch.view_as_complex(out.reshape(x.shape + (2,))) if x.is_complex() else out.reshape(x.shape)
        out = self.manifold.proj(x, out)
        if self.process is not None:
            out = out / self.process.sigma(t).reshape((-1,) + (1,) * len(shape))
        return out

    def example_input(self, batch: int, generator=None) -> Tensor:
        return self.manifold.random_point(batch, generator)
