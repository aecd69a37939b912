"""Input checks shared by every component: fail before any work, say what was expected."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "check_tensor",
    "check_finite",
    "check_same_device_dtype",
    "check_time",
    "check_event_shape",
    "expand_time",
]


def check_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def check_finite(name: str, x: Tensor) -> Tensor:
    check_tensor(name, x)
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return x


def check_same_device_dtype(**tensors: Tensor) -> None:
    """All floating tensors share one device and one dtype."""
    items = [(k, v) for k, v in tensors.items() if isinstance(v, Tensor)]
    if not items:
        return
    name0, ref = items[0]
    for name, value in items[1:]:
        if value.device != ref.device:
            raise ValueError(f"{name} is on {value.device} but {name0} is on {ref.device}; move them to one device")
        if value.is_floating_point() and ref.is_floating_point() and value.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {value.dtype} but {name0} has {ref.dtype}; cast them to one dtype")


def check_time(t: Tensor | float, T: float, like: Tensor, *, name: str = "t", lower: float = 0.0) -> Tensor:
    """``t`` as a tensor on ``like``'s device/dtype, checked to lie in ``[lower, T]``."""
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    elif t.device != like.device:
        raise ValueError(f"{name} is on {t.device} but x is on {like.device}")
    elif not t.is_floating_point():
        t = t.to(like.dtype)
    check_finite(name, t)
    if t.numel() and (bool((t < lower).any()) or bool((t > T).any())):
        raise ValueError(f"{name}: expected times in [{lower}, {T}], got range [{t.min().item():.6g}, {t.max().item():.6g}]")
    return t


def check_event_shape(name: str, x: Tensor, event_shape: tuple[int, ...]) -> None:
    n = len(event_shape)
    if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(event_shape):
        raise ValueError(f"{name}: expected shape [..., {', '.join(map(str, event_shape))}], got {list(x.shape)}")


def expand_time(t: Tensor, x: Tensor) -> Tensor:
    """Broadcast per-sample times ``t`` of shape ``[]`` or ``x.shape[:k]`` against ``x``."""
    if t.dim() > x.dim() or tuple(t.shape) != tuple(x.shape[: t.dim()]):
        raise ValueError(f"t: expected shape [] or a prefix of x's shape {list(x.shape)}, got {list(t.shape)}")
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim()))
