r"""Articulated skeletons: a second point-cloud domain for distance diffusion (poses up to rigid motion).

A skeleton is a kinematic tree of joints with fixed bone lengths :math:`\ell_k`. Joint :math:`k` turns its bone
about a hinge axis :math:`a_k` (fixed in its parent's frame) by an angle :math:`\theta_k` drawn from a two-mode
mixture (e.g. a straight or a bent knee), so frames compose down the tree,
:math:`R_k = R_{p(k)}\,\mathrm{Rot}(a_k, \theta_k)`, and :math:`x_k = x_{p(k)} + \ell_k R_k u_k` with rest
direction :math:`u_k`. Poses are centred; the law is multimodal and lives on a curved set of fixed bone lengths.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion.spec import Spec

__all__ = ["SkeletonPoses", "HUMANOID", "rotation_about"]

# joint: (parent, rest direction, bone length, hinge axis, bent angle in degrees); joint 0 (pelvis) is the root
HUMANOID: tuple[tuple[int, tuple[float, float, float], float, tuple[float, float, float], float], ...] = (
    (-1, (0.0, 0.0, 0.0), 0.0, (1.0, 0.0, 0.0), 0.0),  # 0 pelvis
    (0, (0.0, 0.0, 1.0), 1.0, (1.0, 0.0, 0.0), 30.0),  # 1 spine (leans forward)
    (1, (0.0, 0.0, 1.0), 1.0, (0.0, 1.0, 0.0), 20.0),  # 2 neck (leans sideways)
    (2, (0.0, 0.0, 1.0), 0.5, (1.0, 0.0, 0.0), 40.0),  # 3 head (nods)
    (2, (1.0, 0.0, 0.0), 0.8, (0.0, 1.0, 0.0), 70.0),  # 4 left shoulder (arm raised)
    (4, (0.0, 0.0, -1.0), 1.0, (1.0, 0.0, 0.0), -90.0),  # 5 left elbow (upper arm swing)
    (5, (0.0, 0.0, -1.0), 1.0, (1.0, 0.0, 0.0), -100.0),  # 6 left wrist (forearm bent)
    (2, (-1.0, 0.0, 0.0), 0.8, (0.0, 1.0, 0.0), -70.0),  # 7 right shoulder
    (7, (0.0, 0.0, -1.0), 1.0, (1.0, 0.0, 0.0), -90.0),  # 8 right elbow
    (8, (0.0, 0.0, -1.0), 1.0, (1.0, 0.0, 0.0), -100.0),  # 9 right wrist
    (0, (1.0, 0.0, 0.0), 0.5, (0.0, 1.0, 0.0), 0.0),  # 10 left hip
    (10, (0.0, 0.0, -1.0), 1.3, (1.0, 0.0, 0.0), -60.0),  # 11 left knee (thigh swing)
    (11, (0.0, 0.0, -1.0), 1.3, (1.0, 0.0, 0.0), 90.0),  # 12 left ankle (knee bent)
    (0, (-1.0, 0.0, 0.0), 0.5, (0.0, 1.0, 0.0), 0.0),  # 13 right hip
    (13, (0.0, 0.0, -1.0), 1.3, (1.0, 0.0, 0.0), -60.0),  # 14 right knee
    (14, (0.0, 0.0, -1.0), 1.3, (1.0, 0.0, 0.0), 90.0),  # 15 right ankle
)


def rotation_about(axis: Tensor, angle: Tensor) -> Tensor:
    r"""Rodrigues: :math:`\mathrm{Rot}(a, \theta) = I + \sin\theta\,[a]_\times + (1 - \cos\theta)[a]_\times^2`,
    ``axis [..., 3]`` (unit), ``angle [...]`` -> ``[..., 3, 3]``."""
    zero = torch.zeros_like(axis[..., 0])
    k = torch.stack(
        [zero, -axis[..., 2], axis[..., 1], axis[..., 2], zero, -axis[..., 0], -axis[..., 1], axis[..., 0], zero], -1
    ).reshape(*axis.shape[:-1], 3, 3)
    s, c = torch.sin(angle)[..., None, None], torch.cos(angle)[..., None, None]
    eye = torch.eye(3, dtype=axis.dtype, device=axis.device).expand_as(k)
    return eye + s * k + (1 - c) * (k @ k)


class SkeletonPoses(Spec):
    r"""Random poses of an articulated skeleton: per joint a hinge angle
    :math:`\theta_k = b_k \cdot m_k + \sigma \xi_k`, :math:`m_k \sim \mathrm{Bernoulli}(p_{\mathrm{bent}})`,
    :math:`\xi_k \sim \mathcal N(0, 1)` (radians, :math:`b_k` the joint's bent angle), plus a uniform random
    global rotation (the data carry no preferred frame). ``sample(n) -> [n, J, 3]``, centred."""

    skeleton: Literal["humanoid", "chain"] = Field("humanoid", description="16-joint stick figure, or a bent chain")
    chain_joints: int = Field(8, ge=3, le=64, description="joints of the 'chain' skeleton (unit bones, 60-degree bends)")
    p_bent: float = Field(0.5, ge=0, le=1, description="probability that a joint takes its bent angle")
    angle_std_deg: float = Field(10.0, ge=0, le=90, description="std of the hinge-angle jitter, degrees")

    def table(self) -> tuple[tuple[int, tuple[float, float, float], float, tuple[float, float, float], float], ...]:
        if self.skeleton == "humanoid":
            return HUMANOID
        # a chain with hinge axes alternating between x and y, so the bent poses are genuinely 3-D
        return ((-1, (0.0, 0.0, 0.0), 0.0, (1.0, 0.0, 0.0), 0.0),) + tuple(
            (k - 1, (0.0, 0.0, 1.0), 1.0, (1.0, 0.0, 0.0) if k % 2 else (0.0, 1.0, 0.0), 60.0)
            for k in range(1, self.chain_joints)
        )

    @property
    def n_joints(self) -> int:
        return len(self.table())

    def bones(self) -> Tensor:
        """``[2, J - 1]`` (parent, child) index pairs."""
        parents = [p for p, *_ in self.table()]
        return torch.tensor([[p, k] for k, p in enumerate(parents) if p >= 0], dtype=torch.long).T

    def bone_lengths(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """``[J - 1]`` lengths :math:`\\ell_k`, ordered as :meth:`bones`."""
        return torch.tensor([length for p, _, length, _, _ in self.table() if p >= 0], dtype=dtype)

    def _depths(self) -> list[int]:
        depth: list[int] = []
        for p, *_ in self.table():
            depth.append(0 if p < 0 else depth[p] + 1)
        return depth

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """``n`` centred poses ``[n, J, 3]``."""
        if n < 1:
            raise ValueError(f"n: expected a positive number of poses, got {n}")
        table = self.table()
        j = len(table)
        parent = torch.tensor([max(p, 0) for p, *_ in table])
        rest = torch.tensor([u for _, u, _, _, _ in table], dtype=dtype)
        length = torch.tensor([ell for _, _, ell, _, _ in table], dtype=dtype)
        axis = torch.tensor([a for _, _, _, a, _ in table], dtype=dtype)
        bent = torch.tensor([math.radians(b) for *_, b in table], dtype=dtype)
        mode = (rand((n, j), generator, dtype=dtype) < self.p_bent).to(dtype)
        theta = bent * mode + math.radians(self.angle_std_deg) * randn((n, j), generator, dtype=dtype)
        local = rotation_about(axis.expand(n, j, 3), theta)  # [n, J, 3, 3]
        frames = local.clone()
        pos = torch.zeros(n, j, 3, dtype=dtype)
        depth = torch.tensor(self._depths())
        # one vectorised update per tree level: all joints of a level share already-computed parents
        for level in range(1, int(depth.max()) + 1):
            idx = (depth == level).nonzero().squeeze(1)
            frames[:, idx] = frames[:, parent[idx]] @ local[:, idx]
            bone = length[idx, None] * (frames[:, idx] @ rest[idx].unsqueeze(-1)).squeeze(-1)
            pos[:, idx] = pos[:, parent[idx]] + bone
        q = torch.linalg.qr(randn((n, 3, 3), generator, dtype=dtype))[0]
        q = q * torch.linalg.det(q)[:, None, None]  # uniform proper rotations (up to the QR sign convention)
        pos = pos - pos.mean(1, keepdim=True)
        return pos @ q.transpose(-1, -2)
