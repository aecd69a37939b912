r"""A finished conformers-qm9 run's distance DSM loss per noise level, on training and held-out molecules.

For each diffusion time on a grid the loss :math:`\mathbb{E}\,|s_t (s_\theta - \nabla \log p)|^2` per edge
(``weighting="sigma2"``, as trained) of the run's sampled network is averaged over every conformer of the
first ``--molecules`` molecules of each split, with the same coordinate noise for every split and time
(``--draws`` draws, seed 0). The columns say at which noise levels the network is least accurate, and the
ratio of the last split's loss to the first's how much of that is a generalisation gap rather than capacity.
With ``--oracle``, the same loss of the exact mixture score of the last split's own ensembles
(:class:`~geodiffusion.conformers.oracle.EnsembleScore`) and the network's excess over it. Its posterior over the
conformers treats the edges as independent, so its loss is close to, not exactly, the target variance that no
network removes: the excess says what training can still win at each noise level.

    python scripts/dsm_by_noise.py --run runs/conformers-qm9-RUN --molecules 40
    python scripts/dsm_by_noise.py --run runs/conformers-qm9-RUN --splits train train_geom val test
    python scripts/dsm_by_noise.py --run runs/conformers-qm9-RUN --splits val_geom test --oracle
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch_geometric.data import Batch

from geodiffusion.conformers.oracle import EnsembleScore
from geodiffusion.data.conformers import load_conformers
from geodiffusion.experiments.conformers import load_run_model
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.training.graph import _distance_dsm


def split_loss(model, process, ensembles, max_hops, times, draws: int, dtype, references: bool = False) -> list[float]:
    """Per-edge mean loss at each time of ``times`` over every conformer of ``ensembles``; ``references``: each
    graph carries its molecule's whole ensemble (``ref_distances``), for ``model`` an :class:`EnsembleScore`."""
    width = max(e.n_conformers for e in ensembles) if references else None
    items = []
    for e in ensembles:
        g = e.graph(max_hops=max_hops)
        if references:
            g = EnsembleScore.attach(g, e.coordinates(torch.float64), width)
        for pos in e.coordinates(dtype):
            item = g.clone()
            item.pos = pos
            items.append(item)
    batch = Batch.from_data_list(items)
    gen = torch.Generator().manual_seed(0)
    noises = [torch.randn(batch.pos.shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(draws)]
    out = []
    with torch.no_grad():
        for t in times:
            t_graph = torch.full((batch.num_graphs,), t, dtype=dtype)
            out.append(sum(float(_distance_dsm(model, process, batch, t_graph, z, "sigma2", 1.0)) for z in noises) / draws)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a conformers-qm9 output folder")
    parser.add_argument("--molecules", type=int, default=40, help="first molecules of each split")
    parser.add_argument("--draws", type=int, default=2, help="noise draws per conformer and time")
    parser.add_argument("--times", type=float, nargs="+", default=[0.02, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0])
    parser.add_argument(
        "--splits", nargs="+", default=None, help="packaged splits (default: the run's first training split, val, test)"
    )
    parser.add_argument(
        "--oracle",
        action="store_true",
        help="add the loss of the exact score of the last split's own ensembles, and the network's excess over it",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, spec = load_run_model(args.run)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    model = model.to(dtype)
    process = build(spec["process"], Process)
    hops = spec.get("max_hops", 3)
    names = args.splits or [spec.get("train_splits", ["train"])[0], "val", "test"]
    splits = dict(zip(names, names, strict=True))
    ensembles = {name: load_conformers(s, limit=args.molecules) for name, s in splits.items()}
    rows = {name: split_loss(model, process, group, hops, args.times, args.draws, dtype) for name, group in ensembles.items()}
    print(f"run {args.run}; {args.molecules} molecules per split ({json.dumps(splits)}); {args.draws} draws")
    sigma = [float(process.sigma(torch.tensor(t))) for t in args.times]
    print(f"{'t':>10s}" + "".join(f" {t:7.2f}" for t in args.times))
    print(f"{'sigma (A)':>10s}" + "".join(f" {s:7.3f}" for s in sigma))
    for name, values in rows.items():
        print(f"{name:>10s}" + "".join(f" {v:7.4f}" for v in values))
    first, last = names[0], names[-1]
    ratio = [v / t for v, t in zip(rows[last], rows[first], strict=True)]
    print(f"{last[:4] + '/' + first[:5]:>10s}" + "".join(f" {r:7.2f}" for r in ratio))
    if args.oracle:
        # the same molecules, conformers and noise as the network's row
        exact = split_loss(EnsembleScore(process), process, ensembles[last], hops, args.times, args.draws, dtype, references=True)
        print(f"{'oracle':>10s}" + "".join(f" {v:7.4f}" for v in exact))
        print(f"{last[:4] + '-orac':>10s}" + "".join(f" {v - x:7.4f}" for v, x in zip(rows[last], exact, strict=True)))


if __name__ == "__main__":
    main()
