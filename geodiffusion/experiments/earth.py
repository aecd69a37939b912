r"""Density estimation of earth-science events on :math:`S^2` by Riemannian diffusion (2310.20030, §5.1).

Brownian noising :math:`dX = \sqrt{\beta(t)}\,dB^{S^2}` with the exact heat-kernel score as the DSM target, a
tangent MLP score :math:`s_\theta(t, x) = P_x\,\mathrm{MLP}(x, t)/\sigma_t`, and the test NLL
:math:`-\log p_\varepsilon(x)` (nats, w.r.t. the area measure of the unit sphere) by the Riemannian probability-flow
ODE with the exact divergence. As in the literature: random 80/10/10 splits, mean ± std over 5 split/training seeds.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.data.earth import EARTH_DATASETS, load_earth, sphere_to_lat_lon
from geodiffusion.experiments.base import Experiment, ExperimentSpec, cached_json
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.riemannian import ChartODEOptions, riemannian_log_likelihood
from geodiffusion.spec import component_spec
from geodiffusion.training.trainer import TrainingSpec, derive_seed

__all__ = ["EarthExperiment", "EarthVolcano", "EarthEarthquake", "EarthFlood", "EarthFire"]

_SPHERE = {"kind": "sphere", "dim": 2}
_PROCESS = {"kind": "brownian", "manifold": _SPHERE, "beta_min": 1e-3, "beta_max": 8.0}


class EarthExperiment(Experiment, register=False):
    r"""Riemannian score-based density estimation of one earth dataset on :math:`S^2`.

    Metrics (nats per test event): ``nll_mean`` and ``nll_std`` (sample std over seeds), ``nll_seed<k>``,
    ``val_nll_mean``, ``nll_uniform`` (:math:`\log 4\pi`, the uniform density), ``max_off_sphere`` (largest
    :math:`|\,\|x\| - 1|` of the generated samples), ``train_seconds``, ``nll_seconds``, ``n_train``/``n_test``.
    Plots: ``density.png`` (the first seed's model density on a Mollweide map with the test events) and ``samples.png``.
    """

    threads = 1  # small MLPs: extra intra-op threads only oversubscribe shared cores

    quick_overrides = {
        "n_seeds": 2,
        "model": {"hidden": 64, "depth": 2},
        "training": {"steps": 150, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.9, "checkpoint_every": 150, "log_every": 50},
        "likelihood": {"steps": 20},
        "sampler": {"steps": 50},
        "n_samples": 200,
        "max_test": 128,
        "grid": 24,
    }

    class Spec(ExperimentSpec):
        """An earth-science dataset on S^2: Brownian noising, tangent MLP, probability-flow NLL over seeds."""

        dataset: Literal["volcano", "earthquake", "flood", "fire"]
        n_seeds: int = Field(5, ge=1, description="number of random 80/10/10 splits (seed k splits and trains run k)")
        process: component_spec(Process) = Field(_PROCESS, description="Brownian motion on S^2 with a linear beta schedule")
        model: component_spec(ScoreModel) = Field(
            {"kind": "tangent_mlp", "manifold": _SPHERE, "hidden": 512, "depth": 5, "process": _PROCESS},
            description="score network s_theta(t, x), a tangent vector at x",
        )
        sampler: component_spec(Sampler) = Field(
            {"kind": "geodesic_euler_maruyama", "steps": 500}, description="reverse-SDE sampler of the sample plot"
        )
        training: TrainingSpec = Field(
            TrainingSpec(steps=20000, batch_size=512, lr=5e-4, ema_decay=0.999, weighting="sigma2", checkpoint_every=2000),
            description="optimisation settings (one run per seed)",
        )
        likelihood: ChartODEOptions = Field(
            ChartODEOptions(method="rk4", steps=100), description="Riemannian probability-flow ODE of the NLL"
        )
        max_test: int | None = Field(None, ge=1, description="evaluate the NLL on at most this many test events (None: all)")
        n_samples: int = Field(2000, ge=1, description="samples drawn from the first seed's model for the plots")
        grid: int = Field(90, ge=0, description="latitude cells of the density map (twice as many in longitude; 0: no map)")
        dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and model")

        @model_validator(mode="after")
        def _consistent(self):
            manifold = getattr(self.process, "manifold", None)
            if manifold is None or getattr(manifold, "kind", None) != "sphere" or getattr(manifold, "dim", None) != 2:
                raise ValueError(f"process: expected a process on the sphere S^2, got {self.process!r}")
            n_train = round(0.8 * EARTH_DATASETS[self.dataset][0])
            if self.training.batch_size > n_train:
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds the {n_train} training events")
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        metrics: dict[str, float] = {"nll_uniform": math.log(4 * math.pi)}
        nll, val_nll, seconds, nll_seconds = [], [], 0.0, 0.0
        first_model = None
        for k in range(s.n_seeds):
            train, val, test = (x.to(device) for x in load_earth(s.dataset, seed=k, dtype=dtype))
            if s.max_test is not None:
                test, val = test[: s.max_test], val[: s.max_test]
            training = s.training.model_copy(update={"seed": derive_seed(s.training.seed, "seed", k) % 2**31})
            score, train_seconds = self.train_model(
                process, train, out_dir / f"seed{k}", k, device=device, progress=progress, dtype=dtype, training=training
            )
            seconds += train_seconds

            def evaluate(score=score, test=test, val=val) -> dict[str, float]:
                start = time.perf_counter()
                test_nll = float(-riemannian_log_likelihood(score, process, test, options=s.likelihood).mean())
                elapsed = time.perf_counter() - start
                val_nll = float(-riemannian_log_likelihood(score, process, val, options=s.likelihood).mean())
                return {"test_nll": test_nll, "val_nll": val_nll, "test_seconds": elapsed}

            # each seed's numbers as soon as they exist: a multi-hour run can be read, and resumed, seed by seed
            result = cached_json(out_dir / f"seed{k}" / "nll.json", evaluate)
            nll.append(result["test_nll"])
            val_nll.append(result["val_nll"])
            # files written before the timing was recorded lack it: the total is then unknown (null)
            nll_seconds += result.get("test_seconds", math.nan)
            metrics[f"nll_seed{k}"] = nll[-1]
            if k == 0:
                first_model, first_test = score, test
                metrics["n_train"], metrics["n_test"] = float(len(train)), float(len(test))
        values = torch.tensor(nll, dtype=torch.float64)
        metrics["nll_mean"] = float(values.mean())
        metrics["nll_std"] = float(values.std()) if len(nll) > 1 else 0.0
        metrics["val_nll_mean"] = float(torch.tensor(val_nll, dtype=torch.float64).mean())
        metrics["train_seconds"] = seconds
        metrics["nll_seconds"] = nll_seconds

        sampler = build(s.sampler, Sampler)
        with torch.no_grad():
            samples = sampler.sample(
                first_model,
                process,
                (s.n_samples, 3),
                generator=torch.Generator().manual_seed(derive_seed(s.seed, "sample")),
                device=device,
                dtype=dtype,
                progress=progress,
            )
        metrics["max_off_sphere"] = float((samples.norm(dim=-1) - 1).abs().max())
        torch.save({"samples": samples.cpu(), "test": first_test.cpu()}, out_dir / "samples.pt")
        self._plot_samples(out_dir / "samples.png", samples, first_test)
        if s.grid > 0:
            self._plot_density(out_dir / "density.png", first_model, process, first_test, dtype, device)
        return metrics

    # --- plots ----------------------------------------------------------------

    def _plot_samples(self, path: Path, samples: Tensor, test: Tensor) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 3.6), layout="constrained")
        for ax, (title, pts) in zip(
            fig.subplots(1, 2, subplot_kw={"projection": "mollweide"}),
            ((f"{self.spec.dataset}: test events", test), ("model samples", samples)),
            strict=True,
        ):
            lat, lon = sphere_to_lat_lon(pts.detach().cpu().double())
            ax.scatter(torch.deg2rad(lon).numpy(), torch.deg2rad(lat).numpy(), s=1.5, alpha=0.6)
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        fig.savefig(path, dpi=110)

    def _plot_density(self, path: Path, model, process: Process, test: Tensor, dtype, device) -> None:
        from matplotlib.figure import Figure

        s = self.spec
        # cell centres of an equal-angle grid: never exactly at the poles
        lat = (torch.arange(s.grid, dtype=torch.float64) + 0.5) * 180.0 / s.grid - 90.0
        lon = (torch.arange(2 * s.grid, dtype=torch.float64) + 0.5) * 180.0 / s.grid - 180.0
        glat, glon = torch.meshgrid(lat, lon, indexing="ij")
        phi, lam = torch.deg2rad(glat), torch.deg2rad(glon)
        points = torch.stack([torch.cos(phi) * torch.cos(lam), torch.cos(phi) * torch.sin(lam), torch.sin(phi)], -1)
        points = points.reshape(-1, 3).to(dtype=dtype, device=device)
        log_p = torch.cat(
            [riemannian_log_likelihood(model, process, chunk, options=s.likelihood) for chunk in points.split(4096)]
        )
        density = log_p.exp().reshape(s.grid, 2 * s.grid).detach().cpu().double()
        fig = Figure(figsize=(9, 4.8), layout="constrained")
        ax = fig.subplots(subplot_kw={"projection": "mollweide"})
        mesh = ax.pcolormesh(
            torch.deg2rad(glon).numpy(), torch.deg2rad(glat).numpy(), density.numpy(), cmap="viridis", shading="auto"
        )
        tlat, tlon = sphere_to_lat_lon(test.detach().cpu().double())
        ax.scatter(torch.deg2rad(tlon).numpy(), torch.deg2rad(tlat).numpy(), s=1.5, c="red", alpha=0.6, label="test events")
        fig.colorbar(mesh, ax=ax, shrink=0.7, label="model density (per steradian)")
        ax.set_title(f"{s.dataset}: learned density")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=7)
        fig.savefig(path, dpi=110)


class EarthVolcano(EarthExperiment, kind="earth-volcano"):
    """Volcanic eruptions (NOAA NCEI, 827 events) on S^2."""

    class Spec(EarthExperiment.Spec):
        """Volcano eruptions on S^2."""

        dataset: Literal["volcano", "earthquake", "flood", "fire"] = "volcano"


class EarthEarthquake(EarthExperiment, kind="earth-earthquake"):
    """Significant earthquakes (NOAA NCEI, 6120 events) on S^2."""

    class Spec(EarthExperiment.Spec):
        """Earthquakes on S^2."""

        dataset: Literal["volcano", "earthquake", "flood", "fire"] = "earthquake"


class EarthFlood(EarthExperiment, kind="earth-flood"):
    """Large floods (Dartmouth Flood Observatory, 4875 events) on S^2."""

    class Spec(EarthExperiment.Spec):
        """Floods on S^2."""

        dataset: Literal["volcano", "earthquake", "flood", "fire"] = "flood"


class EarthFire(EarthExperiment, kind="earth-fire"):
    """Active fires (NASA FIRMS, 12809 events) on S^2."""

    class Spec(EarthExperiment.Spec):
        """Fires on S^2."""

        dataset: Literal["volcano", "earthquake", "flood", "fire"] = "fire"
