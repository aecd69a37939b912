r"""Function-space experiments of Geometric Neural Diffusion Processes (Mathieu et al., 2023, Sec. 5):
``gp-1d`` (1-d regression, NDP benchmarks), ``vector-field-2d`` (equivariant vs non-equivariant networks on
curl-free / divergence-free GP fields, data efficiency) and ``sphere-tracks`` (functions with values on :math:`S^2`).

Both train function score networks by DSM on :class:`~geodiffusion.processes.gp.OUGaussianProcess` (context keyword
``inputs``) and report the conditional test log-likelihood per target point,
:math:`\tfrac1{n_*}\log p_\varepsilon(y_* \mid y_c)` by the probability flow
(:func:`~geodiffusion.samplers.conditional.conditional_log_likelihood`), against the exact GP posterior
predictive where the data are a GP (an upper bound in expectation: it is the true law).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.data.functions import (
    SCALAR_FUNCTIONS,
    ScalarFunction,
    VectorField,
    data_kernel,
    sample_functions,
    sample_sphere_tracks,
    sample_vector_fields,
)
from geodiffusion.experiments.base import Experiment, ExperimentSpec, cached_json
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.processes.gp import OUGaussianProcess, gaussian_conditional
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.conditional import ConditionalSampler, ReplacementConditional, conditional_log_likelihood
from geodiffusion.samplers.ode import ODEOptions
from geodiffusion.spec import Spec, component_spec
from geodiffusion.training.checkpoint import load_checkpoint
from geodiffusion.training.functions import FunctionTrainer, FunctionTrainingSpec, derive_function_seed

__all__ = [
    "GP1DExperiment",
    "VectorField2DExperiment",
    "SphereTracksExperiment",
    "LikelihoodSpec",
    "gp_conditional_log_likelihood",
    "track_statistics",
]

_WHITE_1D = {"kind": "white_noise", "variance": 0.05}
_PROCESS_1D = {
    "kind": "ou_gp",
    "kernel": {"kind": "kernel_sum", "kernels": [{"kind": "squared_exponential", "lengthscale": 0.5}, _WHITE_1D]},
}
# an isotropic kernel k(x, x') I is E(2)-equivariant: the limiting GP, hence the whole model, keeps the symmetry
_PROCESS_2D = {
    "kind": "ou_gp",
    "kernel": {
        "kind": "kernel_sum",
        "kernels": [
            {"kind": "squared_exponential", "lengthscale": 1.0, "input_dim": 2, "output_dim": 2},
            {"kind": "white_noise", "variance": 0.01, "input_dim": 2, "output_dim": 2},
        ],
    },
}


class LikelihoodSpec(Spec):
    """How conditional log-likelihoods are computed by the probability flow."""

    ode: ODEOptions = Field(ODEOptions(method="rk4", steps=50), description="probability-flow ODE integration")
    exact_max_dim: int = Field(64, ge=0, description="exact divergence up to this many value coordinates, else Hutchinson")


def gp_conditional_log_likelihood(
    kernel, context_inputs: Tensor, context_values: Tensor, inputs: Tensor, values: Tensor
) -> Tensor:
    r""":math:`\log \mathcal{N}(y_* ; \mu_{*|c}, \Sigma_{*|c})` per function ``[B]`` of the exact zero-mean GP with
    ``kernel`` (batched ``[B, n, m]`` / ``[B, n, d]`` tensors), in float64."""
    nc = context_inputs.shape[-2] * kernel.output_dim
    x = torch.cat([context_inputs, inputs], -2).to(torch.float64)
    gram = kernel.gram(x)
    gram = gram + 1e-9 * torch.eye(gram.shape[-1], dtype=torch.float64)
    mean, cov = gaussian_conditional(gram, nc, context_values.to(torch.float64).flatten(-2))
    law = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return law.log_prob(values.to(torch.float64).flatten(-2))


def _check_ou_gp(spec) -> None:
    """An experiment's process is an OU-to-GP one, and a ``gp_residual`` network rescales by that same process."""
    if not isinstance(spec.process, OUGaussianProcess.Spec):
        raise ValueError(f"process: expected an ou_gp process, got {spec.process!r}")
    for name in ("model", "baseline"):
        network = getattr(spec, name)
        if network.kind == "gp_residual" and network.process != spec.process:
            raise ValueError(f"{name}.process: a gp_residual network must use the experiment's process {spec.process!r}")


