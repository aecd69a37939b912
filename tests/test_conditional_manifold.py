"""Conditional sampling of functions with values on S^2 (GeomNDP Sec. 3.4), checked against exact scores.

Data whose noised laws are known in closed form under Brownian noising at every point (heat kernel of S^2,
generator Delta/2, eigenvalues l(l+1)/2 so that E[P_l(cos d(mu, y))] = exp(-l(l+1) s / 2) under p_s(mu, .)):

- independent points, y_i ~ p_{s0}(mu, .): p_t = prod_i p_{s0 + tau(t)}(mu, .), so the conditional law of the
  targets is the per-point marginal, E[cos d] = exp(-s) and E[P_2(cos d)] = exp(-3 s) with s = s0 + tau(eps);
- a finite mixture of tracks f_k with per-point heat-kernel noise: p_t = sum_k w_k prod_i p_{s0 + tau(t)}(f_k(x_i), .),
  so given the context the targets follow the mixture with posterior weights r_k, and E[y_*] = exp(-s) sum_k r_k f_k(x_*)
  (the coordinates are l = 1 eigenfunctions).
"""

from __future__ import annotations

import math

import pytest
import torch

import geodiffusion as gd
from geodiffusion._random import randn
from geodiffusion.samplers.conditional import LangevinConditional, ReplacementConditional

F64 = torch.float64
# the default (auto) heat kernel: the eigen expansion alone cannot resolve the far tail at the times used here
# (at s = 0.06 and theta = 1.96 its terms cancel by more than 1e12, and it raises)
PROCESS = gd.build({"kind": "brownian", "manifold": {"kind": "sphere", "dim": 2}, "beta_min": 1e-3, "beta_max": 8.0})
SPHERE, HEAT = PROCESS.manifold, PROCESS.heat_kernel
EPS = 1e-3
# a cheap Langevin schedule: 40 outer steps, 25 Langevin steps at each t <= 0.1 (4 times), psi = 1
CHEAP = dict(steps=40, inner_steps=25, psi=1.0, tau=0.1, eps=EPS)
MU = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
S0 = 0.2


