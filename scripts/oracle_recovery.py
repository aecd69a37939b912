r"""How often does the projection-free sampler recover a conformer from its EXACT per-edge score?

For each of the first ``--molecules`` shipped test molecules (``load_conformers("test")``) the score is the exact
per-edge score of its first reference conformer, :math:`\partial_d \log \mathrm{NoncentralChi3}(d; \ell_e, s_t)`
with :math:`\ell_e` the reference's edge lengths, i.e. what an ideal distance-DSM model trained on that one conformer
learns. ``--seeds`` samples per molecule are drawn (one PyG batch, one generator) with the sampler spec of
``conformers-qm9`` and variants, on the extended graph of ``mol_to_graph`` and on denser graphs (all pairs within
k bonds; the complete graph), and scored as the experiment scores them (heavy-atom best RMSD after
``match_chirality``). A failure (RMSD > 0.5 A) is a

- ``mirror``: the reflected sample is within 0.5 A (the reference conformer's mirror image; distances cannot tell);
- ``local``: otherwise, with a graph edge off by more than 0.1 A (a local optimum of the per-edge dynamics);
- ``other``: otherwise (the graph's distances are met by a different structure: the graph is not globally rigid).

``cov2`` is the fraction of molecules whose first 2 samples include one within 0.5 A (COV-R of a one-conformer
ensemble at 2 samples per reference). Also printed: the rank of the linearised distance map :math:`J` at each
reference (infinitesimal rigidity: :math:`3N - 6`).

    python scripts/oracle_recovery.py                # 24 molecules x 8 seeds, float32 (as conformers-qm9)
    python scripts/oracle_recovery.py --molecules 48 --rows default,corrector3
"""

from __future__ import annotations

import argparse
import time

import torch
from scipy.sparse.csgraph import shortest_path
from torch_geometric.data import Batch, Data
from torch_geometric.utils import to_scipy_sparse_matrix, to_undirected

from geodiffusion.conformers.graph import complete_graph, edge_vectors
from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import ConformersQM9Experiment, _stereo_centres, match_chirality
from geodiffusion.metrics.conformers import heavy_atom_rmsd_matrix, kabsch_rmsd_matrix
from geodiffusion.processes.base import Process
from geodiffusion.processes.distance import NoncentralChi3
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler

# (graph, sampler overrides) per row; the sampler base is conformers-qm9's default spec
ROWS: dict[str, tuple[str, dict]] = {
    "default": ("extended", {}),
    "ode": ("extended", {"mode": "ode"}),
    "corrector3": ("extended", {"corrector_steps": 3}),
    "cg100": ("extended", {"cg_iterations": 100}),
    "steps500": ("extended", {"steps": 500}),
    "hops<=4": ("hops4", {}),
    "hops<=5": ("hops5", {}),
    "complete": ("complete", {}),
}


def oracle_score(process, reference_distances):
    """Exact per-edge score of one conformer: NoncentralChi3(reference distance, s_t).score(d)."""

    def score(t, d, graph):
        t_edge = t[graph.batch[graph.edge_index[0]]]
        return NoncentralChi3(reference_distances.to(d.dtype), process.scale(t_edge)).score(d)

    return score


def graph_of(ensemble, kind: str) -> Data:
    g = ensemble.graph()
    if kind == "extended":
        return g
    n = g.num_nodes
    if kind == "complete":
        return Data(edge_index=complete_graph(n), num_nodes=n)
    k = int(kind.removeprefix("hops"))
    bonds = g.edge_index[:, g.edge_type < 4]
    hops = torch.from_numpy(shortest_path(to_scipy_sparse_matrix(to_undirected(bonds), num_nodes=n).tocsr(), unweighted=True))
    i, j = torch.triu_indices(n, n, 1)
    within = torch.zeros(n, n, dtype=torch.bool)
    within[i, j] = hops[i, j] <= k
    within[g.edge_index[0], g.edge_index[1]] = True  # keep the degree-completion edges of the extended graph
    return Data(edge_index=within.nonzero().T.contiguous(), num_nodes=n)


def rigidity(test) -> str:
    deficient, smallest = 0, []
    for e in test:
        g, x = e.graph(), e.coordinates()[0]
        jac = torch.autograd.functional.jacobian(lambda p, ei=g.edge_index: edge_vectors(p, ei)[1], x).reshape(-1, 3 * e.n_atoms)
        sv = torch.linalg.svdvals(jac)
        deficient += int((sv > 1e-8 * sv[0]).sum()) != 3 * e.n_atoms - 6
        smallest.append(float(sv[3 * e.n_atoms - 7]))
    smallest.sort()
    return (
        f"extended graphs with rank J < 3N-6 at the reference: {deficient} of {len(test)}; "
        f"smallest nonzero singular value of J: min {smallest[0]:.2g}, median {smallest[len(smallest) // 2]:.2g}"
    )


