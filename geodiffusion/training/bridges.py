"""Training of diffusion-bridge scores on paired data by bridge score matching, through the shared loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geodiffusion._validation import check_tensor
from geodiffusion.processes.bridges import BridgeWeighting, DiffusionBridge, bridge_score_matching_loss
from geodiffusion.training.distributed import RankSlicedScore
from geodiffusion.training.trainer import TrainerBase, TrainingSpec, Validation

__all__ = ["BridgeTrainer"]


class BridgeTrainer(TrainerBase):
    r"""Fits a bridge score :math:`s_\theta(t, x_t, x_T)` to pairs ``x0 [N, *event]``, ``x_T [N, *event]`` by
    :func:`~geodiffusion.processes.bridges.bridge_score_matching_loss` (``weighting`` ``"x0"``: DDBM's
    data-prediction loss, or ``"score"``), with the loop, checkpoints, exact resumption and DDP of
    :class:`~geodiffusion.training.TrainerBase`; an item is a pair. Times are drawn from
    :math:`U[\varepsilon, T - \varepsilon]` with :math:`\varepsilon` = ``spec.eps`` (at least 1e-4: both ends of a
    bridge are point masses). The model is called as ``model(t, x_t, x_T=x_T)``.
    """

    item_name = "pairs"
    spec_type = TrainingSpec
    progress_desc = "bridge training"

    def __init__(
        self,
        model: nn.Module,
        bridge: DiffusionBridge,
        x0: Tensor,
        x_T: Tensor,
        spec: TrainingSpec | dict[str, Any],
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        distributed: bool | None = None,
        weighting: BridgeWeighting = "x0",
        validation: Validation | None = None,
    ) -> None:
        if not isinstance(bridge, DiffusionBridge):
            raise TypeError(f"bridge: expected a DiffusionBridge, got {type(bridge).__name__}")
        check_tensor("x0", x0)
        check_tensor("x_T", x_T)
        if x0.shape != x_T.shape or x0.dim() < bridge.event_ndim + 1:
            raise ValueError(
                f"x0 and x_T: expected equal shapes [N, *event] with {bridge.event_ndim} event axes, "
                f"got {list(x0.shape)} and {list(x_T.shape)}"
            )
        for name, value in (("x0", x0), ("x_T", x_T)):
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name}: contains NaN or inf")
        if weighting not in ("x0", "score"):
            raise ValueError(f"weighting: expected 'x0' or 'score', got {weighting!r}")
        self.x0, self.x_T, self.weighting = x0, x_T, weighting
        super().__init__(
            model, bridge, spec, out_dir, device if device is not None else x0.device, progress, distributed, validation
        )
        if not max(self.spec.eps, 1e-4) < 0.5 * bridge.T:
            raise ValueError(f"spec.eps ({self.spec.eps}) must be below T/2 = {bridge.T / 2}")

    @property
    def num_items(self) -> int:
        return len(self.x0)

    def _to_device(self, device: torch.device) -> None:
        self.x0, self.x_T = self.x0.to(device), self.x_T.to(device)

    def _gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self.device)
        return self.x0[index], self.x_T[index]

    def _distributed_model(self, ddp: nn.Module) -> Any:
        return RankSlicedScore(ddp, self.dist, batched=("x_T",))

    def _loss(self, batch: tuple[Tensor, Tensor], model: Any) -> Tensor:
        x0, x_T = batch
        return bridge_score_matching_loss(
            model,
            self.process,
            x0,
            x_T,
            generator=self.noise_generator,
            weighting=self.weighting,
            eps=max(self.spec.eps, 1e-4),
        )
