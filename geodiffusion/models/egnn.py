r"""An E(n)-equivariant score network for vector fields :math:`y: \mathbb{R}^n \to \mathbb{R}^n` (GeomNDP, Sec. 4);
the action of a group on the graphs :math:`\{(x_i, y_i)\}` of such fields is
:class:`~geodiffusion.models.ndp.FieldGraphGroup` (re-exported here).

For a field transforming as :math:`(g \cdot f)(x) = \rho(g) f(g^{-1} x)`, a finite marginal transforms as
:math:`(x_i, y_i) \mapsto (g x_i, \rho(g) y_i)`; the network satisfies :math:`s_\theta(t, g x, \rho(g) y) = \rho(g)
s_\theta(t, x, y)` with :math:`g = (R, b) \in E(n)` acting by :math:`x \mapsto Rx + b` and :math:`\rho(g) = R`.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from geodiffusion.groups.base import Group
from geodiffusion.models.layers import Activation, SinusoidalTimeEmbedding, activation
from geodiffusion.models.ndp import FieldGraphGroup, FunctionScoreModel, _FunctionSpec

__all__ = ["FieldGraphGroup", "EGNNScore", "EGNNLayer"]


class EGNNLayer(MessagePassing):
    r"""One E(n)-equivariant message-passing layer on node scalars :math:`h_i \in \mathbb{R}^H` and vector channels
    :math:`V_i \in \mathbb{R}^{n \times C}` at positions :math:`x_i` (Satorras et al., 2021, with vector features):

    .. math:: m_{ij} = \phi_e(h_i, h_j, \mathrm{rbf}(|r_{ij}|), r_{ij}^\top V_i, r_{ij}^\top V_j, V_i^\top V_j),
       \quad r_{ij} = x_i - x_j,

    :math:`V_i \leftarrow V_i W + \mathrm{mean}_j\,[r_{ij}\,\phi_r(m_{ij})^\top + V_j \mathrm{diag}\,\phi_v(m_{ij})]`,
    :math:`h_i \leftarrow h_i + \phi_h(h_i, \mathrm{mean}_j m_{ij})`. Only inner products enter the MLPs, so the
    layer is equivariant under rotations and reflections and, using :math:`r_{ij}` only, invariant to translations.
    The gates :math:`\phi_r, \phi_v` end in :math:`\tanh`, so :math:`V` grows at most linearly in the input vectors
    through any number of layers, as the exact GP score does; unbounded gates make the network a polynomial of
    degree up to :math:`3^L` in :math:`y`, whose probability flow blows up in finite time off the training data.
    """

    def __init__(self, hidden: int, channels: int, rbf: int, act: Activation) -> None:
        super().__init__(aggr="mean")
        self.hidden, self.channels = hidden, channels
        n_inv = 2 * hidden + rbf + 2 * channels + channels * channels
        self.phi_e = nn.Sequential(nn.Linear(n_inv, hidden), activation(act), nn.Linear(hidden, hidden), activation(act))
        self.phi_vec = nn.Linear(hidden, 2 * channels)
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), activation(act), nn.Linear(hidden, hidden))
        self.mix = nn.Linear(channels, channels, bias=False)  # acts on the channel axis: commutes with R

    def forward(self, h: Tensor, v: Tensor, pos: Tensor, edge_index: Tensor, rbf: Tensor) -> tuple[Tensor, Tensor]:
        """``h [V, H]``, ``v [V, n, C]``, ``pos [V, n]``, ``edge_index [2, E]``, ``rbf [E, R]``."""
        n, hidden = pos.shape[-1], self.hidden
        # phi_e's first map is linear in h_i and in h_j: apply those blocks once per node, not once per edge
        weight = self.phi_e[0].weight
        a, b = h @ weight[:, :hidden].T, h @ weight[:, hidden : 2 * hidden].T
        agg = self.propagate(edge_index, a=a, b=b, v=v.flatten(1), pos=pos, rbf=rbf)
        m, dv = agg[:, :hidden], agg[:, hidden:].reshape(v.shape[0], n, self.channels)
        return h + self.phi_h(torch.cat([h, m], -1)), self.mix(v) + dv

    def message(self, a_i: Tensor, b_j: Tensor, v_i: Tensor, v_j: Tensor, pos_i: Tensor, pos_j: Tensor, rbf: Tensor) -> Tensor:
        n, c = pos_i.shape[-1], self.channels
        vi, vj = v_i.reshape(-1, n, c), v_j.reshape(-1, n, c)
        r = pos_i - pos_j
        invariants = torch.cat([rbf, (r.unsqueeze(-1) * vi).sum(1), (r.unsqueeze(-1) * vj).sum(1), (vi.mT @ vj).flatten(1)], -1)
        first = self.phi_e[0]
        m = self.phi_e[1:](a_i + b_j + nn.functional.linear(invariants, first.weight[:, 2 * self.hidden :], first.bias))
        a_r, a_v = torch.tanh(self.phi_vec(m)).chunk(2, -1)
        dv = r.unsqueeze(-1) * a_r.unsqueeze(1) + vj * a_v.unsqueeze(1)
        return torch.cat([m, dv.flatten(1)], -1)


class EGNNScore(FunctionScoreModel, kind="egnn"):
    r"""E(n)-equivariant score network for vector fields, :math:`s_\theta(t, Rx + b, Ry) = R\, s_\theta(t, x, y)`
    for every :math:`(R, b) \in E(n)` and :math:`s_\theta(t, \sigma x, \sigma y) = \sigma s_\theta(t, x, y)` for
    every permutation :math:`\sigma` of the points.

    The points form a complete graph; node scalars start from :math:`(|y_i|^2, \gamma(t))`, vector channels from
    :math:`y_i`; ``layers`` :class:`EGNNLayer` s follow, and the output is a learned combination of the vector
    channels. The declared group is :class:`FieldGraphGroup` of :math:`E(n)` (packed graphs, see
    :class:`~geodiffusion.models.ndp.FunctionScoreModel`).
    """

    class Spec(_FunctionSpec):
        """EGNN score network for vector fields R^n -> R^n (n = input_dim = output_dim)."""

        input_dim: int = Field(2, ge=2, le=3, description="n: inputs and values both live in R^n")
        output_dim: int = Field(2, ge=2, le=3, description="must equal input_dim")
        hidden: int = Field(64, ge=1, description="width H of node scalars and messages")
        channels: int = Field(8, ge=1, description="vector channels C per node")
        layers: int = Field(4, ge=1, description="message-passing layers")
        rbf: int = Field(16, ge=1, description="Gaussian radial basis functions of the distance ||x_i - x_j||")
        rbf_max: float = Field(4.0, gt=0, description="largest RBF centre (input units)")
        time_embedding_dim: int = Field(32, ge=2, multiple_of=2, description="size of the time features")
        activation: Activation = "silu"

    @classmethod
    def examples(cls):
        return [
            cls.Spec(hidden=8, channels=2, layers=2, rbf=4, n_points=4),
            cls.Spec(input_dim=3, output_dim=3, hidden=8, channels=2, layers=1, rbf=3),
        ]

    def __init__(self, spec=None, /, **fields) -> None:
        super().__init__(spec, **fields)
        s = self.spec
        if s.output_dim != s.input_dim:
            raise ValueError(f"output_dim ({s.output_dim}) must equal input_dim ({s.input_dim}) for a vector field")
        self.time_embedding = SinusoidalTimeEmbedding(s.time_embedding_dim)
        self.node_in = nn.Sequential(nn.Linear(1 + s.time_embedding_dim, s.hidden), activation(s.activation))
        self.lift = nn.Linear(1, s.channels, bias=False)
        self.register_buffer("centres", torch.linspace(0.0, s.rbf_max, s.rbf), persistent=False)
        self.convs = nn.ModuleList(EGNNLayer(s.hidden, s.channels, s.rbf, s.activation) for _ in range(s.layers))
        self.out = nn.Linear(s.channels, 1, bias=False)
        self._group = FieldGraphGroup(group={"kind": "e", "dim": s.input_dim, "action": "point_cloud"})

    @property
    def group(self) -> Group:
        return self._group

    def score(self, t: Tensor, inputs: Tensor, values: Tensor) -> Tensor:
        s = self.spec
        b, n_pts, d = values.shape
        if n_pts < 2:
            raise ValueError(f"EGNNScore: expected at least 2 points, got {n_pts}")
        # complete graph without self-loops on every function, flattened into one PyG graph
        idx = torch.arange(n_pts, device=values.device)
        src, dst = idx.repeat_interleave(n_pts), idx.repeat(n_pts)
        keep = src != dst
        offsets = (torch.arange(b, device=values.device) * n_pts).view(-1, 1)
        edge_index = torch.stack([(dst[keep] + offsets).reshape(-1), (src[keep] + offsets).reshape(-1)])  # (j -> i)
        pos = inputs.reshape(b * n_pts, d)
        y = values.reshape(b * n_pts, d)
        dist = torch.linalg.vector_norm(pos[edge_index[1]] - pos[edge_index[0]], dim=-1, keepdim=True)
        width = s.rbf_max / max(s.rbf - 1, 1)
        rbf = torch.exp(-(((dist - self.centres.to(dist.dtype)) / width) ** 2))
        t_nodes = self.time_embedding(t).to(values.dtype).repeat_interleave(n_pts, 0)
        h = self.node_in(torch.cat([(y**2).sum(-1, keepdim=True), t_nodes], -1))
        v = self.lift(y.unsqueeze(-1))
        for conv in self.convs:
            h, v = conv(h, v, pos, edge_index, rbf)
        return self.out(v).squeeze(-1).reshape(b, n_pts, d)
