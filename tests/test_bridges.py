"""Denoising diffusion bridges (DDBM): closed-form marginals, bridge score matching, exact-score sampling and
equivariant bridge trajectories (SPDM)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import DTYPES, registered_examples
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.models.unet import EquivariantUNet, UNet
from geodiffusion.processes.bridges import (
    DenoiserBridgeScore,
    DiffusionBridge,
    GaussianBridgeScore,
    VEBridge,
    VPBridge,
    bridge_errors,
    bridge_score_matching_loss,
    check_bridge,
)
from geodiffusion.samplers.bridges import BridgeODESampler, BridgeSampler, BridgeSDESampler
from geodiffusion.testing import CheckError

C4 = {"kind": "cyclic", "n": 4, "action": "image"}
D4 = {"kind": "dihedral", "n": 4, "action": "image"}
BRIDGES = [VPBridge(), VEBridge()]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", registered_examples(DiffusionBridge))
def test_bridge_marginal_score_pinning_and_fokker_planck(spec, dtype):
    check_bridge(gd.build(spec), dtype=dtype)


class _WideBridge(VPBridge, register=False):
    """Marginal std inflated by 20%: still a point mass at both ends, but not the law of the pinned SDE."""

    def coefficients(self, t):
        a, b, c, k = super().coefficients(t)
        return a, b, 1.2 * c, k


class _ShiftedBridge(VPBridge, register=False):
    """Marginal x0 weight doubled: the pinned SDE's law from 2 x0, which Fokker-Planck cannot see but t = 0 does."""

    def coefficients(self, t):
        a, b, c, k = super().coefficients(t)
        return a, 2 * b, c, k


def test_check_bridge_catches_a_marginal_that_is_not_the_pinned_law():
    assert bridge_errors(_WideBridge())["Fokker-Planck equation of the pinned SDE"] > 1e-2
    with pytest.raises(CheckError, match="Fokker-Planck"):
        check_bridge(_WideBridge())
    errors = bridge_errors(_ShiftedBridge())
    assert errors["Fokker-Planck equation of the pinned SDE"] < 1e-10
    with pytest.raises(CheckError, match="t = 0"):
        check_bridge(_ShiftedBridge())


@pytest.mark.parametrize("bridge", BRIDGES, ids=["vp", "ve"])
def test_bridge_marginal_matches_monte_carlo_of_the_pinned_sde(bridge):
    # Euler-Maruyama paths of dX = [f + g^2 h] dt + g dW from x0 (a plain loop: torchsde's Brownian tree costs ~100x
    # more per step here); moments at 0.5T and 0.9T against N(a x_T + b x0, c^2), z-scores over 4000 paths
    n, dtype, dt = 4000, torch.float64, 1e-3
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.0, -0.5], dtype=dtype).expand(n, 2)
    x_T = torch.tensor([-2.0, 1.5], dtype=dtype).expand(n, 2)
    x, t = x0.clone(), 0.0
    for frac in (0.5, 0.9):
        while t < frac * bridge.T - 1e-12:
            tt = torch.full((n,), t, dtype=dtype)
            noise = torch.randn(x.shape, generator=gen, dtype=dtype)
            x = x + bridge.drift(x, tt, x_T) * dt + bridge.diffusion(tt)[:, None] * math.sqrt(dt) * noise
            t += dt
        q = bridge.marginal(x0[:1], frac * bridge.T, x_T[:1])
        z_mean = (x.mean(0) - q.mean[0]).abs() / (q.std[0] / math.sqrt(n))
        z_var = (x.var(0) - q.std[0] ** 2).abs() / (q.std[0] ** 2 * math.sqrt(2 / n))
        assert float(z_mean.max()) < 5 and float(z_var.max()) < 5, (frac, z_mean, z_var)


