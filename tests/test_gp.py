"""OU process to a GP: closed-form marginals against torch and simulation, score parametrisations, the exact
GP oracle, conditional sampling against the exact GP posterior, and probability-flow likelihoods."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch
import torchsde
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.kernels import Matern52
from geodiffusion.processes.gp import OUGaussianProcess, gaussian_conditional
from geodiffusion.samplers.conditional import (
    LangevinConditional,
    ReplacementConditional,
    conditional_log_likelihood,
    marginal_log_likelihood,
)
from geodiffusion.samplers.ode import ODEOptions
from geodiffusion.testing import tolerance
from geodiffusion.testing.oracles import GPScore, moment_z_scores

F64 = torch.float64
NOISY_SE = {
    "kind": "kernel_sum",
    "kernels": [{"kind": "squared_exponential", "lengthscale": 0.5}, {"kind": "white_noise", "variance": 0.05}],
}
PARAMETRISATIONS = ["plain", "kernel_preconditioned", "st_preconditioned"]


def _inputs(n: int, seed: int, m: int = 1) -> torch.Tensor:
    return 2 * torch.rand(n, m, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1


def test_marginal_is_the_stated_gaussian():
    process = OUGaussianProcess(kernel={"kind": "curl_free"}, mean=0.3, beta_min=0.2, beta_max=12.0)
    x = _inputs(4, 0, m=2)
    y0 = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    law = process.marginal(y0, t, inputs=x)
    y = law.sample(torch.Generator().manual_seed(2))
    big_b = 0.2 * t + 0.5 * 11.8 * t**2
    mean = 0.3 + torch.exp(-big_b / 2)[:, None, None] * (y0 - 0.3)
    cov = (1 - torch.exp(-big_b))[:, None, None] * (process.kernel.gram(x) + 1e-6 * torch.eye(8, dtype=F64))
    reference = torch.distributions.MultivariateNormal(mean.flatten(1), covariance_matrix=cov)
    torch.testing.assert_close(law.log_prob(y), reference.log_prob(y.flatten(1)), atol=1e-9, rtol=1e-12)
    prior = process.prior((3, 4, 2), inputs=x, dtype=F64)
    limit = torch.distributions.MultivariateNormal(
        torch.full((8,), 0.3, dtype=F64), covariance_matrix=cov[0] / (1 - torch.exp(-big_b[0]))
    )
    torch.testing.assert_close(prior.log_prob(y), limit.log_prob(y.flatten(1)), atol=1e-9, rtol=1e-12)


def test_marginal_matches_simulated_forward_sde_with_kernel_noise():
    """Euler-Maruyama on dY = -1/2 beta (Y - m) dt + sqrt(beta) L dW (torchsde, general noise) against the closed form."""
    process = OUGaussianProcess(kernel=NOISY_SE, mean=-0.5)
    x = _inputs(3, 3)
    factor = process.factor(x)

    class Forward(torch.nn.Module):
        noise_type, sde_type = "general", "ito"

        def f(self, t, y):
            return process.drift(y, t)

        def g(self, t, y):
            return (process.diffusion(t) * factor.cholesky).expand(y.shape[0], 3, 3)

    n = 6000
    y0 = torch.tensor([1.0, 0.0, -1.0], dtype=F64).expand(n, 3).contiguous()
    bm = torchsde.BrownianInterval(0.0, 0.4, size=(n, 3), dtype=F64, entropy=11)
    y = torchsde.sdeint(Forward(), y0, torch.tensor([0.0, 0.4], dtype=F64), bm=bm, dt=1e-3, method="euler")[-1]
    law = process.marginal(y0[:1, :, None], 0.4, inputs=factor)
    cov = process.std(torch.tensor(0.4, dtype=F64)) ** 2 * factor.gram
    se_mean = cov.diagonal().sqrt() / math.sqrt(n)
    assert float(((y.mean(0) - law.mean[0, :, 0]) / se_mean).abs().max()) < 5
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None] + cov**2) / n).sqrt()
    assert float(((torch.cov(y.T) - cov) / se_cov).abs().max()) < 5


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
def test_score_parametrisations_invert_each_other(parametrisation):
    process = OUGaussianProcess(kernel=NOISY_SE, parametrisation=parametrisation)
    x = _inputs(5, 4)
    y0 = torch.randn(2, 5, 1, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = torch.tensor([0.2, 0.7], dtype=F64)
    law = process.marginal(y0, t, inputs=x)
    y = law.sample(torch.Generator().manual_seed(6))
    score = law.score(y)
    output = process.output_from_score(score, t, inputs=x)
    tol = tolerance(F64, "autograd")
    torch.testing.assert_close(process.score_from_output(output, t, inputs=x), score, atol=tol, rtol=tol)
    torch.testing.assert_close(process.kernel_score(output, t, inputs=x), process.factor(x).matvec(score), atol=tol, rtol=tol)
    y_t, target = process.denoising_pair(y0, t, inputs=x, generator=torch.Generator().manual_seed(7))
    expected = process.output_from_score(process.marginal(y0, t, inputs=x).score(y_t), t, inputs=x)
    torch.testing.assert_close(target, expected, atol=tol, rtol=tol)
    if parametrisation == "st_preconditioned":
        # S_t^T grad log p_{t|0}(y_t | y_0) = -xi for y_t = mu_t + S_t xi
        xi = process.factor(x).sqrt_solve(y - law.mean) / process.std(t)[:, None, None]
        torch.testing.assert_close(output, -xi, atol=tol, rtol=tol)


@pytest.mark.parametrize("parametrisation", PARAMETRISATIONS)
def test_limit_output_is_the_output_for_the_score_of_the_gp_limit(parametrisation):
    process = OUGaussianProcess(kernel=NOISY_SE, mean=0.3, parametrisation=parametrisation)
    x = _inputs(5, 9)
    y = torch.randn(2, 5, 1, generator=torch.Generator().manual_seed(10), dtype=F64)
    t = torch.tensor([0.05, 0.6], dtype=F64)
    limit_score = process.prior(y.shape, inputs=x, dtype=F64).score(y)
    expected = process.output_from_score(limit_score, t, inputs=x)
    tol = tolerance(F64, "autograd")
    torch.testing.assert_close(process.limit_output(y, t, inputs=x), expected, atol=tol, rtol=tol)
    if parametrisation != "kernel_preconditioned":
        with pytest.raises(ValueError, match="y: expected values"):
            process.limit_output(y[:, :4], t, inputs=x)


def test_gp_oracle_is_the_noised_data_gp_and_its_posterior_is_gaussian_conditioning():
    process = OUGaussianProcess(kernel=NOISY_SE, mean=0.2)
    data_kernel = Matern52(lengthscale=0.8, variance=1.5)
    oracle = GPScore(process, data_kernel, mean=-0.4)
    x = _inputs(5, 7)
    mean0, cov0 = oracle.marginal_moments(0.0, x)
    torch.testing.assert_close(cov0, data_kernel.gram(x) + 1e-6 * torch.eye(5, dtype=F64))
    torch.testing.assert_close(mean0, torch.full((5,), -0.4, dtype=F64))
    y = torch.randn(3, 5, 1, generator=torch.Generator().manual_seed(8), dtype=F64)
    t = torch.tensor([0.05, 0.3, 0.9], dtype=F64)
    with torch.enable_grad():
        yr = y.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(oracle.log_prob(t, yr, inputs=x).sum(), yr)
    torch.testing.assert_close(oracle.score(t, y, inputs=x), grad, atol=1e-10, rtol=1e-10)
    # posterior by conditioning the joint Gaussian with torch's MVN precision blocks
    mean_post, cov_post = oracle.posterior(x[:3], y[0, :3], x[3:])
    precision = torch.linalg.inv(cov0)
    cov_ref = torch.linalg.inv(precision[3:, 3:])
    mean_ref = -0.4 - cov_ref @ precision[3:, :3] @ (y[0, :3, 0] + 0.4)
    torch.testing.assert_close(cov_post, cov_ref, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(mean_post, mean_ref, atol=1e-9, rtol=1e-9)


def test_gaussian_conditional_is_the_bivariate_formula_batched_and_accepts_the_joint_cholesky():
    # N(0, [[s1^2, r s1 s2], [r s1 s2, s2^2]]): x2 | x1 has mean r s2/s1 x1 and variance s2^2 (1 - r^2)
    s1 = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    s2 = torch.tensor([1.5, 0.3, 1.0], dtype=F64)
    r = torch.tensor([0.9, -0.4, 0.0], dtype=F64)
    gram = torch.stack([torch.stack([s1**2, r * s1 * s2], -1), torch.stack([r * s1 * s2, s2**2], -1)], -2)
    x1 = torch.tensor([[0.7], [-1.2], [3.0]], dtype=F64)
    mean, cov = gaussian_conditional(gram, 1, x1)
    torch.testing.assert_close(mean, r[:, None] * s2[:, None] / s1[:, None] * x1, atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(cov, (s2**2 * (1 - r**2))[:, None, None], atol=1e-14, rtol=1e-14)
    # a larger joint: the leading block of the joint Cholesky factor is K_cc's, and the result is symmetric
    a = torch.randn(7, 7, generator=torch.Generator().manual_seed(3), dtype=F64)
    joint = a @ a.T + 0.1 * torch.eye(7, dtype=F64)
    none, cov = gaussian_conditional(joint, 3, context_cholesky=torch.linalg.cholesky(joint)[:3, :3])
    assert none is None and torch.equal(cov, cov.mT)
    torch.testing.assert_close(cov, torch.linalg.inv(torch.linalg.inv(joint)[3:, 3:]), atol=1e-10, rtol=1e-10)
    for n_context in (0, 7):
        with pytest.raises(ValueError, match="n_context: expected 1 to 6"):
            gaussian_conditional(joint, n_context)


# --- conditional sampling -------------------------------------------------------------------------------

X_CONTEXT = torch.tensor([[-1.0], [0.0], [0.8]], dtype=F64)
Y_CONTEXT = torch.tensor([[0.5], [-0.7], [1.0]], dtype=F64)
X_TARGET = torch.tensor([[-0.5], [0.3], [1.5]], dtype=F64)


# a curl-free field on R^2: three context vectors, three targets (the last outside the context's hull)
X_CONTEXT_2D = torch.tensor([[-1.0, 0.0], [0.0, 0.5], [0.7, -0.4]], dtype=F64)
Y_CONTEXT_2D = torch.tensor([[0.5, -0.3], [-0.7, 0.2], [1.0, 0.8]], dtype=F64)
X_TARGET_2D = torch.tensor([[-0.5, 0.3], [0.3, -0.2], [1.2, 0.6]], dtype=F64)
POSTERIOR_CASES = {
    "scalar": (NOISY_SE, X_CONTEXT, Y_CONTEXT, X_TARGET),
    "curl_free": ({"kind": "curl_free", "lengthscale": 0.8}, X_CONTEXT_2D, Y_CONTEXT_2D, X_TARGET_2D),
}


@pytest.mark.parametrize("case", list(POSTERIOR_CASES))
def test_langevin_conditional_reproduces_exact_gp_posterior_and_replacement_does_not(case):
    """Data = the limiting GP, so the exact score is known at every t; the Langevin scheme must land on the
    exact posterior. With this stationary p_t the replacement scheme's targets decouple from the context (the
    target block of K grad log p_t = -(y - m) ignores y_c), so it returns the prior instead.

    ``curl_free``: values [n, 2] of a curl-free GP, flattened point-major, so the noised context, the kernel
    preconditioner K(x*, x*) and the Langevin steps act on 2n coupled coordinates. Measured there at 16000
    samples: variances 0.4-4% above the posterior's (the bias of the Langevin step), max |z| 3.9, so at 2000
    samples the bias is ~1.4 standard errors; replacement is ~50 standard errors off in the mean, as is Langevin
    at psi = 0.01."""
    kernel, x_context, y_context, x_target = POSTERIOR_CASES[case]
    process = OUGaussianProcess(kernel=kernel)
    oracle = GPScore(process)
    mean, cov = oracle.posterior(x_context, y_context, x_target)
    kwargs = dict(context_inputs=x_context, context_values=y_context, n_samples=2000)
    langevin = LangevinConditional()  # the defaults: 50 outer steps, 100 Langevin steps with psi = 10 at t <= 0.03
    samples = langevin.sample(oracle, process, x_target, generator=torch.Generator().manual_seed(0), **kwargs)
    assert samples.shape == (2000, 3, y_context.shape[-1]) and samples.dtype == F64
    z_mean, z_cov = moment_z_scores(samples, mean, cov)
    assert z_mean < 4.5 and z_cov < 4.5, (z_mean, z_cov)
    replaced = ReplacementConditional(steps=50).sample(
        oracle, process, x_target, generator=torch.Generator().manual_seed(0), **kwargs
    )
    z_mean_replacement, _ = moment_z_scores(replaced, mean, cov)
    assert z_mean_replacement > 10, z_mean_replacement


def test_conditional_preconditioner_samples_a_rougher_data_gp_between_close_context_points():
    """gp-1d's setting: SE data of lengthscale 0.25 and noise variance 0.0025, noised towards SE 0.5 plus white
    noise 0.05, targets beside two context points 0.25 apart. Preconditioned by K(x*, x*), a Langevin step along
    the smooth directions those points pin down is far stiffer than gamma allows: psi = 10 overflows (and psi = 1
    does not mix, z ~ 10). Preconditioned by K(x*, x* | x_c) the default psi = 10 lands on the exact posterior."""
    process = OUGaussianProcess(kernel=NOISY_SE)
    rough = [{"kind": "squared_exponential", "lengthscale": 0.25}, {"kind": "white_noise", "variance": 0.0025}]
    data = gd.build({"kind": "kernel_sum", "kernels": rough}, gd.Kernel)
    oracle = GPScore(process, kernel=data)
    x_context = torch.tensor([[-1.15], [-0.9], [0.75]], dtype=F64)
    y_context = torch.tensor([[0.75], [1.2], [-0.3]], dtype=F64)
    x_target = torch.tensor([[-1.05], [-0.8], [0.0]], dtype=F64)
    mean, cov = oracle.posterior(x_context, y_context, x_target)
    kwargs = dict(context_inputs=x_context, context_values=y_context, n_samples=2000)

    def z_scores(preconditioner: str, psi: float = 10.0) -> tuple[float, float]:
        sampler = LangevinConditional(preconditioner=preconditioner, psi=psi)
        try:
            samples = sampler.sample(oracle, process, x_target, generator=torch.Generator().manual_seed(0), **kwargs)
        except FloatingPointError:
            return math.inf, math.inf
        return moment_z_scores(samples, mean, cov)

    assert max(z_scores("conditional")) < 4.5
    assert min(z_scores("kernel")) > 100
    assert z_scores("kernel", psi=1.0)[0] > 6


def test_moment_z_scores_pass_exact_gaussian_draws_flag_a_shift_and_reject_bad_shapes():
    gen = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=F64)
    mean = torch.tensor([0.5, -1.0], dtype=F64)
    draws = mean + torch.randn(4000, 2, generator=gen, dtype=F64) @ torch.linalg.cholesky(cov).mT
    z_mean, z_cov = moment_z_scores(draws.unsqueeze(-1), mean, cov)
    assert z_mean < 4 and z_cov < 4
    # a shift of 0.1 standard deviations is 6.3 standard errors of the mean at n = 4000
    assert moment_z_scores(draws + 0.1, mean, cov)[0] > 5
    assert moment_z_scores(1.1 * (draws - mean) + mean, mean, cov)[1] > 5
    with pytest.raises(ValueError, match="entries per sample"):
        moment_z_scores(draws, mean[:1], cov)
    with pytest.raises(ValueError, match="at least 2 samples"):
        moment_z_scores(draws[:1], mean, cov)


def test_langevin_psi_sweep_script_reports_one_row_per_psi_and_seed(capsys):
    sweep = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "langevin_psi_sweep.py"))
    argv = ["--psi", "1", "10", "--seeds", "0", "--samples", "64", "--sampler", '{"steps": 4, "inner_steps": 2}']
    rows = sweep["main"](argv)
    assert [(psi, seed) for psi, seed, *_ in rows] == [(1.0, 0), (10.0, 0)]
    assert all(math.isfinite(z) and z >= 0 for *_, z_mean, z_cov in rows for z in (z_mean, z_cov))
    assert "max|z| mean" in capsys.readouterr().out


def test_a_diverging_langevin_chain_stops_with_the_time_it_broke_at():
    process = OUGaussianProcess(kernel=NOISY_SE)
    oracle = GPScore(process)
    # gamma far above the conditional variance: each Langevin step multiplies the error, until it overflows
    sampler = LangevinConditional(steps=10, inner_steps=200, psi=1e4, tau=None)
    with pytest.raises(FloatingPointError, match=r"non-finite at t = .*lower psi \(now 10000\)"):
        sampler.sample(
            oracle,
            process,
            X_TARGET,
            context_inputs=X_CONTEXT,
            context_values=Y_CONTEXT,
            n_samples=4,
            generator=torch.Generator().manual_seed(0),
        )


def test_unconditional_reverse_sde_recovers_a_different_data_gp():
    """No context: the outer loop is Euler-Maruyama on the reverse SDE with kernel noise; with the exact score of
    Matern-5/2 data noised towards a squared-exponential GP it must return the data GP (at eps)."""
    process = OUGaussianProcess(kernel=NOISY_SE, parametrisation="st_preconditioned")
    oracle = GPScore(process, Matern52(lengthscale=0.8, variance=1.5), mean=0.6)
    x = _inputs(3, 9)
    samples = ReplacementConditional(steps=200).sample(
        oracle, process, x, n_samples=2000, generator=torch.Generator().manual_seed(1)
    )
    mean, cov = oracle.marginal_moments(1e-3, x)
    z_mean, z_cov = moment_z_scores(samples, mean, cov)
    assert z_mean < 4.5 and z_cov < 4.5, (z_mean, z_cov)


def test_unconditional_probability_flow_recovers_a_different_data_gp_as_a_deterministic_map_of_the_prior_draw():
    """reverse="ode": Euler steps of the probability flow dy = [f - 1/2 beta K grad log p_t] dt from the GP limit,
    with the exact score, must return the data GP at eps as the reverse SDE does. The flow is deterministic: from the
    same prior draw (same seed), halving the step moves each sample by the Euler error, O(dt) (measured 2.5e-3),
    where reverse-SDE paths with fresh noise end O(1) apart (5.6). Measured with the flow's 1/2 replaced by 1 (the
    SDE's drift without its noise) or by 0.6: covariance z-scores 32 and 27."""
    process = OUGaussianProcess(kernel=NOISY_SE)
    oracle = GPScore(process, Matern52(lengthscale=0.8, variance=1.5), mean=0.6)
    x = _inputs(3, 9)

    def flow(steps: int) -> torch.Tensor:
        sampler = ReplacementConditional(steps=steps, reverse="ode")
        return sampler.sample(oracle, process, x, n_samples=2000, generator=torch.Generator().manual_seed(1))

    samples = flow(100)
    mean, cov = oracle.marginal_moments(1e-3, x)
    z_mean, z_cov = moment_z_scores(samples, mean, cov)
    assert z_mean < 4.5 and z_cov < 4.5, (z_mean, z_cov)
    moved = float((flow(200) - samples).abs().max())
    assert moved < 0.05, moved


