#!/usr/bin/env python
"""How the Langevin step size psi moves LangevinConditional's posterior off the exact GP posterior.

Data are the OU process's limiting GP (SE, lengthscale 0.5, plus white noise 0.05), so the exact score is known at
every t and the exact posterior is the reference. For each psi and seed this prints the worst |z| of the sample mean
and of the sample covariance's entries (3 context points, 3 targets), the other sampler fields at their defaults:

    python scripts/langevin_psi_sweep.py --psi 1 3 10 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json

import torch

from geodiffusion.processes.gp import OUGaussianProcess
from geodiffusion.samplers.conditional import LangevinConditional
from geodiffusion.testing import GPScore, moment_z_scores

KERNEL = {
    "kind": "kernel_sum",
    "kernels": [{"kind": "squared_exponential", "lengthscale": 0.5}, {"kind": "white_noise", "variance": 0.05}],
}
X_CONTEXT = torch.tensor([[-1.0], [0.0], [0.8]], dtype=torch.float64)
Y_CONTEXT = torch.tensor([[0.5], [-0.7], [1.0]], dtype=torch.float64)
X_TARGET = torch.tensor([[-0.5], [0.3], [1.5]], dtype=torch.float64)


def main(argv: list[str] | None = None) -> list[tuple[float, int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psi", type=float, nargs="+", default=[1.0, 3.0, 10.0], help="Langevin step sizes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="sampler seeds")
    parser.add_argument("--samples", type=int, default=2000, help="posterior samples per (psi, seed)")
    parser.add_argument("--sampler", default="{}", help="other LangevinConditional fields, as JSON")
    args = parser.parse_args(argv)
    process = OUGaussianProcess(kernel=KERNEL)
    oracle = GPScore(process)
    mean, cov = oracle.posterior(X_CONTEXT, Y_CONTEXT, X_TARGET)
    rows = []
    print("psi    seed  max|z| mean  max|z| cov")
    for psi in args.psi:
        sampler = LangevinConditional(**{**json.loads(args.sampler), "psi": psi})
        for seed in args.seeds:
            samples = sampler.sample(
                oracle,
                process,
                X_TARGET,
                context_inputs=X_CONTEXT,
                context_values=Y_CONTEXT,
                n_samples=args.samples,
                generator=torch.Generator().manual_seed(seed),
            )
            z_mean, z_cov = moment_z_scores(samples, mean, cov)
            rows.append((psi, seed, z_mean, z_cov))
            print(f"{psi:<6g} {seed:<5d} {z_mean:<12.2f} {z_cov:.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
