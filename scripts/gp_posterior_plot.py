#!/usr/bin/env python
"""Redraw a finished gp-1d run's posterior plot for one dataset with another conditional sampler.

The run's EMA network, the first interpolation test function's context and the run's spec, with the fields of the
dataset's plot sampler (``sampler`` with its ``langevin_psi``) given by ``--sampler`` (JSON) changed; the plot goes
beside the run's own as ``<dataset>_posterior_<label>.png``. With ``--exact`` the network is replaced by the exact
score of the OU process started from the dataset's GP (:class:`geodiffusion.testing.GPScore`; GP datasets only), so
the plot shows what the sampler itself does with a perfect score (``..._exact.png``).

    python scripts/gp_posterior_plot.py --run runs/gp-1d-step --dataset step --sampler '{"psi": 3.0}'
    python scripts/gp_posterior_plot.py --run runs/gp-1d-se-kmetric --dataset se --sampler '{"psi": 1.0}' --exact
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from geodiffusion.data.functions import data_kernel
from geodiffusion.experiments.gp import GP1DExperiment
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.testing import GPScore


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a gp-1d output folder (spec.json, <dataset>/model)")
    parser.add_argument("--dataset", required=True, help="one of the run's datasets")
    parser.add_argument("--sampler", default="{}", help="sampler fields to change, as JSON, e.g. '{\"psi\": 1.0}'")
    parser.add_argument("--exact", action="store_true", help="sample with the exact score of the data GP, not the network")
    args = parser.parse_args(argv)
    changes = json.loads(args.sampler)
    raw = json.loads((args.run / "spec.json").read_text())
    if args.dataset not in raw["datasets"]:
        raise ValueError(f"dataset: expected one of the run's datasets {raw['datasets']}, got {args.dataset!r}")
    # the run's plot sampler for this dataset (its per-dataset Langevin psi included), with the changes on top
    base = GP1DExperiment(GP1DExperiment.Spec.model_validate(GP1DExperiment.Spec.with_defaults(raw))).plot_sampler(args.dataset)
    raw["sampler"] = {**base.model_dump(), **changes}
    raw["langevin_psi"] = {}
    spec = GP1DExperiment.Spec.model_validate(GP1DExperiment.Spec.with_defaults(raw))
    experiment = GP1DExperiment(spec)
    dtype = getattr(torch, spec.dtype)
    # the first interpolation test function's context, as in the run's own plot
    x, y = experiment.test_functions(args.dataset, "interpolation", dtype)
    n_c = spec.n_context
    label = "_".join(f"{k}{v}" for k, v in changes.items()) or "default"
    out = args.run / f"{args.dataset}_posterior_{label}{'_exact' if args.exact else ''}.png"
    kernel = data_kernel(args.dataset, spec.noise)
    process = build(spec.process, Process)
    if args.exact and kernel is None:
        raise ValueError(f"--exact: dataset {args.dataset!r} is not a GP, so it has no closed-form score")
    model = GPScore(process, kernel=kernel) if args.exact else experiment.load_network(args.run, args.dataset)
    experiment._plot_posterior(out, args.dataset, model, process, kernel, x[0, :n_c], y[0, :n_c], torch.device("cpu"), dtype)
    print(out)
    return out


if __name__ == "__main__":
    main()
