#!/usr/bin/env python
"""Redraw a finished gp-1d run's posterior plot for one dataset with another conditional sampler.

The run's EMA network, the first interpolation test function's context and the run's spec, with the fields of the
dataset's plot sampler (``sampler`` with its ``langevin_psi``) given by ``--sampler`` (JSON) changed; the plot goes
beside the run's own as ``<dataset>_posterior_<label>.png``.

    python scripts/gp_posterior_plot.py --run runs/gp-1d-step --dataset step --sampler '{"psi": 3.0}'
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


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a gp-1d output folder (spec.json, <dataset>/model)")
    parser.add_argument("--dataset", required=True, help="one of the run's datasets")
    parser.add_argument("--sampler", default="{}", help="sampler fields to change, as JSON, e.g. '{\"psi\": 1.0}'")
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
    model = experiment.load_network(args.run, args.dataset)
    # the first interpolation test function's context, as in the run's own plot
    x, y = experiment.test_functions(args.dataset, "interpolation", dtype)
    n_c = spec.n_context
    label = "_".join(f"{k}{v}" for k, v in changes.items()) or "default"
    out = args.run / f"{args.dataset}_posterior_{label}.png"
    kernel = data_kernel(args.dataset, spec.noise)
    process = build(spec.process, Process)
    experiment._plot_posterior(out, args.dataset, model, process, kernel, x[0, :n_c], y[0, :n_c], torch.device("cpu"), dtype)
    print(out)
    return out


if __name__ == "__main__":
    main()
