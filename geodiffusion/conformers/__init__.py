"""Molecular conformers: extended distance graphs of molecules and point clouds."""

from geodiffusion.conformers.graph import (
    ATOM_TYPES,
    EDGE_TYPES,
    NODE_FEATURES,
    complete_graph,
    edge_vectors,
    extend_graph,
    mol_to_graph,
    node_graph_index,
    point_cloud_graph,
)

__all__ = [
    "ATOM_TYPES",
    "EDGE_TYPES",
    "NODE_FEATURES",
    "complete_graph",
    "edge_vectors",
    "extend_graph",
    "mol_to_graph",
    "node_graph_index",
    "point_cloud_graph",
]
