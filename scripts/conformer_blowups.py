#!/usr/bin/env python
"""Which projection-free samples of a finished conformers-qm9 run blow up, when, and on which edge?

Loads the run's sampled network (the best-validation EMA weights of ``model/checkpoints/last.pt``), draws
``--copies`` samples of each chosen test molecule in one PyG batch with the run's sampler (fields of ``--sampler``
JSON changed), and records at every step each sample's largest preconditioned network output
:math:`|n_\\theta| = s_t |s_\\theta|` (O(1) on the training distribution). A sample *blows up* when it ends non-finite
or with an edge longer than ``--max-distance`` A. For each blown sample (up to ``--show``) it prints the first step
where :math:`|n_\\theta|` > 20, with that edge's type and length.

    python scripts/conformer_blowups.py --run runs/conformers-qm9-RUN --molecules 0 12 18 30 --copies 8
    python scripts/conformer_blowups.py --run runs/conformers-qm9-RUN --sampler '{"corrector_steps": 3}'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from geodiffusion.conformers.graph import EDGE_TYPES, edge_vectors
from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import load_run_model, sample_graphs
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a conformers-qm9 output folder")
    parser.add_argument("--molecules", type=int, nargs="*", default=None, help="test-set indices (default: the first 24)")
    parser.add_argument("--copies", type=int, default=8, help="samples per molecule")
    parser.add_argument("--sampler", default="{}", help="sampler fields to change, as JSON")
    parser.add_argument("--max-distance", type=float, default=30.0, help="an edge longer than this (A) is a blow-up")
    parser.add_argument("--show", type=int, default=8, help="blown samples to describe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model, spec = load_run_model(args.run)
    process = build(spec["process"], Process)
    sampler = build({**spec["sampler"], **json.loads(args.sampler)}, Sampler)
    test = load_conformers("test")
    chosen = args.molecules if args.molecules else list(range(min(24, len(test))))
    if any(not 0 <= i < len(test) for i in chosen):
        parser.error(f"--molecules: expected test-set indices in [0, {len(test)}), got {chosen}")
    graphs = [test[i].graph(max_hops=spec.get("max_hops", 3)) for i in chosen for _ in range(args.copies)]
    batch = Batch.from_data_list(graphs)  # the batch sample_graphs builds, for the edges' graphs and types
    n_graphs = len(graphs)
    edge_graph = batch.batch[batch.edge_index[0]]
    trace: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: preconditioned outputs and distances

    def traced(t, d, graph):
        out = model(t, d, graph=graph)
        trace.append((out * process.scale(t[edge_graph]), d))
        return out

    # the experiment's own sampling path, so the samples are drawn exactly as the run drew them
    dtype = getattr(torch, spec.get("dtype", "float32"))
    x = sample_graphs(sampler, traced, process, graphs, torch.Generator().manual_seed(args.seed), dtype)
    longest = scatter(edge_vectors(x, batch.edge_index)[1], edge_graph, 0, dim_size=n_graphs, reduce="max")
    blown = ~torch.isfinite(longest) | (longest > args.max_distance)
    molecules = sorted({chosen[g // args.copies] for g in blown.nonzero().flatten().tolist()})
    print(f"blown up: {int(blown.sum())} of {n_graphs} samples; molecules {molecules}")
    for g in blown.nonzero().flatten().tolist()[: args.show]:
        mask = edge_graph == g
        for k, (net, d) in enumerate(trace):
            big = net[mask].abs()
            if not bool(torch.isfinite(big).all()) or float(big.max()) > 20:
                e = int(big.nan_to_num(float("inf")).argmax())
                kind = EDGE_TYPES[int(batch.edge_type[mask][e])]
                print(
                    f"  sample {g} (molecule {chosen[g // args.copies]}): |n| > 20 first at step {k}, "
                    f"edge {kind} of length {float(d[mask][e]):.3f} A, n = {float(net[mask][e]):.1f}"
                )
                break
    finite = torch.isin(edge_graph, (~blown).nonzero().flatten())
    last = torch.stack([net[finite].abs() for net, _ in trace[-20:]]).flatten()
    q = torch.quantile(last[:1_000_000].double(), torch.tensor([0.5, 0.99, 0.999], dtype=torch.float64))
    print(f"|n| over the last 20 steps of the other samples: median {q[0]:.2f}, 99% {q[1]:.1f}, 99.9% {q[2]:.1f}")
    return {"blown": float(blown.sum()), "samples": float(n_graphs)}


if __name__ == "__main__":
    main()