def test_conditional_sampler_follows_dtype_and_rejects_bad_input():
    process = OUGaussianProcess(kernel=NOISY_SE)
    oracle = GPScore(process)
    sampler = LangevinConditional(steps=3, inner_steps=1)
    out = sampler.sample(
        oracle, process, X_TARGET.float(), context_inputs=X_CONTEXT.float(), context_values=Y_CONTEXT.float(), n_samples=4
    )
    assert out.dtype == torch.float32 and out.shape == (4, 3, 1)
    with pytest.raises(ValueError, match="pass both or neither"):
        sampler.sample(oracle, process, X_TARGET, context_inputs=X_CONTEXT)
    with pytest.raises(ValueError, match="context_values"):
        sampler.sample(oracle, process, X_TARGET, context_inputs=X_CONTEXT, context_values=Y_CONTEXT[:2])
    with pytest.raises(ValueError, match="OUGaussianProcess"):
        sampler.sample(oracle, gd.VPProcess(), X_TARGET)
    with pytest.raises(ValidationError, match="inner_steps"):
        LangevinConditional(inner_steps=-1)


def test_bad_process_input_is_rejected_before_work():
    with pytest.raises(ValidationError, match="beta_max"):
        OUGaussianProcess(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValidationError, match="parametrisation"):
        OUGaussianProcess(parametrisation="K")
    process = OUGaussianProcess(jitter=0.0)
    with pytest.raises(ValueError, match="jitter"):
        process.factor(torch.zeros(3, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"\[\.\.\., n, 1\]"):
        process.factor(torch.zeros(3, 2, dtype=F64))
    with pytest.raises(ValueError, match="values"):
        process.marginal(torch.zeros(2, 4, 1, dtype=F64), 0.5, inputs=_inputs(3, 0))
    with pytest.raises(ValueError, match="times"):
        process.marginal(torch.zeros(2, 3, 1, dtype=F64), 2.0, inputs=_inputs(3, 0))


# --- likelihoods -----------------------------------------------------------------------------------------


def _likelihood_setup(parametrisation: str):
    # beta_max = 60 makes p_T = pi to e^{-30}, so the probability-flow likelihood is exact up to the ODE solver
    process = OUGaussianProcess(kernel=NOISY_SE, beta_max=60.0, parametrisation=parametrisation)
    oracle = GPScore(process, Matern52(lengthscale=0.8, variance=1.5), mean=0.7)
    x = _inputs(6, 10)
    mean, cov = oracle.marginal_moments(0.0, x)
    y = torch.distributions.MultivariateNormal(mean, cov).sample((2,)).reshape(2, 6, 1)
    return process, oracle, x, y


def test_joint_and_conditional_likelihoods_by_probability_flow_equal_exact_gp_densities():
    torch.manual_seed(0)
    process, oracle, x, y = _likelihood_setup("kernel_preconditioned")
    options = ODEOptions(eps=1e-3, rtol=1e-6, atol=1e-6)
    joint = marginal_log_likelihood(oracle, process, y, x, options=options)
    torch.testing.assert_close(joint, oracle.log_prob(1e-3, y, inputs=x), atol=1e-4, rtol=0)
    conditional = conditional_log_likelihood(oracle, process, y[:, 4:], x[4:], y[:, :4], x[:4], options=options)
    exact = oracle.log_prob(1e-3, y, inputs=x) - oracle.log_prob(1e-3, y[:, :4], inputs=x[:4])
    torch.testing.assert_close(conditional, exact, atol=1e-4, rtol=0)


@pytest.mark.parametrize("parametrisation", ["plain", "st_preconditioned"])
def test_likelihood_is_independent_of_the_score_parametrisation(parametrisation):
    torch.manual_seed(1)
    process, oracle, x, y = _likelihood_setup(parametrisation)
    ll = marginal_log_likelihood(oracle, process, y[:, :3], x[:3], options=ODEOptions(eps=1e-3, rtol=1e-6, atol=1e-6))
    torch.testing.assert_close(ll, oracle.log_prob(1e-3, y[:, :3], inputs=x[:3]), atol=1e-4, rtol=0)
