#!/usr/bin/env python
r"""How much of su3-lattice's DSM loss a score can remove: the σ²-weighted loss of the zero score, of the first-order
score and of trained models, on the same draws :math:`(x_0, t, x_t)`, per band of t.

The loss of a score :math:`s` is its floor plus :math:`\mathbb E\,\sigma_t^2\|s - \nabla\log p_t\|^2`, so the "gain"
of :math:`s` over the zero score, :math:`L(0) - L(s)`, is :math:`\mathbb E\,\sigma_t^2(\|\nabla\log p_t\|^2 -
\|s - \nabla\log p_t\|^2)`: at most :math:`\mathbb E\,\sigma_t^2\|\nabla\log p_t\|^2`, reached by the exact score.
The first-order score is the small-β expansion :math:`\nabla\log p_t \approx e^{-2C_F\tau}\,\nabla\,\tfrac\beta3
\sum_p\mathrm{Re\,tr}\,U_p` (each plaquette's character decays under the heat flow on its four links with the
fundamental Casimir :math:`C_F = 8/3`). Gains are reported with their standard errors::

    python scripts/su3_dsm_signal.py --beta 3 --checkpoint runs/su3-gauge-4k/model/checkpoints/last.pt
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import geodiffusion as gd
from geodiffusion.data.lattice import metropolis_su3, plaquettes
from geodiffusion.experiments.lie import _SU3_PROCESS
from geodiffusion.manifolds.lie import su_casimir
from geodiffusion.training import load_ema_model

BANDS = (1e-3, 0.03, 0.1, 0.2, 0.4, 0.7, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beta", type=float, default=3.0)
    parser.add_argument("--chains", type=int, default=4096, help="Metropolis chains (one draw each)")
    parser.add_argument("--sweeps", type=int, default=100)
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="trained model(s) to score")
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    size = 3
    links, acceptance = metropolis_su3(size, args.beta, args.chains, args.sweeps, 1.0, gen)
    process = gd.build(_SU3_PROCESS, gd.Process)
    manifold = process.manifold
    eps = 1e-3
    t = eps + (process.T - eps) * torch.rand(len(links), generator=gen, dtype=torch.float64)
    marginal = process.marginal(links, t)
    x_t = marginal.sample(gen)
    target = marginal.score(x_t)
    tau, weight = process.tau(t), process.sigma(t) ** 2

    def loss(score: torch.Tensor) -> torch.Tensor:
        diff = score - target
        return weight * manifold.inner(x_t, diff, diff)

    with torch.enable_grad():
        z = x_t.detach().requires_grad_()
        (grad,) = torch.autograd.grad(args.beta * plaquettes(z, size).sum(), z)
    decay = torch.exp(-2 * su_casimir((1, 0, 0)) * tau)
    scores = {"first-order": decay[:, None, None, None] * manifold.proj(x_t, grad)}
    for path in args.checkpoint:
        model = load_ema_model(path).double()
        scores[str(path)] = torch.cat([model(t[i : i + 256], x_t[i : i + 256]).detach() for i in range(0, len(t), 256)])
    zero = loss(torch.zeros_like(target))
    print(f"beta = {args.beta}, {len(t)} draws, Metropolis acceptance {acceptance:.3f}")
    print(f"zero-score loss {float(zero.mean()):.3f}; sd of a batch-256 loss {float(zero.std()) / 16:.3f}")
    print()
    print("| score | t band | draws | gain over the zero score |")
    print("|---|---|---|---|")
    for name, score in scores.items():
        gain = zero - loss(score)
        rows = [("all", torch.ones_like(t, dtype=torch.bool))]
        rows += [(f"[{a:g}, {b:g})", (t >= a) & (t < b)) for a, b in zip(BANDS[:-1], BANDS[1:], strict=True)]
        for band, mask in rows:
            g = gain[mask]
            print(f"| {name} | {band} | {len(g)} | {float(g.mean()):.4f} ± {float(g.std()) / math.sqrt(len(g)):.4f} |")


if __name__ == "__main__":
    main()
