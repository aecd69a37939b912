r"""Projection-free sampling of coordinates from distance scores (Zhou et al., 2024, arXiv 2403.01430).

The reverse dynamics run in distance space; each step's distance change :math:`\Delta d` (one entry per edge)
becomes a coordinate change through the linearised distance map :math:`J(x)`, :math:`(J v)_{ij} = u_{ij}\cdot(v_i - v_j)`
with :math:`u_{ij} = (x_i - x_j)/d_{ij}`, instead of a projection onto the manifold of realisable distances:

- ``"pseudo_inverse"``: :math:`\Delta x = J^+ \Delta d`, the least-squares, minimum-norm solution (orthogonal to rigid
  motions), by conjugate gradients on :math:`J^\top J` (CGLS) run for all graphs of a batch at once;
- ``"transpose"``: :math:`\Delta x_i = \tfrac12 \sum_{j} \frac{\Delta d_{ij}}{d_{ij}}(x_i - x_j)`,
  i.e. :math:`\tfrac12 J^\top \Delta d`, exact for an isolated edge and cheap, the form the paper writes.

Everything is vectorised over a PyG ``Batch`` with scatter sums keyed by the node and edge batch vectors.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter
from tqdm.auto import tqdm

from geodiffusion._random import randn
from geodiffusion.conformers.graph import edge_vectors
from geodiffusion.processes.base import Process
from geodiffusion.processes.distance import DistanceVEProcess
from geodiffusion.samplers.base import Sampler
from geodiffusion.spec import Spec

__all__ = ["ProjectionFreeSampler", "DistanceToCoordinates"]

Projection = Literal["pseudo_inverse", "transpose"]


class DistanceToCoordinates:
    r"""The linear map :math:`\Delta d \mapsto \Delta x` at coordinates ``pos [N, 3]`` of a (batched) graph.

    ``edge_index [2, E]`` canonical edges, ``node_batch [N]`` graph of each node. ``jvp`` is :math:`J v`,
    ``vjp`` is :math:`J^\top w`; calling the object applies the chosen ``projection``.
    """

    def __init__(
        self,
        pos: Tensor,
        edge_index: Tensor,
        node_batch: Tensor,
        n_graphs: int,
        projection: Projection = "pseudo_inverse",
        *,
        iterations: int = 100,
        rtol: float | None = None,
    ) -> None:
        diff, d = edge_vectors(pos, edge_index)
        self.unit = diff / d.unsqueeze(-1)
        self.edge_index, self.node_batch, self.n_graphs = edge_index, node_batch, n_graphs
        self.edge_batch = node_batch[edge_index[0]]
        self.n_nodes = pos.shape[0]
        self.projection, self.iterations = projection, iterations
        self.rtol = rtol if rtol is not None else (1e-6 if pos.dtype == torch.float32 else 1e-12)

    def jvp(self, v: Tensor) -> Tensor:
        r""":math:`(Jv)_{ij} = u_{ij} \cdot (v_i - v_j)`, ``[N, 3] -> [E]``."""
        i, j = self.edge_index
        return (self.unit * (v[i] - v[j])).sum(-1)

    def vjp(self, w: Tensor) -> Tensor:
        r""":math:`(J^\top w)_i = \sum_{e \ni i} \pm w_e u_e`, ``[E] -> [N, 3]`` (scatter sums)."""
        i, j = self.edge_index
        f = w.unsqueeze(-1) * self.unit
        return scatter(f, i, 0, dim_size=self.n_nodes, reduce="sum") - scatter(f, j, 0, dim_size=self.n_nodes, reduce="sum")

    def _per_graph(self, sq: Tensor, index: Tensor) -> Tensor:
        return scatter(sq.reshape(sq.shape[0], -1).sum(-1), index, 0, dim_size=self.n_graphs, reduce="sum")

    def __call__(self, delta_d: Tensor) -> Tensor:
        if self.projection == "transpose":
            return 0.5 * self.vjp(delta_d)
        return self.least_squares(delta_d)

    def descent_step(self, residual: Tensor) -> Tensor:
        r"""One gradient step on :math:`\tfrac12|Jv - r|^2` from :math:`v = 0`: :math:`v = \eta_g J^\top r` with
        :math:`\eta_g = 1/\Delta_g`, :math:`\Delta_g` the largest node degree of graph :math:`g`.

        Since :math:`v^\top J^\top J v = \sum_e (u_e\cdot(v_i - v_j))^2 \le v^\top (L \otimes I_3) v` and
        :math:`\lambda_{\max}(L) \le 2\Delta_g`, the linearised residual :math:`(I - \eta_g J J^\top) r` never grows;
        the fixed step of :math:`\tfrac12 J^\top` overshoots on nodes of degree > 4 and made the corrector diverge.
        """
        degree = torch.bincount(self.edge_index.flatten(), minlength=self.n_nodes)
        max_degree = scatter(degree, self.node_batch, 0, dim_size=self.n_graphs, reduce="max").clamp_min(1)
        return self.vjp(residual) / max_degree[self.node_batch].to(residual.dtype).unsqueeze(-1)

    def least_squares(self, b: Tensor) -> Tensor:
        r"""Minimum-norm :math:`\arg\min_v |Jv - b|` by CGLS, one step size per graph (started at 0, so the
        iterates stay in :math:`\mathrm{range}(J^\top)`, orthogonal to rigid motions)."""
        x = torch.zeros(self.n_nodes, 3, dtype=b.dtype, device=b.device)
        r = b
        s = self.vjp(r)
        p = s
        gamma = self._per_graph(s * s, self.node_batch)
        floor = (self.rtol**2) * gamma
        tiny = torch.finfo(b.dtype).tiny
        for it in range(self.iterations):
            # a graph stops for good once converged: past that, gamma and |Jp|^2 are rounding noise and their
            # ratio is not a step (in float32 the iterates of converged graphs grew to 1e7 within 100 iterations)
            active = gamma > floor
            q = self.jvp(p)
            qq = self._per_graph(q * q, self.edge_batch)
            alpha = torch.where(active & (qq > tiny), gamma / qq.clamp_min(tiny), torch.zeros_like(qq))
            x = x + alpha[self.node_batch].unsqueeze(-1) * p
            r = r - alpha[self.edge_batch] * q
            s = self.vjp(r)
            gamma_new = torch.where(active, self._per_graph(s * s, self.node_batch), torch.zeros_like(gamma))
            beta = torch.where(gamma > tiny, gamma_new / gamma.clamp_min(tiny), torch.zeros_like(gamma))
            p = s + beta[self.node_batch].unsqueeze(-1) * p
            gamma = gamma_new
            # one host sync every few iterations: stop once every graph has converged
            if it % 4 == 3 and not bool((gamma > floor).any()):
                break
        return x


class ProjectionFreeSampler(Sampler, kind="projection_free"):
    r"""Reverse distance diffusion mapped to coordinates, :math:`x \leftarrow x + L(x)\,\Delta d` per step.

    With :math:`\Delta_k = s_{t_k}^2 - s_{t_{k+1}}^2` (the exact integral of :math:`g^2` over the step) and edge
    scores :math:`s_\theta`, the distance change of a step from :math:`t_k` to :math:`t_{k+1} < t_k` is

    - SDE: :math:`\Delta d = \Delta_k (s_\theta - 1/d) + \sqrt{\Delta_k}\, z`, :math:`z \sim \mathcal{N}(0, I_E)`;
    - ODE (probability flow): :math:`\Delta d = \Delta_k (\tfrac12 s_\theta - 1/d)`;

    where :math:`\Delta_k/d` integrates the Bessel drift :math:`a(t)/d` of :class:`DistanceVEProcess`. ``L`` is the
    linear map of :class:`DistanceToCoordinates`. The corrector (``corrector_steps`` > 0) compensates the error of
    that linearisation: it repeats :math:`x \leftarrow x + L(x)(d^\star - d(x))` toward the step's target
    :math:`d^\star = d + \Delta d` (Gauss-Newton steps; many of them would be the projection the method avoids);
    with ``projection="transpose"`` the corrector uses :meth:`DistanceToCoordinates.descent_step` (step
    :math:`1/\Delta_g`, max degree), whose linearised residual cannot grow.
    The noise is per edge, so the map from the initial coordinates to the result is SE(3)-equivariant for a fixed seed.

    ``sample(score, process, shape, graph=...)``: ``score(t [num_graphs], d [E], graph=graph) -> [E]`` (an
    :class:`~geodiffusion.models.EdgeScoreModel` is one), ``shape = (graph.num_nodes, 3)``; returns ``[N, 3]``
    coordinates. With a process whose state is not a distance vector (no graph), the map is the identity and the
    steps are Euler-Maruyama / Euler steps of the reverse SDE / probability flow on the state itself.
    """

    class Spec(Spec):
        """Projection-free reverse SDE / ODE sampler for distance diffusion."""

        steps: int = Field(100, ge=1, description="number of time steps from T to eps")
        eps: float = Field(1e-3, ge=0, description="final time; the reverse dynamics stop at t = eps")
        mode: Literal["sde", "ode"] = Field("sde", description="reverse SDE or probability-flow ODE")
        projection: Projection = Field("pseudo_inverse", description="linear map from distance to coordinate updates")
        corrector_steps: int = Field(0, ge=0, description="Gauss-Newton corrector steps after each step")
        cg_iterations: int = Field(100, ge=1, description="maximum CGLS iterations of the pseudo-inverse")

    @classmethod
    def examples(cls):
        return [cls.Spec(steps=500), cls.Spec(steps=500, mode="ode", projection="transpose", corrector_steps=1)]

    def sample(
        self,
        score,
        process: Process,
        shape,
        *,
        generator: torch.Generator | None = None,
        device=None,
        dtype=None,
        x_T: Tensor | None = None,
        progress: bool = False,
        graph: Data | None = None,
    ) -> Tensor:
        s = self.spec
        if not 0 <= s.eps < process.T:
            raise ValueError(f"eps: expected a value in [0, T={process.T}), got {s.eps}")
        if not isinstance(process, DistanceVEProcess):
            if graph is not None:
                raise ValueError(f"a graph was given but {type(process).__name__} does not diffuse distances; use distance_ve")
            return self._sample_state(score, process, shape, generator, device, dtype, x_T, progress)
        return self._sample_coordinates(score, process, shape, graph, generator, device, dtype, x_T, progress)

    def _times(self, process: Process) -> list[float]:
        return torch.linspace(process.T, self.spec.eps, self.spec.steps + 1, dtype=torch.float64).tolist()

    def _sample_coordinates(self, score, process, shape, graph, generator, device, dtype, x_T, progress) -> Tensor:
        s = self.spec
        if graph is None or getattr(graph, "edge_index", None) is None:
            raise ValueError(
                "projection-free sampling of distance diffusion needs graph=: a PyG Data/Batch with canonical edge_index"
            )
        n = graph.num_nodes
        if tuple(shape) != (n, 3):
            raise ValueError(f"shape: expected ({n}, 3), the coordinates of the graph's {n} nodes, got {tuple(shape)}")
        device = device if device is not None else (x_T.device if x_T is not None else graph.edge_index.device)
        dtype = dtype if dtype is not None else (x_T.dtype if x_T is not None else torch.get_default_dtype())
        if x_T is None:
            x = process.coordinate_prior_std * randn((n, 3), generator, dtype=dtype, device=device)
        else:
            if not isinstance(x_T, Tensor) or tuple(x_T.shape) != (n, 3):
                raise ValueError(f"x_T: expected initial coordinates of shape [{n}, 3], got {list(getattr(x_T, 'shape', []))}")
            if not bool(torch.isfinite(x_T).all()):
                raise ValueError("x_T: expected finite coordinates, found NaN or inf")
            x = x_T.to(device=device, dtype=dtype)
        edge_index = graph.edge_index.to(device)
        node_batch = (
            graph.batch.to(device)
            if getattr(graph, "batch", None) is not None
            else torch.zeros(n, dtype=torch.long, device=device)
        )
        n_graphs = int(node_batch.max()) + 1
        times = self._times(process)
        variance = [float(process.distance_variance(torch.tensor(t, dtype=torch.float64))) for t in times]
        bar = tqdm(total=s.steps, desc=f"projection-free {s.mode}", leave=False) if progress else None
        try:
            for k in range(s.steps):
                delta = variance[k] - variance[k + 1]
                _, d = edge_vectors(x, edge_index)
                t = torch.full((n_graphs,), times[k], dtype=dtype, device=device)
                edge_score = score(t, d, graph=graph)
                if s.mode == "sde":
                    z = randn(d.shape, generator, dtype=dtype, device=device)
                    delta_d = delta * (edge_score - 1 / d) + math.sqrt(delta) * z
                else:
                    delta_d = delta * (0.5 * edge_score - 1 / d)
                x = x + self._map(x, edge_index, node_batch, n_graphs)(delta_d)
                target = d + delta_d
                for _ in range(s.corrector_steps):
                    x = self._correct(x, target, edge_index, node_batch, n_graphs)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return x

    def _correct(self, x: Tensor, target: Tensor, edge_index: Tensor, node_batch: Tensor, n_graphs: int) -> Tensor:
        r"""One corrector step toward :math:`d^\star`, per graph the longest of :math:`v, v/2, \dots, v/2^{8}` that
        lowers :math:`|d(x) - d^\star|`, else none. The linearisation holds only for small steps: a full Gauss-Newton
        step :math:`J^+ r` through a nearly singular :math:`J` overshoots, and undamped it drove ethanol's edges to
        1e3 A (float32) and 1e12 A (float64) with the exact score."""
        _, d_now = edge_vectors(x, edge_index)
        lin = self._map(x, edge_index, node_batch, n_graphs)
        residual = target - d_now
        # transpose: a step-size-controlled descent step (the bare 1/2 J^T diverges on molecules)
        v = lin.descent_step(residual) if self.spec.projection == "transpose" else lin(residual)
        edge_batch = lin.edge_batch
        best = scatter(residual**2, edge_batch, 0, dim_size=n_graphs, reduce="sum")
        step = torch.zeros(n_graphs, dtype=x.dtype, device=x.device)
        open_ = torch.ones(n_graphs, dtype=torch.bool, device=x.device)
        for halvings in range(9):
            alpha = 0.5**halvings
            _, d_try = edge_vectors(x + alpha * v, edge_index)
            sq = scatter((target - d_try) ** 2, edge_batch, 0, dim_size=n_graphs, reduce="sum")
            take = open_ & (sq < best)
            step = torch.where(take, torch.full_like(step, alpha), step)
            open_ = open_ & ~take
            if not bool(open_.any()):
                break
        return x + step[node_batch].unsqueeze(-1) * v

    def _map(self, x: Tensor, edge_index: Tensor, node_batch: Tensor, n_graphs: int) -> DistanceToCoordinates:
        return DistanceToCoordinates(
            x, edge_index, node_batch, n_graphs, self.spec.projection, iterations=self.spec.cg_iterations
        )

    def _sample_state(self, score, process, shape, generator, device, dtype, x_T, progress) -> Tensor:
        # no graph: the feature map is the identity, J^+ = I, and the corrector's residual is zero
        s = self.spec
        x = self.initial_state(process, shape, generator, device, dtype, x_T)
        times = self._times(process)
        bar = tqdm(total=s.steps, desc=f"projection-free {s.mode}", leave=False) if progress else None
        try:
            for t_now, t_next in zip(times[:-1], times[1:], strict=True):
                dt = t_now - t_next
                t = torch.full((x.shape[0],), t_now, dtype=x.dtype, device=x.device)
                if s.mode == "sde":
                    z = randn(x.shape, generator, dtype=x.dtype, device=x.device)
                    g = process.diffusion(process.time_like(t, x))
                    x = x - process.reverse_drift(x, t, score(t, x)) * dt + g * math.sqrt(dt) * z
                else:
                    x = x - process.probability_flow_drift(x, t, score(t, x)) * dt
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        return x
