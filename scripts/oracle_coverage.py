r"""COV/MAT that a PERFECT network would reach on each extended graph: the ceiling of conformers-qm9 per graph.

Samples the packaged test molecules as ``conformers-qm9`` does (2 samples per reference conformer, its default
sampler, chunks of one PyG batch, stereo matched to the chiral tags, heavy-atom best RMSD, delta = 0.5 A; diastereomers
are redrawn only with ``--stereo-redraws``, where conformers-qm9 now redraws up to 8 rounds by default), but with the
exact mixture score of each molecule's own reference ensemble (:class:`geodiffusion.conformers.oracle.EnsembleScore`)
in place of the network: the score that distance DSM converges to when trained on the test ensembles themselves.
Whatever this misses, no network can recover on that graph with that sampler; the gap between a trained model and
this row is the network's.

With ``--run`` (a finished conformers-qm9 folder) the rows mix the run's sampled network (its best-validation EMA
weights) and the oracle on the run's graph: ``--oracle-above TAU`` uses the oracle at diffusion times t >= TAU
and the network below, so TAU = 0 is the oracle alone and TAU > T the network alone. Where the coverage drops as
TAU falls tells at which noise levels the network's score loses the conformers. ``--ensemble RUN2 ...`` samples
with the mean edge score of the ``--run`` network and those of other runs on the same graph.

Columns beyond COV/MAT: mean edges per graph, molecules with a non-finite or blown-up sample, ``stereo%`` (the
percentage of samples of molecules with tagged stereo that are diastereomers, ``wrong_stereo_fraction``) and
conformers per second.

    python scripts/oracle_coverage.py --hops 3 4 5 0       # 0: all pairs
    python scripts/oracle_coverage.py --hops 4 --molecules 50 --sampler '{"steps": 200}'
    python scripts/oracle_coverage.py --run runs/conformers-qm9-RUN --oracle-above 2 0.5 0.2 0
    python scripts/oracle_coverage.py --run runs/RUN_A --ensemble runs/RUN_B --oracle-above 2 --stereo-redraws 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from geodiffusion.conformers.oracle import EnsembleScore
from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import (
    ConformersQM9Experiment,
    diverged_molecules,
    load_run_model,
    sample_conformers,
    score_ensembles,
    wrong_stereo_fraction,
)
from geodiffusion.metrics.conformers import summarise_coverage
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler


def averaged(networks):
    """The mean of several networks' edge scores: their errors, where independent, partly cancel."""

    def score(t, d, graph):
        return sum(net(t, d, graph=graph) for net in networks) / len(networks)

    return score


def mixed(network, oracle, tau: float):
    """The oracle's score at times t >= tau, the network's below (the sampler steps all graphs at one time)."""

    def score(t, d, graph):
        return oracle(t, d, graph=graph) if float(torch.as_tensor(t).max()) >= tau else network(t, d, graph=graph)

    return score


