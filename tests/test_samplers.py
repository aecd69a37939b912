"""Samplers and likelihoods against the exact Gaussian oracle; reproducibility; bad input."""

from __future__ import annotations

import pytest
import torch

import geodiffusion as gd
from geodiffusion.samplers import ODEOptions, divergence, log_likelihood
from geodiffusion.testing import CheckError, GaussianScore, check_sampler

MEAN = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
A = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.7, -0.2], [0.4, 0.0, 0.5]], dtype=torch.float64)
COV = A @ A.T + 0.1 * torch.eye(3, dtype=torch.float64)


@pytest.mark.parametrize("method", ["euler", "milstein", "srk", "midpoint", "heun", "euler_heun", "reversible_heun", "log_ode"])
def test_every_torchsde_method_reproduces_the_gaussian_target(method):
    check_sampler(gd.SDESampler(method=method, steps=100), gd.VPProcess(), n_samples=3000, seed=1)


@pytest.mark.parametrize(("method", "steps"), [("dopri5", 1), ("bosh3", 1), ("midpoint", 200), ("rk4", 100)])
def test_probability_flow_methods_reproduce_the_gaussian_target(method, steps):
    check_sampler(gd.ProbabilityFlowSampler(method=method, steps=steps), gd.VEProcess(), n_samples=3000, seed=2)


def test_sampler_check_sees_the_bias_of_too_few_euler_steps():
    """The oracle test has power: 200 Euler steps of the VE flow are visibly biased."""
    with pytest.raises(CheckError, match="covariance"):
        check_sampler(gd.ProbabilityFlowSampler(method="euler", steps=200), gd.VEProcess(), n_samples=3000, seed=2)


def test_predictor_corrector_without_corrector_is_euler_maruyama_in_distribution():
    check_sampler(gd.PredictorCorrector(steps=300, corrector_steps=0), gd.SubVPProcess(), seed=3)


# schedules whose marginal at T is within ~1e-4 nats of the prior for this data
CLOSE_PRIORS = [{"kind": "vp", "beta_max": 40.0}, {"kind": "ve", "sigma_max": 20000.0}]


@pytest.mark.parametrize("process_spec", CLOSE_PRIORS, ids=["vp", "ve"])
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_log_likelihood_of_exact_score_equals_exact_log_density(process_spec, estimator):
    """With the exact score the flow is exact, so log p_eps(x) is the closed form N(a mu, a^2 S + s^2 I);
    what is left is ODE tolerance and the mismatch between p_T and the prior."""
    process = gd.build(process_spec)
    oracle = GaussianScore(process, MEAN, COV)
    x = MEAN + torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) @ torch.linalg.cholesky(COV).T
    options = ODEOptions(eps=1e-3, rtol=1e-8, atol=1e-8)
    exact = oracle.log_prob(torch.tensor(1e-3, dtype=torch.float64), x)
    if estimator == "exact":
        ll = log_likelihood(oracle, process, x, options=options, estimator="exact")
        torch.testing.assert_close(ll, exact, atol=1e-3, rtol=0)
    else:
        reps = torch.stack(
            [
                log_likelihood(
                    oracle, process, x, options=options, estimator="hutchinson", generator=torch.Generator().manual_seed(s)
                )
                for s in range(8)
            ]
        )
        # Hutchinson is unbiased: the average over probes and points matches the exact mean
        assert abs(float(reps.mean() - exact.mean())) < 0.1
        assert float(reps.std(0).mean()) > 0  # it really is stochastic


def test_divergence_estimators_agree_on_a_linear_field():
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    m = torch.randn(5, 5, dtype=torch.float64)
    v = x @ m.T
    exact = divergence(v, x, None)
    torch.testing.assert_close(exact, torch.full((4,), float(torch.trace(m)), dtype=torch.float64))
    probes = torch.eye(5, dtype=torch.float64)[None].expand(4, 5, 5)
    hutch = sum(divergence(x @ m.T, x, probes[:, i]) for i in range(5))
    torch.testing.assert_close(hutch, exact)


def test_sde_sampler_is_reproducible_from_its_generator():
    process, sampler = gd.VPProcess(), gd.SDESampler(steps=50)
    oracle = GaussianScore(process, MEAN, COV)
    a = sampler.sample(oracle, process, (10, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    b = sampler.sample(oracle, process, (10, 3), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    c = sampler.sample(oracle, process, (10, 3), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", [gd.SDESampler(steps=20), gd.ProbabilityFlowSampler(), gd.PredictorCorrector(steps=20)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_follow_requested_dtype(sampler, dtype):
    process = gd.VPProcess()
    out = sampler.sample(lambda t, x: -x, process, (6, 2), generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert out.dtype == dtype and out.shape == (6, 2) and bool(torch.isfinite(out).all())


def test_probability_flow_is_deterministic_given_x_T():
    process = gd.VPProcess()
    oracle = GaussianScore(process, MEAN, COV)
    x_T = torch.randn(5, 3, dtype=torch.float64)
    a = gd.ProbabilityFlowSampler().sample(oracle, process, (5, 3), x_T=x_T)
    b = gd.ProbabilityFlowSampler().sample(oracle, process, (5, 3), x_T=x_T)
    assert torch.equal(a, b)


def test_sampler_bad_input():
    process = gd.VPProcess()
    with pytest.raises(ValueError, match="x_T: expected shape"):
        gd.SDESampler().sample(lambda t, x: -x, process, (4, 2), x_T=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="finite"):
        gd.SDESampler().sample(lambda t, x: -x, process, (1, 2), x_T=torch.tensor([[float("inf"), 0.0]]))
    with pytest.raises(ValueError, match="eps"):
        gd.SDESampler(eps=2.0).sample(lambda t, x: -x, process, (4, 2))
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="steps"):
        gd.SDESampler(steps=0)
    with pytest.raises(ValidationError, match="method"):
        gd.SDESampler(method="rk45")
    with pytest.raises(ValueError, match="estimator"):
        log_likelihood(lambda t, x: -x, process, torch.zeros(2, 2), estimator="magic")


def test_oracle_rejects_bad_shapes():
    with pytest.raises(ValueError, match="mean"):
        GaussianScore(gd.VPProcess(), MEAN, COV[:2, :2])
    with pytest.raises(ValueError, match="event_ndim"):
        GaussianScore(gd.VPProcess(event_ndim=2), MEAN, COV)


def test_dtype_and_device_mismatches_are_errors():
    process = gd.VPProcess()
    with pytest.raises(ValueError, match="dtype"):
        gd.SDESampler().sample(lambda t, x: -x, process, (2, 2), x_T=torch.zeros(2, 2), dtype=torch.float64)
    with pytest.raises(ValueError, match="device"):
        gd.SDESampler().sample(lambda t, x: -x, process, (2, 2), x_T=torch.zeros(2, 2), device="meta")
    heat = gd.Euclidean(dim=2).heat_kernel()
    with pytest.raises(ValueError, match="dtype"):
        heat.log_prob(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.float64), 0.5)
    with pytest.raises(ValueError, match="t > 0"):
        heat.log_prob(torch.zeros(3, 2), torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match=r"expected points of shape \[..., 2\]"):
        heat.log_prob(torch.zeros(3, 2), torch.zeros(3, 3), 0.5)
