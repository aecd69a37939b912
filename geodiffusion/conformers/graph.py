r"""Extended graphs whose edge lengths pin a 3-D structure down (Zhou et al., 2024, arXiv 2403.01430).

The bond graph :math:`A` is extended by the 2- and 3-hop pairs (nonzero entries of the sparse powers
:math:`A^2`, :math:`A^3`), then every node with fewer than ``min_degree`` (4) neighbours is joined to all
nodes within the smallest radius that reaches that degree, the radius measured in hops (molecules:
coordinate-free, so training and sampling graphs agree) or in space (bare point clouds). Ties are kept, so
the construction commutes with relabelling the atoms.

Layout of a graph (:class:`torch_geometric.data.Data`; :class:`~torch_geometric.data.Batch` stacks them):

- ``edge_index [2, E]``: each undirected edge **once, canonical** ``i < j`` (distances, distance scores and
  the diffusion state live on these ``E`` edges; message passing adds the reverse direction itself);
- ``edge_type [E]``: index into :data:`EDGE_TYPES` (bond type / 2-hop / 3-hop / radius / 4-, 5-, 6+-hop),
  ``edge_attr [E, 10]`` its one-hot;
- ``x [N, F]`` node features (:data:`ATOM_TYPES` one-hot, aromatic flag, formal charge -1/0/+1 one-hot),
  ``atom_type [N]``; ``pos [N, 3]`` when coordinates are known.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from scipy.sparse.csgraph import shortest_path
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, to_scipy_sparse_matrix, to_undirected

__all__ = [
    "EDGE_TYPES",
    "ATOM_TYPES",
    "NODE_FEATURES",
    "extend_graph",
    "mol_to_graph",
    "point_cloud_graph",
    "complete_graph",
    "edge_vectors",
    "node_graph_index",
]

EDGE_TYPES: tuple[str, ...] = ("single", "double", "triple", "aromatic", "hop2", "hop3", "radius", "hop4", "hop5", "hop6+")
"""Edge type names; ``edge_type`` indexes this tuple. ``hop4`` to ``hop6+`` type the pairs ``max_hops`` > 3 adds."""
ATOM_TYPES: tuple[int, ...] = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
"""Atomic numbers with their own one-hot slot; any other element shares one extra slot."""
NODE_FEATURES = len(ATOM_TYPES) + 1 + 1 + 3
HOP2, HOP3, RADIUS, HOP4 = 4, 5, 6, 7
_FAR_TYPES = 3  # hop4, hop5, hop6+
Completion = Literal["hops", "radius"]


def _canonical(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Undirected edges once each, ``i < j``, sorted; self-loops dropped."""
    i, j = edge_index
    keep = i != j
    lo, hi = torch.minimum(i[keep], j[keep]), torch.maximum(i[keep], j[keep])
    return coalesce(torch.stack([lo, hi]), num_nodes=num_nodes)


def _hop_pairs(adjacency: Any, num_nodes: int, power: int) -> Tensor:
    """Canonical pairs joined by a walk of exactly ``power`` bonds: the support of the sparse power :math:`A^k`."""
    ak = adjacency**power
    ak = ak.tocoo()
    return _canonical(torch.from_numpy(np.stack([ak.row, ak.col])).long(), num_nodes)


