"""Rotated digits, image metrics (Fréchet distance, SSIM, Δx0) and the rotated-digits / bridge experiments."""

from __future__ import annotations

import json
import math

import pytest
import torch
from pydantic import ValidationError

import geodiffusion as gd
from geodiffusion.cli import main
from geodiffusion.data.digits import PairedDigits, RotatedDigits, load_digits_images, rotate_c4, sobel_edges
from geodiffusion.experiments import Experiment
from geodiffusion.experiments.images import BridgeDenoiseExperiment, BridgeStyleExperiment, RotatedDigitsExperiment
from geodiffusion.metrics.images import delta_x0, frechet_distance, l1_error, ssim

D4 = gd.build({"kind": "dihedral", "n": 4, "action": "image"})

# --- data ------------------------------------------------------------------------------------------------


def test_digits_are_scaled_upsampled_and_rotations_commute_with_upsampling():
    small, labels = load_digits_images(8)
    big, _ = load_digits_images(16)
    assert small.shape == (1797, 1, 8, 8) and big.shape == (1797, 1, 16, 16) and labels.shape == (1797,)
    assert float(small.min()) == -1.0 and float(small.max()) == 1.0 and set(labels.tolist()) == set(range(10))
    up = torch.nn.functional.interpolate(small[:20].double(), scale_factor=2, mode="bilinear", align_corners=False)
    for g in D4.elements():
        rotated_up = torch.nn.functional.interpolate(D4.act(g, small[:20]).double(), scale_factor=2, mode="bilinear")
        torch.testing.assert_close(rotated_up, D4.act(g, up), atol=1e-12, rtol=0)


def test_rotated_digits_are_seeded_quarter_turns_and_split():
    data = RotatedDigits(size=8, seed=3).load()
    again = RotatedDigits(size=8, seed=3).load()
    assert data["train"].shape == (1500, 1, 8, 8) and data["test"].shape == (297, 1, 8, 8)
    assert all(torch.equal(data[k], again[k]) for k in data)
    counts = torch.bincount(torch.cat([data["train_turns"], data["test_turns"]]), minlength=4)
    assert float(counts.min()) > 1797 / 4 - 4 * math.sqrt(1797 * 3 / 16)  # every element used, about uniformly
    plain = RotatedDigits(size=8, seed=3, rotate=False).load()
    turns = data["test_turns"]
    torch.testing.assert_close(data["test"], rotate_c4(plain["test"], turns), atol=0, rtol=0)


def test_edge_maps_are_d4_equivariant_and_pairs_are_fixed():
    x = load_digits_images(16)[0][:16]
    edges = sobel_edges(x)
    for g in D4.elements():
        torch.testing.assert_close(sobel_edges(D4.act(g, x)), D4.act(g, edges), atol=1e-5, rtol=0)
    style = PairedDigits(size=8, task="style").load()
    assert float(style["train_x_T"].min()) >= -1.0 and float(style["test_x_T"].max()) <= 1.0
    noisy, again = PairedDigits(size=8, task="denoise").load(), PairedDigits(size=8, task="denoise").load()
    assert torch.equal(noisy["test_x_T"], again["test_x_T"])
    residual = torch.cat([noisy["train_x_T"] - noisy["train"], noisy["test_x_T"] - noisy["test"]])
    assert abs(float(residual.std()) - 0.5) < 0.01  # tau = 0.5
    with pytest.raises(ValidationError, match="task"):
        PairedDigits(task="colour")


# --- metrics ---------------------------------------------------------------------------------------------


def test_frechet_distance_matches_closed_forms_of_gaussians():
    dtype = torch.float64
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=dtype), torch.tensor([1.0, -1.0, 2.0], dtype=dtype)
    d1, d2 = torch.tensor([1.0, 4.0, 0.25], dtype=dtype), torch.tensor([9.0, 1.0, 0.25], dtype=dtype)
    # commuting (diagonal) covariances: |dmu|^2 + sum (sqrt a - sqrt b)^2
    expected = float(((mu1 - mu2) ** 2).sum() + ((d1.sqrt() - d2.sqrt()) ** 2).sum())
    assert math.isclose(frechet_distance(mu1, torch.diag(d1), mu2, torch.diag(d2)), expected, rel_tol=1e-10)
    # invariant under a common rotation of both Gaussians, and zero between a Gaussian and itself
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=dtype))
    rotated = frechet_distance(q @ mu1, q @ torch.diag(d1) @ q.T, q @ mu2, q @ torch.diag(d2) @ q.T)
    assert math.isclose(rotated, expected, rel_tol=1e-8)
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    assert abs(frechet_distance(mu1, a @ a.T, mu1, a @ a.T)) < 1e-8


