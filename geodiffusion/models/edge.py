r"""A message-passing edge network: one distance score per edge from SE(3)-invariant inputs only."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import MessagePassing

from geodiffusion._random import randn
from geodiffusion.conformers.graph import EDGE_TYPES, NODE_FEATURES, RADIUS, complete_graph, node_graph_index
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, activation
from geodiffusion.processes.base import Process
from geodiffusion.processes.distance import DistanceVEProcess
from geodiffusion.registry import build
from geodiffusion.spec import Spec, component_spec

__all__ = ["EdgeScoreModel", "EdgeConv", "EdgeUpdate"]


class EdgeConv(MessagePassing):
    r""":math:`h_i \leftarrow h_i + \gamma\big(h_i, \sum_{j \in N(i)} \phi(\bar h_i, \bar h_j, e_{ij})\big)` (sum aggregation,
    :math:`\bar h` = LayerNorm of :math:`h`)."""

    def __init__(self, hidden: int, act: Activation) -> None:
        super().__init__(aggr="add")
        self.phi = nn.Sequential(nn.Linear(3 * hidden, hidden), activation(act), nn.Linear(hidden, hidden))
        self.gamma = nn.Sequential(nn.Linear(2 * hidden, hidden), activation(act), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor, *, both_ways: bool = False) -> Tensor:
        """``h [V, H]``, ``edge_index [2, E]`` (j -> i), ``e [E, H]``; with ``both_ways`` every edge also carries
        the message i -> j with the same ``e`` (an undirected graph given once per pair)."""
        hidden = h.shape[-1]
        first = self.phi[0]
        # phi's first map is linear in each of norm(h_i), norm(h_j) and e: normalise and apply the node blocks
        # once per node, and the edge block once per pair, rather than on the concatenation per directed edge
        normed = self.norm(h)
        a, b = normed @ first.weight[:, :hidden].T, normed @ first.weight[:, hidden : 2 * hidden].T
        c = nn.functional.linear(e, first.weight[:, 2 * hidden :], first.bias)
        if both_ways:
            edge_index, c = torch.cat([edge_index, edge_index.flip(0)], 1), torch.cat([c, c], 0)
        return h + self.gamma(torch.cat([h, self.propagate(edge_index, a=a, b=b, c=c)], -1))

    def message(self, a_i: Tensor, b_j: Tensor, c: Tensor) -> Tensor:
        return self.phi[1:](a_i + b_j + c)


class EdgeUpdate(nn.Module):
    r""":math:`e_{ij} \leftarrow e_{ij} + \psi(\bar e_{ij}, h_i + h_j, h_i \odot h_j)`: symmetric in :math:`i, j`, so a
    canonical edge keeps one feature whichever way it is read (:math:`\bar e` = LayerNorm of :math:`e`)."""

    def __init__(self, hidden: int, act: Activation) -> None:
        super().__init__()
        self.psi = nn.Sequential(nn.Linear(3 * hidden, hidden), activation(act), nn.Linear(hidden, hidden))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor) -> Tensor:
        hi, hj = h[edge_index[0]], h[edge_index[1]]
        return e + self.psi(torch.cat([self.norm(e), hi + hj, hi * hj], -1))


class EdgeScoreModel(ScoreModel, kind="edge_score"):
    r"""Distance score :math:`s_\theta(t, d)_{ij} \approx \partial_{d_{ij}} \log p_t(d)` on the edges of an extended graph.

    Inputs are invariant: distances :math:`d_{ij}` (Gaussian radial features), atom and edge-type features, time;
    so the scores are SE(3)-invariant, and relabelling the atoms permutes them with their edges. The edge head
    reads :math:`(h_i + h_j, h_i \odot h_j, e_{ij})`, symmetric in :math:`i, j`. With ``edge_update`` the edge
    features are also updated after every layer (:class:`EdgeUpdate`), so an edge's score can depend on what its
    end atoms gathered at every depth, not only on their final states. With a :class:`DistanceVEProcess` as
    ``process`` the output is preconditioned, :math:`s = \mathrm{net}/s_t`.

    Shapes (``E`` canonical edges of ``graph``, see :mod:`geodiffusion.conformers.graph`):
    ``x [E]`` with a ``graph`` Data/Batch and ``t []`` or ``[num_graphs]``; ``x [B, E]`` with one ``graph``
    (B conformers) or without one (complete graph on ``N`` identical points, ``E = N(N-1)/2``), ``t []`` or ``[B]``.
    Output: the shape of ``x``.
    """

    class Spec(Spec):
        """Message-passing edge network over an extended distance graph."""

        hidden: int = Field(64, ge=1, description="node and edge embedding width")
        layers: int = Field(3, ge=1, description="message-passing layers")
        rbf: int = Field(16, ge=1, description="number of Gaussian radial basis functions of the distance")
        rbf_max: float = Field(10.0, gt=0, description="largest RBF centre (coordinate units)")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = "silu"
        process: component_spec(Process) | None = Field(None, description="distance_ve process for 1/s_t preconditioning")
        n_points: int = Field(5, ge=2, description="points of the complete-graph example input")
        edge_update: bool = Field(False, description="update the edge features after every message-passing layer")

    @classmethod
    def examples(cls):
        return [
            cls.Spec(hidden=16, layers=2, rbf=8, n_points=4),
            cls.Spec(hidden=8, layers=1, rbf=4, n_points=5, process={"kind": "distance_ve"}),
            cls.Spec(hidden=8, layers=2, rbf=4, n_points=4, edge_update=True),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        self.process = build(s.process, Process) if s.process is not None else None
        if self.process is not None and not isinstance(self.process, DistanceVEProcess):
            raise ValueError(f"process: expected a distance_ve process, got {type(self.process).__name__}")
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        self.register_buffer("centres", torch.linspace(0.0, s.rbf_max, s.rbf), persistent=False)
        self.node_in = nn.Linear(NODE_FEATURES + s.time_embedding_dim, s.hidden)
        self.edge_in = nn.Sequential(
            nn.Linear(len(EDGE_TYPES) + s.rbf + 1 + s.time_embedding_dim, s.hidden),
            activation(s.activation),
            nn.Linear(s.hidden, s.hidden),
        )
        self.convs = nn.ModuleList(EdgeConv(s.hidden, s.activation) for _ in range(s.layers))
        self.edge_updates = nn.ModuleList(EdgeUpdate(s.hidden, s.activation) for _ in range(s.layers)) if s.edge_update else None
        self.head = nn.Sequential(nn.Linear(3 * s.hidden, s.hidden), activation(s.activation), nn.Linear(s.hidden, 1))

    def _flatten(self, t: Tensor, x: Tensor, graph: Data | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Everything as one flat graph: node features, edge index, edge attrs, distances, edge and node times."""
        dtype, device = x.dtype, x.device
        t = torch.as_tensor(t, dtype=dtype, device=device)
        if graph is None or x.dim() == 2:
            if x.dim() != 2:
                raise ValueError(f"EdgeScoreModel: without a graph, expected x [B, E], got {list(x.shape)}")
            batch, n_edges = x.shape
            if graph is None:
                n = int(round((1 + (1 + 8 * n_edges) ** 0.5) / 2))
                if n * (n - 1) // 2 != n_edges or n_edges == 0:
                    raise ValueError(f"EdgeScoreModel: {n_edges} distances are not the pairs of a complete graph")
                edge_index = complete_graph(n, device=device)
                node_x = torch.zeros(n, NODE_FEATURES, dtype=dtype, device=device)
                node_x[:, 1] = 1.0  # carbon: all points alike
                edge_attr = torch.zeros(n_edges, len(EDGE_TYPES), dtype=dtype, device=device)
                edge_attr[:, RADIUS] = 1.0
            else:
                n, edge_index = graph.num_nodes, graph.edge_index.to(device)
                if edge_index.shape[1] != n_edges:
                    raise ValueError(f"EdgeScoreModel: x has {n_edges} edges per row but graph has {edge_index.shape[1]}")
                node_x, edge_attr = graph.x.to(device, dtype), graph.edge_attr.to(device, dtype)
            if t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != batch):
                raise ValueError(f"t: expected shape [] or [{batch}], got {list(t.shape)}")
            offsets = torch.arange(batch, device=device) * n
            flat_index = (edge_index.unsqueeze(0) + offsets.view(-1, 1, 1)).permute(1, 0, 2).reshape(2, -1)
            t_graph = t.expand(batch)
            return (
                node_x.repeat(batch, 1),
                flat_index,
                edge_attr.repeat(batch, 1),
                x.reshape(-1),
                t_graph.repeat_interleave(n_edges),
                t_graph.repeat_interleave(n),
            )
        if x.dim() != 1 or x.shape[0] != graph.edge_index.shape[1]:
            raise ValueError(
                f"EdgeScoreModel: expected x [{graph.edge_index.shape[1]}] (one distance per edge), got {list(x.shape)}"
            )
        node_batch = node_graph_index(graph).to(device)
        n_graphs = int(node_batch.max()) + 1 if node_batch.numel() else 1
        if t.dim() not in (0, 1) or (t.dim() == 1 and t.shape[0] != n_graphs):
            raise ValueError(f"t: expected shape [] or [{n_graphs}] (one time per graph), got {list(t.shape)}")
        t_graph = t.expand(n_graphs)
        edge_index = graph.edge_index.to(device)
        return (
            graph.x.to(device, dtype),
            edge_index,
            graph.edge_attr.to(device, dtype),
            x,
            t_graph[node_batch[edge_index[0]]],
            t_graph[node_batch],
        )

    def forward(self, t: Tensor, x: Tensor, graph: Data | None = None, **context: Any) -> Tensor:
        node_x, edge_index, edge_attr, d, t_edge, t_node = self._flatten(t, x, graph)
        width = self.centres[1] - self.centres[0] if self.spec.rbf > 1 else torch.tensor(self.spec.rbf_max)
        rbf = torch.exp(-(((d.unsqueeze(-1) - self.centres.to(d.dtype)) / width.to(d.dtype)) ** 2))
        e = self.edge_in(
            torch.cat([edge_attr, rbf, (d / self.spec.rbf_max).unsqueeze(-1), self.time_embedding(t_edge).to(d.dtype)], -1)
        )
        h = self.node_in(torch.cat([node_x, self.time_embedding(t_node).to(d.dtype)], -1))
        for k, conv in enumerate(self.convs):
            h = conv(h, edge_index, e, both_ways=True)  # messages flow both ways along each canonical edge
            if self.edge_updates is not None:
                e = self.edge_updates[k](h, edge_index, e)
        hi, hj = h[edge_index[0]], h[edge_index[1]]
        out = self.head(torch.cat([hi + hj, hi * hj, e], -1)).squeeze(-1)
        if self.process is not None:
            out = out / self.process.scale(t_edge)
        return out.reshape(x.shape)

    def example_input(self, batch: int, generator=None) -> Tensor:
        pos = randn((batch, self.spec.n_points, 3), generator)
        i, j = complete_graph(self.spec.n_points)
        return torch.linalg.vector_norm(pos[:, i] - pos[:, j], dim=-1)