def extend_graph(
    num_nodes: int,
    bonds: Tensor,
    bond_type: Tensor | None = None,
    *,
    pos: Tensor | None = None,
    min_degree: int = 4,
    completion: Completion = "hops",
    max_hops: int | None = 3,
) -> tuple[Tensor, Tensor]:
    r"""Bonds (any direction) :math:`\to` canonical extended ``edge_index [2, E]`` and ``edge_type [E]``.

    Bonds keep their type (0-3), then 2-hop (4) and 3-hop (5) pairs from :math:`A^2, A^3`, then radius
    edges (6) until each node has degree :math:`\ge \min(\text{min\_degree}, N - 1)`. ``completion="hops"``
    measures the radius in bonds and needs a connected bond graph; ``"radius"`` measures it in space and needs ``pos``.
    ``max_hops`` > 3 also joins every pair at most that many bonds apart (``None``: every connected pair), typed
    by bond-path length (7: 4 bonds, 8: 5, 9: 6 or more), whose distance laws differ: denser graphs leave the
    per-edge reverse dynamics fewer wrong local optima (``scripts/oracle_recovery.py``).
    """
    if num_nodes < 2:
        raise ValueError(f"a distance graph needs at least 2 nodes, got {num_nodes}")
    if bonds.dim() != 2 or bonds.shape[0] != 2:
        raise ValueError(f"bonds: expected an index tensor of shape [2, B], got {list(bonds.shape)}")
    bonds = bonds.long()
    if bonds.numel() and (int(bonds.min()) < 0 or int(bonds.max()) >= num_nodes):
        raise ValueError(f"bonds: indices must lie in [0, {num_nodes}), got range [{int(bonds.min())}, {int(bonds.max())}]")
    if bond_type is None:
        bond_type = torch.zeros(bonds.shape[1], dtype=torch.long)
    if pos is not None:
        _check_pos(pos, num_nodes)
    if completion == "radius" and pos is None:
        raise ValueError("completion='radius' measures distances in space and needs pos")
    if completion not in ("hops", "radius"):
        raise ValueError(f"completion: expected 'hops' or 'radius', got {completion!r}")
    if max_hops is not None and (isinstance(max_hops, bool) or not isinstance(max_hops, int) or max_hops < 3):
        raise ValueError(f"max_hops: expected an integer >= 3 or None (every connected pair), got {max_hops!r}")

    # hop distances: connectivity check, and the metric of the hop radius
    adjacency = to_scipy_sparse_matrix(to_undirected(bonds, num_nodes=num_nodes), num_nodes=num_nodes).tocsr()
    hops = torch.from_numpy(shortest_path(adjacency, unweighted=True, directed=False)).to(torch.float64)
    if completion == "hops" and not bool(torch.isfinite(hops).all()):
        n_parts = int(np.unique(np.isfinite(hops.numpy()), axis=0).shape[0])
        raise ValueError(
            f"the bond graph has {n_parts} disconnected fragments; distances between fragments are not constrained by "
            "bonds: split the fragments (e.g. rdkit Chem.GetMolFrags(asMols=True)) or pass pos with completion='radius'"
        )

    # typed edge list: bonds first so that a pair's smallest type code wins after sorting
    pairs = [_canonical(bonds, num_nodes), _hop_pairs(adjacency, num_nodes, 2), _hop_pairs(adjacency, num_nodes, 3)]
    bond_lo = torch.minimum(bonds[0], bonds[1])
    bond_key = bond_lo * num_nodes + torch.maximum(bonds[0], bonds[1])
    code_of_bond = torch.full((num_nodes * num_nodes,), 99, dtype=torch.long)
    code_of_bond[bond_key] = bond_type.long()
    types = [
        code_of_bond[pairs[0][0] * num_nodes + pairs[0][1]],
        torch.full_like(pairs[1][0], HOP2),
        torch.full_like(pairs[2][0], HOP3),
    ]
    if max_hops is None or max_hops > 3:
        limit = float("inf") if max_hops is None else float(max_hops)
        far = torch.triu((hops > 3) & (hops <= limit), diagonal=1).nonzero().T
        pairs.append(far)
        types.append(HOP4 + (hops[far[0], far[1]].long() - 4).clamp_max(_FAR_TYPES - 1))
    edge_index, edge_type = _merge(pairs, types, num_nodes)

    # radius completion: every deficient node joins all non-neighbours within its k-th smallest radius
    target = min(min_degree, num_nodes - 1)
    degree = torch.bincount(edge_index.flatten(), minlength=num_nodes)
    need = target - degree
    if bool((need > 0).any()):
        metric = hops if completion == "hops" else torch.cdist(pos.detach().double(), pos.detach().double())
        taken = torch.eye(num_nodes, dtype=torch.bool)
        taken[edge_index[0], edge_index[1]] = True
        taken[edge_index[1], edge_index[0]] = True
        key = metric.masked_fill(taken, float("inf"))
        kth = torch.sort(key, dim=1).values.gather(1, (need.clamp_min(1) - 1).unsqueeze(1))
        if bool((~torch.isfinite(kth[need > 0])).any()):
            raise ValueError("cannot reach the minimum degree: some nodes have too few reachable partners")
        add = (key <= kth) & (need > 0).unsqueeze(1) & torch.isfinite(key)
        new = _canonical(add.nonzero().T, num_nodes)
        edge_index, edge_type = _merge([edge_index, new], [edge_type, torch.full_like(new[0], RADIUS)], num_nodes)
    return edge_index, edge_type