def independent_score(t: torch.Tensor, y: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Exact score of independent points y_i ~ p_{S0}(MU, .) noised to time t: grad log p_{S0 + tau(t)}(MU, y_i)."""
    s = (S0 + PROCESS.tau(t)).to(y)[:, None].expand(y.shape[:2])
    return HEAT.score(MU.to(y).expand(y.shape), y, s)


class _MissingHalf(LangevinConditional, register=False):
    """A broken Langevin corrector, y <- exp_y(gamma s + sqrt(gamma) xi) (the 1/2 dropped): targets p_t^2."""

    def _correct(self, ctx, y, t, dt):
        s = self.spec
        if t > s.tau:
            return y
        gamma = s.psi * ctx.g2(t) * dt
        times = torch.full((y.shape[0],), t, dtype=y.dtype)
        for _ in range(s.inner_steps):
            score = ctx.output(times, ctx.joint(y, t))[:, ctx.n_context :]
            xi = randn(y.shape, ctx.generator, dtype=y.dtype)
            y = SPHERE.exp(y, SPHERE.proj(y, gamma * score + math.sqrt(gamma) * xi))
        return y


def _legendre_z_scores(samples: torch.Tensor, s: float) -> tuple[float, float]:
    """z-scores of the sample means of P_1 and P_2 of cos d(MU, y) against exp(-s) and exp(-3 s)."""
    c = (samples @ MU).flatten()
    z = []
    for p, exact in ((c, math.exp(-s)), (1.5 * c**2 - 0.5, math.exp(-3 * s))):
        z.append(float((p.mean() - exact) / (p.std() / math.sqrt(p.numel()))))
    return z[0], z[1]


def test_langevin_conditional_with_exact_score_reproduces_the_heat_kernel_law_per_point():
    """Independent points: the targets' exact conditional law is p_{S0 + tau(eps)}(MU, .) at every point whatever the
    context; E[P_1], E[P_2] of the cosine distance are matched (1000 x 4 draws), and dropping the 1/2 of the
    Langevin drift (which targets p_t^2) is caught."""
    gen = torch.Generator().manual_seed(0)
    xc = torch.tensor([[0.1], [0.5]], dtype=F64)
    yc = HEAT.sample(MU.expand(2, 3), torch.full((2,), S0, dtype=F64), gen)
    x = torch.linspace(0.0, 1.0, 4, dtype=F64)[:, None]
    kwargs = dict(context_inputs=xc, context_values=yc, n_samples=1000)
    s = S0 + float(PROCESS.tau(EPS))
    samples = LangevinConditional(**CHEAP).sample(
        independent_score, PROCESS, x, generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert samples.shape == (1000, 4, 3) and samples.dtype == F64
    assert bool(SPHERE.belongs(samples, atol=1e-6).all())
    z1, z2 = _legendre_z_scores(samples, s)
    assert abs(z1) < 4 and abs(z2) < 4, (z1, z2)
    broken = _MissingHalf(**CHEAP).sample(independent_score, PROCESS, x, generator=torch.Generator().manual_seed(1), **kwargs)
    z1_broken, _ = _legendre_z_scores(broken, s)
    assert z1_broken > 10, z1_broken  # too concentrated around MU


# --- a mixture of phase-shifted tracks: the context decides the phase -------------------------------------------

ALPHAS = torch.linspace(-0.6, 0.6, 7, dtype=F64)
S0_MIX = 0.05


def _tracks(x: torch.Tensor) -> torch.Tensor:
    """f_k(x) [K, n, 3]: a tilted great circle run at unit speed from phase alpha_k (spacing 0.2 < the noise 0.22)."""
    phase = x[None, :, 0] + ALPHAS[:, None]
    return torch.stack([torch.cos(phase), 0.8 * torch.sin(phase), 0.6 * torch.sin(phase)], -1)


def mixture_score(t: torch.Tensor, y: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Exact score of the equal-weight mixture of the tracks with per-point noise p_{S0_MIX}: responsibilities
    r_k(y) from prod_i p_{S0_MIX + tau(t)}(f_k(x_i), y_i) times the per-component heat-kernel scores."""
    f = _tracks(inputs[0])
    batch, n = y.shape[:2]
    s = (S0_MIX + PROCESS.tau(t)).to(y)[:, None, None].expand(batch, len(ALPHAS), n)
    f = f[None].expand(batch, -1, -1, -1)
    yk = y[:, None].expand_as(f)
    r = torch.softmax(HEAT.log_prob(f, yk, s).sum(-1), -1)
    return (r[..., None, None] * HEAT.score(f, yk, s)).sum(1)


def test_langevin_conditional_follows_the_context_of_a_mixture_and_replacement_does_not():
    """The context (two points on the track of phase 0.4) fixes the posterior weights r_k; the sample mean of the
    targets must match exp(-s) sum_k r_k f_k(x_*) (500 draws), while the replacement scheme, which does not condition
    the targets on the context, lands far from it (closer to the prior mean)."""
    xc = torch.tensor([[0.0], [0.3]], dtype=F64)
    x = torch.tensor([[0.6], [1.2]], dtype=F64)
    yc = _tracks(xc)[5]
    log_w = HEAT.log_prob(_tracks(xc), yc.expand(len(ALPHAS), 2, 3), torch.full((len(ALPHAS), 2), S0_MIX, dtype=F64))
    r = torch.softmax(log_w.sum(-1), 0)
    mean = math.exp(-(S0_MIX + float(PROCESS.tau(EPS)))) * (r[:, None, None] * _tracks(x)).sum(0)
    kwargs = dict(context_inputs=xc, context_values=yc, n_samples=500)

    def max_z(samples: torch.Tensor) -> float:
        flat = samples.flatten(1)
        return float(((flat.mean(0) - mean.flatten()) / (flat.var(0) / flat.shape[0]).sqrt()).abs().max())

    gen = torch.Generator().manual_seed(2)
    langevin = LangevinConditional(**CHEAP).sample(mixture_score, PROCESS, x, generator=gen, **kwargs)
    assert bool(SPHERE.belongs(langevin, atol=1e-6).all())
    assert max_z(langevin) < 4.5, max_z(langevin)
    replaced = ReplacementConditional(steps=40, eps=EPS).sample(
        mixture_score, PROCESS, x, generator=torch.Generator().manual_seed(2), **kwargs
    )
    assert max_z(replaced) > 6, max_z(replaced)


@pytest.mark.parametrize(
    "sampler",
    [
        LangevinConditional(steps=6, inner_steps=2, tau=None, psi=1.0, eps=0.0),
        LangevinConditional(steps=5, inner_steps=2, reverse="ode", preconditioner="identity"),
        ReplacementConditional(steps=5),
    ],
    ids=["langevin-eps0", "langevin-ode", "replacement"],
)
def test_samples_lie_on_the_sphere_and_follow_the_inputs_dtype(sampler):
    x = torch.linspace(0.0, 1.0, 3, dtype=torch.float32)[:, None]
    xc = torch.tensor([[0.25]], dtype=torch.float32)
    yc = torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    out = sampler.sample(independent_score, PROCESS, x, context_inputs=xc, context_values=yc, n_samples=5, generator=gen)
    assert out.shape == (5, 3, 3) and out.dtype == torch.float32
    assert bool(SPHERE.belongs(out, atol=1e-6).all())
    unconditional = sampler.sample(independent_score, PROCESS, x, n_samples=2, generator=gen)
    assert unconditional.shape == (2, 3, 3) and bool(SPHERE.belongs(unconditional, atol=1e-6).all())


def test_bad_context_on_a_manifold_is_rejected_before_work():
    calls = []

    def score(t, y, inputs):
        calls.append(1)
        return independent_score(t, y, inputs)

    sampler = LangevinConditional(steps=2, inner_steps=1)
    x = torch.tensor([[0.5]], dtype=F64)
    xc = torch.tensor([[0.0], [1.0]], dtype=F64)
    good = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64)
    cases = [
        (dict(context_values=torch.tensor([[0.0, 0.0, 1.1], [1.0, 0.0, 0.0]], dtype=F64)), "1 of 2 values are not on Sphere"),
        (dict(context_values=good[:, :2]), r"context_values: expected \[2, 3\]"),
        (dict(context_values=good[:1]), r"context_values: expected \[2, 3\]"),
        (dict(context_values=good.clone().fill_(float("nan"))), "context_values: expected finite"),
        (dict(context_values=good.float()), "dtype"),
        (dict(context_inputs=xc[:, None]), "context_inputs: expected"),
        (dict(context_values=None), "pass both or neither"),
    ]
    for change, message in cases:
        kwargs = dict(context_inputs=xc, context_values=good) | change
        with pytest.raises(ValueError, match=message):
            sampler.sample(score, PROCESS, x, **kwargs)
    assert not calls  # every check ran before the first score evaluation
    with pytest.raises(ValueError, match="score output: expected the shape"):
        sampler.sample(lambda t, y, inputs: y[..., :2], PROCESS, x, context_inputs=xc, context_values=good)
    with pytest.raises(ValueError, match="OUGaussianProcess or a process on a manifold"):
        sampler.sample(score, gd.VPProcess(), x)
