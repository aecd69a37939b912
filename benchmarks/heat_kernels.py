"""Heat kernels of S^n: the hybrid estimator against the plain truncated eigen expansion, and the exact sampler
against the geodesic random walk, each at equal accuracy and measured in the same run.

(a) Evaluation. Errors are max relative errors of p_t against the mpmath eigen series
    (geodiffusion.testing.references) on angles where the radial law lives (quantiles, "bulk") and in the
    far tail (theta in 1..pi wherever p_t > 1e-300; the eigen expansion refuses the angles where its terms cancel
    beyond float64, its errors are over the rest, and the refusals are counted: tail angles, bulk angles, draws).
    The eigen expansion gets the fewest terms L whose bulk error matches the hybrid's (or 1e-10, its rounding
    floor) with no bulk angle refused; times are for log_prob + score on a batch of points drawn from p_t(x0, .)
    (what denoising score matching evaluates), for eigen on the draws it resolves.
(b) Sampling. KS statistic of the geodesic distance against the exact radial CDF (Simpson integral of the
    density): the exact sampler's at N draws, and the fewest geodesic-random-walk steps (doubling) whose KS
    statistic is no larger; the time ratio is GRW / exact for the N draws with distinct times... same t.

    python benchmarks/heat_kernels.py            # tables (a) and (b), n in {2, 15, 127}
    python benchmarks/heat_kernels.py --quick    # a small version (n in {2, 15}, two times)
    python benchmarks/heat_kernels.py --only evaluation   # table (a) only (or --only sampling)
    python benchmarks/heat_kernels.py --accuracy # worst errors of auto on a theta grid, n in {1, 2, 3, 4, 15, 16, 127}
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch
from scipy import integrate, stats

import geodiffusion as gd
from geodiffusion.heat.base import EIGEN_MAX_CANCELLATION
from geodiffusion.heat.sphere import geodesic_random_walk
from geodiffusion.testing.references import sphere_heat_kernel_reference

TAIL = (1.0, 1.5, 2.0, 2.5, 3.0, math.pi - 1e-4)


def bulk_angles(n: int, t: float) -> list[float]:
    s = math.sqrt(t)
    mode, sd = s * math.sqrt(max(n - 1, 0.25)), 0.75 * s
    raw = [1e-6, 0.3 * s, max(mode - 3 * sd, 0.5 * mode), mode, mode + 3 * sd]
    return sorted({min(a, math.pi - 1e-4) for a in raw if sphere_heat_kernel_reference(n, t, min(a, math.pi - 1e-4))})


def tail_angles(n: int, t: float) -> list[float]:
    return [a for a in TAIL if sphere_heat_kernel_reference(n, t, a) is not None and a > bulk_angles(n, t)[-1]]


def ambient(n: int, thetas) -> tuple[torch.Tensor, torch.Tensor]:
    theta = torch.as_tensor(thetas, dtype=torch.float64)
    x0 = torch.zeros(len(theta), n + 1, dtype=torch.float64)
    x0[:, 0] = 1
    x = torch.zeros_like(x0)
    x[:, 0], x[:, 1] = torch.cos(theta), torch.sin(theta)
    return x0, x


def errors(kernel, n: int, t: float, thetas) -> tuple[float, float]:
    """Max relative error of p_t and of d log p / du (from the score along the analytic direction); nan: no angle."""
    if not thetas:
        return float("nan"), float("nan")
    x0, x = ambient(n, thetas)
    log_p = kernel.log_prob(x0, x, t)
    theta = torch.as_tensor(thetas, dtype=torch.float64)
    direction_1 = -torch.sin(theta) * torch.cos(theta)  # second component of x0 - u x
    ref = [sphere_heat_kernel_reference(n, t, a) for a in thetas]
    ref_lp = torch.tensor([r[0] for r in ref], dtype=torch.float64)
    ref_d = torch.tensor([r[1] for r in ref], dtype=torch.float64)
    score = kernel.score(x0, x, t)[:, 1]
    ok = direction_1.abs() > 1e-12
    err_s = ((score[ok] / direction_1[ok]) / ref_d[ok] - 1).abs().max() if bool(ok.any()) else torch.tensor(0.0)
    return float(torch.expm1((log_p - ref_lp).abs()).max()), float(err_s)


def resolved_errors(kernel, n: int, t: float, thetas) -> tuple[float, int]:
    """Max relative error of p_t over the angles where ``kernel`` resolves p_t, and how many it refuses (an explicit
    eigen series raises a ValueError where its terms cancel beyond float64; nan: no angle resolved)."""
    worst, refused = float("nan"), 0
    for a in thetas:
        try:
            err = errors(kernel, n, t, [a])[0]
        except ValueError as err:
            if "cannot resolve" not in str(err):
                raise
            refused += 1
            continue
        worst = err if math.isnan(worst) else max(worst, err)
    return worst, refused


def timed(fn, *args, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of fn(*args), after one warm-up call."""
    fn(*args)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return best