def measure(
    test,
    hops: int | None,
    sampler_fields: dict,
    dtype,
    seed: int,
    chunk: int,
    network=None,
    tau=0.0,
    save=None,
    redraws: int = 0,
) -> dict[str, float]:
    spec = ConformersQM9Experiment.Spec(
        max_hops=hops, sampler={**ConformersQM9Experiment.Spec().sampler.model_dump(), **sampler_fields}
    )
    process = build(spec.process, Process)
    sampler = build(spec.sampler, Sampler)
    width = max(e.n_conformers for e in test)
    graphs = [EnsembleScore.attach(e.graph(max_hops=hops), e.coordinates(), width) for e in test]
    counts = [spec.samples_per_reference * e.n_conformers for e in test]
    score = EnsembleScore(process) if network is None else mixed(network, EnsembleScore(process), tau)
    generator = torch.Generator().manual_seed(seed)
    mols = [e.mol for e in test]
    samples, seconds = sample_conformers(sampler, score, process, graphs, mols, counts, chunk, generator, dtype, redraws=redraws)
    per, _, finite = score_ensembles(test, samples, spec.threshold)
    if save is not None:  # the layout of conformers-qm9's samples.pt
        torch.save({"smiles": [e.smiles for e in test], "model": samples}, save)
    return {
        **summarise_coverage(per),
        "edges": sum(g.edge_index.shape[1] for g in graphs) / len(graphs),
        "nonfinite": float(sum(not ok for ok in finite)),
        "diverged": float(sum(diverged_molecules(test, samples))),
        "wrong_stereo": 100 * wrong_stereo_fraction(test, samples),
        "conformers_per_second": sum(counts) / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hops", type=int, nargs="+", default=[3, 4, 5, 0], help="max_hops per row (0: all pairs)")
    parser.add_argument("--molecules", type=int, default=None, help="first test molecules (default: all)")
    parser.add_argument("--sampler", default="{}", help="sampler fields to change, as JSON")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=2000, help="graphs sampled together in one batch")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", type=Path, default=None, help="a conformers-qm9 output folder: mix its network in")
    parser.add_argument(
        "--ensemble", type=Path, nargs="+", default=[], help="with --run: more runs on its graph, whose scores are averaged"
    )
    parser.add_argument("--save", type=Path, default=None, help="folder: write each row's samples to ROW.pt there")
    parser.add_argument("--oracle-above", type=float, nargs="+", default=[0.0], help="with --run: oracle at t >= TAU")
    parser.add_argument(
        "--stereo-redraws", type=int, default=0, help="rounds of redrawing diastereomers (conformers-qm9's stereo_redraws)"
    )
    args = parser.parse_args(argv)
    if any(h < 0 or h in (1, 2) for h in args.hops):
        parser.error(f"--hops: expected 0 (all pairs) or at least 3, got {args.hops}")
    if args.stereo_redraws < 0:
        parser.error(f"--stereo-redraws: expected a non-negative count, got {args.stereo_redraws}")
    torch.set_num_threads(args.threads)
    test = load_conformers("test", limit=args.molecules)
    print(f"{len(test)} test molecules, {sum(e.n_conformers for e in test)} reference conformers; sampler {args.sampler}")
    dtype = getattr(torch, args.dtype)
    network, rows = None, [(h, 0.0) for h in args.hops]
    if args.run is not None:
        network, spec = load_run_model(args.run)
        network, run_hops = network.to(dtype), spec.get("max_hops", 3)
        rows = [(run_hops or 0, tau) for tau in args.oracle_above]
        print(f"network of {args.run} on its graph; oracle at t >= tau")
        if args.ensemble:
            networks = [network]
            for other in args.ensemble:
                net, other_spec = load_run_model(other)
                if other_spec.get("max_hops", 3) != run_hops:
                    parser.error(f"--ensemble: {other} has max_hops {other_spec.get('max_hops', 3)}, --run has {run_hops}")
                networks.append(net.to(dtype))
            network = averaged(networks)
            print(f"scores averaged with {', '.join(map(str, args.ensemble))}")
    elif args.ensemble:
        parser.error("--ensemble: needs --run")
    head = ["hops", "tau", "edges", "COV-R", "MAT-R", "COV-P", "MAT-P", "non-finite", "diverged", "stereo%", "conf/s"]
    print(" ".join(f"{h:>{max(6, len(h))}s}" for h in head))
    sampler_fields = json.loads(args.sampler)
    for hops, tau in rows:
        save = None
        if args.save is not None:
            args.save.mkdir(parents=True, exist_ok=True)
            save = args.save / f"hops{hops or 'all'}_tau{tau:g}.pt"
        r = measure(
            test, hops or None, sampler_fields, dtype, args.seed, args.chunk, network, tau, save,
            args.stereo_redraws,
        )  # fmt: skip
        cells = [hops or "all", f"{tau:.2f}", f"{r['edges']:.1f}", f"{r['cov_r_mean']:.1f}", f"{r['mat_r_mean']:.3f}"]
        cells += [
            f"{r['cov_p_mean']:.1f}",
            f"{r['mat_p_mean']:.3f}",
            f"{r['nonfinite']:.0f}",
            f"{r['diverged']:.0f}",
            f"{r['wrong_stereo']:.1f}",
            f"{r['conformers_per_second']:.1f}",
        ]
        print(" ".join(f"{c!s:>{max(6, len(h))}s}" for c, h in zip(cells, head, strict=True)), flush=True)


if __name__ == "__main__":
    main()
