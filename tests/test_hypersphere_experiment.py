"""The vMF-mixture experiment on S^n: exact data density, AUROC, a tiny end-to-end run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import integrate

import geodiffusion as gd
from geodiffusion.experiments import Experiment, HypersphereExperiment, VMFMixture
from geodiffusion.experiments.hypersphere import auroc

TINY = {
    "model": {"hidden": 16, "depth": 1},
    "training": {"steps": 20, "batch_size": 64, "checkpoint_every": 20, "log_every": 10, "weighting": "likelihood"},
    "n_train": 256,
    "n_test": 32,
    "n_samples": 32,
    "likelihood": {"steps": 4},
    "sampler": {"steps": 10},
}


def test_vmf_mixture_density_integrates_to_one_on_the_circle():
    law = VMFMixture(dim=1, n_components=3, kappa=5.0, seed=2)
    theta = np.linspace(-math.pi, math.pi, 4001)
    x = torch.from_numpy(np.stack([np.cos(theta), np.sin(theta)], -1))
    assert integrate.simpson(law.log_prob(x).exp().numpy(), x=theta) == pytest.approx(1.0, abs=1e-9)


def test_vmf_samples_have_the_mean_resultant_length_of_the_law():
    # E[mu^T x] = I_{d/2}(kappa) / I_{d/2-1}(kappa) for vMF on S^{d-1}
    from scipy.special import ive

    law = VMFMixture(dim=15, n_components=1, kappa=40.0, seed=0)
    x = law.sample(4000, seed=1)
    assert torch.allclose(x.norm(dim=-1), torch.ones(4000, dtype=torch.float64), atol=1e-12)
    cos = x @ torch.from_numpy(law.means()[0])
    expected = ive(8, 40.0) / ive(7, 40.0)
    assert abs(float(cos.mean()) - expected) < 4 * float(cos.std()) / math.sqrt(4000)


def test_auroc_is_the_mann_whitney_statistic():
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 0.5
    assert auroc(torch.tensor([2.0]), torch.tensor([2.0])) == 0.5


def test_spec_rejects_components_on_another_sphere():
    with pytest.raises(ValidationError, match="S\\^127"):
        HypersphereExperiment.resolve_spec({"process": {"manifold": {"dim": 15}}})
    assert HypersphereExperiment.resolve_spec().data.dim == 127


def test_tiny_run_reports_nll_against_the_truth_and_samples_on_the_sphere(tmp_path):
    spec = HypersphereExperiment.resolve_spec(TINY, quick=True)
    assert type(gd.build(spec.model_dump_json(), Experiment)) is HypersphereExperiment
    metrics = HypersphereExperiment(spec).execute(tmp_path, progress=False)
    assert (tmp_path / "cosines.png").is_file() and (tmp_path / "model/checkpoints/last.pt").is_file()
    assert metrics["nll_gap"] == pytest.approx(metrics["nll_model"] - metrics["nll_true"])
    # |S^15| = 2 pi^8 / 7!
    assert metrics["nll_uniform"] == pytest.approx(math.log(2 * math.pi**8 / math.factorial(7)))
    assert metrics["nll_true"] < metrics["nll_uniform"]  # a concentrated law
    assert 0.0 <= metrics["ood_auroc_model_uniform"] <= 1.0 and metrics["ood_auroc_true_uniform"] > 0.99
    assert metrics["max_off_sphere"] <= 1e-6