class _FunctionExperiment(Experiment, register=False):
    """Shared plumbing: seeded model building, training, conditional likelihoods, throughput."""

    threads = 1  # small networks: extra intra-op threads only oversubscribe shared cores

    def _train(self, model_spec, process, inputs, values, out_dir: Path, device, progress, *keys) -> tuple[ScoreModel, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_function_seed(s.seed, "init", *keys) % 2**31)
            model = build(model_spec, ScoreModel).to(dtype)
        training = s.training.model_copy(update={"seed": derive_function_seed(s.training.seed, *keys) % 2**31})
        trainer = FunctionTrainer(model, process, inputs, values, training, out_dir, device, progress)
        trainer.fit()
        return trainer.ema_model, trainer.train_seconds

    def _function_lls(self, score, process, xc, yc, xt, yt, *keys) -> Tensor:
        """Each test function's conditional log-likelihood per target point by the probability flow, ``[B]`` on the
        CPU; not finite where the function's flow blew up."""
        s = self.spec
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "likelihood", *keys))
        ll = conditional_log_likelihood(
            score, process, yt, xt, yc, xc, options=s.likelihood.ode, exact_max_dim=s.likelihood.exact_max_dim, generator=gen
        )
        return ll.detach().cpu().double() / yt.shape[1]

    @staticmethod
    def _summary(ll: Tensor) -> dict[str, float]:
        """``ll``: the mean over the functions whose flow stayed finite; ``diverged``: how many blew up (their
        likelihood is undefined, not low)."""
        finite = torch.isfinite(ll)
        return {"ll": float(ll[finite].mean()) if bool(finite.any()) else math.nan, "diverged": int((~finite).sum())}

    def _conditional_ll(self, score, process, xc, yc, xt, yt, *keys) -> dict[str, float]:
        """:meth:`_summary` of :meth:`_function_lls`."""
        return self._summary(self._function_lls(score, process, xc, yc, xt, yt, *keys))

    def _conditional_samples(self, score, process, inputs, xc, yc, generator, sampler_spec=None) -> Tensor | str:
        """Conditional samples of the plots, or the sampler's message where they became non-finite: a plot shows
        that a network's sampler diverged instead of ending a run whose metrics are already measured."""
        s = self.spec
        sampler = build(sampler_spec if sampler_spec is not None else s.sampler, ConditionalSampler)
        try:
            with torch.no_grad():
                return sampler.sample(
                    score, process, inputs, context_inputs=xc, context_values=yc, n_samples=s.n_plot_samples, generator=generator
                )
        except FloatingPointError as err:
            warnings.warn(f"{self.kind}: {err}", RuntimeWarning, stacklevel=2)
            return str(err).split(";")[0]

    def _throughput(self, model, process, inputs: Tensor) -> float:
        """Functions per second drawn by the reverse SDE (no context) at ``inputs [n, m]``."""
        s = self.spec
        sampler = ReplacementConditional(steps=s.throughput_steps)
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "throughput"))
        start = time.perf_counter()
        with torch.no_grad():
            sampler.sample(model, process, inputs, n_samples=s.throughput_batch, generator=gen)
        return s.throughput_batch / (time.perf_counter() - start)


