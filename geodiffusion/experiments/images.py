r"""Image experiments of Structure Preserving Diffusion Models (2402.19369) on C_4-rotated digits.

- ``rotated-digits``: generation of C_4-rotated digits by a plain U-Net (baseline), a weight-tied C_4 U-Net (SPDM+WT)
  and the plain U-Net frame-averaged over C_4 at inference (SPDM+FA), each sampled by Euler–Maruyama with and without
  equivariant noise. The rotated data law is C_4-invariant, so its score is equivariant.
- ``bridge-denoise`` / ``bridge-style``: paired translation by a denoising diffusion bridge (DDBM) from a noisy digit or
  its Sobel edge map back to the digit, with the same three models (the network sees :math:`[x_t, x_T]` as channels).

Metrics (``metrics.json``): ``fd_<model>`` (Fréchet distance of classifier features, samples vs held-out; ``fd_data``:
training images vs held-out, the floor), ``delta_x0_<model>`` (:math:`\max_g \mathrm{mean}|x_0(g x_T) - g x_0(x_T)|` over
the non-identity elements, equivariant noise, same seed) and ``delta_x0_<model>_plain_noise`` (ordinary noise),
``l1_<model>`` / ``ssim_<model>`` (bridges: samples vs the true :math:`x_0`; ``*_x_T``: :math:`x_T` itself),
``train_seconds_<model>``, ``sample_seconds_<model>``, ``classifier_accuracy``.
Plots: ``samples.png`` (a grid per model), ``loss.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from geodiffusion.data.digits import PairedDigits, RotatedDigits
from geodiffusion.experiments.base import Experiment, ExperimentSpec
from geodiffusion.groups.base import Group
from geodiffusion.metrics.images import delta_x0, feature_frechet_distance, l1_error, load_or_train_classifier, ssim
from geodiffusion.models.base import ScoreModel
from geodiffusion.models.frame_averaging import FrameAveraged
from geodiffusion.models.preconditioning import NoisePredictor
from geodiffusion.processes.base import Process
from geodiffusion.processes.bridges import BridgeWeighting, DenoiserBridgeScore, DiffusionBridge
from geodiffusion.registry import build, registry
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.bridges import BridgeSampler
from geodiffusion.spec import Spec, component_spec
from geodiffusion.training.bridges import BridgeTrainer
from geodiffusion.training.trainer import Trainer, TrainingSpec, derive_seed

__all__ = ["RotatedDigitsExperiment", "BridgeDenoiseExperiment", "BridgeStyleExperiment", "ClassifierSpec"]

MODELS = ("unet", "wt", "fa")
C4_IMAGES = {"kind": "cyclic", "n": 4, "action": "image"}


class ClassifierSpec(Spec):
    """Training of the feature classifier of the Fréchet distance (shared by every model of a run)."""

    steps: int = Field(1500, ge=1, description="Adam steps on the rotated training digits")
    batch_size: int = Field(128, ge=1, description="minibatch size")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate")


def _unet(size: int, channels: tuple[int, ...], image_channels: int, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"kind": kind, "image_channels": image_channels, "image_size": size, "channels": channels}
    spec.update(norm_groups=min(4, min(channels)), time_embedding_dim=16)
    if kind == "wt_unet":
        spec["group"] = C4_IMAGES
    return spec


def _quick_nets(image_channels: int) -> dict[str, Any]:
    return {
        "model": _unet(8, (4, 8), image_channels, "unet"),
        "wt_model": _unet(8, (2, 4), image_channels, "wt_unet"),
    }


class _ImageExperiment(Experiment):
    """Shared pieces: seeded model construction, the classifier, Δx0 and the sample grids."""

    threads = 1  # small convolutions on shared cores: one thread avoids oversubscription

    def _build(self, name: str, field: str) -> ScoreModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.spec.seed, "init", name))
            return build(getattr(self.spec, field), ScoreModel)

    def _group(self) -> Group:
        return build(self.spec.group, Group)

    def _delta_x0(self, sample, x_T: Tensor) -> float:
        r""":math:`\max_{g \ne e} \mathrm{mean}|x_0(g x_T) - g x_0(x_T)|`, one generator seed for every run."""
        group = self._group()
        seed = derive_seed(self.spec.seed, "equivariance")
        x0 = sample(x_T, torch.Generator().manual_seed(seed))
        worst = 0.0
        for g in group.elements(device=x_T.device)[1:]:
            x0_g = sample(group.act(g, x_T), torch.Generator().manual_seed(seed))
            worst = max(worst, delta_x0(x0_g, group.act(g, x0)))
        return worst

    @staticmethod
    def _plot_grid(path: Path, rows: dict[str, Tensor], columns: int) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(columns * 0.8 + 1.2, len(rows) * 0.85), layout="constrained")
        axes = fig.subplots(len(rows), columns, squeeze=False)
        for r, (title, images) in enumerate(rows.items()):
            for c in range(columns):
                ax = axes[r][c]
                ax.imshow(images[c, 0].detach().float().cpu().numpy(), cmap="gray", vmin=-1, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r][0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
        fig.savefig(path, dpi=100)

    @staticmethod
    def _plot_losses(path: Path, histories: dict[str, list[float]], ylabel: str) -> None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.subplots()
        for name, history in histories.items():
            values = torch.tensor(history, dtype=torch.float64)
            width = max(1, len(values) // 50)
            smooth = values.unfold(0, width, 1).mean(-1)  # moving average of the noisy per-step loss
            ax.plot(torch.arange(width, width + len(smooth)).numpy(), smooth.numpy(), label=name)
        ax.set(xlabel="step", ylabel=ylabel, yscale="log")
        ax.legend()
        fig.savefig(path, dpi=100)


class RotatedDigitsExperiment(_ImageExperiment, kind="rotated-digits"):
    r"""Generation of C_4-rotated digits: VP process, noise-predicting plain U-Net vs weight-tied C_4 U-Net (WT) vs the
    plain U-Net frame-averaged over C_4 at inference (FA); Euler–Maruyama with equivariant noise (``equivariant_sde``)."""

    quick_overrides = {
        "data": {"size": 8},
        # beta_max 5: a barely trained network cannot cancel the reverse drift's growth exp(B(T)/2), e^5 for beta_max 20
        "process": {"beta_max": 5.0},
        **_quick_nets(1),
        "training": {"steps": 120, "batch_size": 64, "lr": 3e-3, "ema_decay": 0.99, "checkpoint_every": 120, "log_every": 40},
        "sampler": {"steps": 25},
        "classifier": {"steps": 120},
        "n_samples": 48,
        "n_equivariance": 4,
    }

    class Spec(ExperimentSpec):
        """rotated-digits: C_4-rotated digits, plain U-Net vs weight-tied (WT) vs frame-averaged (FA)."""

        data: RotatedDigits = Field(default_factory=RotatedDigits, description="the rotated digits")
        group: component_spec(Group) = Field(C4_IMAGES, description="finite image group of WT, FA and the noise")
        process: component_spec(Process) = Field({"kind": "vp", "event_ndim": 3}, description="forward process (linear Gaussian)")
        model: component_spec(ScoreModel) = Field(_unet(16, (32, 64), 1, "unet"), description="plain noise-prediction U-Net")
        wt_model: component_spec(ScoreModel) = Field(_unet(16, (16, 32), 1, "wt_unet"), description="weight-tied U-Net")
        sampler: component_spec(Sampler) = Field(
            {"kind": "equivariant_sde", "group": C4_IMAGES, "steps": 500}, description="equivariant-noise reverse SDE"
        )
        training: TrainingSpec = Field(
            TrainingSpec(steps=6000, batch_size=128, lr=2e-3, ema_decay=0.999, checkpoint_every=1000, log_every=100),
            description="optimisation of both trained models",
        )
        classifier: ClassifierSpec = Field(default_factory=ClassifierSpec, description="the Fréchet-distance classifier")
        n_samples: int = Field(500, ge=2, description="samples per model for the Fréchet distance")
        n_equivariance: int = Field(16, ge=1, description="starts x_T of the trajectory equivariance error")

        @model_validator(mode="after")
        def _consistent(self):
            if self.sampler.kind != "equivariant_sde":
                raise ValueError(
                    f"sampler: expected kind 'equivariant_sde' (noise with and without alignment), got {self.sampler.kind!r}"
                )
            if not registry(Group)[self.group.kind].finite:
                raise ValueError(f"group: frame averaging needs a finite group, got {self.group.kind!r}")
            size = self.data.size
            for field in ("model", "wt_model"):
                if getattr(getattr(self, field), "image_size", size) != size:
                    raise ValueError(f"{field}.image_size must equal data.size = {size}")
            return self

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        data = s.data.load(torch.float32)
        train, test = data["train"].to(device), data["test"].to(device)
        process, group, sampler = build(s.process, Process), self._group(), build(s.sampler, Sampler)
        plain_sampler = build({**s.sampler.model_dump(), "equivariant_noise": False}, Sampler)
        classifier = load_or_train_classifier(
            out_dir / "classifier.pt",
            data["train"],
            data["train_labels"],
            seed=derive_seed(s.seed, "classifier"),
            **dict(s.classifier),
        )
        with torch.no_grad():
            accuracy = (classifier(data["test"]).argmax(-1) == data["test_labels"]).double().mean()
        metrics: dict[str, float] = {
            "classifier_accuracy": float(accuracy),
            "fd_data": feature_frechet_distance(classifier, train[: max(s.n_samples, 2)], test),
        }
        shape = (s.n_samples,) + tuple(train.shape[1:])
        prior_gen = torch.Generator().manual_seed(derive_seed(s.seed, "equivariance-starts"))
        starts = process.prior((s.n_equivariance,) + tuple(train.shape[1:])).sample(prior_gen).to(device)
        models: dict[str, nn.Module] = {}
        histories: dict[str, list[float]] = {}
        for name in ("unet", "wt"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(s.seed, "init", name))  # seeded initialisation, independent of the run order
                model = NoisePredictor(net=s.model if name == "unet" else s.wt_model, process=s.process)
            trainer = Trainer(model, process, train, s.training, out_dir / name, device, progress)
            histories[name] = trainer.fit()
            metrics[f"train_seconds_{name}"] = trainer.train_seconds
            models[name] = trainer.ema_model
        models["fa"] = FrameAveraged.wrap(models["unet"], group)
        metrics["train_seconds_fa"] = metrics["train_seconds_unet"]  # FA reuses the plain model: no training of its own
        samples: dict[str, Tensor] = {}
        for name in MODELS:
            model = models[name]
            start = time.perf_counter()
            with torch.no_grad():
                x = sampler.sample(
                    model, process, shape, generator=torch.Generator().manual_seed(derive_seed(s.seed, "sample")), device=device
                )
            metrics[f"sample_seconds_{name}"] = time.perf_counter() - start
            samples[name] = x
            metrics[f"fd_{name}"] = feature_frechet_distance(classifier, x, test)
            for label, smp in (("", sampler), ("_plain_noise", plain_sampler)):

                def draw(x_T, gen, smp=smp, model=model):
                    with torch.no_grad():
                        return smp.sample(model, process, tuple(x_T.shape), x_T=x_T, generator=gen)

                metrics[f"delta_x0_{name}{label}"] = self._delta_x0(draw, starts)
        torch.save({k: v.cpu() for k, v in samples.items()}, out_dir / "samples.pt")
        columns = min(8, s.n_samples)
        self._plot_grid(out_dir / "samples.png", {"data": test, **samples}, columns)
        self._plot_losses(out_dir / "loss.png", histories, "DSM loss")
        return metrics


class _BridgeSpec(ExperimentSpec):
    data: PairedDigits = Field(default_factory=PairedDigits, description="paired rotated digits (x0, x_T)")
    group: component_spec(Group) = Field(C4_IMAGES, description="finite image group of WT, FA and the noise")
    process: component_spec(DiffusionBridge) = Field({"kind": "vp_bridge", "event_ndim": 3}, description="diffusion bridge")
    model: component_spec(ScoreModel) = Field(_unet(16, (32, 64), 2, "unet"), description="plain U-Net on [x_t, x_T]")
    wt_model: component_spec(ScoreModel) = Field(_unet(16, (16, 32), 2, "wt_unet"), description="weight-tied U-Net on [x_t, x_T]")
    sampler: component_spec(BridgeSampler) = Field(
        {"kind": "bridge_sde", "steps": 100, "group": C4_IMAGES}, description="bridge sampler (with a group: equivariant noise)"
    )
    training: TrainingSpec = Field(
        TrainingSpec(steps=4000, batch_size=128, lr=2e-3, ema_decay=0.999, checkpoint_every=1000, log_every=100),
        description="optimisation of both trained models (resumable from OUT/<model>/checkpoints)",
    )
    weighting: BridgeWeighting = Field("x0", description="bridge score matching weighting (x0: DDBM's data-prediction loss)")
    n_eval: int = Field(297, ge=1, description="held-out pairs translated for L1 and SSIM")
    n_equivariance: int = Field(16, ge=1, description="held-out x_T of the trajectory equivariance error")

    @model_validator(mode="after")
    def _consistent(self):
        if self.sampler.group is None:
            raise ValueError("sampler.group: set the group, so Δx0 is measured with and without equivariant noise")
        if self.n_eval > self.data.n_test or self.n_equivariance > self.data.n_test:
            raise ValueError(f"n_eval and n_equivariance must not exceed data.n_test = {self.data.n_test}")
        for field in ("model", "wt_model"):
            net = getattr(self, field)
            if getattr(net, "image_size", self.data.size) != self.data.size or getattr(net, "image_channels", 2) != 2:
                raise ValueError(
                    f"{field}: expected image_size = data.size = {self.data.size} and image_channels = 2 ([x_t, x_T])"
                )
        return self


class _BridgeExperiment(_ImageExperiment):
    task: str = ""

    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        s = self.spec
        if s.data.task != self.task:
            raise ValueError(f"data.task: the {self.kind} experiment translates task {self.task!r}, got {s.data.task!r}")
        data = s.data.load(torch.float32)
        x0, x_T = data["train"].to(device), data["train_x_T"].to(device)
        test_x0, test_x_T = data["test"][: s.n_eval].to(device), data["test_x_T"][: s.n_eval].to(device)
        bridge, group, sampler = build(s.process, DiffusionBridge), self._group(), build(s.sampler, BridgeSampler)
        plain_sampler = build({**s.sampler.model_dump(), "group": None}, BridgeSampler)
        metrics: dict[str, float] = {"l1_x_T": l1_error(test_x_T, test_x0), "ssim_x_T": ssim(test_x_T.clamp(-1, 1), test_x0)}
        models: dict[str, nn.Module] = {}
        histories: dict[str, list[float]] = {}
        for name in ("unet", "wt"):
            net = self._build(name, "model" if name == "unet" else "wt_model")
            score = DenoiserBridgeScore(net, bridge)
            trainer = BridgeTrainer(score, bridge, x0, x_T, s.training, out_dir / name, device, progress, weighting=s.weighting)
            histories[name] = trainer.fit()
            metrics[f"train_seconds_{name}"] = trainer.train_seconds
            models[name] = trainer.ema_model
        models["fa"] = DenoiserBridgeScore(FrameAveraged.wrap(models["unet"].net, group), bridge)
        metrics["train_seconds_fa"] = metrics["train_seconds_unet"]  # FA reuses the plain network
        rows: dict[str, Tensor] = {"x_T": test_x_T}
        for name in MODELS:
            model = models[name]
            start = time.perf_counter()
            x = sampler.sample(model, bridge, test_x_T, generator=torch.Generator().manual_seed(derive_seed(s.seed, "sample")))
            metrics[f"sample_seconds_{name}"] = time.perf_counter() - start
            rows[name] = x
            metrics[f"l1_{name}"] = l1_error(x, test_x0)
            metrics[f"ssim_{name}"] = ssim(x.clamp(-1, 1), test_x0)
            for label, smp in (("", sampler), ("_plain_noise", plain_sampler)):

                def draw(start_x, gen, smp=smp, model=model):
                    return smp.sample(model, bridge, start_x, generator=gen)

                metrics[f"delta_x0_{name}{label}"] = self._delta_x0(draw, test_x_T[: s.n_equivariance])
        rows["x0 (truth)"] = test_x0
        torch.save({k: v.cpu() for k, v in rows.items()}, out_dir / "samples.pt")
        self._plot_grid(out_dir / "samples.png", rows, min(8, s.n_eval))
        self._plot_losses(out_dir / "loss.png", histories, f"bridge score matching loss ({s.weighting})")
        return metrics


_BRIDGE_QUICK: dict[str, Any] = {
    "data": {"size": 8},
    **_quick_nets(2),
    "training": {"steps": 150, "batch_size": 64, "lr": 3e-3, "ema_decay": 0.99},
    "sampler": {"steps": 20},
    "n_eval": 32,
    "n_equivariance": 4,
}


class BridgeDenoiseExperiment(_BridgeExperiment, kind="bridge-denoise"):
    """Bridge from a noisy rotated digit (x_T = x0 + 0.5 eps, fixed seed) back to the clean digit."""

    task = "denoise"
    quick_overrides = _BRIDGE_QUICK

    class Spec(_BridgeSpec):
        """bridge-denoise: diffusion bridge from noisy to clean rotated digits, plain vs WT vs FA."""

        data: PairedDigits = Field(PairedDigits(task="denoise"), description="noisy/clean pairs of rotated digits")

        @model_validator(mode="after")
        def _task(self):
            if self.data.task != "denoise":
                raise ValueError(f"data.task: expected 'denoise', got {self.data.task!r}")
            return self


class BridgeStyleExperiment(_BridgeExperiment, kind="bridge-style"):
    """Bridge from the Sobel edge map of a rotated digit back to the digit (style transfer)."""

    task = "style"
    quick_overrides = _BRIDGE_QUICK

    class Spec(_BridgeSpec):
        """bridge-style: diffusion bridge from edge maps to rotated digits, plain vs WT vs FA."""

        data: PairedDigits = Field(PairedDigits(task="style"), description="edge-map/digit pairs of rotated digits")

        @model_validator(mode="after")
        def _task(self):
            if self.data.task != "style":
                raise ValueError(f"data.task: expected 'style', got {self.data.task!r}")
            return self
