"""Frame averaging over a finite group: exact equivariance for any score model."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from geodiffusion.groups.base import Group
from geodiffusion.models.base import ScoreModel
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["FrameAveraged"]


class FrameAveraged(ScoreModel, kind="frame_averaged"):
    r"""Group average :math:`\bar s(t, x) = \frac{1}{|G|}\sum_{g \in G} g^{-1} \cdot s(t, g \cdot x)`,
    which satisfies :math:`\bar s(t, h \cdot x) = h \cdot \bar s(t, x)` for every :math:`h \in G`.

    All :math:`|G|` transformed copies go through the inner model in one batched call.
    Tensor context with the batch as leading axis is repeated per group element
    (it must be invariant; transform it yourself otherwise).
    """

    class Spec(Spec):
        """Frame averaging of ``model`` over the finite ``group``."""

        model: component_spec(ScoreModel)
        group: component_spec(Group)

    @classmethod
    def examples(cls):
        mlp = {"kind": "mlp", "dim": 2, "hidden": 32, "depth": 2}
        return [
            cls.Spec(model=mlp, group={"kind": "cyclic", "n": 6}),
            cls.Spec(model=mlp, group={"kind": "dihedral", "n": 3}),
            cls.Spec(
                model={"kind": "set_transformer", "dim": 2, "hidden": 16, "n_points": 4},
                group={"kind": "cyclic", "n": 4, "action": "point_cloud"},
            ),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        group = build(self.spec.group, Group)
        if not group.finite:
            raise ValueError(f"frame averaging needs a finite group, got {type(group).__name__}")
        self._group = group
        self.model = build(self.spec.model, ScoreModel)

    @classmethod
    def wrap(cls, model: ScoreModel, group: Group) -> FrameAveraged:
        """Frame-average an existing model instance (its parameters are shared, not copied)."""
        out = cls(model=model.spec, group=group.spec)
        out.model = model
        return out

    @property
    def group(self) -> Group:
        return self._group

    def forward(self, t: Tensor, x: Tensor, **context: Any) -> Tensor:
        group = self._group
        elements = group.elements(device=x.device)
        m, batch = elements.shape[0], x.shape[0]
        lead = (m,) + (1,) * (x.dim() - group.event_ndim)
        g = elements.reshape(lead + tuple(group.element_shape))
        gx = group.act(g, x.unsqueeze(0)).reshape((m * batch,) + x.shape[1:])
        t_rep = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(batch).repeat(m)
        ctx = {
            k: v.repeat((m,) + (1,) * (v.dim() - 1)) if isinstance(v, Tensor) and v.dim() and v.shape[0] == batch else v
            for k, v in context.items()
        }
        out = self.model(t_rep, gx, **ctx).reshape((m,) + x.shape)
        return group.act_on_vectors(group.inverse(g), out).mean(0)

    def example_input(self, batch: int, generator=None) -> Tensor:
        return self.model.example_input(batch, generator)
