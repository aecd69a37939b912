"""SU(n) heat-kernel evaluation: ``auto`` against the plain character series (``eigen``), in one run.

Run: ``python benchmarks/su_heat.py [--n 3 4] [--points 2048] [--repeats 3]``. Prints a markdown table, per n and t,
of the time of ``log_prob`` plus ``score`` on Haar-random pairs (best of ``--repeats``, one thread) for ``auto`` and
for ``eigen``, their ratio, the largest difference of log p between the two, and how many points ``eigen`` refuses
(its terms cancel beyond float64 there: it raises, so it is timed on the points it resolves).
"""

from __future__ import annotations

import argparse
import time

import torch

from geodiffusion.heat.lie import SUHeatKernel, _su_torus
from geodiffusion.manifolds.lie import SU, su_angles


def _best(kernel: SUHeatKernel, x0: torch.Tensor, x: torch.Tensor, t: float, repeats: int) -> float:
    """Best time of ``log_prob`` plus ``score``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        kernel.log_prob(x0, x, t)
        kernel.score(x0, x, t)
        best = min(best, time.perf_counter() - start)
    return best


def _resolved(n: int, x0: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """Mask of the points where the character series resolves p_t (where ``estimator='eigen'`` does not raise)."""
    phi = su_angles(torch.linalg.eigvals(x0.mH @ x))
    return _su_torus(n).eigen(phi, torch.full(phi.shape[:1], t, dtype=phi.dtype), remedy=None)[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--times", type=float, nargs="+", default=[1e-2, 0.1, 0.3, 1.0, 3.0])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("log_prob + score on Haar-random pairs, float64, one thread; eigen timed on the points it resolves\n")
    print("| n | t | auto (s) | eigen (s) | eigen / auto | max abs diff log p | eigen refuses |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        auto = SUHeatKernel(manifold={"kind": "su", "n": n})
        eigen = SUHeatKernel(manifold={"kind": "su", "n": n}, estimator="eigen")
        x0 = SU(n=n).random_point(args.points, gen, dtype=torch.float64)
        x = SU(n=n).random_point(args.points, gen, dtype=torch.float64)
        for t in args.times:
            ok = _resolved(n, x0, x, t)
            refused = f"{int((~ok).sum())} of {args.points}"
            if not bool(ok.any()):
                print(f"| {n} | {t:g} | {_best(auto, x0, x, t, args.repeats):.3f} | – | – | – | {refused} |")
                continue
            a, b = x0[ok], x[ok]
            t_auto = _best(auto, a, b, t, args.repeats)  # on the same points as eigen
            t_eigen = _best(eigen, a, b, t, args.repeats)
            diff = float((auto.log_prob(a, b, t) - eigen.log_prob(a, b, t)).abs().max())
            print(f"| {n} | {t:g} | {t_auto:.3f} | {t_eigen:.3f} | {t_eigen / t_auto:.1f}x | {diff:.1e} | {refused} |")


if __name__ == "__main__":
    main()
