"""The command line, called in-process through ``main(argv)``."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import TINY_QUICKSTART as TINY

import geodiffusion as gd
from geodiffusion.cli import main
from geodiffusion.experiments import Experiment, QuickstartExperiment
from geodiffusion.registry import families


@pytest.fixture
def tiny_config(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_list_prints_experiments_and_every_family(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out
    for family in families():
        assert f"{family.__name__} (" in out
        for kind in gd.registry(family):
            assert kind in out


def test_run_quick_writes_spec_metrics_checkpoints_and_plots(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    torch.set_num_threads(2)
    code = main(["run", "quickstart", "--quick", "--config", str(tiny_config), "--out", str(out), "--seed", "3", "--no-progress"])
    assert code == 0
    assert torch.get_num_threads() == QuickstartExperiment.threads == 1  # the experiment's choice, no --threads given
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "nll_frame_averaged" in printed

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert len(list(out.glob("*/checkpoints/*.pt"))) == 2
    assert list(out.glob("*.png"))
    spec = json.loads((out / "spec.json").read_text())
    assert spec["seed"] == 3 and spec["training"]["seed"] == 3 and spec["training"]["steps"] == 20
    experiment = gd.build(spec, Experiment)
    assert isinstance(experiment, QuickstartExperiment)
    assert experiment.spec == QuickstartExperiment.resolve_spec(TINY, quick=True, seed=3)


def test_bad_config_field_fails_with_exit_code_2_naming_the_field(tmp_path, capsys):
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"training": {"lr": -1.0, "bogus": 1}}))
    assert main(["run", "quickstart", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "training.lr" in err and "greater than 0" in err and "training.bogus" in err
    assert not (tmp_path / "o").exists()  # nothing is written for an invalid spec


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "quickstart", "--config", "/no/such/file.json"], "not found"),
        (["run", "quickstart", "--device", "warp:0"], "invalid device"),
        (["run", "quickstart", "--threads", "0"], "--threads"),
    ],
)
def test_usage_errors_exit_with_code_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_malformed_config_and_foreign_output_folder_exit_with_code_2(tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["run", "quickstart", "--config", str(broken)]) == 2
    assert "cannot read config" in capsys.readouterr().err
    out = tmp_path / "taken"
    out.mkdir()
    (out / "spec.json").write_text(json.dumps({"kind": "quickstart", "seed": 99}))
    assert main(["run", "quickstart", "--out", str(out)]) == 2
    assert "different spec" in capsys.readouterr().err


def test_yaml_config_and_seed_resolve_in_a_dry_run(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  steps: 5\nsampler:\n  kind: reverse_sde\n  steps: 20\n")
    assert main(["run", "quickstart", "--config", str(config), "--seed", "4", "--dry-run"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert (
        spec["training"]["steps"] == 5
        and spec["seed"] == 4
        and spec["sampler"]
        == {
            "kind": "reverse_sde",
            "steps": 20,
            "eps": 1e-3,
            "method": "euler",
        }
    )


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "geodiffusion", "list"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "quickstart" in result.stdout
