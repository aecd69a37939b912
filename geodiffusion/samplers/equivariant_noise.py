r"""Equivariant noise (SPDM, App. E): reverse-SDE trajectories that commute with a finite group.

With a fixed seed, Euler–Maruyama on the reverse SDE draws the same standard noise :math:`\epsilon_n`
for a start :math:`x_T` and for :math:`g \cdot x_T`, so even an exactly equivariant score gives
:math:`x_0(g \cdot x_T) \ne g \cdot x_0(x_T)`. Here the noise is matched to the current state: a frame
:math:`h(x) = \arg\max_{h \in G} \langle x, h \cdot r \rangle` (features of :math:`x` against a fixed
seeded pattern :math:`r`) satisfies :math:`h(g x) = g\,h(x)` for orthogonal actions, and the step uses
:math:`z_n = h(x_n) \cdot \epsilon_n`. Then :math:`z_n(g x) = g\,z_n(x)`, every step is equivariant and so
is the whole trajectory; since :math:`h(x_n)` depends on :math:`x_n` only and :math:`\epsilon_n` is
independent :math:`\mathcal{N}(0, I)`, :math:`z_n \mid x_n \sim \mathcal{N}(0, I)` and the sampler's law is
unchanged.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.groups.base import Group
from geodiffusion.processes.base import Process, ScoreFn
from geodiffusion.registry import build
from geodiffusion.samplers._progress import CountingScore
from geodiffusion.samplers.base import Sampler
from geodiffusion.spec import Spec, component_spec

__all__ = ["EquivariantNoiseSampler", "frame_elements", "equivariant_noise"]


def _orbit(group: Group, reference: Tensor) -> tuple[Tensor, Tensor]:
    """All elements and the flattened float64 orbit :math:`\\{h \\cdot r\\}` of ``reference [*event]``."""
    elements = group.elements(device=reference.device)
    g = elements.reshape((elements.shape[0],) + tuple(group.element_shape))
    orbit = group.act(g, reference.unsqueeze(0).expand((elements.shape[0],) + reference.shape))
    return elements, orbit.reshape(elements.shape[0], -1).to(torch.float64)


def frame_elements(group: Group, x: Tensor, reference: Tensor) -> Tensor:
    r"""The frame :math:`h(x) = \arg\max_{h \in G} \langle x, h \cdot r \rangle` of each ``x [B, *event]``.

    The correlations are taken in float64, where products of float32 numbers are exact, so
    :math:`x` and :math:`g \cdot x` (a reordering) give the same argmax barring ties at float64 round-off."""
    elements, orbit = _orbit(group, reference.to(x.device))
    scores = x.reshape(x.shape[0], -1).to(torch.float64) @ orbit.T  # [B, |G|]
    return elements[scores.argmax(-1)]


def equivariant_noise(group: Group, x: Tensor, noise: Tensor, reference: Tensor) -> Tensor:
    r""":math:`z = h(x) \cdot \epsilon`, which satisfies :math:`z(g \cdot x) = g \cdot z(x)` for the same :math:`\epsilon`."""
    return group.act_on_vectors(frame_elements(group, x, reference), noise)


class EquivariantNoiseSampler(Sampler, kind="equivariant_sde"):
    r"""Euler–Maruyama on the reverse SDE, :math:`x \leftarrow x - [f - g^2 s(t, x)]\Delta t + g\sqrt{\Delta t}\,z_n`,
    with equivariant noise :math:`z_n = h(x_n) \cdot \epsilon_n` (or plain :math:`z_n = \epsilon_n` when
    ``equivariant_noise`` is False, the baseline). With an equivariant score and linear drift, and the same
    generator seed, :math:`x_0(g \cdot x_T) = g \cdot x_0(x_T)` for every :math:`g` in the finite ``group``."""

    class Spec(Spec):
        """Reverse-SDE Euler–Maruyama sampler whose noise is aligned to the state's frame under a finite group."""

        group: component_spec(Group) = Field(description="finite group with a linear orthogonal action on the samples")
        steps: int = Field(500, ge=1, description="number of time steps from T to eps")
        eps: float = Field(1e-3, ge=0, description="final time; the reverse dynamics stop at t = eps")
        equivariant_noise: bool = Field(True, description="align the noise to the state's frame (False: ordinary noise)")
        reference_seed: int = Field(0, ge=0, description="seed of the fixed pattern r that defines the frame h(x)")

    @classmethod
    def examples(cls):
        return [cls.Spec(group={"kind": "cyclic", "n": 4})]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        group = build(self.spec.group, Group)
        if not group.finite or not group.linear_action:
            raise ValueError(f"group: equivariant noise needs a finite group with a linear action, got {group!r}")
        self.group = group

    def reference(self, event_shape: tuple[int, ...], *, device=None) -> Tensor:
        """The fixed pattern :math:`r` (float64) for samples of ``event_shape``."""
        generator = torch.Generator().manual_seed(self.spec.reference_seed)
        return torch.randn(event_shape, generator=generator, dtype=torch.float64).to(device)

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
        s = self.spec
        if not 0 <= s.eps < process.T:
            raise ValueError(f"eps: expected a value in [0, T={process.T}), got {s.eps}")
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        reference = self.reference(tuple(x.shape[1:]), device=x.device)
        self.group.act(self.group.identity(device=x.device), x)  # the group must act on these samples: fail before work
        counted = CountingScore(score, progress, s.steps, "reverse SDE (equivariant noise)")
        times = torch.linspace(process.T, s.eps, s.steps + 1, dtype=torch.float64).tolist()
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                dt = t_now - t_next
                t = torch.full((x.shape[0],), t_now, dtype=x.dtype, device=x.device)
                z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
                if s.equivariant_noise:
                    z = equivariant_noise(self.group, x, z, reference)
                drift = process.reverse_drift(x, t, counted(t, x))
                x = x - drift * dt + process.diffusion(process.time_like(t, x)) * math.sqrt(dt) * z
        finally:
            counted.close()
        return x
