r"""Data-parallel training on PyTorch's own engine (``torch.distributed`` + DDP; gloo on CPU, NCCL on GPU).

The split keeps the single-process step exact: every rank draws the same global minibatch
:math:`\{x_0^{(i)}\}_{i=1}^{B}`, the same times :math:`t_i` and the same noise (identical generators), and
evaluates the model only on its contiguous slice :math:`I_r` of the batch. With the loss the mean over the
global batch, :math:`\mathcal L = \frac1B \sum_{i=1}^{B} \ell_i`, rank :math:`r` back-propagates
:math:`W \cdot \frac1B \sum_{i \in I_r} \ell_i` and DDP's gradient average over the :math:`W` ranks gives
:math:`\frac1W \sum_r W \frac1B \sum_{i \in I_r} \nabla \ell_i = \nabla \mathcal L`, the single-process gradient.
The rows are data points or functions (:class:`RankSlicedScore`), or the edges of whole graphs
(:class:`RankSlicedGraphScore`, whose loss averages over all the batch's edges: :math:`B` is then the edge count).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistributedContext",
    "launched_by_torchrun",
    "env_world_size",
    "local_device",
    "setup_distributed",
    "batch_bounds",
    "gather_rows",
    "RankSlicedScore",
    "RankSlicedGraphScore",
    "broadcast_object",
    "barrier",
    "is_main_process",
]

# the variables torchrun (torch.distributed.run) sets for every worker; env:// initialisation needs them all
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the default process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs and outputs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the torchrun variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) are all set."""
    return all(name in os.environ for name in _TORCHRUN_ENV)


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when unset)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE: expected a positive integer, got {value!r}") from err
    if size < 1:
        raise ValueError(f"WORLD_SIZE: expected a positive integer, got {size}")
    return size


def _local_rank() -> int:
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    rank = dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return rank % count if count else 0


