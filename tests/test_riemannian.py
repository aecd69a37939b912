"""Riemannian diffusion: Brownian noising, tangent score models, Riemannian DSM, geodesic samplers and NLL.

The oracle is exact and needs no training: for data drawn from a heat kernel p_{s0}(mu, .) (a point mass when
s0 = 0) every noised marginal is the heat kernel p_{s0 + tau(t)}(mu, .), whose score and density are known.
"""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from scipy.stats import ks_2samp

import geodiffusion as gd
from geodiffusion.models.tangent import TangentMLP
from geodiffusion.processes.riemannian import BrownianProcess, HeatKernelScore
from geodiffusion.samplers.riemannian import ChartODEOptions, riemannian_divergence, riemannian_log_likelihood
from geodiffusion.testing import CheckError, check_process, tolerance
from geodiffusion.training.riemannian import riemannian_dsm_loss

F64 = torch.float64
# the smallest KS p-value accepted from seeded two-sample tests (a 1-in-1000 event under the null)
KS_LEVEL = 1e-3
S2 = {"kind": "sphere", "dim": 2}
S1 = {"kind": "sphere", "dim": 1}
T2 = {"kind": "torus", "dim": 2}


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _process(manifold: dict, beta_max: float = 10.0) -> BrownianProcess:
    return gd.build({"kind": "brownian", "manifold": manifold, "beta_max": beta_max})


def _oracle(process: BrownianProcess, s0: float, seed: int = 3) -> HeatKernelScore:
    mu = process.manifold.random_point(1, _gen(seed), dtype=F64)[0]
    return HeatKernelScore(process, mu, s0=s0)


def _dist_to_mu(oracle: HeatKernelScore, x: torch.Tensor) -> torch.Tensor:
    return oracle.process.manifold.dist(oracle.mu.expand_as(x), x)