@pytest.mark.parametrize("bridge", BRIDGES, ids=["vp", "ve"])
def test_marginal_ends_at_x0_and_x_T(bridge):
    x0, x_T = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(bridge.marginal(x0, 0.0, x_T).mean, x0)
    torch.testing.assert_close(bridge.marginal(x0, bridge.T, x_T).mean, x_T)
    near = bridge.marginal(x0, bridge.T * (1 - 1e-6), x_T)
    assert float(near.std.max()) < 1e-2 and float((near.mean - x_T).abs().max()) < 1e-4


def _gaussian_pairs(dtype):
    gen = torch.Generator().manual_seed(0)
    A = torch.tensor([[0.8, 0.1], [-0.2, 0.5]], dtype=dtype)
    m = torch.tensor([0.5, -1.0], dtype=dtype)
    L = torch.randn(2, 2, generator=gen, dtype=dtype)
    return A, m, L @ L.T / 2 + 0.1 * torch.eye(2, dtype=dtype)


@pytest.mark.parametrize("sampler", [BridgeSDESampler(steps=200), BridgeODESampler(steps=50)], ids=["sde", "ode"])
@pytest.mark.parametrize("bridge", BRIDGES, ids=["vp", "ve"])
def test_samplers_with_the_exact_bridge_score_reproduce_the_conditional_law(bridge, sampler):
    # x0 | x_T ~ N(A x_T + m, C): the exact score of q(x_t | x_T) needs no training; at eps the samples must follow
    # q(x_eps | x_T) ~ x0 | x_T. Mean and covariance z-scores over 4000 draws from one x_T
    dtype, n = torch.float64, 4000
    oracle = GaussianBridgeScore(bridge, *_gaussian_pairs(dtype))
    x_T = torch.tensor([1.0, 2.0], dtype=dtype).expand(n, 2).contiguous()
    x = sampler.sample(oracle, bridge, x_T, generator=torch.Generator().manual_seed(1))
    mean, cov = (v[0] for v in oracle.moments(torch.tensor(sampler.spec.eps, dtype=dtype), x_T[:1]))
    diag = torch.diagonal(cov)
    z_mean = (x.mean(0) - mean).abs() / torch.sqrt(diag / n)
    z_cov = (torch.cov(x.T) - cov).abs() / torch.sqrt((diag[:, None] * diag[None, :] + cov**2) / n)
    assert float(z_mean.max()) < 5, z_mean
    assert float(z_cov.max()) < 5, z_cov
    assert float((mean - x_T[0]).abs().max()) > 1.0  # the target differs from the start: the test is not vacuous


def test_bridge_score_matching_loss_vanishes_for_the_true_pair_score_and_is_noise_prediction():
    bridge = VPBridge(event_ndim=1)
    gen = torch.Generator().manual_seed(0)
    x0, x_T = torch.randn(512, 3, generator=gen, dtype=torch.float64), torch.randn(512, 3, generator=gen, dtype=torch.float64)

    # a "score" that knows each pair's x0 is exactly the target grad log q(x_t | x0, x_T): zero loss in both weightings
    def knows_x0(t, x, x_T):
        return bridge.score_from_denoiser(x, t, x_T, x0)

    for weighting in ("x0", "score"):
        loss = bridge_score_matching_loss(knows_x0, bridge, x0, x_T, generator=gen, weighting=weighting)
        assert float(loss) < 1e-18
    # the zero score leaves the noise: E|z|^2 = 3 per pair under the noise-prediction weighting
    zero = bridge_score_matching_loss(lambda t, x, x_T: torch.zeros_like(x), bridge, x0, x_T, generator=gen, weighting="score")
    assert abs(float(zero) - 3.0) < 5 * math.sqrt(2 * 3 / 512)
    with pytest.raises(ValueError, match="weighting"):
        bridge_score_matching_loss(knows_x0, bridge, x0, x_T, weighting="sigma2")
    with pytest.raises(ValueError, match="x_T"):
        bridge_score_matching_loss(knows_x0, bridge, x0, x_T[:5])


