"""Euclidean processes: closed forms against independent references and simulation; bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchsde

import geodiffusion as gd


def test_vp_marginal_matches_closed_form():
    process = gd.VPProcess(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    integral = 0.1 * t.numpy() + 0.5 * 19.9 * t.numpy() ** 2
    np.testing.assert_allclose(process.mean_scale(t).numpy(), np.exp(-0.5 * integral), rtol=1e-14)
    np.testing.assert_allclose(process.std(t).numpy(), np.sqrt(1 - np.exp(-integral)), rtol=1e-14)
    np.testing.assert_allclose(process.diffusion(t).numpy() ** 2, 0.1 + 19.9 * t.numpy(), rtol=1e-14)


def test_subvp_std_is_one_minus_vp_variance_scale():
    sub, vp = gd.SubVPProcess(), gd.VPProcess()
    t = torch.linspace(0.01, 1, 7, dtype=torch.float64)
    torch.testing.assert_close(sub.std(t), vp.std(t) ** 2)
    assert bool((sub.std(t) <= vp.std(t)).all())


def test_ve_marginal_variance_is_sigma_squared_minus_sigma_min_squared():
    process = gd.VEProcess(sigma_min=0.01, sigma_max=50.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    sigma = 0.01 * (5000.0 ** t.numpy())
    np.testing.assert_allclose(process.std(t).numpy() ** 2, sigma**2 - 1e-4, rtol=1e-12, atol=1e-18)


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_marginal_matches_simulated_forward_sde(kind):
    """Integrate the forward SDE with torchsde from x0 and compare with the closed-form marginal at t = 0.5."""
    process = gd.build({"kind": kind})

    class Forward(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return process.drift(y, t)

        def g(self, t, y):
            return process.diffusion(t).to(y.dtype).expand_as(y)

    n = 8000
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(n, 2).contiguous()
    bm = torchsde.BrownianInterval(0.0, 0.5, size=(n, 2), dtype=torch.float64, entropy=7)
    xt = torchsde.sdeint(Forward(), x0, torch.tensor([0.0, 0.5], dtype=torch.float64), bm=bm, dt=1e-3, method="euler")[-1]
    law = process.marginal(x0[:1], 0.5)
    se_mean = law.std / math.sqrt(n)
    assert float(((xt.mean(0) - law.mean[0]).abs() / se_mean).max()) < 5
    std_ratio = xt.std(0) / law.std
    assert float((std_ratio - 1).abs().max()) < 5 / math.sqrt(2 * n) + 0.01


def test_marginal_log_prob_sums_over_event_axes():
    process = gd.VPProcess(event_ndim=2)
    x0 = torch.randn(4, 3, 5, dtype=torch.float64)
    law = process.marginal(x0, 0.4)
    x = law.sample(torch.Generator().manual_seed(0))
    assert law.log_prob(x).shape == (4,)
    independent = torch.distributions.Normal(law.mean, law.std).log_prob(x).sum((-1, -2))
    torch.testing.assert_close(law.log_prob(x), independent)


def test_prior_matches_declared_std():
    for process, std in [(gd.VPProcess(), 1.0), (gd.VEProcess(sigma_max=30.0), 30.0)]:
        prior = process.prior((20000, 2), dtype=torch.float64)
        x = prior.sample(torch.Generator().manual_seed(0))
        assert abs(float(x.std()) / std - 1) < 0.02


def test_per_sample_times_broadcast_over_events():
    process = gd.VPProcess()
    x0 = torch.ones(3, 2, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    law = process.marginal(x0, t)
    torch.testing.assert_close(law.mean[:, 0], process.mean_scale(t))


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve"])
def test_bad_inputs_are_rejected_before_work(kind):
    process = gd.build({"kind": kind})
    x0 = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"expected times in \[0.0, 1.0\]"):
        process.marginal(x0, 1.5)
    with pytest.raises(ValueError, match=r"expected times in \[0.0, 1.0\]"):
        process.marginal(x0, -0.1)
    with pytest.raises(ValueError, match="finite"):
        process.marginal(torch.tensor([[float("nan"), 0.0]]), 0.5)
    with pytest.raises(ValueError, match="finite"):
        process.marginal(x0, float("nan"))
    with pytest.raises(TypeError, match="floating"):
        process.marginal(torch.ones(4, 2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="prefix"):
        process.marginal(x0, torch.rand(5))
    with pytest.raises(TypeError, match="torch.Tensor"):
        process.marginal([[1.0, 2.0]], 0.5)


def test_invalid_process_specs_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="beta_max"):
        gd.VPProcess(beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValidationError, match="sigma_max"):
        gd.VEProcess(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValidationError, match="T"):
        gd.VPProcess(T=0.0)


def test_torchsde_reverse_declares_sde_type_by_method():
    process = gd.VPProcess()
    score = lambda t, x: -x  # noqa: E731
    assert process.torchsde_reverse(score, (2,), "euler").sde_type == "ito"
    assert process.torchsde_reverse(score, (2,), "reversible_heun").sde_type == "stratonovich"
    with pytest.raises(ValueError, match="unknown torchsde method"):
        process.torchsde_reverse(score, (2,), "rk45")


def test_reverse_drift_uses_twice_the_probability_flow_correction():
    process = gd.VPProcess()
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    s = torch.randn(5, 2, dtype=torch.float64)
    f = process.drift(x, t)
    torch.testing.assert_close(process.reverse_drift(x, t, s) - f, 2 * (process.probability_flow_drift(x, t, s) - f))