def test_image_metrics():
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert ssim(x, x) == pytest.approx(1.0) and l1_error(x, x) == 0.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert 1.0 > ssim(x + 0.1 * noise, x) > ssim(x + 0.5 * noise, x) and l1_error(x + 0.5, x) == pytest.approx(0.5)
    g = D4.elements()[1]
    assert delta_x0(D4.act(g, x), D4.act(g, x)) == 0.0 and delta_x0(x, x - 0.25) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equal shapes"):
        l1_error(x, x[:2])


# --- experiments -----------------------------------------------------------------------------------------

# the quick variants shrunk further for CI: a few seconds each
TINY_IMAGES = {
    "training": {"steps": 25, "checkpoint_every": 25},
    "classifier": {"steps": 20},
    "sampler": {"steps": 10},
    "n_samples": 12,
    "n_equivariance": 2,
}
TINY_BRIDGE = {"training": {"steps": 25}, "sampler": {"steps": 8}, "n_eval": 8, "n_equivariance": 2}
DELTA_TARGET = 1e-6  # SPDM: exactly 0 in exact arithmetic, float32 round-off otherwise


def _check_outputs(out, metrics, models=("unet", "wt", "fa")):
    for name in ("spec.json", "metrics.json", "samples.png", "loss.png", "samples.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in models:
        for key in ("delta_x0_", "train_seconds_", "sample_seconds_"):
            assert f"{key}{name}" in metrics
        assert f"delta_x0_{name}_plain_noise" in metrics
    # weight tying and frame averaging with equivariant noise carry g x_T to g x0; ordinary noise does not
    for name in ("wt", "fa"):
        assert metrics[f"delta_x0_{name}"] <= DELTA_TARGET
        assert metrics[f"delta_x0_{name}_plain_noise"] > 1e-3


def test_rotated_digits_quick_run_via_the_cli(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_IMAGES))
    out = tmp_path / "run"
    assert main(["run", "rotated-digits", "--quick", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _check_outputs(out, metrics)
    assert {"fd_unet", "fd_wt", "fd_fa", "fd_data", "classifier_accuracy"} <= set(metrics)
    assert (out / "classifier.pt").is_file()
    assert metrics["delta_x0_unet"] > 1e-3  # a plain network is not equivariant even with equivariant noise


@pytest.mark.parametrize("cls", [BridgeDenoiseExperiment, BridgeStyleExperiment], ids=["denoise", "style"])
def test_bridge_quick_runs(cls, tmp_path):
    spec = cls.resolve_spec(TINY_BRIDGE, quick=True)
    metrics = gd.build(spec, Experiment).execute(tmp_path, progress=False)
    _check_outputs(tmp_path, metrics)
    assert {"l1_unet", "l1_wt", "l1_fa", "ssim_unet", "ssim_wt", "ssim_fa", "l1_x_T", "ssim_x_T"} <= set(metrics)
    assert all(-1.0 <= metrics[f"ssim_{m}"] <= 1.0 for m in ("unet", "wt", "fa"))


def test_image_experiments_are_registered_and_validate_their_specs():
    table = gd.registry(Experiment)
    assert table["rotated-digits"] is RotatedDigitsExperiment
    assert table["bridge-denoise"] is BridgeDenoiseExperiment and table["bridge-style"] is BridgeStyleExperiment
    for cls in (RotatedDigitsExperiment, BridgeDenoiseExperiment, BridgeStyleExperiment):
        for quick in (False, True):
            spec = cls.resolve_spec(quick=quick)
            assert gd.build(spec.model_dump_json(), Experiment).spec == spec
    with pytest.raises(ValidationError, match="image_size"):
        RotatedDigitsExperiment.resolve_spec({"data": {"size": 8}})
    with pytest.raises(ValidationError, match="equivariant_sde"):
        RotatedDigitsExperiment.resolve_spec({"sampler": {"kind": "reverse_sde"}})
    with pytest.raises(ValidationError, match="task"):
        BridgeDenoiseExperiment.resolve_spec({"data": {"task": "style"}})
    with pytest.raises(ValidationError, match="sampler.group"):
        BridgeStyleExperiment.resolve_spec({"sampler": {"group": None}})
    with pytest.raises(ValidationError, match="image_channels"):
        BridgeStyleExperiment.resolve_spec({"model": {"image_channels": 1}})
