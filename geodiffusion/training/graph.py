r"""Distance denoising score matching on extended graphs, and a resumable training loop for it.

Coordinates are noised, :math:`C_t = C_0 + \sigma_t \varepsilon`, and each edge's noisy distance :math:`d_t` is
scored against the exact per-edge transition of :class:`~geodiffusion.processes.DistanceVEProcess`:

.. math:: \mathcal{L}(\theta) = \mathbb{E}_{t, C_0, \varepsilon}\ \frac{1}{|E|}\sum_{(i,j) \in E}
          \lambda(t)\,\big(s_\theta(t, d_t)_{ij} - \partial_{d_t}\log p_{t}(d_{t,ij} \mid d_{0,ij})\big)^2,
          \qquad \lambda(t) = s_t^2 \ \text{(sigma2)}, \quad s_t^2\,(1 + s_t^2/\sigma_{\rm data}^2) \ \text{(edm)},

with :math:`p_t(\cdot \mid d_0)` the noncentral :math:`\chi_3` law (loc :math:`d_0`, scale :math:`s_t`). Noising the
coordinates (rather than each distance independently) keeps :math:`d_t` realisable, as the sampler's states are;
treating edges as independent given :math:`d_0` is the paper's approximation.

``"edm"`` is EDM's weighting (Karras et al. 2022, :math:`\lambda = (\sigma^2+\sigma_{\rm data}^2)/(\sigma\sigma_{\rm data})^2`
on the denoiser :math:`d_t + s_t^2 s_\theta`) carried over to the score: the noise-prediction loss where
:math:`s_t \ll \sigma_{\rm data}` and the denoiser's where :math:`s_t \gg \sigma_{\rm data}`, so the noise levels
that set a conformer's overall shape are not drowned by the (largely irreducible) small-noise loss.
``learned_weighting`` goes further and learns a log-weight :math:`u(t)` per noise level with the network
(:class:`NoiseLevelLogWeight`), which gives every noise level the same share of the gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from pydantic import Field
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from geodiffusion._random import rand, randn
from geodiffusion.conformers.graph import edge_vectors, node_graph_index
from geodiffusion.processes.distance import DistanceVEProcess, NoncentralChi3
from geodiffusion.training.distributed import RankSlicedGraphScore
from geodiffusion.training.trainer import TrainerBase, TrainingSpec, Validation

__all__ = [
    "distance_dsm_loss",
    "distance_dsm_weight",
    "GraphTrainer",
    "GraphTrainingSpec",
    "NoiseLevelLogWeight",
    "DistanceDSMValidation",
    "DistanceWeighting",
]

DistanceWeighting = Literal["sigma2", "edm", "none"]
DISTANCE_WEIGHTINGS: tuple[str, ...] = get_args(DistanceWeighting)


class GraphTrainingSpec(TrainingSpec):
    """:class:`~geodiffusion.training.TrainingSpec` with the distance-DSM weightings."""

    weighting: DistanceWeighting = Field(
        "sigma2", description="lambda(t): sigma2 (s_t^2), edm (s_t^2 (1 + s_t^2 / sigma_data^2)) or none"
    )
    sigma_data: float = Field(
        1.0, gt=0, description="edm weighting: the distance scale where the weighting turns from noise to denoiser error"
    )
    learned_weighting: bool = Field(
        False, description="also learn a log-weight u(t) per noise level (EDM2): the loss becomes lambda L / e^u + u"
    )
    weighting_knots: int = Field(32, ge=2, description="learned_weighting: u(t) is linear between this many knots on [0, T]")
    weighting_lr_scale: float = Field(
        20.0, gt=0, description="learned_weighting: u(t)'s learning rate as a multiple of lr (u must track the loss quickly)"
    )


def _graph_index(batch: Data) -> tuple[Tensor, int]:
    return node_graph_index(batch), int(getattr(batch, "num_graphs", 1) or 1)


def _check_weighting(weighting: str, sigma_data: float) -> None:
    if weighting not in DISTANCE_WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {list(DISTANCE_WEIGHTINGS)} for distance DSM, got {weighting!r}")
    if (
        isinstance(sigma_data, bool)
        or not isinstance(sigma_data, int | float)
        or not math.isfinite(sigma_data)
        or sigma_data <= 0
    ):
        raise ValueError(f"sigma_data: expected a positive finite number, got {sigma_data!r}")


def _check_settings(process: DistanceVEProcess, eps: float, weighting: str, sigma_data: float) -> None:
    if not isinstance(process, DistanceVEProcess):
        raise TypeError(f"process: expected a DistanceVEProcess, got {type(process).__name__}")
    _check_weighting(weighting, sigma_data)
    if not 0 <= eps < process.T:
        raise ValueError(f"eps: expected a value in [0, T={process.T}), got {eps}")


def distance_dsm_weight(scale: Tensor, weighting: str = "sigma2", sigma_data: float = 1.0) -> Tensor:
    r""":math:`\lambda(t)` at the distance noise scale ``scale`` :math:`= s_t`: :math:`s_t^2` (``"sigma2"``),
    :math:`s_t^2 (1 + s_t^2/\sigma_{\rm data}^2)` (``"edm"``) or 1 (``"none"``)."""
    _check_weighting(weighting, sigma_data)
    return _root_weight(scale, weighting, sigma_data).square()


def _root_weight(scale: Tensor, weighting: str, sigma_data: float) -> Tensor:
    r""":math:`\lambda(t)^{1/2}`: the loss scales residuals by it, which keeps ``"sigma2"`` exactly :math:`(s_t r)^2`.
    Unchecked: its callers (the loss, the validation, :func:`distance_dsm_weight`) have validated both settings."""
    if weighting == "none":
        return torch.ones_like(scale)
    return scale * torch.sqrt(1.0 + (scale / sigma_data).square()) if weighting == "edm" else scale


def distance_dsm_loss(
    model: nn.Module,
    process: DistanceVEProcess,
    batch: Data,
    *,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    weighting: str = "sigma2",
    sigma_data: float = 1.0,
    log_weight: nn.Module | None = None,
) -> Tensor:
    r"""One Monte Carlo estimate of :math:`\mathcal{L}(\theta)`: one :math:`t \sim U[\varepsilon, T]` per graph.

    ``batch``: a PyG Data/Batch with clean coordinates ``pos [N, 3]`` and canonical ``edge_index``; ``model``:
    ``(t [G], d [E], graph=batch) -> [E]``. ``weighting``, ``sigma_data``: :math:`\lambda` of
    :func:`distance_dsm_weight`; ``log_weight``: a learned :math:`u(t)` (:class:`NoiseLevelLogWeight`) that divides
    each edge's term by :math:`e^{u(t)}` and adds :math:`u(t)`.
    """
    _check_settings(process, eps, weighting, sigma_data)
    if getattr(batch, "pos", None) is None:
        raise ValueError("batch: expected clean coordinates in batch.pos")
    pos = batch.pos
    dtype, device = pos.dtype, pos.device
    _, n_graphs = _graph_index(batch)
    t = eps + (process.T - eps) * rand((n_graphs,), generator, dtype=dtype, device=device)
    noise = randn(pos.shape, generator, dtype=dtype, device=device)
    return _distance_dsm(model, process, batch, t, noise, weighting, sigma_data, log_weight)


def _distance_dsm(
    model: nn.Module,
    process: DistanceVEProcess,
    batch: Data,
    t: Tensor,
    noise: Tensor,
    weighting: str,
    sigma_data: float,
    log_weight: nn.Module | None = None,
) -> Tensor:
    r""":math:`\mathcal{L}(\theta)` at given times ``t [G]`` and coordinate noise ``noise [N, 3]``; with
    ``log_weight`` (:class:`NoiseLevelLogWeight`), the mean of :math:`\lambda \ell e^{-u(t)} + u(t)` per edge."""
    pos = batch.pos
    node_batch, _ = _graph_index(batch)
    edge_index = batch.edge_index
    noisy = pos + process.coordinate_std(t)[node_batch].unsqueeze(-1) * noise
    _, d0 = edge_vectors(pos, edge_index)
    _, dt = edge_vectors(noisy, edge_index)
    edge_t = t[node_batch[edge_index[0]]]
    scale = process.scale(edge_t)
    target = NoncentralChi3(d0, scale).score(dt)
    residual = model(t, dt, graph=batch) - target
    per_edge = (residual * _root_weight(scale, weighting, sigma_data)).pow(2)
    if log_weight is not None:
        u = log_weight(edge_t).to(per_edge.dtype)
        per_edge = per_edge * torch.exp(-u) + u
    return per_edge.mean()


class NoiseLevelLogWeight(nn.Module):
    r""":math:`u(t)`, a learned log loss weight per noise level (EDM2's uncertainty weighting, Karras et al. 2024):
    linear between ``knots`` equally spaced times on :math:`[0, T]`, zero at the start.

    Minimising :math:`\lambda \ell / e^{u(t)} + u(t)` over :math:`u` sets :math:`e^{u(t)}` to the mean loss at
    :math:`t`, so every noise level carries the same share of the network's gradient however its loss scales.
    """

    def __init__(self, T: float, knots: int = 32, dtype: torch.dtype | None = None, device: torch.device | None = None):
        super().__init__()
        if isinstance(knots, bool) or not isinstance(knots, int) or knots < 2:
            raise ValueError(f"knots: expected an integer >= 2, got {knots!r}")
        if not math.isfinite(T) or T <= 0:
            raise ValueError(f"T: expected a positive finite time horizon, got {T!r}")
        self.T = float(T)
        self.values = nn.Parameter(torch.zeros(knots, dtype=dtype, device=device))

    def forward(self, t: Tensor) -> Tensor:
        """:math:`u(t)` at times ``t`` in :math:`[0, T]` (any shape)."""
        if bool(((t < 0) | (t > self.T)).any()):
            raise ValueError(f"t: expected times in [0, T={self.T}]")
        x = t.to(self.values.dtype) / self.T * (self.values.numel() - 1)
        left = x.floor().long().clamp(max=self.values.numel() - 2)  # t = T sits at the end of the last interval
        w = x - left
        return self.values[left] * (1 - w) + self.values[left + 1] * w


def _check_items(graphs: Sequence[Data], conformers: Sequence[Tensor]) -> None:
    if len(graphs) != len(conformers) or not graphs:
        raise ValueError(f"graphs and conformers: expected equal non-zero lengths, got {len(graphs)} and {len(conformers)}")
    for k, (g, c) in enumerate(zip(graphs, conformers, strict=True)):
        if c.dim() != 3 or c.shape[1:] != (g.num_nodes, 3) or c.shape[0] == 0:
            raise ValueError(f"conformers[{k}]: expected [C >= 1, {g.num_nodes}, 3], got {list(c.shape)}")
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"conformers[{k}]: expected finite coordinates, found NaN or inf")


def _collate(graphs: Sequence[Data], conformers: Sequence[Tensor], chunk: int) -> list[Batch]:
    """Every (graph, conformer) pair with ``pos`` set, in PyG batches of at most ``chunk`` graphs."""
    items = []
    for g, c in zip(graphs, conformers, strict=True):
        for pos in c:
            item = g.clone()
            item.pos = pos
            items.append(item)
    return [Batch.from_data_list(items[k : k + chunk]) for k in range(0, len(items), chunk)]


class DistanceDSMValidation:
    r"""Held-out :math:`\mathcal{L}(\theta)`: the DSM loss over every conformer of every validation graph at
    ``draws`` times and noises per conformer, drawn once (from ``seed``), averaged per edge. Every call sees the
    same :math:`(t, \varepsilon)`, so values at different training steps differ only through :math:`\theta`,
    and the value does not depend on ``chunk``.

    A :data:`~geodiffusion.training.Validation` for :class:`GraphTrainer` (``validation=``); batches of at most
    ``chunk`` graphs run on the model's device in its dtype.
    """

    def __init__(
        self,
        process: DistanceVEProcess,
        graphs: Sequence[Data],
        conformers: Sequence[Tensor],
        *,
        draws: int = 4,
        seed: int = 0,
        eps: float = 1e-3,
        weighting: str = "sigma2",
        sigma_data: float = 1.0,
        chunk: int = 256,
    ) -> None:
        _check_settings(process, eps, weighting, sigma_data)
        _check_items(graphs, conformers)
        for name, value in (("draws", draws), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        self.process, self.weighting, self.sigma_data = process, weighting, sigma_data
        self.batches = _collate(graphs, conformers, chunk)
        generator = torch.Generator().manual_seed(seed)
        # (t [G], noise [N, 3]) per draw and batch, from per-item draws: the same whatever the chunking
        g_sizes = [b.num_graphs for b in self.batches]
        n_sizes = [b.num_nodes for b in self.batches]
        t = eps + (process.T - eps) * torch.rand((draws, sum(g_sizes)), generator=generator, dtype=torch.float64)
        noise = torch.randn((draws, sum(n_sizes), 3), generator=generator, dtype=torch.float64)
        self.draws = [
            list(zip(t_k.split(g_sizes), noise_k.split(n_sizes), strict=True)) for t_k, noise_k in zip(t, noise, strict=True)
        ]

    def __call__(self, model: nn.Module) -> float:
        param = next(model.parameters())
        total, edges = 0.0, 0
        with torch.no_grad():
            for draw in self.draws:
                for batch, (t, noise) in zip(self.batches, draw, strict=True):
                    batch = batch.clone().to(param.device)  # Batch.to moves in place: keep the stored batches as they are
                    batch.pos = batch.pos.to(param.dtype)
                    cast = {"dtype": param.dtype, "device": param.device}
                    loss = _distance_dsm(
                        model, self.process, batch, t.to(**cast), noise.to(**cast), self.weighting, self.sigma_data
                    )
                    total += float(loss) * batch.num_edges
                    edges += batch.num_edges
        return total / edges


class GraphTrainer(TrainerBase):
    r"""AdamW on :func:`distance_dsm_loss` over a list of molecules/graphs with several conformers each, with EMA.

    ``graphs[k]``: the extended graph of item ``k`` (no ``pos`` needed); ``conformers[k]``: its clean coordinates
    ``[C_k, N_k, 3]``. The items are the graphs: each step takes ``batch_size`` of them and one random conformer of
    each (drawn from the data generator). The loop, exact resumption, logs and data parallelism are
    :class:`TrainerBase`'s; under DDP each rank runs the model on its run of whole graphs of the batch
    (:class:`~geodiffusion.training.distributed.RankSlicedGraphScore`), and the loss stays the mean over all the
    batch's edges. Shapes: the model maps ``(t [G], d [E], graph=batch)`` to ``[E]``.

    With ``spec.learned_weighting`` the trainer also fits :math:`u(t)` (:class:`NoiseLevelLogWeight`,
    :attr:`log_weight`) in a second AdamW group, under the same schedule and clipping at ``weighting_lr_scale``
    times the rate; it is checkpointed (``"log_weight"``) and resumed exactly, and refused under DDP, whose
    all-reduce covers the model only.
    """

    spec_type = GraphTrainingSpec
    item_name = "graphs"
    progress_desc = "distance DSM"

    def __init__(
        self,
        model: nn.Module,
        process: DistanceVEProcess,
        graphs: Sequence[Data],
        conformers: Sequence[Tensor],
        spec: GraphTrainingSpec | dict[str, Any],
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
        distributed: bool | None = None,
        validation: Validation | None = None,
    ) -> None:
        spec = self._coerce_spec(spec)
        if not isinstance(process, DistanceVEProcess):
            raise ValueError(f"process: expected a DistanceVEProcess, got {type(process).__name__}")
        _check_items(graphs, conformers)
        self.dtype = self._trainable_parameters(model)[0].dtype
        self.graphs = [g.clone() for g in graphs]
        self.conformers = [c.to(self.dtype) for c in conformers]
        super().__init__(
            model, process, spec, out_dir, device if device is not None else "cpu", progress, distributed, validation
        )
        self.log_weight: NoiseLevelLogWeight | None = None
        if spec.learned_weighting:
            if self.dist is not None:
                raise ValueError("learned_weighting: not supported under distributed training (u(t) is not all-reduced)")
            self.log_weight = NoiseLevelLogWeight(process.T, spec.weighting_knots, self.dtype, self.device)
            # AdamW on u(t) in a second group under the same schedule and clipping, at weighting_lr_scale times the
            # rate: at the network's rate u (which must move by ~5 to reach log L at large noise) lagged for ~10^4 steps
            scale = spec.weighting_lr_scale
            params = list(self.log_weight.parameters())
            self.optimizer.add_param_group({"params": params, "lr": spec.lr * scale, "lr_scale": scale})

    @property
    def losses(self) -> list[float]:
        """The per-step loss history (:attr:`history`)."""
        return self.history

    @property
    def num_items(self) -> int:
        return len(self.graphs)

    def _gather(self, index: Tensor) -> Batch:
        items = index.tolist()
        pick = torch.randint(0, 2**62, (len(items),), generator=self.data_generator).tolist()
        data = []
        for k, r in zip(items, pick, strict=True):
            g = self.graphs[k].clone()
            g.pos = self.conformers[k][r % self.conformers[k].shape[0]]
            data.append(g)
        return Batch.from_data_list(data).to(self.device)

    def _loss(self, batch: Batch, model: Any) -> Tensor:
        s = self.spec
        return distance_dsm_loss(
            model,
            self.process,
            batch,
            generator=self.noise_generator,
            eps=s.eps,
            weighting=s.weighting,
            sigma_data=s.sigma_data,
            log_weight=self.log_weight,
        )

    def state_dict(self) -> dict[str, Any]:
        """:meth:`TrainerBase.state_dict` with the learned :math:`u(t)` (``"log_weight"``, None without one)."""
        return super().state_dict() | {"log_weight": self.log_weight.state_dict() if self.log_weight is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.log_weight is not None:
            if state.get("log_weight") is None:
                raise ValueError("the checkpoint has no learned u(t) (log_weight); it was not trained with learned_weighting")
            self.log_weight.load_state_dict(state["log_weight"])

    def _distributed_model(self, ddp: nn.Module) -> RankSlicedGraphScore:
        return RankSlicedGraphScore(ddp, self.dist)
