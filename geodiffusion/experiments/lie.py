r"""Riemannian diffusion on compact Lie groups (2310.20030, §5): a heat-kernel mixture on :math:`SO(3)` and a
two-dimensional SU(3) Wilson-action lattice field on :math:`SU(3)^k`, both with exactly known normalised densities,
so the model's test NLL is compared with the truth.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.data.lattice import mean_plaquette_exact, metropolis_su3, n_links, plaquettes, wilson_log_density
from geodiffusion.experiments.base import Experiment, ManifoldExperimentSpec, ManifoldTrainingSpec
from geodiffusion.manifolds.base import Manifold
from geodiffusion.metrics.two_sample import energy_distance
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.riemannian import ChartODEOptions, riemannian_log_likelihood
from geodiffusion.spec import component_spec
from geodiffusion.training.trainer import TrainingSpec, derive_seed

__all__ = ["SO3MixtureExperiment", "SU3LatticeExperiment"]


def _sample(experiment, score, process: Process, shape, device, dtype, progress) -> Tensor:
    with torch.no_grad():
        return build(experiment.spec.sampler, Sampler).sample(
            score,
            process,
            shape,
            generator=torch.Generator().manual_seed(derive_seed(experiment.spec.seed, "sample")),
            device=device,
            dtype=dtype,
            progress=progress,
        )


def _nll_metrics(log_p_model: Tensor, log_p_true: Tensor) -> dict[str, float]:
    """Test NLLs of the model and the truth, their gap and the gap's standard error (paired over test points)."""
    model, true = log_p_model.detach().to(torch.float64).cpu(), log_p_true.detach().to(torch.float64).cpu()
    gap = true - model
    return {
        "nll_model": float(-model.mean()),
        "nll_true": float(-true.mean()),
        "nll_gap": float(gap.mean()),
        "nll_gap_se": float(gap.std() / math.sqrt(len(gap))),
    }


_SO3 = {"kind": "so3"}
_SO3_PROCESS = {"kind": "brownian", "manifold": _SO3, "beta_min": 1e-3, "beta_max": 10.0}


class SO3MixtureExperiment(Experiment, kind="so3-mixture"):
    r"""Mixture of ``n_components`` heat kernels on :math:`SO(3)`,
    :math:`p(x) = \frac1K\sum_k p_{s}(\mu_k, x)` with Haar-random centres (exact density by the heat kernel).

    Metrics (nats per point, w.r.t. the Riemannian volume of :math:`SO(3)` with the metric of
    :class:`~geodiffusion.manifolds.SO3`): ``nll_true``, ``nll_model``, ``nll_gap`` (with its standard error over test
    points, ``nll_gap_se``), ``nll_uniform``,
    ``energy_model`` / ``energy_true`` (energy distance of model samples / fresh exact samples to held-out data, on
    the flattened matrices), ``max_off_manifold``, ``train_seconds``, ``nll_seconds``.
    """

    threads = 1

    quick_overrides = {
        "n_components": 4,
        "model": {"hidden": 64, "depth": 2},
        "training": {"steps": 300, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.95, "checkpoint_every": 300, "log_every": 50},
        "n_train": 2000,
        "n_test": 200,
        "n_samples": 200,
        "likelihood": {"steps": 20},
        "sampler": {"steps": 50},
    }

    class Spec(ManifoldExperimentSpec):
        """Heat-kernel mixture on SO(3)."""

        n_components: int = Field(16, ge=1, description="number of mixture components K")
        component_time: float = Field(0.02, gt=0, description="heat-kernel time s of every component")
        process: component_spec(Process) = Field(_SO3_PROCESS, description="Brownian motion on SO(3)")
        model: component_spec(ScoreModel) = Field(
            {"kind": "tangent_mlp", "manifold": _SO3, "hidden": 512, "depth": 4, "process": _SO3_PROCESS},
            description="score network s_theta(t, x) in T_x SO(3)",
        )
        n_test: int = Field(2000, ge=2, description="held-out points")
        n_samples: int = Field(2000, ge=2, description="samples drawn from the model")

        @model_validator(mode="after")
        def _consistent(self):
            for name, spec in (("process", self.process), ("model", self.model)):
                if getattr(getattr(spec, "manifold", None), "kind", None) != "so3":
                    raise ValueError(f"{name}: expected a component on SO(3), got {spec!r}")
            return self

    def _mixture(self, manifold: Manifold):
        s = self.spec
        centres = manifold.random_point(
            s.n_components, torch.Generator().manual_seed(derive_seed(s.seed, "centres")), dtype=torch.float64
        )
        kernel = manifold.heat_kernel()

        def sample(n: int, key: str) -> Tensor:
            gen = torch.Generator().manual_seed(derive_seed(s.seed, key))
            component = torch.randint(s.n_components, (n,), generator=gen)
            return kernel.sample(centres[component], torch.full((n,), s.component_time, dtype=torch.float64), gen)

        def log_prob(x: Tensor) -> Tensor:
            x = x.to(torch.float64)
            t = torch.full((len(x), s.n_components), s.component_time, dtype=torch.float64)
            logs = kernel.log_prob(centres[None].expand(len(x), -1, -1, -1), x[:, None].expand(-1, s.n_components, -1, -1), t)
            return torch.logsumexp(logs, -1) - math.log(s.n_components)

        return sample, log_prob

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        manifold = process.manifold
        sample, log_prob = self._mixture(manifold)
        train, test, fresh = sample(s.n_train, "train"), sample(s.n_test, "test"), sample(s.n_samples, "fresh")
        score, seconds = self.train_model(
            process, train.to(dtype=dtype, device=device), out_dir / "model", device=device, progress=progress, dtype=dtype
        )
        metrics: dict[str, float] = {"train_seconds": seconds, "nll_uniform": float(manifold.log_volume)}
        start = time.perf_counter()
        log_p = riemannian_log_likelihood(score, process, test.to(dtype=dtype, device=device), options=s.likelihood)
        metrics["nll_seconds"] = time.perf_counter() - start
        metrics.update(_nll_metrics(log_p, log_prob(test)))
        samples = _sample(self, score, process, (s.n_samples, 3, 3), device, dtype, progress)
        metrics["max_off_manifold"] = float((samples.mT @ samples - torch.eye(3, dtype=dtype, device=device)).abs().amax())
        held_out = test.to(dtype=dtype, device=device).flatten(1)
        metrics["energy_model"] = float(energy_distance(samples.flatten(1), held_out))
        metrics["energy_true"] = float(energy_distance(fresh.to(dtype=dtype, device=device).flatten(1), held_out))
        torch.save({"samples": samples.cpu(), "test": test.cpu()}, out_dir / "samples.pt")
        self._plot(out_dir / "rotation_angles.png", manifold, samples, test)
        return metrics

    def _plot(self, path: Path, manifold, samples: Tensor, test: Tensor) -> None:
        from matplotlib.figure import Figure

        eye = torch.eye(3, dtype=torch.float64).expand(len(test), 3, 3)
        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for name, pts in (("held-out data", test), ("model samples", samples)):
            pts = pts.detach().cpu().double()
            axis_angle = manifold.log(eye[: len(pts)], pts)  # rotation vectors (skew matrices) from the identity
            ax.hist(axis_angle[:, 2, 1].numpy(), bins=60, alpha=0.5, density=True, label=name)
        ax.set(xlabel="x-component of the rotation vector", ylabel="density", title="SO(3) heat-kernel mixture")
        ax.legend()
        fig.savefig(path, dpi=100)


