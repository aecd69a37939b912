#!/usr/bin/env python
"""Re-evaluate a finished ``su3-lattice`` run's test NLL per configuration, for the standard error of its gap to the
exact density (runs made before the experiment reported ``nll_gap_se``).

The test set is regenerated from the run's ``spec.json`` (same seed), the EMA weights come from its last checkpoint,
and the probability-flow NLL draws fresh Hutchinson probes (``--probes`` of them per configuration; the runs use
one), so its mean differs from the run's own by that noise::

    python scripts/su3_nll_se.py runs/su3-gauge-4k --probes 8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import geodiffusion as gd
from geodiffusion.data.lattice import metropolis_su3, wilson_log_density
from geodiffusion.experiments.lie import _nll_metrics
from geodiffusion.samplers.riemannian import riemannian_log_likelihood
from geodiffusion.training import load_ema_model
from geodiffusion.training.trainer import derive_seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output folder of geodiffusion run su3-lattice")
    parser.add_argument("--probes", type=int, default=1, help="Hutchinson probes per configuration")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = gd.build(json.loads((args.run / "spec.json").read_text()), gd.Experiment).spec
    gen = torch.Generator().manual_seed(derive_seed(spec.seed, "mcmc"))
    links, _ = metropolis_su3(spec.size, spec.beta, spec.n_train + 2 * spec.n_test, spec.n_sweeps, spec.mcmc_step, gen)
    test = links[spec.n_train : spec.n_train + spec.n_test]
    model = load_ema_model(args.run / "model" / "checkpoints" / "last.pt").to(getattr(torch, spec.dtype))
    process = gd.build(spec.process, gd.Process)
    cdtype = torch.complex64 if spec.dtype == "float32" else torch.complex128
    with torch.no_grad():
        log_p = riemannian_log_likelihood(
            model,
            process,
            test.to(cdtype),
            options=spec.likelihood.model_copy(update={"hutchinson_probes": args.probes}),
            generator=torch.Generator().manual_seed(1),
        )
    truth = wilson_log_density(test, spec.size, spec.beta, process.manifold.factor.log_volume)
    print(json.dumps({"run": str(args.run), "probes": args.probes, **_nll_metrics(log_p, truth)}))


if __name__ == "__main__":
    main()
