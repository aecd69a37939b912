r"""Distance denoising score matching on extended graphs, and a resumable training loop for it.

Coordinates are noised, :math:`C_t = C_0 + \sigma_t \varepsilon`, and each edge's noisy distance :math:`d_t` is
scored against the exact per-edge transition of :class:`~geodiffusion.processes.DistanceVEProcess`:

.. math:: \mathcal{L}(\theta) = \mathbb{E}_{t, C_0, \varepsilon}\ \frac{1}{|E|}\sum_{(i,j) \in E}
          \lambda(t)\,\big(s_\theta(t, d_t)_{ij} - \partial_{d_t}\log p_{t}(d_{t,ij} \mid d_{0,ij})\big)^2,
          \qquad \lambda(t) = s_t^2,

with :math:`p_t(\cdot \mid d_0)` the noncentral :math:`\chi_3` law (loc :math:`d_0`, scale :math:`s_t`). Noising the
coordinates (rather than each distance independently) keeps :math:`d_t` realisable, as the sampler's states are;
treating edges as independent given :math:`d_0` is the paper's approximation.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from tqdm.auto import tqdm

from geodiffusion._random import rand, randn
from geodiffusion.conformers.graph import edge_vectors
from geodiffusion.processes.distance import DistanceVEProcess, NoncentralChi3
from geodiffusion.training.checkpoint import load_checkpoint, save_checkpoint
from geodiffusion.training.ema import EMA
from geodiffusion.training.trainer import TrainingSpec

__all__ = ["distance_dsm_loss", "GraphTrainer"]

CHECKPOINT_FORMAT = 1
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every"})


def _graph_index(batch: Data) -> tuple[Tensor, int]:
    node_batch = getattr(batch, "batch", None)
    if node_batch is None:
        node_batch = torch.zeros(batch.num_nodes, dtype=torch.long, device=batch.edge_index.device)
    return node_batch, int(getattr(batch, "num_graphs", 1) or 1)


def distance_dsm_loss(
    model: nn.Module,
    process: DistanceVEProcess,
    batch: Data,
    *,
    generator: torch.Generator | None = None,
    eps: float = 1e-3,
    weighting: str = "sigma2",
) -> Tensor:
    r"""One Monte Carlo estimate of :math:`\mathcal{L}(\theta)`: one :math:`t \sim U[\varepsilon, T]` per graph.

    ``batch``: a PyG Data/Batch with clean coordinates ``pos [N, 3]`` and canonical ``edge_index``; ``model``:
    ``(t [G], d [E], graph=batch) -> [E]``. ``weighting``: ``"sigma2"`` (:math:`\lambda = s_t^2`) or ``"none"``.
    """
    if not isinstance(process, DistanceVEProcess):
        raise TypeError(f"process: expected a DistanceVEProcess, got {type(process).__name__}")
    if getattr(batch, "pos", None) is None:
        raise ValueError("batch: expected clean coordinates in batch.pos")
    if weighting not in ("sigma2", "none"):
        raise ValueError(f"weighting: expected 'sigma2' or 'none' for distance DSM, got {weighting!r}")
    if not 0 <= eps < process.T:
        raise ValueError(f"eps: expected a value in [0, T={process.T}), got {eps}")
    pos = batch.pos
    dtype, device = pos.dtype, pos.device
    node_batch, n_graphs = _graph_index(batch)
    edge_index = batch.edge_index
    u = rand((n_graphs,), generator, dtype=dtype, device=device)
    t = eps + (process.T - eps) * u
    noisy = pos + process.coordinate_std(t)[node_batch].unsqueeze(-1) * randn(pos.shape, generator, dtype=dtype, device=device)
    _, d0 = edge_vectors(pos, edge_index)
    _, dt = edge_vectors(noisy, edge_index)
    edge_t = t[node_batch[edge_index[0]]]
    scale = process.scale(edge_t)
    target = NoncentralChi3(d0, scale).score(dt)
    residual = model(t, dt, graph=batch) - target
    if weighting == "sigma2":
        residual = residual * scale
    return residual.pow(2).mean()


class GraphTrainer:
    r"""AdamW on :func:`distance_dsm_loss` over a list of molecules/graphs with several conformers each, with EMA.

    ``graphs[k]``: the extended graph of item ``k`` (no ``pos`` needed); ``conformers[k]``: its clean coordinates
    ``[C_k, N_k, 3]``. Each step takes ``batch_size`` items from a per-epoch permutation and one random conformer of
    each. The data and noise generators, model, EMA, optimiser, permutation and step are saved atomically in
    ``out_dir/checkpoints/last.pt`` every ``checkpoint_every`` steps, so :meth:`fit` resumed from it ends
    bit-for-bit where an uninterrupted run ends (on CPU). The loss of each step goes to ``train_log.jsonl``.
    """

    def __init__(
        self,
        model: nn.Module,
        process: DistanceVEProcess,
        graphs: Sequence[Data],
        conformers: Sequence[Tensor],
        spec: TrainingSpec | dict[str, Any],
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        spec = spec if isinstance(spec, TrainingSpec) else TrainingSpec.model_validate(spec)
        if len(graphs) != len(conformers) or not graphs:
            raise ValueError(f"graphs and conformers: expected equal non-zero lengths, got {len(graphs)} and {len(conformers)}")
        for k, (g, c) in enumerate(zip(graphs, conformers, strict=True)):
            if c.dim() != 3 or c.shape[1:] != (g.num_nodes, 3) or c.shape[0] == 0:
                raise ValueError(f"conformers[{k}]: expected [C >= 1, {g.num_nodes}, 3], got {list(c.shape)}")
            if not bool(torch.isfinite(c).all()):
                raise ValueError(f"conformers[{k}]: expected finite coordinates, found NaN or inf")
        if spec.batch_size > len(graphs):
            raise ValueError(f"batch_size ({spec.batch_size}) exceeds the number of training items ({len(graphs)})")
        self.spec, self.process, self.progress = spec, process, progress
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.graphs = [g.clone() for g in graphs]
        self.conformers = [c.to(self.dtype) for c in conformers]
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
        self.ema = EMA(model, spec.ema_decay)
        self.data_gen = torch.Generator().manual_seed(spec.seed)
        self.noise_gen = torch.Generator().manual_seed(spec.seed + 1)
        self.step = 0
        self.perm = torch.empty(0, dtype=torch.long)
        self.cursor = 0
        self.losses: list[float] = []
        self.train_seconds = 0.0

    # --- checkpoints ------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints" / "last.pt"

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "spec": self.spec.model_dump(mode="json"),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_gen": self.data_gen.get_state(),
            "noise_gen": self.noise_gen.get_state(),
            "perm": self.perm,
            "cursor": self.cursor,
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')} is not {CHECKPOINT_FORMAT}")
        old, new = state["spec"], self.spec.model_dump(mode="json")
        changed = {k for k in new if old.get(k) != new[k]} - _RESUMABLE_CHANGES
        if changed:
            raise ValueError(f"the checkpoint was written with other training settings ({sorted(changed)}); use another out_dir")
        self.step = int(state["step"])
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_gen.set_state(state["data_gen"])
        self.noise_gen.set_state(state["noise_gen"])
        self.perm, self.cursor = state["perm"], int(state["cursor"])
        self.losses = state["losses"].tolist()
        self.train_seconds = float(state["train_seconds"])

    def save(self) -> None:
        if self.checkpoint_path is not None:
            save_checkpoint(self.checkpoint_path, self.state_dict())

    # --- training ---------------------------------------------------------------------------
    def _next_batch(self) -> Batch:
        if self.cursor + self.spec.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.graphs), generator=self.data_gen)
            self.cursor = 0
        items = self.perm[self.cursor : self.cursor + self.spec.batch_size].tolist()
        self.cursor += self.spec.batch_size
        pick = torch.randint(0, 2**62, (len(items),), generator=self.data_gen).tolist()
        data = []
        for k, r in zip(items, pick, strict=True):
            g = self.graphs[k].clone()
            g.pos = self.conformers[k][r % self.conformers[k].shape[0]]
            data.append(g)
        return Batch.from_data_list(data).to(self.device)

    def fit(self) -> list[float]:
        """Train to ``spec.steps`` (resuming from ``out_dir/checkpoints/last.pt`` if present); the per-step losses."""
        s = self.spec
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
        log = self.out_dir / "train_log.jsonl" if self.out_dir is not None else None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=s.steps, initial=self.step, desc="distance DSM", leave=False) if self.progress else None
        self.model.train()
        try:
            while self.step < s.steps:
                start = time.perf_counter()
                batch = self._next_batch()
                loss = distance_dsm_loss(
                    self.model, self.process, batch, generator=self.noise_gen, eps=s.eps, weighting=s.weighting
                )
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"distance DSM loss is {value} at step {self.step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                self.losses.append(value)
                self.train_seconds += time.perf_counter() - start
                if log is not None and (self.step % s.log_every == 0 or self.step == s.steps):
                    with open(log, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"step": self.step, "loss": self.losses[-1]}) + "\n")
                if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                    self.save()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        self.model.eval()
        return self.losses

    @property
    def ema_model(self) -> nn.Module:
        return self.ema.model