def _su3_power(links: int) -> dict:
    return {"kind": "product", "factor": {"kind": "su", "n": 3}, "power": links}


_LATTICE_SIZE = 3
_SU3_PROCESS = {"kind": "brownian", "manifold": _su3_power(n_links(_LATTICE_SIZE)), "beta_min": 1e-3, "beta_max": 6.0}


class SU3LatticeExperiment(Experiment, kind="su3-lattice"):
    r"""Two-dimensional SU(3) gauge field with the Wilson action on an open :math:`L \times L` lattice,
    a density on :math:`SU(3)^{2L(L-1)}` known with its normaliser (:mod:`geodiffusion.data.lattice`). Data are
    drawn by Metropolis (checked against the exact mean plaquette). The default score model is
    :class:`~geodiffusion.models.GaugePotential`, gauge-equivariant by construction; at β = 3 the
    4×512 ``tangent_mlp`` did worse than the Haar density (docs/results.rst).

    Metrics: ``nll_true``, ``nll_model``, ``nll_gap`` and its standard error ``nll_gap_se``, ``nll_uniform`` (the Haar
    density; nats per configuration, w.r.t. the Riemannian volume),
    ``mean_plaquette_<exact|mcmc|model>``, ``energy_model`` / ``energy_mcmc`` (energy distance of the plaquette
    vectors of model samples / of a second MCMC set to held-out MCMC data), ``acceptance``, ``max_off_manifold``,
    ``mcmc_seconds``, ``train_seconds``, ``nll_seconds``.
    """

    threads = 1

    quick_overrides = {
        "size": 2,
        "process": {"manifold": {"power": 4}},
        "model": {"size": 2, "hidden": 64, "depth": 2},
        "training": {"steps": 200, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.95, "checkpoint_every": 200, "log_every": 50},
        "n_train": 1000,
        "n_test": 200,
        "n_sweeps": 40,
        "likelihood": {"steps": 10},
        "sampler": {"steps": 50},
    }

    class Spec(ManifoldTrainingSpec):
        """Wilson-action SU(3) lattice field in two dimensions."""

        size: int = Field(_LATTICE_SIZE, ge=2, le=8, description="lattice side L (2L(L-1) links)")
        beta: float = Field(3.0, ge=0, description="inverse coupling beta of the Wilson action")
        n_sweeps: int = Field(200, ge=1, description="Metropolis sweeps per chain (one independent chain per sample)")
        mcmc_step: float = Field(1.0, gt=0, description="scale epsilon of the Metropolis proposals exp(epsilon A)")
        process: component_spec(Process) = Field(_SU3_PROCESS, description="Brownian motion on SU(3)^k")
        model: component_spec(ScoreModel) = Field(
            {"kind": "gauge_potential", "size": _LATTICE_SIZE, "n": 3, "hidden": 256, "depth": 3},
            description="score network s_theta(t, U) in T_U SU(3)^k: a gauge potential for this L, or a network on "
            "SU(3)^k such as tangent_mlp",
        )
        training: TrainingSpec = Field(
            TrainingSpec(steps=10000, batch_size=256, lr=5e-4, ema_decay=0.999, weighting="sigma2", checkpoint_every=2000),
            description="optimisation settings",
        )
        likelihood: ChartODEOptions = Field(
            ChartODEOptions(method="rk4", steps=50), description="probability-flow ODE of the NLL"
        )
        n_train: int = Field(10000, ge=1, description="training configurations")
        n_test: int = Field(1000, ge=2, description="held-out configurations (and as many model samples)")
        dtype: Literal["float32", "float64"] = Field("float32", description="real dtype of data and model (complex64/128)")

        @model_validator(mode="after")
        def _consistent(self):
            want = _su3_power(n_links(self.size))
            for name, spec in (("process", self.process), ("model", self.model)):
                if name == "model" and spec.kind == "gauge_potential":  # defined by its lattice, not a manifold
                    if (spec.size, spec.n) != (self.size, 3):
                        raise ValueError(
                            f"model: expected a gauge potential on the L = {self.size} lattice of SU(3), got {spec!r}"
                        )
                    continue
                manifold = getattr(spec, "manifold", None)
                got = manifold.model_dump(mode="json") if manifold is not None else None
                if (
                    got is None
                    or got.get("kind") != "product"
                    or got.get("power") != want["power"]
                    or got.get("factor", {}).get("n") != 3
                ):
                    raise ValueError(
                        f"{name}: expected a component on SU(3)^{want['power']} for L = {self.size}, got {manifold!r}"
                    )
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        process = build(s.process, Process)
        factor = process.manifold.factor
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(derive_seed(s.seed, "mcmc"))
        links, acceptance = metropolis_su3(s.size, s.beta, s.n_train + 2 * s.n_test, s.n_sweeps, s.mcmc_step, gen)
        train, test, second = links.split([s.n_train, s.n_test, s.n_test])
        metrics: dict[str, float] = {"mcmc_seconds": time.perf_counter() - start, "acceptance": acceptance}
        score, metrics["train_seconds"] = self.train_model(
            process, train.to(dtype=cdtype, device=device), out_dir / "model", device=device, progress=progress, dtype=dtype
        )
        start = time.perf_counter()
        log_p = riemannian_log_likelihood(score, process, test.to(dtype=cdtype, device=device), options=s.likelihood)
        metrics["nll_seconds"] = time.perf_counter() - start
        metrics.update(_nll_metrics(log_p, wilson_log_density(test, s.size, s.beta, factor.log_volume)))
        metrics["nll_uniform"] = process.manifold.power * factor.log_volume
        samples = _sample(self, score, process, (s.n_test,) + tuple(process.manifold.point_shape), device, dtype, progress)
        eye = torch.eye(3, dtype=cdtype, device=device)
        metrics["max_off_manifold"] = float((samples.mH @ samples - eye).abs().amax())
        p_model, p_test, p_second = (plaquettes(u.to(torch.complex128), s.size) for u in (samples.cpu(), test, second))
        metrics["mean_plaquette_exact"] = mean_plaquette_exact(s.beta)
        metrics["mean_plaquette_mcmc"] = float(p_test.mean())
        metrics["mean_plaquette_model"] = float(p_model.mean())
        metrics["energy_model"] = float(energy_distance(p_model, p_test))
        metrics["energy_mcmc"] = float(energy_distance(p_second, p_test))
        torch.save({"samples": samples.cpu(), "test": test}, out_dir / "samples.pt")
        self._plot(out_dir / "plaquettes.png", p_model, p_test)
        return metrics

    def _plot(self, path: Path, model: Tensor, data: Tensor) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        ax.hist(data.flatten().numpy(), bins=60, alpha=0.5, density=True, label="MCMC (held out)")
        ax.hist(model.flatten().numpy(), bins=60, alpha=0.5, density=True, label="model samples")
        ax.axvline(mean_plaquette_exact(self.spec.beta), color="k", lw=1, label="exact mean")
        ax.set(xlabel=r"$\mathrm{Re}\,\mathrm{tr}\,U_p\,/\,3$", ylabel="density")
        ax.set_title(f"SU(3) plaquettes, beta = {self.spec.beta}")
        ax.legend()
        fig.savefig(path, dpi=100)
