r"""Quickstart: a ring of six Gaussians, an MLP score model against its frame average over :math:`C_6`.

The data density is exactly :math:`C_6`-invariant, so its score is :math:`C_6`-equivariant,
:math:`\nabla\log p_t(g x) = g\,\nabla\log p_t(x)`. The frame-averaged model
:math:`\bar s(t, x) = \frac16\sum_g g^{-1} s(t, g x)` has this symmetry by construction
(Structure Preserving Diffusion Models, 2402.19369); the plain MLP only learns it approximately.
Both are trained identically (same initialisation, data order and noise) and compared by held-out NLL,
energy distance and MMD of their samples to held-out data, and their equivariance error.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from geodiffusion.data.toy import RingOfGaussians
from geodiffusion.experiments.base import Experiment, ExperimentSpec, final_losses
from geodiffusion.groups.base import Group
from geodiffusion.metrics.equivariance import equivariance_error
from geodiffusion.metrics.two_sample import energy_distance, mmd_rbf
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.frame_averaging import FrameAveraged
from geodiffusion.models.preconditioning import NoisePredictor
from geodiffusion.processes.base import LinearGaussianProcess, Process
from geodiffusion.registry import build, registry
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.ode import ODEOptions, log_likelihood
from geodiffusion.spec import component_spec
from geodiffusion.training.trainer import Trainer, TrainingSpec, derive_seed

__all__ = ["QuickstartExperiment"]

MODELS = ("mlp", "frame_averaged")


def _clamped_time(score: nn.Module, t_min: float):
    """``score`` with times raised to ``t_min``. Adaptive ODE steps overshoot the final time eps and the
    sampler clamps overshoot only to t = 0, where a noise predictor's -eps/sigma_0 is infinite."""
    return lambda t, x: score(t.clamp_min(t_min), x)