class GP1DExperiment(_FunctionExperiment, kind="gp-1d"):
    r"""1-d regression (Dutordoir et al., 2023; GeomNDP Sec. 5.1): for each dataset, the bi-dimensional attention
    network (by default translation invariant, each function's inputs centred) and the non-equivariant MLP baseline
    are trained on functions with inputs in :math:`[-2, 2]` and
    evaluated on test functions whose inputs lie in :math:`[-2, 2]` (``interpolation``) or :math:`[2, 6]`
    (``generalisation``): the first ``n_context`` points are the context, the next ``n_target`` the targets.

    Metrics per dataset ``D`` and split ``S`` (nats per target point): ``D/S/model_ll``, ``D/S/baseline_ll`` and, for
    GP data, ``D/S/gp_ll`` (exact posterior predictive) and ``D/S/gap`` = gp - model (on the functions whose model
    flow stayed finite: ``D/S/model_diverged`` counts the others); ``D/train_seconds``,
    ``functions_per_second`` (reverse SDE, ``throughput_steps`` steps, 100 points). Plots: ``D_posterior.png``
    (context, model conditional samples with a 2-std band, the exact GP band where available).
    """

    quick_overrides = {
        "n_train": 256,
        "n_points": 24,
        "n_test": 8,
        "n_context": 4,
        "n_target": 6,
        "model": {"hidden": 32, "heads": 4, "layers": 2},
        "baseline": {"max_points": 24, "hidden": 128, "depth": 2},
        "training": {
            "steps": 120,
            "batch_size": 16,
            "lr": 2e-3,
            "warmup_steps": 0,
            "ema_decay": 0.95,
            "min_points": 4,
            "checkpoint_every": 120,
        },
        "likelihood": {"ode": {"method": "rk4", "steps": 6}, "exact_max_dim": 0},
        "sampler": {"kind": "replacement_conditional", "steps": 30},
        "n_plot_samples": 8,
        "throughput_steps": 20,
        "throughput_batch": 8,
    }

    class Spec(ExperimentSpec):
        """1-d regression on SE, Matern-5/2, weakly periodic, sawtooth and step functions."""

        datasets: list[ScalarFunction] = Field(list(SCALAR_FUNCTIONS), min_length=1, description="function families")
        n_train: int = Field(4096, ge=1, description="training functions per dataset")
        n_points: int = Field(50, ge=2, description="points per training function")
        n_test: int = Field(64, ge=1, description="test functions per dataset and split")
        n_context: int = Field(5, ge=1, description="context points per test function")
        n_target: int = Field(20, ge=1, description="target points per test function")
        noise: float = Field(0.05, ge=0, description="observation noise std of every dataset")
        process: component_spec(Process) = Field(_PROCESS_1D, description="OU process with a GP limit")
        model: component_spec(ScoreModel) = Field(
            {
                "kind": "bidim_attention",
                "hidden": 64,
                "heads": 4,
                "layers": 4,
                "translation_invariant": True,
                "relative_bias": 32,
                "relative_bias_frequencies": 8,
            },
            description="permutation-equivariant network, translation invariant: s(t, x + b, y) = s(t, x, y); its "
            "relative bias and the K-norm metric together close the likelihood gap on SE data, neither alone does; "
            "the bias's Fourier features of x_i - x_j draw the weights of periodic kernels (docs/results.rst)",
        )
        baseline: component_spec(ScoreModel) = Field(
            {"kind": "function_mlp", "max_points": 50, "hidden": 256, "depth": 3}, description="non-equivariant baseline"
        )
        sampler: component_spec(ConditionalSampler) = Field(
            {"kind": "langevin_conditional"}, description="conditional sampler of the posterior plots"
        )
        langevin_psi: dict[ScalarFunction, Annotated[float, Field(gt=0)]] = Field(
            {"sawtooth": 1.0, "step": 1.0},
            description="Langevin step psi of the plots per dataset, where the sampler is langevin_conditional (others: "
            "the sampler's psi): the sharp small-t scores of jump data diverge at the default psi = 10 (docs/results.rst)",
        )
        training: FunctionTrainingSpec = Field(
            FunctionTrainingSpec(
                steps=12000,
                batch_size=32,
                lr=1e-3,
                lr_schedule="cosine",
                warmup_steps=400,
                ema_decay=0.999,
                min_points=5,
                metric="kernel",
            ),
            description="optimisation settings (one run per dataset and network); the K-norm metric closes most of the "
            "likelihood gap on GP data, and 12000 cosine-decayed steps bring weakly periodic data within 0.1 nats "
            "(docs/results.rst)",
        )
        likelihood: LikelihoodSpec = Field(LikelihoodSpec(), description="probability-flow likelihood settings")
        n_plot_samples: int = Field(32, ge=1, description="conditional samples in the posterior plot")
        throughput_steps: int = Field(100, ge=1, description="reverse-SDE steps of the throughput measurement")
        throughput_batch: int = Field(64, ge=1, description="functions per batch of the throughput measurement")
        dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and networks")

        @model_validator(mode="after")
        def _consistent(self):
            _check_ou_gp(self)
            for name in ("model", "baseline"):
                spec = getattr(self, name)
                if getattr(spec, "input_dim", 1) != 1 or getattr(spec, "output_dim", 1) != 1:
                    raise ValueError(f"{name}: expected a network of scalar functions on R (input_dim = output_dim = 1)")
            if self.baseline.kind == "function_mlp" and self.baseline.max_points < max(
                self.n_points, self.n_context + self.n_target
            ):
                raise ValueError(f"baseline.max_points ({self.baseline.max_points}) is below the largest set size")
            if self.training.batch_size > self.n_train:
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds n_train ({self.n_train})")
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        metrics: dict[str, float] = {}
        first_model = None
        for name in s.datasets:
            gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "train", name))
            x, y = sample_functions(name, s.n_train, s.n_points, noise=s.noise, generator=gen, dtype=dtype)
            model, seconds = self._train(s.model, process, x, y, out_dir / name / "model", device, progress, name, "model")
            baseline, b_seconds = self._train(
                s.baseline, process, x, y, out_dir / name / "baseline", device, progress, name, "baseline"
            )
            if first_model is None:
                first_model = model
            metrics[f"{name}/train_seconds"] = seconds
            metrics[f"{name}/baseline_train_seconds"] = b_seconds
            # the likelihoods are the expensive stage: a resumed run reads a finished dataset's from its folder
            metrics |= cached_json(
                out_dir / name / "metrics.json",
                lambda name=name, model=model, baseline=baseline: self._evaluate(name, model, baseline, process, out_dir, device),
            )
        grid = torch.linspace(-2, 2, 100, dtype=dtype, device=device).unsqueeze(-1)
        metrics["functions_per_second"] = self._throughput(first_model, process, grid)
        return metrics

    SPLITS = {"interpolation": (-2.0, 2.0), "generalisation": (2.0, 6.0)}  # the test inputs' range per split

    def test_functions(self, name: str, split: str, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """The test split's functions of ``name``, inputs and values ``[n_test, n_context + n_target, 1]``: the
        first ``n_context`` points are the context, the rest the targets."""
        if split not in self.SPLITS:
            raise ValueError(f"split: expected one of {sorted(self.SPLITS)}, got {split!r}")
        s = self.spec
        low, high = self.SPLITS[split]
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "test", name, split))
        return sample_functions(
            name, s.n_test, s.n_context + s.n_target, low=low, high=high, noise=s.noise, generator=gen, dtype=dtype
        )

    def plot_sampler(self, name: str):
        """The spec of the posterior plot's sampler for dataset ``name``: ``sampler``, with ``langevin_psi[name]``
        where it is a Langevin sampler."""
        s = self.spec
        if s.sampler.kind == "langevin_conditional" and name in s.langevin_psi:
            return s.sampler.model_copy(update={"psi": s.langevin_psi[name]})
        return s.sampler

    def load_network(self, out_dir: Path, name: str, which: str = "model") -> ScoreModel:
        """The EMA weights of a run's trained ``model`` or ``baseline`` for dataset ``name``, in eval mode."""
        if which not in ("model", "baseline"):
            raise ValueError(f"which: expected 'model' or 'baseline', got {which!r}")
        network = build(getattr(self.spec, which), ScoreModel)
        network.load_state_dict(load_checkpoint(Path(out_dir) / name / which / "checkpoints" / "last.pt")["ema"]["model"])
        return network.eval()

    def _evaluate(self, name: str, model, baseline, process, out_dir: Path, device) -> dict[str, float]:
        """Conditional log-likelihoods of both networks (and the exact GP's) on both test splits of ``name``."""
        s = self.spec
        dtype = getattr(torch, s.dtype)
        kernel = data_kernel(name, s.noise)
        metrics: dict[str, float] = {}
        for split in self.SPLITS:
            tx, ty = (z.to(device) for z in self.test_functions(name, split, dtype))
            xc, yc, xt, yt = tx[:, : s.n_context], ty[:, : s.n_context], tx[:, s.n_context :], ty[:, s.n_context :]
            key = f"{name}/{split}"
            lls = {}
            for which, net in (("model", model), ("baseline", baseline)):
                lls[which] = self._function_lls(net, process, xc, yc, xt, yt, name, split)
                result = self._summary(lls[which])
                metrics[f"{key}/{which}_ll"], metrics[f"{key}/{which}_diverged"] = result["ll"], result["diverged"]
            if kernel is not None:
                gp = gp_conditional_log_likelihood(kernel, xc.cpu(), yc.cpu(), xt.cpu(), yt.cpu()).double() / s.n_target
                metrics[f"{key}/gp_ll"] = float(gp.mean())
                # on the functions the model's likelihood is defined for: a diverged flow drops out of both sides
                finite = torch.isfinite(lls["model"])
                gap = gp[finite] - lls["model"][finite]
                metrics[f"{key}/gap"] = float(gap.mean()) if bool(finite.any()) else math.nan
            if split == "interpolation":
                self._plot_posterior(out_dir / f"{name}_posterior.png", name, model, process, kernel, xc[0], yc[0], device, dtype)
        return metrics

    def _plot_posterior(self, path: Path, name: str, model, process, kernel, xc: Tensor, yc: Tensor, device, dtype) -> None:
        from matplotlib.figure import Figure

        s = self.spec
        # context plus grid make a set of n_points, the largest the network trained on
        n_grid = max(s.n_points - xc.shape[0], s.n_target)
        grid = torch.linspace(-2.5, 2.5, n_grid, dtype=dtype, device=device).unsqueeze(-1)
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "plot", name))
        samples = self._conditional_samples(model, process, grid, xc, yc, gen, self.plot_sampler(name))
        g = grid[:, 0].cpu().double()
        fig = Figure(figsize=(7, 3.6), layout="constrained")
        ax = fig.subplots()
        title = f"{name}: conditional samples"
        if isinstance(samples, str):
            title = f"{name}: {samples}"
        else:
            smp = samples[..., 0].cpu().double()
            for row in smp[: min(8, len(smp))]:
                ax.plot(g, row, color="C0", alpha=0.35, lw=0.8)
            mean, std = smp.mean(0), smp.std(0) if len(smp) > 1 else torch.zeros_like(g)
            ax.fill_between(g, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.2, label="model mean ± 2 std")
        if kernel is not None:
            kt = kernel.gram(torch.cat([xc.cpu().double(), g.unsqueeze(-1)], 0))
            nc = xc.shape[0]
            chol = torch.linalg.cholesky(kt[:nc, :nc] + 1e-9 * torch.eye(nc, dtype=torch.float64))
            mu = (kt[nc:, :nc] @ torch.cholesky_solve(yc.cpu().double(), chol)).squeeze(-1)
            var = torch.diagonal(kt[nc:, nc:] - kt[nc:, :nc] @ torch.cholesky_solve(kt[:nc, nc:], chol)).clamp_min(0)
            ax.plot(g, mu, "k--", lw=1, label="exact GP mean")
            ax.plot(g, mu + 2 * var.sqrt(), "k:", lw=1)
            ax.plot(g, mu - 2 * var.sqrt(), "k:", lw=1, label="exact GP ± 2 std")
        ax.scatter(xc[:, 0].cpu(), yc[:, 0].cpu(), color="red", zorder=3, label="context")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        fig.savefig(path, dpi=100)