def evaluate(kernel, x0, x, t):
    return kernel.log_prob(x0, x, t), kernel.score(x0, x, t)


def walk(sphere, x0, t, steps):
    return geodesic_random_walk(sphere, x0, t, steps, torch.Generator().manual_seed(3))


def evaluation_record(n: int, t: float, batch: int) -> dict:
    """Errors of auto and of the eigen expansion with the fewest terms reaching auto's bulk error, and the seconds of
    log_prob + score of each on ``batch`` points drawn from p_t(x0, .)."""
    sphere = gd.Sphere(dim=n)
    auto = sphere.heat_kernel()
    bulk, tail = bulk_angles(n, t), tail_angles(n, t)
    a_bulk, _ = errors(auto, n, t, bulk)
    a_tail, _ = errors(auto, n, t, tail)
    target = max(a_bulk, 1e-10)  # eigen's rounding floor in the bulk is ~1e-11 on S^15
    chosen, e_bulk = None, math.inf
    L = 4
    while L <= 5000:
        e_bulk, bulk_refused = resolved_errors(sphere.heat_kernel(estimator="eigen", n_terms=L), n, t, bulk)
        if not bulk_refused and e_bulk <= target:
            chosen = L
            break
        L = int(math.ceil(L * 1.25))
    eigen = sphere.heat_kernel(estimator="eigen", n_terms=chosen or L)
    e_tail, refused = resolved_errors(eigen, n, t, tail)
    gen = torch.Generator().manual_seed(0)
    x0 = sphere.random_point(1, gen, dtype=torch.float64).expand(batch, -1)
    x = auto.sample(x0, t, gen)
    # a truncated eigen series (L capped, S^127 at small t) can refuse some of the draws too: it is timed on the rest
    theta = sphere.dist(x0, x)
    _, _, cancel = eigen._radial.eigen(theta, torch.full_like(theta, t))
    ok = cancel <= EIGEN_MAX_CANCELLATION
    return {
        "auto_bulk": a_bulk,
        "auto_tail": a_tail,
        "auto_s": timed(evaluate, auto, x0, x, t),
        "eigen_terms": chosen or f">{L}",
        "eigen_bulk": e_bulk,
        "eigen_tail": e_tail,
        "eigen_refused": f"{refused} of {len(tail)}"
        + (f"; bulk {bulk_refused} of {len(bulk)}" if bulk_refused else "")
        + (f"; {int((~ok).sum())} of {batch} draws" if not ok.all() else ""),
        "eigen_s": timed(evaluate, eigen, x0[ok], x[ok], t),
    }


def evaluation_rows(ns, times, batch: int) -> list[str]:
    rows = []
    for n in ns:
        for t in times:
            r = evaluation_record(n, t, batch)
            rows.append(
                f"| {n} | {t:g} | {r['auto_bulk']:.1e} | {r['auto_tail']:.1e} | {1e3 * r['auto_s']:.2f} | {r['eigen_terms']} | "
                f"{r['eigen_bulk']:.1e} | {r['eigen_tail']:.1e} | {r['eigen_refused']} | {1e3 * r['eigen_s']:.2f} | "
                f"{r['eigen_s'] / r['auto_s']:.2f} |"
            )
            print(rows[-1], flush=True)
    return rows


def radial_cdf(kernel, t: float):
    n = kernel.manifold.dim
    top = min(math.pi, math.sqrt(t) * (math.sqrt(n) + 12))
    theta = np.linspace(0, top, 20001)
    log_p = kernel.radial_log_prob(torch.tensor(theta), t).numpy()
    log_sphere = math.log(2) + n / 2 * math.log(math.pi) - math.lgamma(n / 2)
    density = np.exp(log_p + (n - 1) * np.log(np.maximum(np.sin(theta), 1e-300)) + log_sphere)
    cdf = integrate.cumulative_simpson(density, x=theta, initial=0)
    return lambda a: np.interp(a, theta, cdf)


