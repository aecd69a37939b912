"""Experiments: registration, spec layering (default, quick, config, seed), the execute template, quickstart."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_QUICKSTART as TINY
from pydantic import Field, ValidationError

import geodiffusion as gd
from geodiffusion.experiments import Experiment, ExperimentSpec, QuickstartExperiment, merge_spec_dicts
from geodiffusion.experiments.base import final_losses
from geodiffusion.testing import tolerance


def test_quickstart_is_registered_and_builds_from_its_json():
    assert gd.registry(Experiment)["quickstart"] is QuickstartExperiment
    for quick in (False, True):
        spec = QuickstartExperiment.resolve_spec(quick=quick)
        rebuilt = gd.build(spec.model_dump_json(), Experiment)
        assert type(rebuilt) is QuickstartExperiment and rebuilt.spec == spec
        assert gd.build(json.loads(spec.model_dump_json())).spec == spec


def test_spec_layers_default_then_quick_then_config_then_seed():
    full = QuickstartExperiment.resolve_spec()
    quick = QuickstartExperiment.resolve_spec(quick=True)
    assert quick.training.steps == QuickstartExperiment.quick_overrides["training"]["steps"] < full.training.steps
    assert quick.training.weighting == full.training.weighting  # untouched fields keep the default

    spec = QuickstartExperiment.resolve_spec({"training": {"steps": 7}}, quick=True, seed=11)
    assert spec.training.steps == 7 and spec.training.lr == quick.training.lr
    assert spec.seed == 11 and spec.training.seed == 11

    # a nested component of another kind replaces the default whole: no probability-flow fields leak in
    sde = QuickstartExperiment.resolve_spec({"sampler": {"kind": "reverse_sde", "steps": 10}})
    assert sde.sampler.kind == "reverse_sde" and sde.sampler.steps == 10 and not hasattr(sde.sampler, "rtol")


def test_merge_spec_dicts_recurses_and_replaces_on_a_new_kind():
    base = {"a": 1, "b": {"kind": "x", "p": 1, "q": 2}, "c": {"d": {"e": 1, "f": 2}}}
    merged = merge_spec_dicts(base, {"b": {"q": 3}, "c": {"d": {"f": 5}}, "g": [1]})
    assert merged == {"a": 1, "b": {"kind": "x", "p": 1, "q": 3}, "c": {"d": {"e": 1, "f": 5}}, "g": [1]}
    assert merge_spec_dicts(base, {"b": {"kind": "y", "r": 0}})["b"] == {"kind": "y", "r": 0}
    assert base["b"] == {"kind": "x", "p": 1, "q": 2}  # inputs are not modified


@pytest.mark.parametrize(
    "override,field",
    [
        ({"group": {"kind": "so", "dim": 2}}, "group"),
        ({"training": {"batch_size": 512}, "n_train": 100}, "batch_size"),
        ({"equivariance_times": [0.5, 2.0]}, "equivariance_times"),
        ({"n_trian": 5}, "n_trian"),
        ({"training": {"lr": 0}}, "training.lr"),
        ({"data": {"k": 0}}, "data.k"),
        ({"process": {"kind": "nope"}}, "nope"),
    ],
)
def test_invalid_specs_fail_naming_the_field(override, field):
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        QuickstartExperiment.resolve_spec(override)


class ProbeExperiment(Experiment, register=False):
    """A test double recording what :meth:`execute` did before calling :meth:`run`."""

    class Spec(ExperimentSpec):
        process: gd.component_spec(gd.Process) = Field({"kind": "vp"})
        model: gd.component_spec(gd.ScoreModel) = Field({"kind": "mlp", "dim": 2})
        sampler: gd.component_spec(gd.Sampler) = Field({"kind": "probability_flow"})
        value: float = 1.0
        diverge: bool = False

    def run(self, out_dir: Path, *, device, progress):
        self.saw_spec = json.loads((out_dir / "spec.json").read_text())
        self.device = device
        return {"int": 3, "tensor": torch.tensor(2.5), "value": float("nan") if self.spec.diverge else self.spec.value}


def test_execute_writes_the_spec_before_running_and_the_metrics_after(tmp_path):
    probe = ProbeExperiment()
    metrics = probe.execute(tmp_path)
    assert probe.saw_spec == probe.spec.model_dump(mode="json") and probe.device == torch.device("cpu")
    assert metrics == {"int": 3.0, "tensor": 2.5, "value": 1.0}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert ProbeExperiment(ProbeExperiment.Spec.model_validate(probe.saw_spec)).spec == probe.spec

    with pytest.raises(ValueError, match="different spec"):
        ProbeExperiment(value=2.0).execute(tmp_path)
    # a run written before the field `diverge` existed resumes while the field keeps its default, and only then
    older = {k: v for k, v in probe.saw_spec.items() if k != "diverge"}
    (tmp_path / "spec.json").write_text(json.dumps(older))
    assert ProbeExperiment().execute(tmp_path) == metrics
    (tmp_path / "spec.json").write_text(json.dumps(older))
    with pytest.raises(ValueError, match="different spec"):
        ProbeExperiment(diverge=True).execute(tmp_path)
    with pytest.warns(RuntimeWarning, match="nan"):
        metrics = ProbeExperiment(diverge=True).execute(tmp_path / "nan")
    assert metrics["value"] is None and json.loads((tmp_path / "nan" / "metrics.json").read_text())["value"] is None


def test_execute_rejects_metrics_that_are_not_numbers(tmp_path):
    class Bad(ProbeExperiment, register=False):
        def run(self, out_dir, *, device, progress):
            return {"loss": "low"}

    with pytest.raises(TypeError, match="loss"):
        Bad().execute(tmp_path)


def test_cached_json_computes_once_and_keeps_non_finite_values(tmp_path):
    from geodiffusion.experiments.base import cached_json

    calls = []

    def compute():
        calls.append(1)
        return {"a": 1.5, "b": float("-inf"), "c": float("nan")}

    path = tmp_path / "stage" / "metrics.json"
    first = cached_json(path, compute)
    again = cached_json(path, compute)
    assert len(calls) == 1 and first["a"] == again["a"] == 1.5 and first["b"] == -math.inf
    # JSON has no NaN or inf: stored as null, read back as NaN
    assert json.loads(path.read_text()) == {"a": 1.5, "b": None, "c": None} and math.isnan(again["b"])


def test_final_losses_are_the_tail_mean_and_a_spike_proof_median():
    # 40 steps: the tail is the last 4; one spike moves the mean, not the median
    losses = [9.0] * 36 + [1.0, 3.0, 2.0, 1000.0]
    assert final_losses(losses) == {"final_loss": 251.5, "final_loss_median": 2.5}
    assert final_losses([4.0, 2.0], "_mlp") == {"final_loss_mlp": 2.0, "final_loss_median_mlp": 2.0}
    with pytest.raises(ValueError, match="at least one"):
        final_losses([])


def test_quickstart_tiny_float64_run_is_exactly_reproducible_from_its_folder(tmp_path):
    spec = QuickstartExperiment.resolve_spec({**TINY, "dtype": "float64"}, quick=True)
    metrics = QuickstartExperiment(spec).execute(tmp_path, progress=False)
    names = {"nll_true", "energy_true", "mmd_true"} | {
        f"{m}_{model}"
        for m in ("nll", "energy", "mmd", "equivariance_error", "final_loss", "final_loss_median", "train_seconds")
        for model in ("mlp", "frame_averaged")
    }
    assert names <= metrics.keys() and all(math.isfinite(v) for v in metrics.values())
    # frame averaging is exact up to rounding; the plain MLP is not equivariant
    assert metrics["equivariance_error_frame_averaged"] < tolerance(torch.float64, "equivariance")
    assert metrics["equivariance_error_mlp"] > 1e-3
    for name in ("mlp", "frame_averaged"):
        assert (tmp_path / name / "checkpoints" / "last.pt").is_file()
    assert {"samples.png", "loss.png", "density.png", "samples.pt"} <= {p.name for p in tmp_path.iterdir()}

    # the folder alone reproduces the run: rebuild from spec.json, resume (training is done), re-evaluate
    rebuilt = gd.build((tmp_path / "spec.json").read_text(), Experiment)
    again = rebuilt.execute(tmp_path, progress=False)
    timings = {k for k in metrics if "seconds" in k}
    assert {k: v for k, v in again.items() if k not in timings} == {k: v for k, v in metrics.items() if k not in timings}
