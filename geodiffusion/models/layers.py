"""Building blocks shared by score networks."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalTimeEmbedding", "activation", "Activation", "mlp"]

Activation = Literal["silu", "gelu", "relu", "tanh", "sin"]


class Sin(nn.Module):
    r"""Elementwise :math:`\sin x`, the activation of RSGM's earth-data MLPs (periodic features suit sharp densities)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(x)


def activation(name: Activation) -> nn.Module:
    return {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "sin": Sin}[name]()


def mlp(width: int, hidden: int, depth: int, out: int, act: Activation, *, out_bias: bool = True) -> nn.Sequential:
    """``depth`` hidden layers ``Linear(., hidden)`` + ``act``, then ``Linear(hidden, out)``."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), activation(act)]
        width = hidden
    layers.append(nn.Linear(width, out, bias=out_bias))
    return nn.Sequential(*layers)


class SinusoidalTimeEmbedding(nn.Module):
    r"""Transformer-style features of time, :math:`[\sin(\omega_k t), \cos(\omega_k t)]` with
    :math:`\omega_k = \omega_{\max}^{-k/K}\,\omega_{\max}` log-spaced in :math:`[1, \omega_{\max}]`."""

    def __init__(self, dim: int, max_frequency: float = 1000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"time embedding dim must be even, got {dim}")
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_frequency), half, dtype=torch.float64))
        self.register_buffer("freqs", freqs.to(torch.get_default_dtype()), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        """``t [B]`` or ``[]`` -> ``[B, dim]`` (or ``[dim]``)."""
        angles = t.unsqueeze(-1).to(self.freqs.dtype) * self.freqs
        return torch.cat([torch.sin(angles), torch.cos(angles)], -1)