def sampling_record(n: int, t: float, draws: int, max_steps: int) -> dict:
    """KS statistic and seconds of ``draws`` exact samples, and of the geodesic random walk with the fewest steps
    (doubling up to ``max_steps``) whose KS statistic is at most the median KS of ``draws`` exact draws
    (``scipy.stats.kstwo(draws).median()``): a fixed accuracy level, not the exact run's own random KS."""
    sphere = gd.Sphere(dim=n)
    kernel = sphere.heat_kernel()
    cdf = radial_cdf(kernel, t)
    x0 = sphere.random_point(1, torch.Generator().manual_seed(1), dtype=torch.float64).expand(draws, -1)
    gen = torch.Generator().manual_seed(2)
    exact = kernel.sample(x0, t, gen)
    ks_exact = stats.kstest(sphere.dist(x0, exact).numpy(), cdf).statistic
    t_exact = timed(kernel.sample, x0, t, gen)
    ks_target = float(stats.kstwo(draws).median())
    steps, ks_grw = 1, math.inf
    while steps <= max_steps:
        ks_grw = stats.kstest(sphere.dist(x0, walk(sphere, x0, t, steps)).numpy(), cdf).statistic
        if ks_grw <= ks_target:
            break
        steps *= 2
    found = steps <= max_steps
    steps = min(steps, max_steps)
    return {
        "ks_exact": ks_exact,
        "ks_target": ks_target,
        "exact_s": t_exact,
        "grw_steps": steps,
        "grw_found": found,
        "ks_grw": ks_grw,
        "grw_s": timed(walk, sphere, x0, t, steps, repeats=1),
    }


def sampling_rows(ns, times, draws: int, max_steps: int) -> list[str]:
    rows = []
    for n in ns:
        for t in times:
            r = sampling_record(n, t, draws, max_steps)
            steps = r["grw_steps"] if r["grw_found"] else f">{max_steps}"
            bound = "" if r["grw_found"] else " (lower bound)"
            rows.append(
                f"| {n} | {t:g} | {draws} | {r['ks_exact']:.4f} | {1e3 * r['exact_s']:.1f} | {steps} | "
                f"{r['ks_grw']:.4f} | {1e3 * r['grw_s']:.1f} | {r['grw_s'] / r['exact_s']:.2g}{bound} |"
            )
            print(rows[-1], flush=True)
    return rows


def accuracy(ns) -> None:
    times = (1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
    print("| n | worst rel. error of p_t | worst rel. error of d log p / du | angles compared |")
    print("|---|---|---|---|")
    for n in ns:
        kernel = gd.Sphere(dim=n).heat_kernel()
        worst_p = worst_s = 0.0
        count = 0
        for t in times:
            s = math.sqrt(t)
            grid = [1e-6, 0.3 * s, s * math.sqrt(max(n - 1, 0.25)), s * (math.sqrt(n) + 3)]
            grid += [math.pi * (i + 0.5) / 12 for i in range(12)] + [math.pi - 1e-4]
            thetas = [a for a in sorted(set(grid)) if a < math.pi and sphere_heat_kernel_reference(n, t, a) is not None]
            err_p, err_s = errors(kernel, n, t, thetas)
            worst_p, worst_s, count = max(worst_p, err_p), max(worst_s, err_s), count + len(thetas)
        print(f"| {n} | {worst_p:.1e} | {worst_s:.1e} | {count} (t = 1e-4 .. 10) |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (n in {2, 15}, two times)")
    parser.add_argument("--accuracy", action="store_true", help="only the accuracy sweep of auto against mpmath")
    parser.add_argument("--only", choices=["evaluation", "sampling"], help="run only table (a) or only table (b)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, float64, cpu")
    if args.accuracy:
        accuracy((1, 2, 3, 4, 15, 16, 127))
        return
    ns = (2, 15) if args.quick else (2, 15, 127)
    times = (1e-2, 1.0) if args.quick else (1e-3, 1e-2, 0.1, 1.0, 10.0)
    batch = 256 if args.quick else 1024
    if args.only != "sampling":
        print(f"\n(a) log_prob + score on {batch} points x ~ p_t(x0, .); errors vs mpmath")
        print(
            "| n | t | auto err bulk | auto err tail | auto ms | eigen L | eigen err bulk | eigen err tail | eigen refuses "
            "| eigen ms | eigen / auto time |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        evaluation_rows(ns, times, batch)
    if args.only == "evaluation":
        return
    draws = 2000 if args.quick else 20000  # KS noise floor ~0.9 / sqrt(draws)
    print(f"\n(b) exact sampler vs geodesic random walk, {draws} draws at one x0; KS statistic of d(x0, x)")
    print("| n | t | N | KS exact | exact ms | GRW steps for equal KS | KS GRW | GRW ms | GRW / exact time |")
    print("|---|---|---|---|---|---|---|---|---|")
    sampling_rows(ns, times, draws, 64 if args.quick else 256)


if __name__ == "__main__":
    main()
