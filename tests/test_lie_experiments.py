"""SU(3) lattice data (exact plaquette law, Metropolis) and the SO(3) / SU(3) experiments on tiny settings."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.data import lattice
from geodiffusion.experiments import Experiment, SO3MixtureExperiment, SU3LatticeExperiment
from geodiffusion.experiments.base import ManifoldTrainingSpec
from geodiffusion.manifolds.lie import SU


def test_log_z_derivative_is_the_mean_plaquette_and_haar_limits_hold():
    # d log z / d beta = <Re tr U / 3>; at beta = 0 the Haar mean of tr U is 0 and z = 1
    h = 1e-4
    for beta in (0.5, 3.0, 8.0):
        slope = (lattice.log_z_plaquette(beta + h) - lattice.log_z_plaquette(beta - h)) / (2 * h)
        assert slope == pytest.approx(lattice.mean_plaquette_exact(beta), abs=1e-8)
    assert lattice.log_z_plaquette(0.0) == pytest.approx(0.0, abs=1e-13)
    assert lattice.mean_plaquette_exact(0.0) == pytest.approx(0.0, abs=1e-13)
    # small beta: <Re tr U / 3> = beta E|tr U|^2 / 18 + O(beta^2) = beta / 18 (E|tr U|^2 = 1 on SU(3))
    assert lattice.mean_plaquette_exact(1e-3) == pytest.approx(1e-3 / 18, rel=1e-3)


def test_plaquettes_are_gauge_invariant():
    size, gen = 3, torch.Generator().manual_seed(0)
    su3 = gd.SU(n=3)
    links = su3.random_point(lattice.n_links(size), gen, dtype=torch.float64)
    g = su3.random_point(size * size, gen, dtype=torch.float64).reshape(size, size, 3, 3)
    half = size * (size - 1)
    h = links[:half].reshape(size - 1, size, 3, 3)
    v = links[half:].reshape(size, size - 1, 3, 3)
    # U_{s, mu} -> g_s U_{s, mu} g_{s + mu}^H
    h2 = g[:-1, :] @ h @ g[1:, :].mH
    v2 = g[:, :-1] @ v @ g[:, 1:].mH
    transformed = torch.cat([h2.reshape(-1, 3, 3), v2.reshape(-1, 3, 3)])
    torch.testing.assert_close(lattice.plaquettes(transformed, size), lattice.plaquettes(links, size), rtol=0, atol=1e-12)


def test_metropolis_reaches_the_exact_plaquette_law():
    beta = 3.0
    links, acceptance = lattice.metropolis_su3(2, beta, 1500, 30, 1.0, torch.Generator().manual_seed(1))
    assert 0.2 < acceptance < 0.9
    assert bool(gd.SU(n=3).belongs(links.reshape(-1, 3, 3), atol=1e-10).all())
    p = lattice.plaquettes(links, 2).flatten()
    z = (float(p.mean()) - lattice.mean_plaquette_exact(beta)) / (float(p.std()) / math.sqrt(len(p)))
    assert abs(z) < 4, z
    with pytest.raises(ValueError, match="lattice side"):
        lattice.n_links(1)
    with pytest.raises(ValueError, match="step > 0"):
        lattice.metropolis_su3(2, beta, 10, 1, 0.0)


def test_wilson_density_is_normalised_on_a_single_plaquette():
    # L = 2: one plaquette; E_Haar[exp(beta tr/3)] / z = 1, checked by Monte Carlo over Haar links
    su3 = gd.SU(n=3)
    links = su3.random_point(4 * 20000, torch.Generator().manual_seed(2), dtype=torch.float64).reshape(20000, 4, 3, 3)
    log_p = lattice.wilson_log_density(links, 2, 2.0, su3.log_volume) + 4 * su3.log_volume
    weights = log_p.exp()
    assert float(weights.mean()) == pytest.approx(1.0, abs=5 * float(weights.std()) / math.sqrt(20000))


def test_nll_metrics_pair_the_model_and_the_truth_per_point():
    from geodiffusion.experiments.lie import _nll_metrics

    model, truth = torch.tensor([-1.0, -2.0, -4.0]), torch.tensor([-1.5, -1.5, -3.0], dtype=torch.float64)
    metrics = _nll_metrics(model, truth)
    gaps = torch.tensor([-0.5, 0.5, 1.0], dtype=torch.float64)  # log p_true - log p_model per point
    assert metrics["nll_model"] == pytest.approx(7 / 3) and metrics["nll_true"] == pytest.approx(2.0)
    assert metrics["nll_gap"] == pytest.approx(1 / 3)
    assert metrics["nll_gap_se"] == pytest.approx(float(gaps.std()) / math.sqrt(3))


def test_specs_are_registered_and_reject_mismatched_manifolds():
    for cls in (SO3MixtureExperiment, SU3LatticeExperiment):
        spec = cls.resolve_spec(quick=True)
        assert type(gd.build(spec.model_dump_json(), Experiment)) is cls
    with pytest.raises(ValidationError, match="SU\\(3\\)\\^12"):
        SU3LatticeExperiment.resolve_spec({"size": 3, "process": {"manifold": {"power": 4}}})
    # any network on SU(3)^k is accepted in place of the default gauge potential, on the right power only
    tangent = {"kind": "tangent_mlp", "manifold": {"kind": "product", "factor": {"kind": "su", "n": 3}, "power": 4}}
    assert SU3LatticeExperiment.resolve_spec({"model": tangent}, quick=True).model.kind == "tangent_mlp"
    with pytest.raises(ValidationError, match="SU\\(3\\)\\^12"):
        SU3LatticeExperiment.resolve_spec({"model": tangent})
    with pytest.raises(ValidationError, match="SO\\(3\\)"):
        SO3MixtureExperiment.resolve_spec({"process": {"manifold": {"kind": "sphere", "dim": 2}}})
    # both inherit the shared manifold-experiment fields and their batch-size check
    for cls in (SO3MixtureExperiment, SU3LatticeExperiment):
        assert issubclass(cls.Spec, ManifoldTrainingSpec)
        with pytest.raises(ValidationError, match="exceeds n_train"):
            cls.resolve_spec({"n_train": 100, "training": {"batch_size": 128}}, quick=True)


TRAIN = {"steps": 20, "batch_size": 32, "checkpoint_every": 20, "log_every": 10}


def test_tiny_so3_mixture_run(tmp_path):
    spec = SO3MixtureExperiment.resolve_spec(
        {
            "training": TRAIN,
            "n_train": 64,
            "n_test": 16,
            "n_samples": 16,
            "likelihood": {"steps": 3},
            "sampler": {"steps": 10},
            "model": {"hidden": 16, "depth": 1},
        },
        quick=True,
    )
    metrics = SO3MixtureExperiment(spec).execute(tmp_path, progress=False)
    assert metrics["nll_gap"] == pytest.approx(metrics["nll_model"] - metrics["nll_true"])
    assert metrics["nll_uniform"] == pytest.approx(math.log(16 * math.sqrt(2) * math.pi**2))
    assert metrics["max_off_manifold"] <= 1e-6 and (tmp_path / "rotation_angles.png").is_file()


def test_tiny_su3_lattice_run(tmp_path):
    # exact SU(3) heat-kernel draws at small t go through the torus probability-flow ODE (slow): keep this tiny
    spec = SU3LatticeExperiment.resolve_spec(
        {
            "training": {**TRAIN, "steps": 4, "batch_size": 8, "checkpoint_every": 4},
            "n_train": 16,
            "n_test": 4,
            "n_sweeps": 3,
            "likelihood": {"steps": 2},
            "sampler": {"steps": 3},
            "model": {"hidden": 8, "depth": 1},
        },
        quick=True,
    )
    metrics = SU3LatticeExperiment(spec).execute(tmp_path, progress=False)
    assert metrics["mean_plaquette_exact"] == pytest.approx(lattice.mean_plaquette_exact(3.0))
    assert metrics["nll_gap"] == pytest.approx(metrics["nll_model"] - metrics["nll_true"])
    assert 0 < metrics["nll_gap_se"] < math.inf
    assert metrics["nll_uniform"] == pytest.approx(4 * SU(n=3).log_volume)  # L = 2: four links
    assert metrics["max_off_manifold"] <= 1e-6 and (tmp_path / "plaquettes.png").is_file()
