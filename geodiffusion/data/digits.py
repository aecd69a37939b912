r"""Handwritten digits that ship offline, C_4-rotated, and paired translation tasks for diffusion bridges.

Source: scikit-learn's bundled copy of the UCI "Optical Recognition of Handwritten Digits" test set (optdigits;
E. Alpaydin and C. Kaynak, 1998), read by :func:`sklearn.datasets.load_digits`: 1797 images of 8x8 pixels with
integer intensities 0..16 and labels 0..9. scikit-learn is BSD-3-Clause licensed and ships the file inside its wheel,
so nothing is downloaded; the UCI dataset is licensed CC BY 4.0.

Preprocessing: intensities :math:`v \in \{0..16\}` map to :math:`v/8 - 1 \in [-1, 1]`; ``size=16`` upsamples by
bilinear interpolation with ``align_corners=False`` (each output pixel centre sampled in the 8x8 image), which is
symmetric under rot90 and flips, so rotating commutes with upsampling exactly. The rotated set turns each image by a
uniformly random element of :math:`C_4` (quarter turns), drawn from a seeded generator.

Paired tasks (:math:`x_0` the clean digit, :math:`x_T` what the bridge starts from):

- ``denoise``: :math:`x_T = x_0 + \tau \epsilon` with a fixed-seed Gaussian :math:`\epsilon`;
- ``style``: :math:`x_T = E(x_0)`, the Sobel edge map :math:`E(x) = 2\,|\nabla x| / \max|\nabla x| - 1` (gradient
  magnitude of the two 3x3 Sobel filters, replicate padding, normalised by the largest magnitude in the whole set).
  :math:`|\nabla x|` is exactly invariant under rot90 and flips of the filters, so :math:`E(g x) = g E(x)` for
  :math:`g \in D_4`: the paired law is :math:`G`-invariant, as an equivariant bridge needs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from geodiffusion.spec import Spec

__all__ = ["load_digits_images", "rotate_c4", "sobel_edges", "RotatedDigits", "PairedDigits", "DIGITS_SOURCE"]

DIGITS_SOURCE = "scikit-learn load_digits (UCI optdigits test set, 1797 images 8x8; scikit-learn BSD-3-Clause, data CC BY 4.0)"


def load_digits_images(size: Literal[8, 16] = 16, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """All 1797 digits as ``images [1797, 1, size, size]`` in [-1, 1] and ``labels [1797]`` (long)."""
    if size not in (8, 16):
        raise ValueError(f"size: expected 8 or 16, got {size}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float64).unsqueeze(1) / 8.0 - 1.0
    if size == 16:
        images = F.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)
    return images.to(dtype), torch.as_tensor(bunch.target, dtype=torch.long)


def rotate_c4(images: Tensor, quarter_turns: Tensor) -> Tensor:
    """``images [N, C, H, W]`` each turned by ``quarter_turns [N]`` (in 0..3) counter-clockwise quarter turns."""
    if quarter_turns.shape != images.shape[:1]:
        raise ValueError(f"quarter_turns: expected shape [{images.shape[0]}], got {list(quarter_turns.shape)}")
    out = images.clone()
    for k in range(1, 4):  # four exact index permutations, each applied to its whole subset at once
        mask = quarter_turns == k
        out[mask] = torch.rot90(images[mask], k, dims=(-2, -1))
    return out


def sobel_edges(images: Tensor) -> Tensor:
    r""":math:`|\nabla x|` of ``images [N, C, H, W]`` by the 3x3 Sobel filters with replicate padding (unnormalised)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=images.dtype, device=images.device)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1)  # [2, 1, 3, 3]
    n, c, h, w = images.shape
    padded = F.pad(images.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    grad = F.conv2d(padded, kernels)
    return grad.pow(2).sum(1).sqrt().reshape(n, c, h, w)


class RotatedDigits(Spec):
    """The digits, optionally upsampled and C_4-rotated, split into seeded train and test sets."""

    size: Literal[8, 16] = Field(16, description="image side: 8 (original) or 16 (bilinear 2x upsampling)")
    rotate: bool = Field(True, description="turn each image by a uniformly random element of C_4")
    seed: int = Field(0, ge=0, description="seed of the rotations and of the train/test split")
    n_test: int = Field(297, ge=1, le=1000, description="held-out images (the rest, 1797 - n_test, are for training)")

    def load(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """``{"train", "test"}`` images ``[N, 1, size, size]``, ``{"train_labels", "test_labels"}`` and the quarter turns."""
        images, labels = load_digits_images(self.size, dtype)
        gen = torch.Generator().manual_seed(self.seed)
        turns = torch.randint(0, 4, (len(images),), generator=gen)  # drawn either way: the split does not depend on rotate
        if not self.rotate:
            turns = torch.zeros_like(turns)
        images = rotate_c4(images, turns)
        perm = torch.randperm(len(images), generator=gen)
        test, train = perm[: self.n_test], perm[self.n_test :]
        return {
            "train": images[train],
            "test": images[test],
            "train_labels": labels[train],
            "test_labels": labels[test],
            "train_turns": turns[train],
            "test_turns": turns[test],
        }


class PairedDigits(RotatedDigits):
    """Pairs (x0, x_T) for bridges from the rotated digits: ``denoise`` or ``style`` (Sobel edge map); see the module."""

    task: Literal["denoise", "style"] = Field("denoise", description="denoise: x_T = x0 + noise_std * eps; style: edge map")
    noise_std: float = Field(0.5, gt=0, description="tau, the std of the fixed noise of the denoise task")
    noise_seed: int = Field(1, ge=0, description="seed of the fixed noise of the denoise task")

    def make_pairs(self, x0: Tensor, *, normaliser: float | None = None, offset: int = 0) -> Tensor:
        r""":math:`x_T` for each ``x0 [N, C, H, W]``. The noise of image ``i`` is drawn from the stream of ``noise_seed``
        at index ``offset + i`` (so train and test pairs get different noise); ``normaliser`` is the edge scale."""
        if self.task == "denoise":
            gen = torch.Generator().manual_seed(self.noise_seed)
            eps = torch.randn((offset + len(x0),) + tuple(x0.shape[1:]), generator=gen, dtype=torch.float64)[offset:]
            return x0 + self.noise_std * eps.to(x0.dtype)
        edges = sobel_edges(x0)
        scale = normaliser if normaliser is not None else float(edges.max())
        return 2.0 * edges / scale - 1.0

    def load(self, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
        """:meth:`RotatedDigits.load` plus ``"train_x_T"`` and ``"test_x_T"``."""
        data = super().load(dtype)
        both = torch.cat([data["train"], data["test"]])
        normaliser = float(sobel_edges(both).max()) if self.task == "style" else None
        n_train = len(data["train"])
        data["train_x_T"] = self.make_pairs(data["train"], normaliser=normaliser)
        data["test_x_T"] = self.make_pairs(data["test"], normaliser=normaliser, offset=n_train)
        return data