TINY = {"image_size": 8, "channels": (2, 4), "norm_groups": 2, "time_embedding_dim": 8, "image_channels": 2}


def _delta_x0(score, bridge, sampler, group, elements, x_T):
    """max over g of mean |x0(g x_T) - g x0(x_T)|, the same generator seed for every run."""
    x0 = sampler.sample(score, bridge, x_T, generator=torch.Generator().manual_seed(7))
    worst = 0.0
    for g in elements:
        x0_g = sampler.sample(score, bridge, group.act(g, x_T), generator=torch.Generator().manual_seed(7))
        worst = max(worst, float((x0_g - group.act(g, x0)).abs().mean()))
    return worst, float(x0.abs().mean())


@pytest.mark.parametrize(
    "name, group_spec, sampler_kind",
    [("wt", C4, "sde"), ("wt", D4, "ode"), ("fa", C4, "ode"), ("fa", D4, "sde")],
    ids=["wt-c4-sde", "wt-d4-ode", "fa-c4-ode", "fa-d4-sde"],
)
def test_equivariant_bridges_carry_g_x_T_to_g_x0(name, group_spec, sampler_kind):
    group = gd.build(group_spec)
    torch.manual_seed(0)
    net = EquivariantUNet(**TINY, group=group_spec) if name == "wt" else gd.FrameAveraged.wrap(UNet(**TINY), group)
    bridge = VPBridge(event_ndim=3)
    score = DenoiserBridgeScore(net, bridge)
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    elements = group.elements()[[1, -1]]  # a rotation, and for D_4 a reflection
    cls = BridgeSDESampler if sampler_kind == "sde" else BridgeODESampler
    delta, scale = _delta_x0(score, bridge, cls(steps=10, group=group_spec), group, elements, x_T)
    assert scale > 0.05 and delta <= 1e-6
    assert _delta_x0(score, bridge, cls(steps=10), group, elements, x_T)[0] > 1e-2  # ordinary noise breaks it


def test_a_plain_network_gives_no_equivariant_bridge():
    group = gd.build(C4)
    torch.manual_seed(0)
    score = DenoiserBridgeScore(UNet(**TINY), VEBridge(event_ndim=3))
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    sampler = BridgeSDESampler(steps=8, group=C4)
    assert _delta_x0(score, score.bridge, sampler, group, group.elements()[1:2], x_T)[0] > 1e-2


def test_bridge_specs_and_inputs_are_validated():
    with pytest.raises(ValidationError, match="beta_max"):
        VPBridge(beta_min=3.0, beta_max=1.0)
    with pytest.raises(ValidationError, match="sigma_max"):
        VEBridge(sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValidationError, match="steps"):
        BridgeODESampler(steps=1)
    with pytest.raises(ValueError, match="finite group"):
        BridgeSDESampler(group={"kind": "so", "dim": 2})
    bridge = VPBridge()
    with pytest.raises(ValueError, match="expected times in"):
        bridge.marginal(torch.zeros(2, 3), 1.5, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x_T"):
        bridge.marginal(torch.zeros(2, 3), 0.5, torch.zeros(2, 4))
    score = GaussianBridgeScore(bridge, *_gaussian_pairs(torch.float32))
    with pytest.raises(ValueError, match="start_gap"):
        BridgeSDESampler(steps=2000, start_gap=1e-3).sample(score, bridge, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="eps"):
        BridgeSDESampler(eps=1.0).sample(score, bridge, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="C, H, W"):
        BridgeSDESampler(steps=2, group=C4).sample(score, bridge, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="expected x of shape"):  # the net sees [x_t, x_T]: 2C channels
        DenoiserBridgeScore(UNet(**{**TINY, "image_channels": 1}), VPBridge(event_ndim=3))(
            torch.tensor(0.5), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
        )
    assert set(gd.registry(BridgeSampler)) >= {"bridge_sde", "bridge_ode"}
    assert set(gd.registry(DiffusionBridge)) >= {"vp_bridge", "ve_bridge"}
