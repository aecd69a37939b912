#!/usr/bin/env python
"""Where a gp-1d model's likelihood gap comes from: the flow with the exact score, and the DSM loss by time band.

1. The conditional log-likelihood of the test split by the probability flow with the *exact* score of the OU
   process started from the data GP (:class:`geodiffusion.testing.GPScore`), against the closed form: checks that
   the likelihood machinery is exact at the experiment's ODE settings, in float32 and float64.
2. The DSM loss of the trained EMA network and of the exact score (the loss's floor) on fresh functions, with
   the same times and noise for both, over the whole time range and by band.
3. At fixed times, the network's output error relative to the exact output, and that error's share of the DSM
   loss (lambda(t) |o_theta - o|^2 / (N d), with the run's weighting lambda) against the
   loss's floor: how visible the error is to training.
4. With ``--likelihood``, the EMA network's conditional log-likelihood on the interpolation split with the run's
   likelihood settings: what the experiment reports, for a run stopped after training.
5. With ``--split-at TAU ...``, the same likelihood from two hybrid scores per tau: the exact score below tau and
   the network above it, and the reverse. The flow integrates the score over all of [eps, T], so the two hybrids
   say which times the network's likelihood gap comes from.

    python scripts/gp_score_diagnostics.py --run runs/gp-1d-se-long --dataset se
    python scripts/gp_score_diagnostics.py --run runs/gp-1d-se-long --dataset se --no-flow --split-at 0.01 0.1 0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from geodiffusion.data.functions import data_kernel, sample_functions
from geodiffusion.experiments.gp import GP1DExperiment, gp_conditional_log_likelihood
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.conditional import conditional_log_likelihood
from geodiffusion.testing import GPScore
from geodiffusion.training import load_checkpoint
from geodiffusion.training.functions import derive_function_seed, function_dsm_loss, function_dsm_weight

BANDS = ((1e-3, 1.0), (1e-3, 1e-2), (1e-2, 0.1), (0.1, 1.0))
TIMES = (1e-3, 1e-2, 0.1, 0.3, 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a gp-1d output folder (spec.json, <dataset>/model)")
    parser.add_argument("--dataset", default="se", help="a GP dataset of the run: se, matern52 or weakly_periodic")
    parser.add_argument("--functions", type=int, default=256, help="fresh functions for the DSM loss")
    parser.add_argument("--draws", type=int, default=4, help="time and noise draws per band")
    parser.add_argument("--no-flow", action="store_true", help="skip part 1 (the flow with the exact score)")
    parser.add_argument("--likelihood", action="store_true", help="also the network's interpolation log-likelihood")
    parser.add_argument(
        "--split-at", type=float, nargs="*", default=(), help="likelihoods of exact-below/network-above hybrids at these t"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = GP1DExperiment.Spec.model_validate(GP1DExperiment.Spec.with_defaults(json.loads((args.run / "spec.json").read_text())))
    process = build(spec.process, Process)
    kernel = data_kernel(args.dataset, spec.noise)
    if kernel is None:
        raise ValueError(f"dataset: {args.dataset!r} is not GP data; expected se, matern52 or weakly_periodic")
    oracle = GPScore(process, kernel=kernel)

    experiment = GP1DExperiment(spec)
    n_c = spec.n_context
    tx, ty = experiment.test_functions(args.dataset, "interpolation", torch.float64)
    exact = float(gp_conditional_log_likelihood(kernel, tx[:, :n_c], ty[:, :n_c], tx[:, n_c:], ty[:, n_c:]).mean())
    print(f"interpolation split, nats per target point: exact GP {exact / spec.n_target:.5f}")
    for dtype in () if args.no_flow else (torch.float64, torch.float32):
        x, y = tx.to(dtype), ty.to(dtype)
        ll = conditional_log_likelihood(
            oracle, process, y[:, n_c:], x[:, n_c:], y[:, :n_c], x[:, :n_c], options=spec.likelihood.ode, exact_max_dim=64
        )
        print(f"  flow with the exact score ({dtype}): {float(ll.mean()) / spec.n_target:.5f}")

    model = build(spec.model, ScoreModel)
    state = load_checkpoint(args.run / args.dataset / "model" / "checkpoints" / "last.pt")
    model.load_state_dict(state["ema"]["model"])
    model.eval()
    fgen = torch.Generator().manual_seed(derive_function_seed(spec.seed, "diagnostics", args.dataset))
    x, y = sample_functions(args.dataset, args.functions, n_c + spec.n_target, noise=spec.noise, generator=fgen)
    weighting = spec.training.weighting  # the run's lambda(t)
    constant = bool((function_dsm_weight(process, torch.tensor([0.5]), weighting) == 1).all())
    label = "1" if constant else "sigma_t^2"
    print(f"DSM loss ({label} weighting) of the EMA network at step {state['step']} and of the exact score:")
    for low, high in BANDS:
        losses = {"network": 0.0, "exact": 0.0}
        for k in range(args.draws):
            t = low + (high - low) * torch.rand(args.functions, generator=torch.Generator().manual_seed(100 + k))
            for name, net in (("network", model), ("exact", oracle)):
                with torch.no_grad():
                    loss = function_dsm_loss(
                        net, process, x, y, t=t, weighting=weighting, generator=torch.Generator().manual_seed(k)
                    )
                losses[name] += float(loss) / args.draws
        print(f"  t in [{low:g}, {high:g}]: network {losses['network']:.4f}, exact {losses['exact']:.4f}")
    print("output error of the EMA network against the exact output at fixed times:")
    for t0 in TIMES:
        t = torch.full((args.functions,), t0)
        y_t = process.marginal(y, t, inputs=x).sample(torch.Generator().manual_seed(7))
        with torch.no_grad():
            error = ((model(t, y_t, inputs=x) - oracle(t, y_t, inputs=x)) ** 2).flatten(1).sum(-1)
            norm = (oracle(t, y_t, inputs=x) ** 2).flatten(1).sum(-1)
            floor = function_dsm_loss(oracle, process, x, y, t=t, weighting=weighting, generator=torch.Generator().manual_seed(8))
        share = float(function_dsm_weight(process, t[:1].double(), weighting)[0] * error.mean() / y[0].numel())
        print(
            f"  t = {t0:g}: |o_theta - o|^2 / |o|^2 = {float(error.mean() / norm.mean()):.3f}, "
            f"its DSM loss share {share:.2e} against the floor {float(floor):.4f}"
        )
    # the split as the experiment evaluates it (float32), for parts 4 and 5
    xc, yc, xt, yt = tx[:, :n_c].float(), ty[:, :n_c].float(), tx[:, n_c:].float(), ty[:, n_c:].float()
    if args.likelihood:
        ll = experiment._conditional_ll(model, process, xc, yc, xt, yt, args.dataset, "interpolation")
        print(
            f"interpolation log-likelihood of the EMA network: {ll['ll']:.4f} (exact GP {exact / spec.n_target:.4f}); "
            f"{ll['diverged']} of {spec.n_test} flows diverged and are left out of the mean"
        )
    if args.split_at:
        print(f"interpolation log-likelihood of hybrid scores (exact GP {exact / spec.n_target:.4f}):")
        for tau in args.split_at:
            for below, above in (("exact", "network"), ("network", "exact")):
                hybrid = _hybrid(*((oracle, model) if below == "exact" else (model, oracle)), tau)
                ll = experiment._conditional_ll(hybrid, process, xc, yc, xt, yt, args.dataset, "interpolation")
                print(f"  {below} for t < {tau:g}, {above} above: {ll['ll']:.4f} ({ll['diverged']} diverged)", flush=True)


def _hybrid(below, above, tau: float):
    """The score ``below(t, ...)`` where ``t < tau`` and ``above(t, ...)`` elsewhere, per function."""

    def score(t, y, inputs=None, **context):
        t = torch.as_tensor(t, dtype=y.dtype, device=y.device).expand(y.shape[0])
        low, high = below(t, y, inputs=inputs).to(y.dtype), above(t, y, inputs=inputs).to(y.dtype)
        return torch.where((t < tau)[:, None, None], low, high)

    return score


if __name__ == "__main__":
    main()