def _exact_draws(oracle: HeatKernelScore, t: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """Exact draws of the data law noised to time t: p_{s0 + tau(t)}(mu, .)."""
    mu = oracle.mu.expand((n,) + tuple(oracle.mu.shape))
    return oracle.process.heat_kernel.sample(mu, oracle.time(torch.full((n,), t, dtype=F64)), gen)


# --- the process ------------------------------------------------------------------------------------------


def test_tau_is_integral_of_beta_and_marginal_is_heat_kernel_at_tau():
    process = _process(S2, beta_max=7.0)
    t = torch.linspace(0.0, 1.0, 2001, dtype=F64)
    quadrature = torch.cumulative_trapezoid(process.beta(t), t)
    torch.testing.assert_close(process.tau(t[1:]), quadrature, rtol=1e-6, atol=1e-9)
    x0 = process.manifold.random_point(5, _gen(1), dtype=F64)
    x = process.manifold.random_point(5, _gen(2), dtype=F64)
    ts = torch.linspace(0.1, 0.9, 5, dtype=F64)
    expected = process.heat_kernel.log_prob(x0, x, process.tau(ts))
    torch.testing.assert_close(process.marginal(x0, ts).log_prob(x), expected, rtol=0, atol=tolerance(F64, "exact"))
    torch.testing.assert_close(process.diffusion(ts) ** 2, process.beta(ts))


def test_prior_is_uniform_with_log_volume():
    process = _process(S2)
    prior = process.prior((7, 3), dtype=F64)
    x = prior.sample(_gen())
    assert x.shape == (7, 3) and bool(process.manifold.belongs(x).all())
    torch.testing.assert_close(prior.log_prob(x), torch.full((7,), -math.log(4 * math.pi), dtype=F64))
    torus_prior = _process(T2).prior((4, 2), dtype=F64)
    torch.testing.assert_close(
        torus_prior.log_prob(torus_prior.sample(_gen())), torch.full((4,), -2 * math.log(2 * math.pi), dtype=F64)
    )


def test_spec_rejects_noncompact_manifold_and_unordered_betas():
    with pytest.raises(ValidationError, match="manifold"):
        BrownianProcess.Spec(manifold={"kind": "euclidean", "dim": 2})
    with pytest.raises(ValidationError, match="beta_max"):
        BrownianProcess.Spec(manifold=S2, beta_min=2.0, beta_max=1.0)


def test_marginal_rejects_point_mass_time_and_times_beyond_T():
    process = _process(S2)
    x0 = process.manifold.random_point(3, _gen(), dtype=F64)
    with pytest.raises(ValueError, match="point mass"):
        process.marginal(x0, 0.0)
    with pytest.raises(ValueError, match="expected times"):
        process.marginal(x0, 1.5)


class _DoubledDiffusion(BrownianProcess, register=False):
    """Claims g = 2 sqrt(beta) while its marginals are those of g = sqrt(beta)."""

    def diffusion(self, t):
        return 2 * super().diffusion(t)


class _WrongScore(BrownianProcess, register=False):
    """The marginal's score is that of the wrong time."""

    def marginal(self, x0, t):
        marginal = super().marginal(x0, t)
        marginal.score = lambda x: self.heat_kernel.score(x0, x, 2 * marginal.tau)
        return marginal


@pytest.mark.parametrize(("cls", "identity"), [(_DoubledDiffusion, "Fokker-Planck"), (_WrongScore, "grad log marginal")])
def test_check_process_catches_broken_manifold_processes(cls, identity):
    check_process(_process(S2), n_mc=500)  # the unbroken process passes
    with pytest.raises(CheckError, match=identity):
        check_process(cls(manifold=S2), n_mc=500)


# --- divergence -------------------------------------------------------------------------------------------


def test_riemannian_divergence_of_gradient_of_linear_function_on_sphere():
    # f(x) = <a, x> on S^n has grad f = P_x a and Laplacian -n f: div(P_x a) = -n <a, x>
    sphere = gd.build({"kind": "sphere", "dim": 3})
    a = torch.tensor([0.3, -1.2, 0.5, 2.0], dtype=F64)
    x = sphere.random_point(6, _gen(), dtype=F64).requires_grad_(True)
    div = riemannian_divergence(sphere, sphere.proj(x, a.expand_as(x)), x)
    torch.testing.assert_close(div, -3 * (x.detach() * a).sum(-1), rtol=0, atol=tolerance(F64, "autograd"))


def test_hutchinson_divergence_is_unbiased():
    sphere = gd.build(S2)
    a = torch.tensor([0.3, -1.2, 0.5], dtype=F64)
    x = sphere.random_point(1, _gen(), dtype=F64).expand(20000, 3).clone().requires_grad_(True)
    field = sphere.proj(x, a.expand_as(x) * x[:, :1] ** 2)  # a non-gradient, x-dependent tangent field
    exact = riemannian_divergence(sphere, field, x)
    probes = torch.randint(0, 2, x.shape, generator=_gen(1)).to(F64) * 2 - 1
    estimates = riemannian_divergence(sphere, field, x, probes)
    se = estimates.std() / math.sqrt(len(estimates))
    assert abs(float(estimates.mean() - exact[0])) < 4 * float(se)


# --- samplers with the exact score --------------------------------------------------------------------------


SAMPLER_CASES = [
    pytest.param(S2, 10.0, {"kind": "geodesic_euler_maruyama", "steps": 100}, id="s2-sde"),
    pytest.param(S2, 10.0, {"kind": "riemannian_probability_flow", "steps": 20}, id="s2-ode"),
    pytest.param(T2, 20.0, {"kind": "geodesic_euler_maruyama", "steps": 100}, id="t2-sde"),
    pytest.param(T2, 20.0, {"kind": "riemannian_probability_flow", "steps": 20}, id="t2-ode"),
]


@pytest.mark.parametrize(("manifold", "beta_max", "sampler_spec"), SAMPLER_CASES)
def test_sampler_with_exact_score_reproduces_heat_kernel_target_on_the_manifold(manifold, beta_max, sampler_spec):
    process = _process(manifold, beta_max)
    oracle = _oracle(process, s0=0.2)
    sampler = gd.build(sampler_spec)
    n = 1500
    x = sampler.sample(oracle, process, (n,) + process.manifold.point_shape, generator=_gen(0), dtype=F64)
    assert bool(process.manifold.belongs(x, atol=1e-6).all()), "samples left the manifold"
    reference = _exact_draws(oracle, sampler.spec.eps, n, _gen(1))
    p_value = ks_2samp(_dist_to_mu(oracle, x).numpy(), _dist_to_mu(oracle, reference).numpy()).pvalue
    assert p_value > KS_LEVEL, f"KS p-value {p_value:.2e} of d(mu, x) against the exact law"


def test_sde_sampler_ks_test_detects_the_wrong_target():
    # the same test has power: samples driven by the score of a wider target fail it
    process = _process(S2)
    wrong = _oracle(process, s0=0.35)
    x = gd.build({"kind": "geodesic_euler_maruyama", "steps": 100}).sample(
        wrong, process, (1500, 3), generator=_gen(0), dtype=F64
    )
    reference = _exact_draws(_oracle(process, s0=0.2), 1e-3, 1500, _gen(1))
    assert ks_2samp(_dist_to_mu(wrong, x).numpy(), _dist_to_mu(wrong, reference).numpy()).pvalue < KS_LEVEL


def test_float32_samples_stay_on_the_sphere():
    process = _process(S2)
    oracle = _oracle(process, s0=0.2)
    for spec in ({"kind": "geodesic_euler_maruyama", "steps": 50}, {"kind": "riemannian_probability_flow", "steps": 10}):
        x = gd.build(spec).sample(oracle, process, (200, 3), generator=_gen(0), dtype=torch.float32)
        assert x.dtype == torch.float32 and bool(process.manifold.belongs(x, atol=1e-6).all())


def test_probability_flow_is_deterministic_given_x_T():
    process = _process(T2, 20.0)
    oracle = _oracle(process, s0=0.2)
    x_T = process.prior((50, 2), dtype=F64).sample(_gen())
    sampler = gd.build({"kind": "riemannian_probability_flow", "steps": 10})
    a = sampler.sample(oracle, process, (50, 2), x_T=x_T)
    b = sampler.sample(oracle, process, (50, 2), x_T=x_T.clone())
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- every iterate on the manifold ------------------------------------------------------------------------------

# The target: every sample and every intermediate state on M to 1e-6, in float32 and float64. Measured worst defects
# (max |x^H x - I|, |det x - 1|, ||x| - 1|) over all iterates below: float64 <= 2.6e-15, float32 <= 2.5e-7.
ON_MANIFOLD_ATOL = 1e-6
SO3 = {"kind": "so3"}
SU3 = {"kind": "su", "n": 3}
S127 = {"kind": "sphere", "dim": 127}
SO3_2 = {"kind": "product", "factor": SO3, "power": 2}
SU3_2 = {"kind": "product", "factor": SU3, "power": 2}
S2_SO3 = {"kind": "mixed_product", "factors": [{"kind": "sphere", "dim": 2}, SO3]}
SU3_S2 = {"kind": "mixed_product", "factors": [SU3, {"kind": "sphere", "dim": 2}]}
# RK4 evaluates the score at four stage points per chart, the SDE at one iterate per step. Data p_{s0}(mu, .): on
# S^127 s0 = 0.005 (at s0 = 0.2 the law would be uniform to e^{-127 s0 / 2} and the samples would hardly move; here
# they travel from d(mu, x) = pi/2 to about 1.0)
ITERATE_SAMPLERS = {
    "sde": ({"kind": "geodesic_euler_maruyama", "steps": 20}, 20),
    "ode": ({"kind": "riemannian_probability_flow", "steps": 5}, 4 * 5),
}
# SU(n) float32 probability flow: an RK stage a few ulps from its chart centre (|u| ~ 4e-9) used to differentiate
# SU.log through torch.linalg.eig at x^H y ~ I, whose eigenvalues coincide, and turned NaN; the chart velocity now
# uses the Bernoulli series of d(log_x) there (SU.log_differential)
ITERATE_CASES = [
    pytest.param(
        manifold,
        beta_max,
        s0,
        sampler,
        dtype,
        id=f"{name}-{kind}-{str(dtype)[6:]}",
    )
    for name, manifold, beta_max, s0 in [
        ("so3", SO3, 30.0, 0.2),
        ("su3", SU3, 30.0, 0.2),
        ("s127", S127, 10.0, 0.005),
        ("so3^2", SO3_2, 30.0, 0.2),
        ("su3^2", SU3_2, 30.0, 0.2),
        ("s2xso3", S2_SO3, 30.0, 0.2),
        ("su3xs2", SU3_S2, 30.0, 0.2),
    ]
    for kind, sampler in ITERATE_SAMPLERS.items()
    for dtype in (F64, torch.float32)
]


class _RecordingScore:
    """A score that keeps every point it is evaluated at: each iterate of the reverse SDE, each Runge-Kutta stage
    point exp_{x_k}(u) of the probability flow (the samplers expose no trajectory; this is where it is visible)."""

    def __init__(self, score):
        self.score, self.points = score, []

    def __call__(self, t, x):
        self.points.append(x.detach().clone())
        return self.score(t, x)


def _off_manifold_message(manifold, points: torch.Tensor) -> str:
    off = ~manifold.belongs(points, atol=ON_MANIFOLD_ATOL)
    return f"{int(off.sum())} of {len(points)} iterates are off {type(manifold).__name__} by more than {ON_MANIFOLD_ATOL}"


@pytest.mark.parametrize(("manifold", "beta_max", "s0", "sampler", "dtype"), ITERATE_CASES)
def test_every_iterate_of_the_exact_score_samplers_lies_on_the_manifold(manifold, beta_max, s0, sampler, dtype):
    spec, evaluations = sampler
    process = _process(manifold, beta_max)
    score = _RecordingScore(_oracle(process, s0=s0))
    x = gd.build(spec).sample(score, process, (32,) + process.manifold.point_shape, generator=_gen(0), dtype=dtype)
    assert x.real.dtype == dtype and len(score.points) == evaluations
    trajectory = torch.cat(score.points + [x])
    assert bool(process.manifold.belongs(trajectory, atol=ON_MANIFOLD_ATOL).all()), _off_manifold_message(
        process.manifold, trajectory
    )


@pytest.mark.parametrize("manifold", [pytest.param(SO3, id="so3"), pytest.param(SU3_2, id="su3^2")])
def test_a_500_step_float32_geodesic_walk_does_not_accumulate_rounding_off_the_manifold(manifold):
    # uniform data: every marginal is uniform and the exact score is 0, so the sampler is a geodesic random walk
    # of the default 500 steps. exp re-projects its output (Newton-Schulz): without that the defect grows to
    # 2.4e-6 on SO(3) and 1.8e-6 on SU(3)^2 (measured); with it the worst iterate is 2.5e-7 off
    process = _process(manifold, 30.0)
    score = _RecordingScore(lambda t, x: torch.zeros_like(x))
    sampler = gd.build({"kind": "geodesic_euler_maruyama", "steps": 500})
    x = sampler.sample(score, process, (16,) + process.manifold.point_shape, generator=_gen(0), dtype=torch.float32)
    trajectory = torch.cat(score.points + [x])
    assert len(trajectory) == 501 * 16
    assert bool(process.manifold.belongs(trajectory, atol=ON_MANIFOLD_ATOL).all()), _off_manifold_message(
        process.manifold, trajectory
    )


# --- likelihoods --------------------------------------------------------------------------------------------

# Worst |log p - exact| on these 12 points, RK4 in 10 / 20 / 40 charts (fourth order): S^2 1.0e-2 / 5.5e-4 / 2.9e-5,
# S^1 1.0e-2 / 5.3e-4 / 4.8e-5, T^2 5.1e-2 / 8.3e-4 / 1.3e-4, S^2 x S^1 2.0e-2 / 1.6e-3 / 8.8e-5. beta_max makes the
# prior mismatch e^{-lambda_1 tau(T)} negligible (lambda_1 = 1/2 on S^1 and T^2). The tolerance allows 1.3x the worst
# error at 20 charts (S^2 x S^1), whose 18-fold drop at 40 charts shows it is the integrator's.
NLL_TOL = 2e-3
NLL_CASES = [
    pytest.param(S2, 30.0, id="s2"),
    pytest.param(S1, 50.0, id="s1"),
    pytest.param(T2, 50.0, id="t2"),
    pytest.param({"kind": "mixed_product", "factors": [S2, S1]}, 50.0, id="s2xs1"),
]


@pytest.mark.parametrize(("manifold", "beta_max"), NLL_CASES)
def test_probability_flow_nll_with_exact_score_matches_heat_kernel_density(manifold, beta_max):
    process = _process(manifold, beta_max)
    oracle = _oracle(process, s0=0.2)
    x = oracle.sample_data(12, _gen(0))
    options = ChartODEOptions(steps=20)
    log_p = riemannian_log_likelihood(oracle, process, x, options=options)
    exact = oracle.log_prob(torch.tensor(options.eps, dtype=F64), x)
    assert float((log_p - exact).abs().max()) < NLL_TOL


def test_geodesic_euler_flow_converges_at_first_order():
    # the NLL error of the one-stage (geodesic Euler) flow halves when the step halves
    process = _process(S2, 30.0)
    oracle = _oracle(process, s0=0.2)
    x = oracle.sample_data(8, _gen(0))
    exact = oracle.log_prob(torch.tensor(1e-3, dtype=F64), x)
    errors = [
        float(
            (riemannian_log_likelihood(oracle, process, x, options=ChartODEOptions(method="euler", steps=k)) - exact).abs().max()
        )
        for k in (20, 40)
    ]
    assert 1.6 < errors[0] / errors[1] < 2.4


def test_log_likelihood_rejects_points_off_the_manifold():
    process = _process(S2)
    with pytest.raises(ValueError, match="not on Sphere"):
        riemannian_log_likelihood(_oracle(process, 0.2), process, torch.full((2, 3), 0.9, dtype=F64))


# Hutchinson's NLL on S^15 (ambient 16) against the exact divergence along the same flow and the heat-kernel density.
# The flow does not depend on the probe, so each estimate is the exact one plus a zero-mean quadratic form of the probe:
# with one Rademacher probe per copy of a point, K copies give a mean with standard error std / sqrt(K). Measured
# (K = 64, 20 charts, 8 points): single-probe std 0.08-0.27 nats; |mean - exact| <= 1.5 standard errors (max 0.052 nats);
# |exact - truth| <= 1.7e-4; other probe seeds (2-6) give max 1.4-2.7 standard errors. Under unbiasedness a point
# leaves the 4-standard-error band with probability 1.7e-4 (t with 63 degrees of freedom), one of 8 with 1.4e-3.
HUTCHINSON_PROBES = 64
HUTCHINSON_SE = 4.0


@pytest.fixture(scope="module")
def s15_likelihoods():
    """The S^15 oracle's points, their true log-density at eps, the exact-divergence NLL and K Hutchinson estimates."""
    process = _process({"kind": "sphere", "dim": 15}, 10.0)
    oracle = _oracle(process, s0=0.2)
    x = oracle.sample_data(8, _gen(0))
    options = ChartODEOptions(steps=20)
    truth = oracle.log_prob(torch.tensor(options.eps, dtype=F64), x)
    exact = riemannian_log_likelihood(oracle, process, x, options=options, estimator="exact")

    def hutchinson(probes: int = 1):
        copies = x.repeat(HUTCHINSON_PROBES, 1)
        opts = options.model_copy(update={"hutchinson_probes": probes})
        log_p = riemannian_log_likelihood(oracle, process, copies, options=opts, estimator="hutchinson", generator=_gen(1))
        return log_p.reshape(HUTCHINSON_PROBES, len(x))

    return {"truth": truth, "exact": exact, "hutchinson": hutchinson}


def _hutchinson_band(estimates: torch.Tensor, reference: torch.Tensor, slack: float = 0.0) -> torch.Tensor:
    """Per point: is the mean of the K estimates within HUTCHINSON_SE standard errors (plus ``slack``) of ``reference``?"""
    se = estimates.std(0) / math.sqrt(len(estimates))
    return (estimates.mean(0) - reference).abs() <= HUTCHINSON_SE * se + slack


def test_hutchinson_nll_is_unbiased_for_the_exact_divergence_nll_and_the_true_density(s15_likelihoods):
    truth, exact = s15_likelihoods["truth"], s15_likelihoods["exact"]
    estimates = s15_likelihoods["hutchinson"]()
    assert float((exact - truth).abs().max()) < NLL_TOL
    assert bool((estimates.std(0) > 0).all()), "the Hutchinson estimates do not vary with the probe"
    assert bool(_hutchinson_band(estimates, exact).all()), f"means {estimates.mean(0)} vs exact {exact}"
    assert bool(_hutchinson_band(estimates, truth, slack=NLL_TOL).all()), f"means {estimates.mean(0)} vs truth {truth}"


def test_several_hutchinson_probes_average_the_single_probe_divergences():
    sphere = gd.build(S2)
    a = torch.tensor([0.3, -1.2, 0.5], dtype=F64)
    x = sphere.random_point(5, _gen(), dtype=F64).requires_grad_(True)
    field = sphere.proj(x, a.expand_as(x) * x[:, :1] ** 2)
    probes = torch.randint(0, 2, (4,) + tuple(x.shape), generator=_gen(1)).to(F64) * 2 - 1
    single = torch.stack([riemannian_divergence(sphere, field, x, z) for z in probes])
    torch.testing.assert_close(riemannian_divergence(sphere, field, x, probes), single.mean(0), rtol=0, atol=1e-13)


def test_more_hutchinson_probes_shrink_the_nll_spread_without_bias(s15_likelihoods):
    # m probes average m independent quadratic forms: the spread over copies falls as 1/sqrt(m) (measured ratio of the
    # per-point standard deviations, m = 8 against 1: 0.25-0.43), and the mean stays on the exact-divergence NLL
    single = s15_likelihoods["hutchinson"]()
    several = s15_likelihoods["hutchinson"](probes=8)
    ratio = several.std(0) / single.std(0)
    assert bool(((ratio > 0.2) & (ratio < 0.55)).all()), ratio
    assert bool(_hutchinson_band(several, s15_likelihoods["exact"]).all()), f"means {several.mean(0)}"


def test_hutchinson_nll_band_rejects_probes_with_second_moment_1_1(s15_likelihoods, monkeypatch):
    # the same check has power: probes scaled by sqrt(1.1) (E zz^T = 1.1 I) inflate every divergence by 10%, which
    # moves each mean by 0.1 (log p - log pi), 0.04-0.22 nats here: measured 3.4-9.2 standard errors, 5 of the 8
    # points leave the band (a 5% inflation still moves one point 5.4 standard errors out)
    import geodiffusion.samplers.riemannian as module

    divergence = module.riemannian_divergence

    def inflated(manifold, v, x, probes=None):
        return divergence(manifold, v, x, None if probes is None else math.sqrt(1.1) * probes)

    monkeypatch.setattr(module, "riemannian_divergence", inflated)
    estimates = s15_likelihoods["hutchinson"]()
    assert not bool(_hutchinson_band(estimates, s15_likelihoods["exact"]).all())


# --- denoising score matching -------------------------------------------------------------------------------


@pytest.mark.parametrize("manifold", [S2, T2])
def test_dsm_loss_vanishes_at_the_exact_score_of_point_data(manifold):
    process = _process(manifold)
    oracle = _oracle(process, s0=0.0)
    x0 = oracle.sample_data(256)
    exact = riemannian_dsm_loss(oracle, process, x0, generator=_gen(0))
    wrong = riemannian_dsm_loss(lambda t, x: 1.1 * oracle(t, x), process, x0, generator=_gen(0))
    assert float(exact) < 1e-20
    assert float(wrong) > 1e-3


def test_dsm_loss_is_minimal_at_the_exact_marginal_score():
    # L(s) - L(s*) = E lambda |s - s*|^2 (the cross term has mean zero); same t and noise for every s
    process = _process(S2)
    oracle = _oracle(process, s0=0.3)
    x0 = oracle.sample_data(4000, _gen(0))
    best = riemannian_dsm_loss(oracle, process, x0, generator=_gen(1))
    for factor in (0.8, 1.2):
        worse = riemannian_dsm_loss(lambda t, x, f=factor: f * oracle(t, x), process, x0, generator=_gen(1))
        assert float(worse) > float(best) > 0


def test_dsm_loss_rejects_euclidean_processes_and_off_manifold_data():
    with pytest.raises(ValueError, match="manifold"):
        riemannian_dsm_loss(lambda t, x: x, gd.build({"kind": "vp"}), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="not on Sphere"):
        riemannian_dsm_loss(lambda t, x: x, _process(S2), torch.ones(4, 3))


# --- the tangent score model and training ----------------------------------------------------------------------


def test_tangent_mlp_outputs_tangent_vectors_scaled_by_sigma():
    torch.manual_seed(0)
    process = _process(S2)
    model = TangentMLP(manifold=S2, hidden=16, depth=1, process=process.spec).double()
    plain = TangentMLP(manifold=S2, hidden=16, depth=1).double()
    plain.load_state_dict(model.state_dict())
    x = process.manifold.random_point(6, _gen(), dtype=F64)
    t = torch.linspace(0.1, 1.0, 6, dtype=F64)
    out = model(t, x)
    torch.testing.assert_close(process.manifold.proj(x, out), out, rtol=0, atol=tolerance(F64, "exact"))
    torch.testing.assert_close(out * process.sigma(t)[:, None], plain(t, x), rtol=1e-12, atol=1e-12)


def test_tangent_mlp_rejects_a_process_on_another_manifold():
    with pytest.raises(ValidationError, match="process"):
        TangentMLP.Spec(manifold=S2, process={"kind": "brownian", "manifold": T2})


def test_trainer_fits_a_tangent_model_with_brownian_noising():
    process = _process(S2)
    data = _oracle(process, s0=0.1).sample_data(64, _gen(0)).float()
    model = TangentMLP(manifold=S2, hidden=16, depth=1, process=process.spec)
    trainer = gd.training.Trainer(model, process, data, {"steps": 5, "batch_size": 32, "weighting": "none"}, progress=False)
    history = trainer.fit()
    assert len(history) == 5 and all(math.isfinite(v) for v in history)


def test_short_training_on_s2_beats_the_uniform_density():
    # a concentrated heat-kernel (vMF-like) target on S^2: its NLL is ~0.6 nats, the uniform law's log(4 pi) = 2.53
    torch.manual_seed(0)
    process = _process(S2)
    oracle = _oracle(process, s0=0.1)
    data = oracle.sample_data(2048, _gen(0)).float()
    model = TangentMLP(manifold=S2, hidden=64, depth=2, process=process.spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = _gen(1)
    for _ in range(150):
        batch = data[torch.randint(0, len(data), (128,), generator=gen)]
        loss = riemannian_dsm_loss(model, process, batch, generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = oracle.sample_data(64, _gen(2)).float()
    with torch.no_grad():
        nll = -riemannian_log_likelihood(model, process, test, options=ChartODEOptions(steps=20)).mean()
    exact_nll = -oracle.log_prob(torch.tensor(1e-3, dtype=F64), test.double()).mean()
    assert float(nll) < math.log(4 * math.pi) - 1.0, f"NLL {float(nll):.3f} vs uniform {math.log(4 * math.pi):.3f}"
    assert float(nll) > float(exact_nll) - 0.3, f"NLL {float(nll):.3f} below the true NLL {float(exact_nll):.3f}"


# --- complex points: SU(2) ------------------------------------------------------------------------------------

SU2 = {"kind": "su", "n": 2}


@pytest.fixture(scope="module")
def su2_process():
    import geodiffusion.manifolds.lie  # noqa: F401  (registers so3 / su)

    return _process(SU2, beta_max=30.0)


def test_brownian_process_on_su2_passes_check_process(su2_process):
    check_process(su2_process, n_mc=500)


def test_samplers_and_nll_on_su2_with_exact_score(su2_process):
    oracle = _oracle(su2_process, s0=0.2)
    manifold = su2_process.manifold
    x = gd.build({"kind": "geodesic_euler_maruyama", "steps": 100}).sample(
        oracle, su2_process, (600, 2, 2), generator=_gen(0), dtype=F64
    )
    assert x.is_complex() and bool(manifold.belongs(x, atol=1e-6).all())
    reference = _exact_draws(oracle, 1e-3, 600, _gen(1))
    assert ks_2samp(_dist_to_mu(oracle, x).numpy(), _dist_to_mu(oracle, reference).numpy()).pvalue > KS_LEVEL
    # three points: an odd batch also exercises complex charts whose solver output sits at an odd offset;
    # measured worst error with 8 / 12 / 20 charts: 6.0e-3 / 1.6e-3 / 1.9e-4 (the divergence costs 8 backward passes)
    data = oracle.sample_data(3, _gen(2))
    log_p = riemannian_log_likelihood(oracle, su2_process, data, options=ChartODEOptions(steps=12))
    assert float((log_p - oracle.log_prob(torch.tensor(1e-3, dtype=F64), data)).abs().max()) < 5e-3


def test_tangent_mlp_and_dsm_loss_on_su2(su2_process):
    torch.manual_seed(0)
    model = TangentMLP(manifold=SU2, hidden=16, depth=1, process=su2_process.spec).double()
    x = su2_process.manifold.random_point(5, _gen(), dtype=F64)
    out = model(torch.full((5,), 0.5, dtype=F64), x)
    assert out.is_complex() and out.shape == x.shape
    torch.testing.assert_close(su2_process.manifold.proj(x, out), out, rtol=0, atol=tolerance(F64, "exact"))
    oracle = _oracle(su2_process, s0=0.0)
    x0 = oracle.sample_data(64)
    assert float(riemannian_dsm_loss(oracle, su2_process, x0, generator=_gen(0))) < 1e-20
    loss = riemannian_dsm_loss(model, su2_process, x0, generator=_gen(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in model.parameters())