def _merge(pairs: list[Tensor], types: list[Tensor], num_nodes: int) -> tuple[Tensor, Tensor]:
    """Union of canonical edge lists; a pair listed twice keeps its smallest type code."""
    ei, et = torch.cat(pairs, 1), torch.cat(types)
    key = (ei[0] * num_nodes + ei[1]) * 16 + et
    key = torch.sort(key).values
    pair_key = key // 16
    first = torch.ones_like(pair_key, dtype=torch.bool)
    first[1:] = pair_key[1:] != pair_key[:-1]
    pair_key, code = pair_key[first], key[first] % 16
    return torch.stack([pair_key // num_nodes, pair_key % num_nodes]), code


def _check_pos(pos: Tensor, num_nodes: int) -> None:
    if not isinstance(pos, Tensor) or pos.shape != (num_nodes, 3):
        raise ValueError(f"pos: expected coordinates of shape [{num_nodes}, 3], got {list(getattr(pos, 'shape', []))}")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("pos: expected finite coordinates, found NaN or inf")


def _finish(data_kwargs: dict[str, Any], edge_index: Tensor, edge_type: Tensor) -> Data:
    return Data(
        edge_index=edge_index,
        edge_type=edge_type,
        edge_attr=torch.nn.functional.one_hot(edge_type, len(EDGE_TYPES)).to(torch.get_default_dtype()),
        **data_kwargs,
    )


def mol_to_graph(
    mol: Any, *, conformer: int | None = 0, min_degree: int = 4, add_hs: bool = False, max_hops: int | None = 3
) -> Data:
    """The extended graph of an RDKit ``Mol`` with explicit hydrogens (``pos`` from ``conformer`` if it has one).

    Raises ValueError for a single atom, several fragments, NaN coordinates, unsupported bond types, and for
    implicit hydrogens unless ``add_hs=True`` (then ``Chem.AddHs(mol, addCoords=True)`` places them).
    """
    from rdkit import Chem

    if not isinstance(mol, Chem.Mol):
        raise TypeError(f"mol: expected an rdkit Chem.Mol, got {type(mol).__name__}")
    implicit = sum(atom.GetNumImplicitHs() for atom in mol.GetAtoms())
    if implicit:
        if not add_hs:
            raise ValueError(
                f"mol has {implicit} implicit hydrogens; conformers need explicit H: pass Chem.AddHs(mol) "
                "(Chem.AddHs(mol, addCoords=True) for a 3-D molecule) or add_hs=True"
            )
        mol = Chem.AddHs(mol, addCoords=mol.GetNumConformers() > 0)
    n = mol.GetNumAtoms()
    if n < 2:
        raise ValueError(f"mol has {n} atom(s); a distance graph needs at least 2")
    n_frags = len(Chem.GetMolFrags(mol))
    if n_frags > 1:
        raise ValueError(
            f"mol has {n_frags} disconnected fragments; generate each fragment separately (Chem.GetMolFrags(mol, asMols=True))"
        )
    codes = {Chem.BondType.SINGLE: 0, Chem.BondType.DOUBLE: 1, Chem.BondType.TRIPLE: 2, Chem.BondType.AROMATIC: 3}
    bonds, btype = [], []
    for bond in mol.GetBonds():
        if bond.GetBondType() not in codes:
            raise ValueError(f"bond {bond.GetIdx()} has unsupported type {bond.GetBondType()}; expected one of {list(codes)}")
        bonds.append((bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()))
        btype.append(codes[bond.GetBondType()])
    z = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
    aromatic = torch.tensor([float(a.GetIsAromatic()) for a in mol.GetAtoms()])
    charge = torch.tensor([a.GetFormalCharge() for a in mol.GetAtoms()]).clamp(-1, 1) + 1
    kwargs: dict[str, Any] = {"num_nodes": n}
    if conformer is not None and mol.GetNumConformers():
        pos = torch.tensor(mol.GetConformer(conformer).GetPositions(), dtype=torch.get_default_dtype())
        _check_pos(pos, n)
        kwargs["pos"] = pos
    kwargs.update(_node_features(z, aromatic, charge))
    edge_index, edge_type = extend_graph(
        n,
        torch.tensor(bonds, dtype=torch.long).reshape(-1, 2).T,
        torch.tensor(btype, dtype=torch.long),
        min_degree=min_degree,
        max_hops=max_hops,
    )
    return _finish(kwargs, edge_index, edge_type)


def _node_features(z: Tensor, aromatic: Tensor, charge_index: Tensor) -> dict[str, Tensor]:
    table = torch.full((int(z.max()) + 1,), len(ATOM_TYPES), dtype=torch.long)
    known = torch.tensor(ATOM_TYPES)
    table[known[known <= z.max()]] = torch.arange(len(ATOM_TYPES))[known <= z.max()]
    atom_type = table[z]
    dtype = torch.get_default_dtype()
    x = torch.cat(
        [
            torch.nn.functional.one_hot(atom_type, len(ATOM_TYPES) + 1).to(dtype),
            aromatic.to(dtype).unsqueeze(1),
            torch.nn.functional.one_hot(charge_index, 3).to(dtype),
        ],
        1,
    )
    return {"x": x, "atom_type": atom_type, "z": z}


def point_cloud_graph(
    pos: Tensor | None = None,
    bonds: Tensor | None = None,
    *,
    num_nodes: int | None = None,
    bond_type: Tensor | None = None,
    atomic_numbers: Tensor | None = None,
    min_degree: int = 4,
    completion: Completion | None = None,
    max_hops: int | None = 3,
) -> Data:
    """The extended graph of any point cloud: ``bonds [2, B]`` (optional) plus hop and radius edges.

    Without bonds the graph is the radius graph of ``pos`` reaching ``min_degree``; ``completion`` defaults to
    ``"hops"`` when bonds are given and ``"radius"`` otherwise. Nodes are typed by ``atomic_numbers`` (default: carbon).
    """
    if pos is not None:
        num_nodes = pos.shape[0] if num_nodes is None else num_nodes
    if num_nodes is None:
        raise ValueError("give pos or num_nodes")
    if pos is not None:
        _check_pos(pos, num_nodes)
    if bonds is None:
        bonds = torch.zeros(2, 0, dtype=torch.long)
    completion = completion or ("hops" if bonds.numel() else "radius")
    edge_index, edge_type = extend_graph(
        num_nodes, bonds, bond_type, pos=pos, min_degree=min_degree, completion=completion, max_hops=max_hops
    )
    z = atomic_numbers if atomic_numbers is not None else torch.full((num_nodes,), 6)
    kwargs: dict[str, Any] = {
        "num_nodes": num_nodes,
        **_node_features(z, torch.zeros(num_nodes), torch.ones(num_nodes, dtype=torch.long)),
    }
    if pos is not None:
        kwargs["pos"] = pos
    return _finish(kwargs, edge_index, edge_type)


def complete_graph(num_nodes: int, *, device=None) -> Tensor:
    """Canonical ``edge_index [2, N(N-1)/2]`` of the complete graph, ordered as ``torch.triu_indices(N, N, 1)``."""
    return torch.triu_indices(num_nodes, num_nodes, 1, device=device)


def edge_vectors(pos: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    r"""Edge vectors :math:`x_i - x_j` ``[..., E, 3]`` and lengths :math:`d_{ij}` ``[..., E]`` (``pos [..., N, 3]``)."""
    diff = pos[..., edge_index[0], :] - pos[..., edge_index[1], :]
    return diff, torch.linalg.vector_norm(diff, dim=-1)


def node_graph_index(graph: Data) -> Tensor:
    """``[N]``: the graph of each node, PyG's ``batch`` vector, or zeros for a single graph that has none."""
    node_batch = getattr(graph, "batch", None)
    if node_batch is None:
        node_batch = torch.zeros(graph.num_nodes, dtype=torch.long, device=graph.edge_index.device)
    return node_batch
