#!/usr/bin/env python
"""Accuracy of the exact even-sphere kernel (``_Radial.hopf_cauchy``) against the mpmath eigen series.

Worst relative errors of p_t and of d log p / du on S^2, S^4, S^6, S^16 and S^128, at nine angles from 1e-3 to pi
(far tail included, wherever p_t > 1e-300) and t in {1e-4, 1e-3, 1e-2, 0.1, 1, 10}:

    python scripts/even_sphere_accuracy.py
"""

from __future__ import annotations

import math

import torch

from geodiffusion.heat.sphere import _Radial
from geodiffusion.testing.references import sphere_heat_kernel_reference

TIMES = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0)
ANGLES = (1e-3, 0.3, 1.0, 2.0, 2.8, 3.0, 3.1, math.pi - 1e-4, math.pi)


def main() -> None:
    print("| n | points | worst rel. error of p_t | worst rel. error of d log p / du |")
    print("|---|---|---|---|")
    for n in (2, 4, 6, 16, 128):
        radial, worst_p, worst_d, count = _Radial(n), 0.0, 0.0, 0
        for t in TIMES:
            angles = [a for a in ANGLES if sphere_heat_kernel_reference(n, t, a) is not None]
            theta = torch.tensor(angles, dtype=torch.float64)
            log_p, dlogp = radial.hopf_cauchy(theta, torch.full_like(theta, t))
            for a, lp, d in zip(angles, log_p.tolist(), dlogp.tolist(), strict=True):
                ref_lp, ref_d = sphere_heat_kernel_reference(n, t, a)
                worst_p = max(worst_p, abs(math.expm1(lp - ref_lp)))
                worst_d = max(worst_d, abs(d / ref_d - 1) if ref_d != 0 else abs(d))
                count += 1
        print(f"| {n} | {count} | {worst_p:.1e} | {worst_d:.1e} |", flush=True)


if __name__ == "__main__":
    main()
