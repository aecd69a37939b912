"""The Euclidean samplers refuse processes on manifolds and point to the Riemannian ones."""

from __future__ import annotations

import pytest
import torch

import geodiffusion as gd
from geodiffusion.samplers.ode import log_likelihood

RIEMANNIAN_SAMPLERS = "geodesic_euler_maruyama.*riemannian_probability_flow.*riemannian_log_likelihood"


@pytest.fixture(scope="module")
def brownian():
    return gd.build({"kind": "brownian", "manifold": {"kind": "sphere", "dim": 2}})


def _tangent_zero(t, x):
    return torch.zeros_like(x)


def _standard_normal_score(t, x):
    return -x


@pytest.mark.parametrize("kind", ["reverse_sde", "predictor_corrector", "probability_flow"])
def test_euclidean_samplers_reject_a_process_on_a_manifold(kind, brownian):
    sampler = gd.build({"kind": kind, "steps": 2})
    with pytest.raises(ValueError, match=RIEMANNIAN_SAMPLERS):
        sampler.sample(_tangent_zero, brownian, (4, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # the same sampler on R^d still runs
    gen = torch.Generator().manual_seed(0)
    x = sampler.sample(_standard_normal_score, gd.VPProcess(), (4, 3), generator=gen, dtype=torch.float64)
    assert x.shape == (4, 3) and bool(torch.isfinite(x).all())


def test_euclidean_log_likelihood_rejects_a_process_on_a_manifold(brownian):
    x = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="Sphere.*" + RIEMANNIAN_SAMPLERS):
        log_likelihood(_tangent_zero, brownian, x)
    assert bool(torch.isfinite(log_likelihood(_standard_normal_score, gd.VPProcess(), x)).all())
