"""Exponential moving average of model parameters (Polyak averaging)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    r"""Shadow copy :math:`\bar\theta \leftarrow \beta_n \bar\theta + (1 - \beta_n)\,\theta` after each step,
    with the warm-up :math:`\beta_n = \min(\beta, \tfrac{1 + n}{10 + n})` at update :math:`n`, so that a short
    run is not dominated by the random initialisation; buffers are copied, not averaged.

    ``model`` is a deep copy kept in eval mode with gradients off; use it for sampling and evaluation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay: expected a value in [0, 1], got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """:math:`\\beta_n` for the next update."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s; copy its buffers."""
        decay = self.current_decay()
        shadow = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            # lerp: shadow + (1 - decay) * (param - shadow), one fused deterministic op
            shadow[name].lerp_(param.detach(), 1.0 - decay)
        shadow_buffers = dict(self.model.named_buffers())
        for name, buffer in model.named_buffers():
            shadow_buffers[name].copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["model"])
