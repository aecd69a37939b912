"""Atomic checkpoints: a crash while writing never leaves a truncated ``last.pt``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_ema_model"]


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file in ``path``'s folder, then
    ``os.replace`` it onto ``path`` (atomic on POSIX and Windows within one file system)."""
    if not isinstance(state, dict):
        raise TypeError(f"state: expected a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors, numbers, strings and
    containers only: loaded with ``weights_only=True``, so no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def load_ema_model(path: str | os.PathLike, *, map_location: str | torch.device | None = "cpu") -> torch.nn.Module:
    """The EMA network of a :class:`~geodiffusion.training.Trainer` checkpoint, built from its ``model_spec`` and
    loaded strictly (every weight present, none extra), in eval mode."""
    from geodiffusion.models.base import ScoreModel
    from geodiffusion.registry import build

    state = load_checkpoint(path, map_location=map_location)
    if "model_spec" not in state or "ema" not in state:
        raise ValueError(f"{path}: expected a Trainer checkpoint with 'model_spec' and 'ema', got keys {sorted(state)}")
    model = build(state["model_spec"], ScoreModel)
    model.load_state_dict(state["ema"]["model"])
    return model.eval()