class QuickstartExperiment(Experiment, kind="quickstart"):
    r"""Ring of :math:`k = 6` Gaussians in :math:`\mathbb{R}^2`, VP process, noise-predicting MLP
    :math:`s_\theta = -\epsilon_\theta/\sigma_t` versus its :math:`C_6` frame average.

    Metrics (nats, per held-out point): ``nll_true`` (exact mixture), ``nll_<model>`` (probability flow,
    :math:`-\log p_\varepsilon`), ``energy_<model>`` and ``mmd_<model>`` (samples vs held-out), ``energy_true``
    (fresh exact samples vs held-out: the sampling-noise floor), ``equivariance_error_<model>`` (max over
    ``equivariance_times``), ``final_loss_<model>`` and ``final_loss_median_<model>`` (mean and median DSM loss of
    the last 10% of steps), ``train_seconds_<model>``.
    Plots: ``samples.png``, ``density.png`` (if ``grid_size`` > 0), ``loss.png``.
    """

    # 2-D MLPs: intra-op parallelism gains little, and on shared cores extra threads oversubscribe
    # (measured 10x slower on a loaded 2-core machine with 2 threads than with 1)
    threads = 1

    quick_overrides = {
        "n_train": 4000,
        "n_test": 500,
        "n_samples": 500,
        "n_equivariance": 256,
        "grid_size": 24,
        "training": {"steps": 1000, "batch_size": 256, "lr": 5e-3, "ema_decay": 0.99, "checkpoint_every": 500, "log_every": 50},
        "sampler": {"kind": "probability_flow", "method": "rk4", "steps": 50},
        "likelihood": {"method": "rk4", "steps": 50},
    }

    class Spec(ExperimentSpec):
        """Quickstart: C_6-symmetric ring of Gaussians, MLP vs frame-averaged MLP."""

        data: RingOfGaussians = Field(default_factory=RingOfGaussians, description="the data distribution")
        group: component_spec(Group) = Field({"kind": "cyclic", "n": 6}, description="finite group of the frame average")
        process: component_spec(Process) = Field({"kind": "vp"}, description="forward process (linear Gaussian)")
        model: component_spec(ScoreModel) = Field(
            {"kind": "mlp", "dim": 2, "hidden": 128, "depth": 3}, description="noise-predicting network eps_theta(t, x)"
        )
        sampler: component_spec(Sampler) = Field({"kind": "probability_flow"}, description="sampler of both models")
        training: TrainingSpec = Field(
            TrainingSpec(steps=6000, batch_size=512, lr=2e-3, ema_decay=0.999, checkpoint_every=1000, log_every=100),
            description="optimisation settings (shared by both models)",
        )
        likelihood: ODEOptions = Field(ODEOptions(method="dopri5", rtol=1e-5, atol=1e-5), description="ODE of the NLL")
        n_train: int = Field(20000, ge=1, description="training points")
        n_test: int = Field(2000, ge=2, description="held-out points (NLL and two-sample metrics)")
        n_samples: int = Field(2000, ge=2, description="samples drawn from each model")
        n_equivariance: int = Field(512, ge=1, description="held-out points at which the equivariance error is measured")
        equivariance_times: tuple[float, ...] = Field((0.01, 0.1, 0.5, 1.0), min_length=1, description="times t of s(t, x)")
        grid_size: int = Field(48, ge=0, description="side of the grid of the learned-density plot (0: no plot)")
        density_likelihood: ODEOptions = Field(
            ODEOptions(method="rk4", steps=50), description="ODE of the density plot (a picture: fixed steps suffice)"
        )
        dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and models")

        @model_validator(mode="after")
        def _consistent(self):
            group_cls = registry(Group)[self.group.kind]
            if not group_cls.finite:
                raise ValueError(f"group: frame averaging needs a finite group, got {self.group.kind!r}")
            if not issubclass(registry(Process)[self.process.kind], LinearGaussianProcess):
                raise ValueError(f"process: the noise predictor needs a linear Gaussian process, got {self.process.kind!r}")
            T = getattr(self.process, "T", None)
            if T is not None and not all(0 < t <= T for t in self.equivariance_times):
                raise ValueError(f"equivariance_times: expected times in (0, T={T}], got {list(self.equivariance_times)}")
            if self.training.batch_size > self.n_train:
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds n_train ({self.n_train})")
            return self

    # --- pieces -------------------------------------------------------------

    def build_model(self, name: str, dtype: torch.dtype) -> ScoreModel:
        """``NoisePredictor(net)`` for ``"mlp"``, its frame average for ``"frame_averaged"``; the inner
        network's initialisation is seeded identically for both."""
        s = self.spec
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(s.seed, "init"))
            model: ScoreModel = NoisePredictor(net=s.model, process=s.process)
        if name == "frame_averaged":
            model = FrameAveraged.wrap(model, build(s.group, Group))
        elif name != "mlp":
            raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
        return model.to(dtype)

    # --- the run ------------------------------------------------------------

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        data_gen = torch.Generator().manual_seed(derive_seed(s.seed, "data"))
        train = s.data.sample(s.n_train, data_gen, dtype).to(device)
        test = s.data.sample(s.n_test, data_gen, dtype).to(device)
        reference = s.data.sample(s.n_samples, data_gen, dtype).to(device)
        process = build(s.process, Process)
        group = build(s.group, Group)
        sampler = build(s.sampler, Sampler)

        metrics: dict[str, float] = {
            "nll_true": float(-s.data.log_prob(test).mean()),
            "energy_true": float(energy_distance(reference, test)),
            "mmd_true": float(mmd_rbf(reference, test)),
        }
        samples: dict[str, Tensor] = {}
        histories: dict[str, list[float]] = {}
        ema_models: dict[str, nn.Module] = {}
        for name in MODELS:
            trainer = Trainer(self.build_model(name, dtype), process, train, s.training, out_dir / name, device, progress)
            histories[name] = trainer.fit()
            metrics[f"train_seconds_{name}"] = trainer.train_seconds
            metrics.update(final_losses(histories[name], f"_{name}"))
            model = ema_models[name] = trainer.ema_model

            # the same prior draws for both models: their samples differ only through the score
            sample_gen = torch.Generator().manual_seed(derive_seed(s.seed, "sample"))
            start = time.perf_counter()
            with torch.no_grad():
                x = sampler.sample(
                    _clamped_time(model, getattr(s.sampler, "eps", 0.0)),
                    process,
                    (s.n_samples, 2),
                    generator=sample_gen,
                    device=device,
                    dtype=dtype,
                    progress=progress,
                )
            samples[name] = x
            metrics[f"sample_seconds_{name}"] = time.perf_counter() - start
            metrics[f"energy_{name}"] = float(energy_distance(x, test))
            metrics[f"mmd_{name}"] = float(mmd_rbf(x, test))

            start = time.perf_counter()
            metrics[f"nll_{name}"] = float(-log_likelihood(model, process, test, options=s.likelihood).mean())
            metrics[f"nll_seconds_{name}"] = time.perf_counter() - start

            points = test[: s.n_equivariance]
            metrics[f"equivariance_error_{name}"] = max(
                equivariance_error(
                    lambda y, t=t, model=model: model(torch.as_tensor(t, dtype=dtype, device=device), y), group, points
                )
                for t in s.equivariance_times
            )

        torch.save({"test": test.cpu(), **{k: v.cpu() for k, v in samples.items()}}, out_dir / "samples.pt")
        self._plot_samples(out_dir / "samples.png", test, samples)
        self._plot_losses(out_dir / "loss.png", histories)
        if s.grid_size > 0:
            self._plot_density(out_dir / "density.png", ema_models, process, dtype, device)
        return metrics

    # --- plots ----------------------------------------------------------------

    def _extent(self) -> float:
        return self.spec.data.radius + 4 * self.spec.data.std

    def _plot_samples(self, path: Path, test: Tensor, samples: dict[str, Tensor]) -> None:
        from matplotlib.figure import Figure

        panels = {"held-out data": test, **{f"{k} samples": v for k, v in samples.items()}}
        fig = Figure(figsize=(4 * len(panels), 4), layout="constrained")
        lim = self._extent()
        for ax, (title, pts) in zip(fig.subplots(1, len(panels)), panels.items(), strict=True):
            pts = pts.detach().cpu().numpy()
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set(title=title, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
        fig.savefig(path, dpi=100)

    def _plot_losses(self, path: Path, histories: dict[str, list[float]]) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for name, history in histories.items():
            values = torch.tensor(history, dtype=torch.float64)
            width = max(1, len(values) // 50)
            # moving average: the per-step DSM loss is noisy (one t per sample)
            smooth = values.unfold(0, width, 1).mean(-1)
            ax.plot(torch.arange(width, width + len(smooth)).numpy(), smooth.numpy(), label=name)
        ax.set(xlabel="step", ylabel=f"DSM loss ({self.spec.training.weighting} weighting)", yscale="log")
        ax.legend()
        fig.savefig(path, dpi=100)

    def _plot_density(
        self, path: Path, models: dict[str, nn.Module], process: Process, dtype: torch.dtype, device: torch.device
    ) -> None:
        from matplotlib.figure import Figure

        s = self.spec
        lim = self._extent()
        axis = torch.linspace(-lim, lim, s.grid_size, dtype=dtype, device=device)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
        fields = {"true density": s.data.log_prob(grid)}
        for name, model in models.items():
            fields[f"{name} density"] = log_likelihood(model, process, grid, options=s.density_likelihood)
        fig = Figure(figsize=(4 * len(fields), 4), layout="constrained")
        vmax = math.exp(float(fields["true density"].max()))
        for ax, (title, logp) in zip(fig.subplots(1, len(fields)), fields.items(), strict=True):
            density = logp.exp().reshape(s.grid_size, s.grid_size).detach().cpu().numpy()
            ax.imshow(density, origin="lower", extent=(-lim, lim, -lim, lim), vmin=0.0, vmax=vmax, cmap="viridis")
            ax.set(title=title, aspect="equal")
        fig.savefig(path, dpi=100)