def measure(test, graph_kind: str, overrides: dict, seeds: int, dtype, seed: int) -> dict[str, float]:
    spec = ConformersQM9Experiment.Spec()
    process = build(spec.process, Process)
    sampler = build({**spec.sampler.model_dump(), **overrides}, Sampler)
    graphs, refs = [], []
    for e in test:
        g = graph_of(e, graph_kind)
        graphs += [g] * seeds
        refs += [edge_vectors(e.coordinates()[0], g.edge_index)[1]] * seeds
    batch = Batch.from_data_list(graphs)
    ref_d = torch.cat(refs)
    start = time.perf_counter()
    x = sampler.sample(
        oracle_score(process, ref_d),
        process,
        (batch.num_nodes, 3),
        graph=batch,
        dtype=dtype,
        generator=torch.Generator().manual_seed(seed),
    )
    seconds = time.perf_counter() - start
    x = x.double()
    residual = (edge_vectors(x, batch.edge_index)[1] - ref_d).abs()
    worst = torch.zeros(len(graphs), dtype=torch.float64).scatter_reduce(
        0, batch.batch[batch.edge_index[0]], residual, "amax", include_self=False
    )
    heavy, mirrored, all_atom = [], [], []
    for e, xs in zip(test, torch.split(x, [e.n_atoms * seeds for e in test]), strict=True):
        ref = e.coordinates()[0]
        samples = match_chirality(xs.reshape(seeds, e.n_atoms, 3), ref, _stereo_centres(e.mol))
        one = _first_conformer(e.mol)
        h = heavy_atom_rmsd_matrix(one, samples)[0]
        heavy.append(h)
        mirrored.append(torch.minimum(h, heavy_atom_rmsd_matrix(one, -samples)[0]))
        all_atom.append(kabsch_rmsd_matrix(ref[None], samples, reflections=True)[0])
    h, hm, aa = torch.cat(heavy), torch.cat(mirrored), torch.cat(all_atom)
    fail = h > 0.5
    mirror = fail & (hm <= 0.5)
    local = fail & ~mirror & (worst > 0.1)
    return {
        "n": float(h.numel()),
        "<=0.5": float((h <= 0.5).double().mean()),
        "<=0.1": float((h <= 0.1).double().mean()),
        "mirror_ok<=0.5": float((hm <= 0.5).double().mean()),
        "all_atom<=0.1": float((aa <= 0.1).double().mean()),
        "mirror": float(mirror.sum()),
        "local": float(local.sum()),
        "other": float((fail & ~mirror & ~local).sum()),
        "cov2": float((h.view(len(test), seeds)[:, :2] <= 0.5).any(1).double().mean()),
        "edges": batch.edge_index.shape[1] / len(graphs),
        "seconds": seconds,
    }


def _first_conformer(mol):
    from rdkit import Chem

    one = Chem.Mol(mol)
    for conf in list(one.GetConformers())[1:]:
        one.RemoveConformer(conf.GetId())
    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecules", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=8, help="samples per molecule")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {list(ROWS)}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_conformers("test", limit=args.molecules)
    print(rigidity(test))
    header = f"{'row':12s} {'edges':>6s} {'n':>4s} {'<=0.5':>6s} {'<=0.1':>6s} {'mirror-ok':>9s} {'all-atom':>8s} "
    header += f"{'mirror':>6s} {'local':>5s} {'other':>5s} {'cov2':>5s} {'sec':>6s}"
    print(header)
    for name in args.rows.split(","):
        graph_kind, overrides = ROWS[name]
        r = measure(test, graph_kind, overrides, args.seeds, getattr(torch, args.dtype), args.seed)
        print(
            f"{name:12s} {r['edges']:6.0f} {r['n']:4.0f} {r['<=0.5']:6.3f} {r['<=0.1']:6.3f} {r['mirror_ok<=0.5']:9.3f} "
            f"{r['all_atom<=0.1']:8.3f} {r['mirror']:6.0f} {r['local']:5.0f} {r['other']:5.0f} {r['cov2']:5.3f} "
            f"{r['seconds']:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
