r"""A mixture of von Mises–Fisher laws on :math:`S^{127}`: Riemannian diffusion in high dimension (2310.20030, §5.2).

Data :math:`p(x) = \frac1K\sum_k \mathrm{vMF}(x; \mu_k, \kappa)` with
:math:`\mathrm{vMF}(x; \mu, \kappa) = C_d(\kappa)\,e^{\kappa\mu^\top x}` (density w.r.t. the area of the unit sphere
in :math:`\mathbb R^d`, :math:`d = n + 1`), so the model's NLL is compared with the exact one. Out-of-distribution
detection: the model's log-likelihood separates held-out data from draws of a mixture with other means and from
the uniform law, scored by the AUROC (also computed with the true density, its ceiling).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from geodiffusion.experiments.base import Experiment, ManifoldExperimentSpec
from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.registry import build
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.riemannian import riemannian_log_likelihood
from geodiffusion.spec import Spec, component_spec
from geodiffusion.training.trainer import derive_seed

__all__ = ["VMFMixture", "HypersphereExperiment", "auroc"]


class VMFMixture(Spec):
    r"""Equal-weight mixture of ``n_components`` von Mises–Fisher laws on :math:`S^{\text{dim}}` with common
    concentration ``kappa`` and means drawn uniformly from the sphere by ``seed`` (scipy.stats.vonmises_fisher)."""

    dim: int = Field(127, ge=1, description="n of S^n (points are unit vectors in R^{n+1})")
    n_components: int = Field(4, ge=1, description="number of components K")
    kappa: float = Field(200.0, gt=0, description="concentration kappa of every component")
    seed: int = Field(0, ge=0, description="seed of the component means")

    def means(self) -> np.ndarray:
        """The ``[K, n+1]`` unit mean directions :math:`\\mu_k`."""
        z = np.random.default_rng(self.seed).standard_normal((self.n_components, self.dim + 1))
        return z / np.linalg.norm(z, axis=-1, keepdims=True)

    def sample(self, n: int, seed: int) -> Tensor:
        """``n`` draws ``[n, dim + 1]`` in float64 (component uniform, then Wood's vMF sampler in scipy)."""
        from scipy.stats import vonmises_fisher

        rng = np.random.default_rng(seed)
        counts = np.bincount(rng.integers(0, self.n_components, n), minlength=self.n_components)
        parts = [
            vonmises_fisher(mu, self.kappa).rvs(c, random_state=rng).reshape(c, -1)
            for mu, c in zip(self.means(), counts, strict=True)
        ]
        x = np.concatenate(parts)[rng.permutation(n)]
        return torch.from_numpy(x / np.linalg.norm(x, axis=-1, keepdims=True))

    def log_prob(self, x: Tensor) -> Tensor:
        r""":math:`\log p(x) = \operatorname{logsumexp}_k \log \mathrm{vMF}(x; \mu_k, \kappa) - \log K`."""
        from scipy.stats import vonmises_fisher

        points = x.detach().cpu().double().numpy()
        logs = np.stack([vonmises_fisher(mu, self.kappa).logpdf(points) for mu in self.means()])
        return torch.from_numpy(np.logaddexp.reduce(logs, axis=0) - math.log(self.n_components)).to(x.device)


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve of scores where ``positive`` should rank higher: the Mann–Whitney statistic
    :math:`P(S^+ > S^-) + \\tfrac12 P(S^+ = S^-)`, by ranks (ties averaged)."""
    from scipy.stats import rankdata

    scores = torch.cat([positive, negative]).detach().cpu().double().numpy()
    ranks = rankdata(scores)[: len(positive)]
    n_pos, n_neg = len(positive), len(negative)
    return float((ranks.sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


_SPHERE = {"kind": "sphere", "dim": 127}
_PROCESS = {"kind": "brownian", "manifold": _SPHERE, "beta_min": 1e-3, "beta_max": 2.0}


class HypersphereExperiment(Experiment, kind="hypersphere-vmf"):
    r"""vMF mixture on :math:`S^{127}`: Brownian noising with the exact heat-kernel score, tangent MLP, NLL by the
    probability-flow ODE (Hutchinson divergence above 16 ambient dimensions).

    Metrics (nats per point): ``nll_true``, ``nll_model``, ``nll_gap`` (model − true), ``nll_uniform``
    (:math:`\log|S^n|`); ``ood_auroc_<model|true>_<shifted|uniform>``; ``mean_cosine_<model|true>`` (mean
    :math:`\max_k \mu_k^\top x` of samples vs data); ``max_off_sphere``; ``train_seconds``, ``nll_seconds``.
    """

    threads = 1

    quick_overrides = {
        "data": {"dim": 15},
        "process": {"manifold": {"dim": 15}},
        "model": {"manifold": {"dim": 15}, "process": {"manifold": {"dim": 15}}, "hidden": 128, "depth": 2},
        "training": {"steps": 300, "batch_size": 128, "lr": 2e-3, "ema_decay": 0.95, "checkpoint_every": 300, "log_every": 50},
        "n_train": 2000,
        "n_test": 200,
        "n_samples": 200,
        "likelihood": {"steps": 20},
        "sampler": {"steps": 50},
    }

    class Spec(ManifoldExperimentSpec):
        """vMF mixture on S^n: NLL against the truth and OOD detection."""

        data: VMFMixture = Field(default_factory=VMFMixture, description="the data distribution")
        process: component_spec(Process) = Field(_PROCESS, description="Brownian motion on S^n")
        model: component_spec(ScoreModel) = Field(
            {"kind": "tangent_mlp", "manifold": _SPHERE, "hidden": 512, "depth": 4, "process": _PROCESS},
            description="score network s_theta(t, x) in T_x S^n",
        )

        @model_validator(mode="after")
        def _consistent(self):
            for name, spec in (("process", self.process), ("model", self.model)):
                manifold = getattr(spec, "manifold", None)
                if getattr(manifold, "kind", None) != "sphere" or getattr(manifold, "dim", None) != self.data.dim:
                    raise ValueError(
                        f"{name}: expected a component on the sphere S^{self.data.dim} of the data, got {manifold!r}"
                    )
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        dtype = getattr(torch, s.dtype)
        n = s.data.dim
        train = s.data.sample(s.n_train, derive_seed(s.seed, "train")).to(dtype=dtype, device=device)
        test = s.data.sample(s.n_test, derive_seed(s.seed, "test")).to(dtype=dtype, device=device)
        shifted_law = s.data.model_copy(update={"seed": s.data.seed + 1})
        shifted = shifted_law.sample(s.n_test, derive_seed(s.seed, "ood")).to(dtype=dtype, device=device)
        process = build(s.process, Process)
        uniform = process.manifold.random_uniform(
            s.n_test, torch.Generator().manual_seed(derive_seed(s.seed, "uniform")), dtype=dtype
        )
        uniform = uniform.to(device)

        score, train_seconds = self.train_model(process, train, out_dir / "model", device=device, progress=progress, dtype=dtype)

        log_volume = math.log(2) + (n + 1) / 2 * math.log(math.pi) - math.lgamma((n + 1) / 2)
        metrics: dict[str, float] = {"nll_uniform": log_volume, "train_seconds": train_seconds}
        gen = torch.Generator().manual_seed(derive_seed(s.seed, "hutchinson"))

        def model_log_prob(x: Tensor) -> Tensor:
            return riemannian_log_likelihood(score, process, x, options=s.likelihood, generator=gen)

        start = time.perf_counter()
        log_p_test = model_log_prob(test)
        metrics["nll_seconds"] = time.perf_counter() - start
        true_test = s.data.log_prob(test)
        metrics["nll_true"] = float(-true_test.mean())
        metrics["nll_model"] = float(-log_p_test.mean())
        metrics["nll_gap"] = metrics["nll_model"] - metrics["nll_true"]
        for name, ood in (("shifted", shifted), ("uniform", uniform)):
            metrics[f"ood_auroc_model_{name}"] = auroc(log_p_test, model_log_prob(ood))
            metrics[f"ood_auroc_true_{name}"] = auroc(true_test, s.data.log_prob(ood))

        sampler = build(s.sampler, Sampler)
        with torch.no_grad():
            samples = sampler.sample(
                score,
                process,
                (s.n_samples, n + 1),
                generator=torch.Generator().manual_seed(derive_seed(s.seed, "sample")),
                device=device,
                dtype=dtype,
                progress=progress,
            )
        means = torch.from_numpy(s.data.means()).to(dtype=dtype, device=device)
        metrics["max_off_sphere"] = float((samples.norm(dim=-1) - 1).abs().max())
        metrics["mean_cosine_model"] = float((samples @ means.T).amax(-1).mean())
        metrics["mean_cosine_true"] = float((test @ means.T).amax(-1).mean())
        torch.save({"samples": samples.cpu(), "test": test.cpu()}, out_dir / "samples.pt")
        self._plot(out_dir / "cosines.png", samples @ means.T, test @ means.T)
        return metrics

    def _plot(self, path: Path, model_cos: Tensor, data_cos: Tensor) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        bins = np.linspace(-0.3, 1.0, 60)
        ax.hist(data_cos.amax(-1).cpu().numpy(), bins=bins, alpha=0.5, density=True, label="held-out data")
        ax.hist(model_cos.amax(-1).cpu().numpy(), bins=bins, alpha=0.5, density=True, label="model samples")
        ax.set(xlabel=r"$\max_k \mu_k^\top x$", ylabel="density", title=f"vMF mixture on $S^{{{self.spec.data.dim}}}$")
        ax.legend()
        fig.savefig(path, dpi=100)