def local_device(device: str | torch.device | None) -> torch.device:
    """``device`` with a CUDA device without index mapped to this worker's GPU, ``cuda:LOCAL_RANK``
    (an explicit index is kept: the user chose it, e.g. with ``CUDA_VISIBLE_DEVICES`` per worker)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", _local_rank())
    return device


def setup_distributed(device: str | torch.device | None = None, *, distributed: bool | None = None) -> DistributedContext | None:
    """The process group this process trains in, initialised from the torchrun environment if needed.

    ``distributed=None`` (auto): distributed iff a group of more than one process is already initialised or
    torchrun launched more than one worker. ``True``: required (a group of any size, or the torchrun variables).
    ``False``: never (returns None). A group this function initialises uses NCCL for CUDA ``device`` and gloo
    otherwise; it stays initialised for later trainers of the same run.
    """
    if distributed is False:
        return None
    if distributed not in (None, True):
        raise ValueError(f"distributed: expected None, True or False, got {distributed!r}")
    if not dist.is_available():
        if distributed:
            raise RuntimeError("distributed=True but this torch build has no torch.distributed")
        return None
    device = local_device(device)
    if not dist.is_initialized():
        if not launched_by_torchrun():
            if distributed:
                raise ValueError(
                    "distributed=True but no process group is initialised and the torchrun variables "
                    f"({', '.join(_TORCHRUN_ENV)}) are not all set; launch with torchrun or call init_process_group first"
                )
            return None
        if distributed is None and env_world_size() == 1:
            return None
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            # NCCL binds a communicator to the current device: it must be this worker's GPU
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, init_method="env://")
    world = dist.get_world_size()
    if distributed is None and world == 1:
        return None
    return DistributedContext(rank=dist.get_rank(), world_size=world, local_rank=_local_rank(), backend=dist.get_backend())


def batch_bounds(batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a global batch that ``rank`` evaluates: contiguous slices whose sizes differ by at most one
    (the first ``batch % world_size`` ranks take one more).

    >>> [batch_bounds(7, r, 3) for r in range(3)]
    [(0, 3), (3, 5), (5, 7)]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank: expected a value in [0, {world_size}), got {rank}")
    if batch < world_size:
        raise ValueError(f"batch ({batch}) must be at least the world size ({world_size}): every rank needs a sample")
    base, extra = divmod(batch, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def gather_rows(local: Tensor, bounds: Sequence[tuple[int, int]], context: DistributedContext) -> Tensor:
    """The global rows ``[bounds[0][0], bounds[-1][1])`` from every rank's slice ``local`` (rank ``r`` holds rows
    ``bounds[r]``): this rank's rows stay ``local`` itself (differentiable), the others' are all-gathered and detached."""
    # all_gather needs equal shapes: pad every slice to the largest, then trim
    width = max(hi - lo for lo, hi in bounds)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    gathered = [torch.empty_like(padded) for _ in range(context.world_size)]
    dist.all_gather(gathered, padded)
    pieces = [
        local if r == context.rank else part[: hi - lo] for r, (part, (lo, hi)) in enumerate(zip(gathered, bounds, strict=True))
    ]
    return torch.cat(pieces, 0)


class RankSlicedScore:
    r"""A score function over the global batch that evaluates ``model`` (the DDP module) on this rank's rows only.

    Called as ``score(t [B], x [B, ...], **batched)`` by the DSM losses: returns ``[B, ...]`` whose own rows are the
    live (differentiable) model output and whose other rows are the other ranks' outputs, all-gathered and detached.
    The loss value is thus the global-batch loss on every rank, and its gradient reaches only this rank's rows
    (DDP sums the rest in ``backward``). Keyword arguments named in ``batched`` (e.g. the function inputs
    ``inputs [B, N, m]``) are sliced with the batch; any other keyword is refused.
    """

    def __init__(self, model: nn.Module, context: DistributedContext, batched: Sequence[str] = ()) -> None:
        self.model = model
        self.context = context
        self.batched = frozenset(batched)

    def __call__(self, t: Tensor, x: Tensor, **kwargs: Any) -> Tensor:
        if set(kwargs) - self.batched:
            raise ValueError(
                f"distributed training passes no model context other than {sorted(self.batched)}; got {sorted(kwargs)}"
            )
        ctx = self.context
        bounds = [batch_bounds(x.shape[0], r, ctx.world_size) for r in range(ctx.world_size)]
        lo, hi = bounds[ctx.rank]
        t_local = t[lo:hi] if t.dim() > 0 else t
        local = self.model(t_local, x[lo:hi], **{k: v[lo:hi] for k, v in kwargs.items()})
        if not isinstance(local, Tensor) or local.shape != x[lo:hi].shape:
            got = list(local.shape) if isinstance(local, Tensor) else type(local).__name__
            raise ValueError(f"model output: expected the shape of x {list(x[lo:hi].shape)}, got {got}")
        return gather_rows(local, bounds, ctx)


class RankSlicedGraphScore:
    r"""An edge score over a global torch-geometric ``Batch`` of :math:`G` graphs that evaluates ``model`` (the DDP
    module) on this rank's contiguous run of whole graphs only (:func:`batch_bounds` over the graphs).

    Called as ``score(t [G], d [E], graph=batch)``: the rank's graphs form a sub-batch whose edges are the rows
    ``[E_lo, E_hi)`` of ``d`` (a ``Batch`` stores each graph's edges contiguously, in graph order); the result
    ``[E]`` is the live output on those rows and the other ranks' outputs, all-gathered and detached, elsewhere.
    A loss averaging over all :math:`E` edges is thus the global-batch loss on every rank.
    """

    def __init__(self, model: nn.Module, context: DistributedContext) -> None:
        self.model = model
        self.context = context

    def __call__(self, t: Tensor, x: Tensor, graph: Any = None, **kwargs: Any) -> Tensor:
        if kwargs:
            raise ValueError(f"distributed training passes no model context other than graph; got {sorted(kwargs)}")
        if not callable(getattr(graph, "index_select", None)) or getattr(graph, "batch", None) is None:
            raise ValueError(f"graph: expected a torch_geometric Batch, got {type(graph).__name__}")
        ctx = self.context
        n_graphs = int(graph.num_graphs)
        edge_graph = graph.batch[graph.edge_index[0]]
        if bool((edge_graph[1:] < edge_graph[:-1]).any()):
            raise ValueError("graph: expected the edges grouped by graph, in graph order (as Batch.from_data_list stores them)")
        ptr = [0, *torch.bincount(edge_graph, minlength=n_graphs).cumsum(0).tolist()]
        graph_bounds = [batch_bounds(n_graphs, r, ctx.world_size) for r in range(ctx.world_size)]
        edge_bounds = [(ptr[lo], ptr[hi]) for lo, hi in graph_bounds]
        (lo, hi), (e_lo, e_hi) = graph_bounds[ctx.rank], edge_bounds[ctx.rank]
        sub = type(graph).from_data_list(graph.index_select(slice(lo, hi)))
        local = self.model(t[lo:hi], x[e_lo:e_hi], graph=sub)
        if not isinstance(local, Tensor) or local.shape != x[e_lo:e_hi].shape:
            got = list(local.shape) if isinstance(local, Tensor) else type(local).__name__
            raise ValueError(f"model output: expected one value per edge {list(x[e_lo:e_hi].shape)}, got {got}")
        return gather_rows(local, edge_bounds, ctx)


def broadcast_object(obj: Any, context: DistributedContext, device: torch.device | None = None) -> Any:
    """``obj`` from rank 0 on every rank (pickled; tensors should be on the CPU so that they unpickle anywhere)."""
    box = [obj if context.is_main else None]
    dist.broadcast_object_list(box, src=0, device=device if context.backend == "nccl" else None)
    return box[0]


def barrier(context: DistributedContext | None, device: torch.device | None = None) -> None:
    """Wait for every rank (no-op outside distributed training)."""
    if context is None:
        return
    if context.backend == "nccl" and device is not None and device.type == "cuda":
        dist.barrier(device_ids=[device.index])
    else:
        dist.barrier()


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0 of an initialised group (rank from ``RANK`` before initialisation)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