class VectorField2DExperiment(_FunctionExperiment, kind="vector-field-2d"):
    r"""Data efficiency on curl-free and divergence-free GP vector fields on :math:`\mathbb{R}^2` (GeomNDP Sec. 5.2):
    the E(2)-equivariant EGNN and a non-equivariant network (bi-dimensional attention: permutation- but not
    rotation-equivariant) are trained on ``train_sizes`` functions each and evaluated by the conditional
    log-likelihood per target point (nats per 2-d vector) against the exact GP.

    Metrics: ``D/n<size>/<network>_ll`` (over the test functions whose flow stayed finite),
    ``D/n<size>/<network>_diverged`` (how many did not), ``D/gp_ll`` (all of them),
    ``D/n<size>/<network>_train_seconds``. Plots:
    ``data_efficiency.png`` (likelihood vs training-set size) and ``D_fields.png`` (a test field, its context and the
    networks' conditional means).
    """

    quick_overrides = {
        "train_sizes": [16, 128],
        "n_points": 12,
        "n_test": 8,
        "n_context": 4,
        "n_target": 4,
        "model": {"hidden": 32, "channels": 4, "layers": 2, "rbf": 8},
        "baseline": {"hidden": 32, "heads": 4, "layers": 2},
        "training": {"steps": 120, "batch_size": 16, "lr": 2e-3, "ema_decay": 0.95, "min_points": 4, "checkpoint_every": 120},
        "likelihood": {"ode": {"method": "rk4", "steps": 6}, "exact_max_dim": 0},
        "sampler": {"kind": "replacement_conditional", "steps": 30},
        "n_plot_samples": 4,
        "throughput_steps": 20,
        "throughput_batch": 8,
    }

    class Spec(ExperimentSpec):
        """Equivariant vs non-equivariant networks on curl-free and divergence-free GP fields."""

        datasets: list[VectorField] = Field(["curl_free", "divergence_free"], min_length=1, description="field families")
        train_sizes: list[int] = Field([32, 128, 512, 2048], min_length=1, description="numbers of training functions")
        n_points: int = Field(30, ge=2, description="points per training field")
        radius: float = Field(3.0, gt=0, description="inputs are uniform in the disc of this radius")
        n_test: int = Field(32, ge=1, description="test fields per dataset")
        n_context: int = Field(10, ge=1, description="context points per test field")
        n_target: int = Field(10, ge=1, description="target points per test field")
        noise: float = Field(0.05, ge=0, description="observation noise std")
        process: component_spec(Process) = Field(_PROCESS_2D, description="OU process with an E(2)-equivariant GP limit")
        model: component_spec(ScoreModel) = Field(
            {"kind": "egnn", "hidden": 64, "channels": 8, "layers": 4}, description="E(2)-equivariant network"
        )
        baseline: component_spec(ScoreModel) = Field(
            {"kind": "bidim_attention", "input_dim": 2, "output_dim": 2, "hidden": 64, "heads": 4, "layers": 4},
            description="non-equivariant (under rotations) network",
        )
        sampler: component_spec(ConditionalSampler) = Field(
            {"kind": "langevin_conditional"}, description="conditional sampler of the field plots"
        )
        training: FunctionTrainingSpec = Field(
            FunctionTrainingSpec(steps=3000, batch_size=32, lr=1e-3, ema_decay=0.995, min_points=10),
            description="optimisation settings (one run per dataset, size and network)",
        )
        likelihood: LikelihoodSpec = Field(LikelihoodSpec(), description="probability-flow likelihood settings")
        n_plot_samples: int = Field(16, ge=1, description="conditional samples averaged in the field plots")
        throughput_steps: int = Field(100, ge=1, description="reverse-SDE steps of the throughput measurement")
        throughput_batch: int = Field(64, ge=1, description="fields per batch of the throughput measurement")
        dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and networks")

        @model_validator(mode="after")
        def _consistent(self):
            _check_ou_gp(self)
            for name in ("model", "baseline"):
                spec = getattr(self, name)
                if getattr(spec, "input_dim", None) != 2 or getattr(spec, "output_dim", None) != 2:
                    raise ValueError(f"{name}: expected a network of vector fields R^2 -> R^2 (input_dim = output_dim = 2)")
            if self.training.batch_size > min(self.train_sizes):
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds the smallest training size")
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        metrics: dict[str, float] = {}
        sizes = sorted(s.train_sizes)
        curves: dict[str, dict[str, list[float]]] = {}
        for name in s.datasets:
            gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "train", name))
            # nested training sets: the first n functions of one pool, so the curve measures data alone
            pool_x, pool_y = sample_vector_fields(
                name, sizes[-1], s.n_points, radius=s.radius, noise=s.noise, generator=gen, dtype=dtype
            )
            tgen = torch.Generator().manual_seed(derive_function_seed(s.seed, "test", name))
            tx, ty = sample_vector_fields(
                name, s.n_test, s.n_context + s.n_target, radius=s.radius, noise=s.noise, generator=tgen, dtype=dtype
            )
            tx, ty = tx.to(device), ty.to(device)
            xc, yc, xt, yt = tx[:, : s.n_context], ty[:, : s.n_context], tx[:, s.n_context :], ty[:, s.n_context :]
            gp = float(gp_conditional_log_likelihood(data_kernel(name, s.noise), xc.cpu(), yc.cpu(), xt.cpu(), yt.cpu()).mean())
            metrics[f"{name}/gp_ll"] = gp / s.n_target
            curves[name] = {"model": [], "baseline": []}
            trained = {}
            for n in sizes:
                for which in ("model", "baseline"):
                    net, seconds = self._train(
                        getattr(s, which),
                        process,
                        pool_x[:n],
                        pool_y[:n],
                        out_dir / name / f"n{n}" / which,
                        device,
                        progress,
                        name,
                        n,
                        which,
                    )
                    # a finished stage's likelihood is read back on resumption (its training resumes at its end)
                    stage = (net, process, xc, yc, xt, yt, name, n, which)
                    result = cached_json(
                        out_dir / name / f"n{n}" / which / "likelihood.json", lambda stage=stage: self._conditional_ll(*stage)
                    )
                    ll = result["ll"]
                    metrics[f"{name}/n{n}/{which}_ll"] = ll
                    metrics[f"{name}/n{n}/{which}_diverged"] = result["diverged"]
                    metrics[f"{name}/n{n}/{which}_train_seconds"] = seconds
                    curves[name][which].append(ll)
                    trained[which] = net
            self._plot_fields(out_dir / f"{name}_fields.png", name, trained, process, xc[0], yc[0], xt[0], yt[0])
            if "functions_per_second" not in metrics:
                grid = sample_vector_fields(name, 1, 100, radius=s.radius, generator=gen, dtype=dtype)[0][0].to(device)
                metrics["functions_per_second"] = self._throughput(trained["model"], process, grid)
        self._plot_efficiency(out_dir / "data_efficiency.png", sizes, curves, metrics)
        return metrics

    def _plot_efficiency(self, path: Path, sizes: list[int], curves, metrics) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.2 * len(curves), 3.4), layout="constrained")
        axes = fig.subplots(1, len(curves), squeeze=False)[0]
        labels = {
            "model": f"{self.spec.model.kind} (E(2)-equivariant)",
            "baseline": f"{self.spec.baseline.kind} (not equivariant)",
        }
        for ax, (name, curve) in zip(axes, curves.items(), strict=True):
            for which, values in curve.items():
                ax.plot(sizes, values, "o-", label=labels[which])
            ax.axhline(metrics[f"{name}/gp_ll"], color="k", ls="--", lw=1, label="exact GP")
            ax.set_xscale("log")
            ax.set_xticks(sizes, [str(n) for n in sizes], minor=False)
            ax.minorticks_off()
            ax.set_xlabel("training functions")
            ax.set_ylabel("conditional log-lik. per target point")
            ax.set_title(name)
            ax.legend(fontsize=7)
        fig.savefig(path, dpi=100)

    def _plot_fields(self, path: Path, name: str, nets: dict, process, xc, yc, xt, yt) -> None:
        from matplotlib.figure import Figure

        s = self.spec
        fig = Figure(figsize=(4 * (1 + len(nets)), 3.8), layout="constrained")
        axes = fig.subplots(1, 1 + len(nets))
        panels = [("test field", yt)]
        for which, net in nets.items():
            gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "plot", name, which))
            samples = self._conditional_samples(net, process, xt, xc, yc, gen)
            kind = getattr(s, which).kind
            diverged = isinstance(samples, str)
            panels.append((f"{kind}: {samples}", None) if diverged else (f"{kind}: conditional mean", samples.mean(0)))
        for ax, (title, field) in zip(axes, panels, strict=True):
            if field is not None:
                ax.quiver(*xt.cpu().T, *field.detach().cpu().T, color="C0", angles="xy")
            ax.quiver(*xc.cpu().T, *yc.cpu().T, color="red", angles="xy")
            ax.set_aspect("equal")
            ax.set_title(title, fontsize=9)
        fig.savefig(path, dpi=100)


