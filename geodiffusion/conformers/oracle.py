r"""The exact distance score of a known conformer ensemble: what a perfect distance-DSM network would output.

Under the per-edge noising of :class:`~geodiffusion.processes.distance.DistanceVEProcess` (each edge's distance
:math:`\sim \mathrm{NoncentralChi3}(\ell_e, s_t)`, edges independent), the noised law of an ensemble
:math:`\{\ell^k\}_{k=1}^K` of one molecule is the mixture :math:`p_t(d) = \tfrac1K \sum_k \prod_e p(d_e; \ell^k_e, s_t)`
and its score is

.. math:: \partial_{d_e} \log p_t(d) = \sum_k w_k(d)\, \partial_{d_e} \log p(d_e; \ell^k_e, s_t),
          \qquad w_k \propto \prod_e p(d_e; \ell^k_e, s_t).

Sampling with it measures what the graph and the sampler allow when the network is perfect (a ceiling for a
learned model on the same graph), without any training.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from geodiffusion.conformers.graph import edge_vectors, node_graph_index
from geodiffusion.processes.distance import DistanceVEProcess, NoncentralChi3

__all__ = ["EnsembleScore"]


class EnsembleScore:
    r"""Exact mixture score :math:`\partial_d \log p_t(d)` of each graph's reference ensemble (module docstring).

    Each graph carries ``ref_distances [E, K]``: its edges' lengths in its ``K`` reference conformers, NaN-padded
    to a common ``K`` so that graphs with different ensemble sizes batch together (:meth:`attach`). Called as a
    score model, ``(t [] or [G], d [E], graph=batch) -> [E]``; computed in float64, returned in ``d``'s dtype.
    """

    def __init__(self, process: DistanceVEProcess) -> None:
        if not isinstance(process, DistanceVEProcess):
            raise ValueError(f"process: expected a DistanceVEProcess, got {type(process).__name__}")
        self.process = process

    @staticmethod
    def attach(graph: Data, conformers: Tensor, width: int | None = None) -> Data:
        """A copy of ``graph`` with ``ref_distances [E, width]``: its edge lengths in ``conformers [K, N, 3]``,
        NaN beyond ``K`` (``width``: the batch's largest ``K``; default ``K``)."""
        if conformers.dim() != 3 or conformers.shape[1:] != (graph.num_nodes, 3) or conformers.shape[0] == 0:
            raise ValueError(f"conformers: expected [K >= 1, {graph.num_nodes}, 3], got {list(conformers.shape)}")
        if not bool(torch.isfinite(conformers).all()):
            raise ValueError("conformers: expected finite coordinates")
        k = conformers.shape[0]
        width = k if width is None else width
        if width < k:
            raise ValueError(f"width: expected at least the {k} conformers, got {width}")
        lengths = edge_vectors(conformers.to(torch.float64), graph.edge_index)[1].T  # [E, K]
        padded = torch.full((lengths.shape[0], width), float("nan"), dtype=torch.float64)
        padded[:, :k] = lengths
        out = graph.clone()
        out.ref_distances = padded
        return out

    def __call__(self, t: Tensor, d: Tensor, graph: Data) -> Tensor:
        ref = getattr(graph, "ref_distances", None)
        if ref is None or ref.dim() != 2 or ref.shape[0] != d.shape[-1] or d.dim() != 1:
            raise ValueError("EnsembleScore: expected d [E] and graph.ref_distances [E, K] (see EnsembleScore.attach)")
        node_batch = node_graph_index(graph)
        n_graphs = int(node_batch.max()) + 1
        edge_graph = node_batch[graph.edge_index[0]].to(d.device)
        t = torch.as_tensor(t, dtype=torch.float64, device=d.device).expand(n_graphs)
        ref = ref.to(d.device, torch.float64)
        present = torch.isfinite(ref)
        law = NoncentralChi3(torch.where(present, ref, 1.0), self.process.scale(t)[edge_graph].unsqueeze(-1))
        r = d.to(torch.float64).unsqueeze(-1)
        # per-graph log-weights: every edge of a graph votes for each of its conformers
        log_w = scatter(law.log_prob(r), edge_graph, 0, dim_size=n_graphs, reduce="sum")
        log_w = log_w.masked_fill(~_graph_present(present, edge_graph, n_graphs), float("-inf"))
        w = torch.softmax(log_w, -1)[edge_graph]  # [E, K]
        return (w * law.score(r)).sum(-1).to(d.dtype)


def _graph_present(present: Tensor, edge_graph: Tensor, n_graphs: int) -> Tensor:
    """``[G, K]``: which padded columns hold a conformer of each graph (a column is all-NaN or all-finite)."""
    return scatter(present.to(torch.int64), edge_graph, 0, dim_size=n_graphs, reduce="max").bool()
