"""The earth-science experiments: registration, spec validation, a tiny end-to-end run."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

import geodiffusion as gd
import geodiffusion.experiments.earth as earth_module
from geodiffusion.experiments import EarthExperiment, Experiment

TINY = {
    "n_seeds": 2,
    "model": {"hidden": 16, "depth": 1},
    "training": {"steps": 30, "batch_size": 64, "checkpoint_every": 30, "log_every": 10, "weighting": "likelihood"},
    "likelihood": {"steps": 4},
    "sampler": {"steps": 10},
    "n_samples": 50,
    "max_test": 16,
    "grid": 6,
}


@pytest.mark.parametrize("name", ["volcano", "earthquake", "flood", "fire"])
def test_each_dataset_is_a_registered_experiment(name):
    cls = gd.registry(Experiment)[f"earth-{name}"]
    assert issubclass(cls, EarthExperiment) and cls.resolve_spec().dataset == name
    assert cls.resolve_spec().n_seeds == 5  # the literature's protocol
    spec = cls.resolve_spec(quick=True)
    assert type(gd.build(spec.model_dump_json(), Experiment)) is cls


def test_specs_reject_a_process_off_the_sphere_and_oversized_batches():
    cls = gd.registry(Experiment)["earth-volcano"]
    with pytest.raises(ValidationError, match="process"):
        cls.resolve_spec({"process": {"kind": "vp"}})
    with pytest.raises(ValidationError, match="batch_size"):
        cls.resolve_spec({"training": {"batch_size": 700}})


def test_tiny_volcano_run_writes_metrics_plots_and_samples_on_the_sphere(tmp_path, monkeypatch):
    cls = gd.registry(Experiment)["earth-volcano"]
    spec = cls.resolve_spec(TINY, quick=True)
    calls, real_nll = [], earth_module.riemannian_log_likelihood
    monkeypatch.setattr(earth_module, "riemannian_log_likelihood", lambda *a, **k: calls.append(1) or real_nll(*a, **k))
    metrics = cls(spec).execute(tmp_path, progress=False)
    first_calls = len(calls)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    for name in ("spec.json", "density.png", "samples.png", "samples.pt", "seed1/checkpoints/last.pt"):
        assert (tmp_path / name).is_file(), name
    seeds = [metrics["nll_seed0"], metrics["nll_seed1"]]
    assert metrics["nll_mean"] == pytest.approx(sum(seeds) / 2)
    assert metrics["nll_std"] == pytest.approx(abs(seeds[0] - seeds[1]) / math.sqrt(2))
    assert [json.loads((tmp_path / f"seed{k}" / "nll.json").read_text())["test_nll"] for k in (0, 1)] == seeds
    assert metrics["nll_uniform"] == pytest.approx(math.log(4 * math.pi))
    assert metrics["max_off_sphere"] <= 1e-6
    assert metrics["n_test"] == 16.0 and metrics["n_train"] == 662.0
    # a resumed run reads each finished seed's NLL back instead of integrating the flow again (test and val of
    # 2 seeds: 4 calls fewer; the density plot still integrates it)
    (tmp_path / "metrics.json").unlink()
    resumed = cls(spec).execute(tmp_path, progress=False)
    assert len(calls) - first_calls == first_calls - 4
    assert [resumed[f"nll_seed{k}"] for k in (0, 1)] == seeds and resumed["nll_seconds"] == metrics["nll_seconds"]