_SPHERE = {"kind": "sphere", "dim": 2}
_BROWNIAN = {"kind": "brownian", "manifold": _SPHERE, "beta_min": 1e-3, "beta_max": 8.0}


def track_statistics(values: Tensor, inputs: Tensor) -> dict[str, Tensor]:
    r"""Per-track statistics of points ``values [B, N, 3]`` on :math:`S^2` at sorted ``inputs [B, N, 1]``: ``speed``,
    the mean geodesic step :math:`d(y_i, y_{i+1}) / (x_{i+1} - x_i)`, and ``plane_residual``, the RMS of
    :math:`\langle y_i, n\rangle` for the unit normal :math:`n` of the best-fitting great circle (0 on a great circle)."""
    v64, x64 = values.detach().to(torch.float64), inputs.detach().to(torch.float64)
    cos = (v64[:, 1:] * v64[:, :-1]).sum(-1).clamp(-1.0, 1.0)
    speed = (torch.arccos(cos) / (x64[:, 1:, 0] - x64[:, :-1, 0])).mean(-1)
    normal = torch.linalg.svd(v64, full_matrices=False).Vh[:, -1]  # right singular vector of the smallest value
    residual = ((v64 @ normal.unsqueeze(-1)).squeeze(-1) ** 2).mean(-1).sqrt()
    return {"speed": speed, "plane_residual": residual}


