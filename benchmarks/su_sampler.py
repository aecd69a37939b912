"""Exact SU(n) heat-kernel sampling: Lie-algebra Gaussian proposals against the previous dispatch, in one run.

Run: ``python benchmarks/su_sampler.py [--n 3] [--new 4096] [--old 256]``. Prints a markdown table of points per
second of ``SUHeatKernel.sample`` (Gaussian proposals below the crossing time, Haar beyond) and of the previous
dispatch (Haar-proposal rejection where it needs at most 64 proposals per draw, else the probability-flow ODE on the
torus from rejection draws at s0 ~ 1), with the speed-up and the Gaussian acceptance rate e^{-|rho|^2 t/2}.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from geodiffusion.heat.lie import _MAX_PROPOSALS, SUHeatKernel, _flow_start, _su_torus
from geodiffusion.manifolds.lie import SU


def _old_angles(kernel: SUHeatKernel, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The eigenangle sampler before Gaussian proposals (Haar rejection or the probability-flow ODE)."""
    log_m = kernel._log_peak(t)
    if float(log_m.max()) <= math.log(_MAX_PROPOSALS):
        return kernel._rejection(t, log_m, generator)
    s0 = torch.full_like(t, _flow_start(kernel))
    return kernel._flow(kernel._rejection(s0, kernel._log_peak(s0), generator), s0, t)


def _rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--new", type=int, default=4096, help="draws per time, new sampler")
    parser.add_argument("--old", type=int, default=256, help="draws per time, previous sampler (the ODE is slow)")
    parser.add_argument("--times", type=float, nargs="+", default=[1e-3, 1e-2, 0.1, 1.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    kernel = SUHeatKernel(manifold={"kind": "su", "n": args.n})
    torus = _su_torus(args.n)
    gen = torch.Generator().manual_seed(0)
    x0 = SU(n=args.n).random_point(args.new, gen, dtype=torch.float64)
    kernel.sample(x0[:8], 1e-3, gen)  # warm-up: caches of the crossing time and lattices
    print(f"SU({args.n}), one thread; points per second of sample() (new) and of the previous dispatch (old)\n")
    print("| t | new pts/s | old pts/s | old method | speed-up | acceptance |")
    print("|---|---|---|---|---|---|")
    for t in args.times:
        new = _rate(lambda t=t: kernel.sample(x0, t, gen), args.new)
        tt = torch.full((args.old,), t, dtype=torch.float64)
        method = "Haar rejection" if float(kernel._log_peak(tt[:1])[0]) <= math.log(_MAX_PROPOSALS) else "ODE"
        # the old path returned eigenangles; conjugating by Haar V (as sample() does) is included in the new rate
        old = _rate(lambda tt=tt: _old_angles(kernel, tt, gen), args.old)
        acc = math.exp(-float(torus.log_bound(tt[:1])[0]))
        print(f"| {t:g} | {new:,.0f} | {old:,.1f} | {method} | {new / old:,.0f}x | {acc:.3f} |")


if __name__ == "__main__":
    main()
