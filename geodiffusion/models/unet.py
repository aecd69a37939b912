r"""Image U-Net score models: weight-tied :math:`G`-equivariant (SPDM+WT) and a plain baseline of the same shape.

Both are the same network over group feature maps ``[B, C, |G|, H, W]``; the baseline is the trivial
group :math:`C_1`, where every group convolution is an ordinary convolution. Every layer commutes with
the regular representation :math:`(h \cdot f)(g) = L_h f(h^{-1} g)`: lifting and group convolutions,
group normalisation, pointwise nonlinearities, time biases shared over :math:`G`, 2x2 average pooling
and nearest 2x upsampling on even sizes, channel concatenation of skips, and the final mean over
:math:`G`. Hence :math:`s_\theta(t, L_h x) = L_h s_\theta(t, x)` exactly, up to float round-off.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from geodiffusion._random import randn
from geodiffusion.groups.base import Group
from geodiffusion.groups.planar import CyclicGroup
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.group_conv import (
    GroupConv2d,
    GroupNorm,
    GroupPool,
    LiftingConv2d,
    check_image_group,
    group_avg_pool2d,
    group_upsample2d,
)
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, activation
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["UNet", "EquivariantUNet"]


class _UNetSpec(Spec):
    image_channels: int = Field(1, ge=1, description="channels C of the images [B, C, H, W]")
    image_size: int = Field(28, ge=1, description="side H = W of the square images")
    channels: tuple[int, ...] = Field((32, 64), min_length=1, description="feature channels per resolution level")
    blocks: int = Field(1, ge=1, description="residual blocks per level on each path")
    kernel_size: int = Field(3, ge=1, description="odd spatial kernel size")
    time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the sinusoidal time features")
    norm_groups: int = Field(4, ge=1, description="channel groups of the group normalisation (divides every channels entry)")
    activation: Activation = "silu"

    @field_validator("channels")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(c < 1 for c in value):
            raise ValueError(f"every entry must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        factor = 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            # each 2x2 pooling must see an even side, else it cannot commute with rot90/flip
            raise ValueError(f"image_size {self.image_size} must be divisible by 2**(levels - 1) = {factor}")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ValueError(f"norm_groups {self.norm_groups} must divide every channels entry, not {bad}")
        return self


class _ResBlock(nn.Module):
    r""":math:`h = C_2(\phi(N_2(C_1(\phi(N_1 f)) + b(t)))) + S f`, all layers group-equivariant."""

    def __init__(self, group: Group, cin: int, cout: int, time_dim: int, spec: _UNetSpec) -> None:
        super().__init__()
        k, groups = spec.kernel_size, spec.norm_groups
        self.norm1 = GroupNorm(groups, cin)  # cin is a sum of validated widths, so groups divides it
        self.conv1 = GroupConv2d(group, cin, cout, k)
        self.time = nn.Linear(time_dim, cout)
        self.norm2 = GroupNorm(groups, cout)
        self.conv2 = GroupConv2d(group, cout, cout, k)
        self.act = activation(spec.activation)
        self.skip = GroupConv2d(group, cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, f: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(f)))
        h = h + self.time(emb)[:, :, None, None, None]  # one bias per channel, shared over G and space
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(f)


class _GroupUNet(nn.Module):
    """The U-Net over feature maps on ``group`` (shared by both registered models)."""

    def __init__(self, spec: _UNetSpec, group: Group) -> None:
        super().__init__()
        check_image_group(group)
        s = spec
        time_dim = 4 * s.time_embedding_dim
        self.time = nn.Sequential(
            SinusoidalTimeEmbedding(s.time_embedding_dim),
            nn.Linear(s.time_embedding_dim, time_dim),
            activation(s.activation),
            nn.Linear(time_dim, time_dim),
        )
        self.lift = LiftingConv2d(group, s.image_channels, s.channels[0], s.kernel_size)
        self.down = nn.ModuleList()
        c = s.channels[0]
        for width in s.channels:
            self.down.append(nn.ModuleList(_ResBlock(group, c if b == 0 else width, width, time_dim, s) for b in range(s.blocks)))
            c = width
        self.middle = _ResBlock(group, c, c, time_dim, s)
        self.up = nn.ModuleList()
        for width in reversed(s.channels):
            blocks = [_ResBlock(group, c + width, width, time_dim, s)]
            blocks += [_ResBlock(group, width, width, time_dim, s) for _ in range(s.blocks - 1)]
            self.up.append(nn.ModuleList(blocks))
            c = width
        self.out_norm = GroupNorm(s.norm_groups, c)
        self.out_act = activation(s.activation)
        self.out_conv = GroupConv2d(group, c, s.image_channels, s.kernel_size)
        self.pool = GroupPool("mean")

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        emb = self.time(t)
        h = self.lift(x)
        skips = []
        levels = len(self.down)
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if level < levels - 1:
                h = group_avg_pool2d(h)
        h = self.middle(h, emb)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips[levels - 1 - i]], 1)
            for block in blocks:
                h = block(h, emb)
            if i < levels - 1:
                h = group_upsample2d(h)
        return self.pool(self.out_conv(self.out_act(self.out_norm(h))))


class _ImageScoreModel(ScoreModel):
    """Shared input handling of the image U-Nets: ``t [B]`` or ``[]``, ``x [B, C, H, W]`` -> ``[B, C, H, W]``."""

    def _check_x(self, x: Tensor) -> None:
        s = self.spec
        expected = (s.image_channels, s.image_size, s.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            shape = ", ".join(map(str, expected))
            raise ValueError(f"{type(self).__name__}: expected x of shape [B, {shape}], got {list(x.shape)}")

    def forward(self, t: Tensor, x: Tensor, **context) -> Tensor:
        self._check_x(x)
        t = torch.as_tensor(t, device=x.device, dtype=x.dtype).expand(x.shape[0])
        return self.net(t, x)

    def example_input(self, batch: int, generator=None) -> Tensor:
        s = self.spec
        return randn((batch, s.image_channels, s.image_size, s.image_size), generator)


class UNet(_ImageScoreModel, kind="unet"):
    r"""Plain U-Net :math:`s_\theta(t, x)` on square images (the non-equivariant baseline): the same
    network as :class:`EquivariantUNet` on the trivial group, i.e. ordinary convolutions."""

    class Spec(_UNetSpec):
        """Time-conditioned residual U-Net on images."""

    @classmethod
    def examples(cls):
        return [cls.Spec(image_channels=1, image_size=8, channels=(4, 8), norm_groups=2, time_embedding_dim=8)]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        self.net = _GroupUNet(self.spec, CyclicGroup(n=1, action="image"))


class EquivariantUNet(_ImageScoreModel, kind="wt_unet"):
    r"""Weight-tied :math:`G`-equivariant U-Net (SPDM+WT), :math:`s_\theta(t, L_h x) = L_h s_\theta(t, x)`
    for every :math:`h \in G` (C_n or D_n acting on images, n in {1, 2, 4}).

    ``channels`` count feature maps per group element: a level of width ``c`` holds ``c * |G|`` maps."""

    class Spec(_UNetSpec):
        """Group-equivariant residual U-Net on images with weight-tied group convolutions."""

        group: component_spec(Group) = Field(
            {"kind": "cyclic", "n": 4, "action": "image"}, description="finite group acting on images (C_4 or D_4 typically)"
        )

    @classmethod
    def examples(cls):
        tiny = {"image_channels": 1, "image_size": 8, "channels": (2, 4), "norm_groups": 2, "time_embedding_dim": 8}
        return [
            cls.Spec(**tiny, group={"kind": "cyclic", "n": 4, "action": "image"}),
            cls.Spec(**{**tiny, "image_channels": 2}, group={"kind": "dihedral", "n": 4, "action": "image"}),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        group = build(self.spec.group, Group)
        check_image_group(group)
        self._group = group
        self.net = _GroupUNet(self.spec, group)

    @property
    def group(self) -> Group:
        return self._group
