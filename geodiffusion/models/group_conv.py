r"""Weight-tied group convolutions on square images (SPDM+WT; Cohen & Welling, 2016).

A finite group :math:`G` (C_n or D_n with ``action="image"``, n in {1, 2, 4}) acts on images by
exact pixel permutations :math:`L_h` (rot90 / flip). Feature maps on :math:`G` have shape
``[B, C, |G|, H, W]`` and transform by the regular representation,
:math:`(h \cdot f)(g) = L_h f(h^{-1} g)`.

* lifting :math:`f(g) = x \star L_g W` (one base kernel, copied by every :math:`g`);
* group conv :math:`f'(g) = \sum_{g'} f(g') \star L_g W(g^{-1} g')` (spatial copy and a permutation of
  the kernel's group axis);
* pooling over :math:`G` gives invariant channels, :math:`P(h \cdot f) = L_h P(f)`.

Cross-correlation commutes with a pixel permutation applied to image and kernel alike,
:math:`L_h x \star L_h W = L_h (x \star W)` (odd kernels, symmetric zero padding), so all three are
exactly equivariant; in floating point only the summation order changes, hence round-off error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geodiffusion.groups.base import Group

__all__ = [
    "check_image_group",
    "cayley_inverse_table",
    "act_on_group_features",
    "LiftingConv2d",
    "GroupConv2d",
    "GroupPool",
    "GroupNorm",
    "group_avg_pool2d",
    "group_upsample2d",
]


def check_image_group(group: Group) -> None:
    """Raise ValueError unless ``group`` is finite and acts on images ``[..., C, H, W]``."""
    if not getattr(group, "finite", False):
        raise ValueError(f"group convolutions need a finite group, got {type(group).__name__}")
    if group.event_ndim != 3 or getattr(group.spec, "action", "image") != "image":
        raise ValueError(f"group convolutions need a group acting on images [..., C, H, W] (action='image'), got {group!r}")


def _element_index(group: Group, elements: Tensor, query: Tensor) -> Tensor:
    """Index in ``elements`` of each element of ``query`` (``[..., *element_shape]`` -> ``[...]``)."""
    nd = len(group.element_shape)
    q = query.unsqueeze(query.dim() - nd)  # [..., 1, *element_shape] against [|G|, *element_shape]
    match = group.elements_close(q, elements)
    if not bool((match.sum(-1) == 1).all()):
        raise ValueError(f"{group!r}: compose/inverse left the enumerated elements")
    return match.to(torch.long).argmax(-1)


def cayley_inverse_table(group: Group) -> Tensor:
    r"""``table[h, g]`` = index of :math:`h^{-1} g`, for the regular representation."""
    elements = group.elements()
    products = group.compose(group.inverse(elements)[:, None], elements[None, :])
    return _element_index(group, elements, products)


def act_on_group_features(group: Group, h: Tensor, f: Tensor) -> Tensor:
    r"""Regular representation :math:`(h \cdot f)(g) = L_h f(h^{-1} g)` on ``f [B, C, |G|, H, W]``
    for one element ``h``."""
    table = cayley_inverse_table(group).to(f.device)
    index = _element_index(group, group.elements(device=f.device), h.reshape(group.element_shape).to(f.device))
    permuted = f.index_select(2, table[index])
    b, c, m, hh, ww = permuted.shape
    return group.act(h, permuted.reshape(b, c * m, hh, ww)).reshape(b, c, m, hh, ww)


def _transformed_kernels(group: Group, weight: Tensor) -> Tensor:
    """``[|G|, *weight.shape]``: the spatial copy :math:`L_g W` of ``weight [..., k, k]`` for every g."""
    elements = group.elements(device=weight.device)
    flat = weight.reshape(1, -1, *weight.shape[-2:])
    g = elements.reshape((elements.shape[0],) + tuple(group.element_shape))
    return group.act(g, flat).reshape((elements.shape[0],) + weight.shape)


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd (centred kernels rotate onto the pixel grid), got {kernel_size}")


class LiftingConv2d(nn.Module):
    r"""Lifting convolution :math:`f(o, g) = \sum_i x_i \star L_g W_{oi} + b_o`:
    ``[B, C_in, H, W]`` -> ``[B, C_out, |G|, H, W]``."""

    def __init__(self, group: Group, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        check_image_group(group)
        _check_kernel_size(kernel_size)
        self.group, self.order = group, group.order
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        o, i, k, _ = self.weight.shape
        # [|G|, O, I, k, k] -> output channel index o * |G| + g, one conv2d call
        kernels = _transformed_kernels(self.group, self.weight).transpose(0, 1).reshape(o * self.order, i, k, k)
        bias = self.bias.repeat_interleave(self.order) if self.bias is not None else None
        y = F.conv2d(x, kernels, bias, padding=k // 2)
        return y.reshape(x.shape[0], o, self.order, *y.shape[-2:])


class GroupConv2d(nn.Module):
    r"""Group convolution :math:`f'(o, g) = \sum_{i, g'} f(i, g') \star L_g W_{oi}(g^{-1} g') + b_o`:
    ``[B, C_in, |G|, H, W]`` -> ``[B, C_out, |G|, H, W]``."""

    def __init__(self, group: Group, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True) -> None:
        super().__init__()
        check_image_group(group)
        _check_kernel_size(kernel_size)
        self.group, self.order = group, group.order
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, group.order, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # the table is a constant of the group; a buffer follows .to(device)
        self.register_buffer("inverse_table", cayley_inverse_table(group), persistent=False)
        nn.init.kaiming_uniform_(self.weight.view(out_channels, -1, kernel_size, kernel_size), a=math.sqrt(5))

    def forward(self, f: Tensor) -> Tensor:
        if f.dim() != 5 or f.shape[2] != self.order:
            raise ValueError(f"GroupConv2d: expected features [B, C, {self.order}, H, W], got {list(f.shape)}")
        o, i, m, k, _ = self.weight.shape
        # W_g(g') = W(g^{-1} g'): permute the kernel's group axis by row g of the table, then copy spatially by L_g
        permuted = self.weight[:, :, self.inverse_table]  # [O, I, |G| (g), |G| (g'), k, k]
        permuted = permuted.permute(2, 0, 1, 3, 4, 5)  # [g, O, I, g', k, k]
        g = self.group.elements(device=f.device).reshape((m,) + tuple(self.group.element_shape))
        kernels = self.group.act(g, permuted.reshape(m, o * i * m, k, k)).reshape(m, o, i * m, k, k)
        kernels = kernels.transpose(0, 1).reshape(o * m, i * m, k, k)
        bias = self.bias.repeat_interleave(m) if self.bias is not None else None
        y = F.conv2d(f.reshape(f.shape[0], i * m, *f.shape[-2:]), kernels, bias, padding=k // 2)
        return y.reshape(f.shape[0], o, m, *y.shape[-2:])


class GroupPool(nn.Module):
    r"""Invariant pooling over the group axis, :math:`P(f)(o) = \frac{1}{|G|}\sum_g f(o, g)` (or the max):
    ``[B, C, |G|, H, W]`` -> ``[B, C, H, W]``, with :math:`P(h \cdot f) = L_h P(f)`."""

    def __init__(self, reduce: str = "mean") -> None:
        super().__init__()
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce: expected 'mean' or 'max', got {reduce!r}")
        self.reduce = reduce

    def forward(self, f: Tensor) -> Tensor:
        return f.mean(2) if self.reduce == "mean" else f.amax(2)


class GroupNorm(nn.GroupNorm):
    r"""Group normalisation of ``[B, C, |G|, H, W]`` features: statistics over channel groups, the
    group axis and space, affine per channel shared over :math:`G`, so it commutes with the regular
    representation (``nn.GroupNorm`` already reduces over every trailing axis: ``|G|, H, W``)."""


def group_avg_pool2d(f: Tensor) -> Tensor:
    """2x2 average pooling of ``[B, C, |G|, H, W]`` (H, W even): 2x2 blocks are permuted by rot90/flip."""
    if f.shape[-1] % 2 or f.shape[-2] % 2:
        raise ValueError(f"2x2 pooling commutes with rot90/flip only on even sizes, got {list(f.shape[-2:])}")
    b, c, m, h, w = f.shape
    return F.avg_pool2d(f.reshape(b, c * m, h, w), 2).reshape(b, c, m, h // 2, w // 2)


def group_upsample2d(f: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of ``[B, C, |G|, H, W]``, which commutes with any pixel permutation of blocks."""
    b, c, m, h, w = f.shape
    return F.interpolate(f.reshape(b, c * m, h, w), scale_factor=2, mode="nearest").reshape(b, c, m, 2 * h, 2 * w)