class SphereTracksExperiment(_FunctionExperiment, kind="sphere-tracks"):
    r"""Functions with values on :math:`S^2` (GeomNDP, Sec. 3.4 / 5.3): tracks :math:`[0, 1] \to S^2` (noisy great-circle
    arcs) noised by Brownian motion on the sphere at every point, the exact heat-kernel score as DSM target, a
    bi-dimensional attention network projected on the tangent spaces (:class:`~geodiffusion.models.TangentFunctionScore`)
    and geodesic Euler-Maruyama sampling at a regular grid of ``n_points`` inputs.

    Conditional evaluation (interpolation): on ``n_conditional`` held-out tracks every ``context_every``-th point and
    the last one are observed, and ``conditional_samples`` tracks are drawn at the other points by the Riemannian
    ``conditional_sampler`` (noised context, geodesic reverse steps, Riemannian Langevin corrector).

    Metrics: ``speed_mean``/``speed_std`` and ``plane_residual`` (see :func:`track_statistics`) of ``data_``, ``model_``
    and ``prior_`` (uniform points) tracks; ``max_off_sphere``; ``train_seconds``; ``functions_per_second``; and, at the
    unobserved points, the mean geodesic error to the held-out values of the conditional samples' Fréchet mean
    (``conditional_error``), of the samples themselves (``conditional_sample_error``), and of the geodesic (slerp)
    interpolation between the nearest observed points (``slerp_error``), with ``conditional_max_off_sphere`` and
    ``conditional_seconds``. Plots: ``tracks.png`` (data and sampled tracks on a Mollweide map), ``conditional.png``
    (observed points, held-out values, conditional samples and the slerp baseline for three held-out tracks).
    """

    quick_overrides = {
        "n_train": 512,
        "n_samples": 64,
        "n_conditional": 8,
        "conditional_samples": 8,
        "model": {"network": {"hidden": 32, "layers": 2}},
        "training": {"steps": 300, "batch_size": 32, "lr": 2e-3, "ema_decay": 0.95, "checkpoint_every": 300},
        "sampler": {"steps": 100},
        "conditional_sampler": {"steps": 50, "inner_steps": 10},
    }

    class Spec(ExperimentSpec):
        """Great-circle tracks on S^2 as functions of time, Brownian noising per point."""

        n_train: int = Field(4096, ge=1, description="training tracks")
        n_points: int = Field(12, ge=2, description="points per track")
        n_samples: int = Field(256, ge=1, description="sampled (and test) tracks for the statistics")
        speed: tuple[float, float] = Field((0.5, 1.5), description="range of angular speeds (radians per unit input)")
        noise: float = Field(0.02, ge=0, description="geodesic noise std of every observation")
        process: component_spec(Process) = Field(_BROWNIAN, description="Brownian motion on S^2, at every point")
        model: component_spec(ScoreModel) = Field(
            {
                "kind": "tangent_function",
                "output_dim": 3,
                "manifold": _SPHERE,
                "process": _BROWNIAN,
                "network": {"kind": "bidim_attention", "output_dim": 3, "hidden": 64, "heads": 4, "layers": 3},
            },
            description="tangent function network",
        )
        sampler: component_spec(Sampler) = Field(
            {"kind": "geodesic_euler_maruyama", "steps": 300}, description="reverse-SDE sampler on the sphere"
        )
        training: FunctionTrainingSpec = Field(
            FunctionTrainingSpec(steps=3000, batch_size=64, lr=1e-3, ema_decay=0.995),
            description="optimisation settings",
        )
        throughput_batch: int = Field(64, ge=1, description="tracks per batch of the throughput measurement")
        dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and network")
        n_conditional: int = Field(32, ge=1, description="held-out tracks (the first test tracks) conditioned on")
        context_every: int = Field(3, ge=2, description="observe points 0, k, 2k, ... and the last one; the rest are targets")
        conditional_samples: int = Field(16, ge=1, description="conditional samples per held-out track")
        # psi = 1: the Langevin step gamma = psi beta(t) dt must stay below a few times the conditional variance,
        # about tau(t) + noise^2 (1.6e-3 + 4e-4 at t = 0.02), which psi = 10 exceeds on this schedule
        conditional_sampler: component_spec(ConditionalSampler) = Field(
            {"kind": "langevin_conditional", "steps": 100, "inner_steps": 20, "psi": 1.0, "tau": 0.1},
            description="Riemannian conditional sampler (noised context, geodesic reverse steps, Langevin corrector)",
        )

        @model_validator(mode="after")
        def _consistent(self):
            manifold = getattr(self.process, "manifold", None)
            if getattr(manifold, "kind", None) != "sphere" or getattr(manifold, "dim", None) != 2:
                raise ValueError(f"process: expected a process on the sphere S^2, got {self.process!r}")
            if getattr(self.model, "input_dim", None) != 1 or getattr(self.model, "output_dim", None) != 3:
                raise ValueError("model: expected a function network from R to S^2 (input_dim 1, output_dim 3)")
            if self.training.batch_size > self.n_train:
                raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds n_train ({self.n_train})")
            if self.n_conditional > self.n_samples:
                raise ValueError(f"n_conditional ({self.n_conditional}) exceeds the test tracks (n_samples = {self.n_samples})")
            if len(SphereTracksExperiment.observed_points(self.n_points, self.context_every)) == self.n_points:
                raise ValueError(
                    f"context_every: with n_points = {self.n_points}, every {self.context_every}th point and the last one "
                    "leave no point to predict"
                )
            return self

    @staticmethod
    def observed_points(n_points: int, every: int) -> list[int]:
        """Indices of the observed points of a track: 0, every, 2 every, ... and the last one."""
        return sorted(set(range(0, n_points, every)) | {n_points - 1})

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        process = build(s.process, Process)
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "train"))
        x, y = sample_sphere_tracks(s.n_train, s.n_points, speed=s.speed, noise=s.noise, generator=gen, dtype=dtype)
        model, seconds = self._train(s.model, process, x, y, out_dir / "model", device, progress, "model")
        tgen = torch.Generator().manual_seed(derive_function_seed(s.seed, "test"))
        tx, ty = sample_sphere_tracks(
            s.n_samples, s.n_points, speed=s.speed, noise=s.noise, grid=True, generator=tgen, dtype=dtype
        )
        tx, ty = tx.to(device), ty.to(device)
        sampler = build(s.sampler, Sampler)
        sgen = torch.Generator().manual_seed(derive_function_seed(s.seed, "sample"))
        start = time.perf_counter()
        with torch.no_grad():
            samples = sampler.sample(
                lambda t, v: model(t, v, inputs=tx), process, tuple(ty.shape), generator=sgen, device=device, dtype=dtype
            )
        metrics: dict[str, float] = {
            "train_seconds": seconds,
            "functions_per_second": s.n_samples / (time.perf_counter() - start),
            "max_off_sphere": float((samples.norm(dim=-1) - 1).abs().max()),
        }
        prior = process.prior(tuple(ty.shape), device=device, dtype=dtype).sample(sgen)
        for name, values in (("data", ty), ("model", samples), ("prior", prior)):
            stats = track_statistics(values, tx)
            metrics[f"{name}_speed_mean"] = float(stats["speed"].mean())
            metrics[f"{name}_speed_std"] = float(stats["speed"].std())
            metrics[f"{name}_plane_residual"] = float(stats["plane_residual"].mean())
        torch.save({"samples": samples.cpu(), "test": ty.cpu(), "inputs": tx.cpu()}, out_dir / "samples.pt")
        self._plot(out_dir / "tracks.png", ty, samples)
        conditional, cond_metrics = self._conditional(model, process, tx[: s.n_conditional], ty[: s.n_conditional])
        metrics.update(cond_metrics)
        torch.save(conditional, out_dir / "conditional_samples.pt")
        self._plot_conditional(out_dir / "conditional.png", conditional)
        return metrics

    def _conditional(self, model, process, inputs: Tensor, values: Tensor) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Conditional samples ``[n_conditional, S, n_target, 3]`` at the unobserved points of held-out tracks, their
        geodesic errors against the held-out values, and those of the slerp baseline."""
        s = self.spec
        sphere = process.manifold
        observed = self.observed_points(s.n_points, s.context_every)
        targets = [i for i in range(s.n_points) if i not in observed]
        sampler = build(s.conditional_sampler, ConditionalSampler)
        gen = torch.Generator().manual_seed(derive_function_seed(s.seed, "conditional"))
        start = time.perf_counter()
        draws = []
        with torch.no_grad():
            # one sampler call per track (the context differs), vectorised over samples and points
            for x, y in zip(inputs, values, strict=True):
                draws.append(
                    sampler.sample(
                        model,
                        process,
                        x[targets],
                        context_inputs=x[observed],
                        context_values=y[observed],
                        n_samples=s.conditional_samples,
                        generator=gen,
                    )
                )
        seconds = time.perf_counter() - start
        samples = torch.stack(draws)
        truth = values[:, targets]
        mean = self.frechet_mean(sphere, samples.double(), dim=1)
        slerp = self.slerp_interpolation(sphere, inputs.double(), values.double(), observed, targets)
        metrics = {
            "conditional_error": float(sphere.dist(mean, truth.double()).mean()),
            "conditional_sample_error": float(sphere.dist(samples.double(), truth[:, None].double()).mean()),
            "slerp_error": float(sphere.dist(slerp, truth.double()).mean()),
            "conditional_max_off_sphere": float((samples.norm(dim=-1) - 1).abs().max()),
            "conditional_seconds": seconds,
        }
        out = {"samples": samples, "inputs": inputs, "values": values, "observed": torch.tensor(observed)}
        out |= {"targets": torch.tensor(targets), "slerp": slerp, "frechet_mean": mean}
        return {k: v.cpu() for k, v in out.items()}, metrics

    @staticmethod
    def frechet_mean(sphere, points: Tensor, dim: int, iterations: int = 30) -> Tensor:
        r"""Fréchet mean :math:`\arg\min_m \sum_s d(m, y_s)^2` over axis ``dim`` of points on the sphere, by the
        fixed-point iteration :math:`m \leftarrow \exp_m(\overline{\log_m y_s})` from the normalised Euclidean mean."""
        m = points.mean(dim)
        m = m / m.norm(dim=-1, keepdim=True)
        for _ in range(iterations):
            m = sphere.exp(m, sphere.log(m.unsqueeze(dim).expand_as(points), points).mean(dim))
        return m

    @staticmethod
    def slerp_interpolation(sphere, inputs: Tensor, values: Tensor, observed: list[int], targets: list[int]) -> Tensor:
        r"""Geodesic interpolation :math:`\exp_{y_a}(\lambda \log_{y_a} y_b)`, :math:`\lambda = (x - x_a)/(x_b - x_a)`,
        between the observed points :math:`a < i < b` around each target :math:`i`; ``inputs [B, n, 1]``,
        ``values [B, n, 3]`` -> ``[B, n_target, 3]``."""
        obs = torch.tensor(observed)
        tgt = torch.tensor(targets)
        right = torch.searchsorted(obs, tgt)  # the first observed index above each target (targets are interior)
        a, b = obs[right - 1], obs[right]
        lam = (inputs[:, tgt] - inputs[:, a]) / (inputs[:, b] - inputs[:, a])
        ya, yb = values[:, a], values[:, b]
        return sphere.exp(ya, lam * sphere.log(ya, yb))

    def _plot(self, path: Path, data: Tensor, samples: Tensor) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(12, 3.6), layout="constrained")
        axes = fig.subplots(1, 2, subplot_kw={"projection": "mollweide"})
        for ax, (title, tracks) in zip(axes, (("data tracks", data), ("model samples", samples)), strict=True):
            for k, track in enumerate(tracks[:10].detach().cpu().double()):
                ax.plot(*self._map_line(track), ".-", ms=3, lw=0.8, color=f"C{k}")
            ax.set_title(title)
            ax.grid(True, alpha=0.3)
        fig.savefig(path, dpi=100)

    @staticmethod
    def _map_line(track: Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Longitudes and latitudes (radians) of points ``[n, 3]``, broken where the line crosses the antimeridian."""
        from geodiffusion.data.earth import sphere_to_lat_lon

        lat, lon = (torch.deg2rad(v) for v in sphere_to_lat_lon(track))
        cut = 1 + torch.nonzero((lon[1:] - lon[:-1]).abs() > torch.pi).flatten().numpy()
        return np.insert(lon.numpy(), cut, np.nan), np.insert(lat.numpy(), cut, np.nan)

    def _plot_conditional(self, path: Path, result: dict[str, Tensor], n_tracks: int = 3) -> None:
        from matplotlib.figure import Figure

        n_tracks = min(n_tracks, len(result["values"]))
        fig = Figure(figsize=(5 * n_tracks, 3.2), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, n_tracks, subplot_kw={"projection": "mollweide"}))
        observed, targets = result["observed"], result["targets"]
        for k, ax in enumerate(axes):
            values = result["values"][k].double()
            full = values.clone()
            for sample in result["samples"][k, :10].double():
                full[targets] = sample
                ax.plot(*self._map_line(full), "-", lw=0.6, color="C0", alpha=0.5)
            full[targets] = result["slerp"][k]
            ax.plot(*self._map_line(full), "--", lw=1.0, color="C2", label="slerp")
            lon, lat = self._map_line(values[targets])
            ax.plot(lon, lat, "x", ms=5, color="C3", label="held out")
            lon, lat = self._map_line(values[observed])
            ax.plot(lon, lat, "o", ms=4, color="k", label="observed")
            ax.set_title(f"held-out track {k}: conditional samples")
            ax.grid(True, alpha=0.3)
        axes[0].legend(loc="lower left", fontsize=7)
        fig.savefig(path, dpi=100)
