"""The Experiment abstraction: one spec (data + process + model + sampler + training) -> one output folder."""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from geodiffusion.models.base import ScoreModel
from geodiffusion.processes.base import Process
from geodiffusion.registry import Component, build
from geodiffusion.samplers.base import Sampler
from geodiffusion.samplers.riemannian import ChartODEOptions
from geodiffusion.spec import Spec, component_spec
from geodiffusion.training.trainer import Trainer, TrainingSpec, derive_seed

__all__ = [
    "Experiment",
    "ExperimentSpec",
    "ManifoldExperimentSpec",
    "ManifoldTrainingSpec",
    "cached_json",
    "merge_spec_dicts",
    "write_json",
]


class ExperimentSpec(Spec):
    """Fields every experiment has; a concrete experiment adds its data and evaluation settings
    and gives every field a default (the full run)."""

    seed: int = Field(0, ge=0, description="master seed of data generation, initialisation, sampling and evaluation")
    process: component_spec(Process)
    model: component_spec(ScoreModel)
    sampler: component_spec(Sampler)
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="optimisation settings")


class ManifoldTrainingSpec(ExperimentSpec):
    """Fields of a density-estimation experiment on a manifold: a reverse-SDE sampler, sigma2-weighted Riemannian
    DSM, the probability-flow NLL, and train / test counts."""

    sampler: component_spec(Sampler) = Field({"kind": "geodesic_euler_maruyama", "steps": 500}, description="reverse SDE")
    training: TrainingSpec = Field(
        TrainingSpec(steps=10000, batch_size=512, lr=5e-4, ema_decay=0.999, weighting="sigma2", checkpoint_every=2000),
        description="optimisation settings",
    )
    likelihood: ChartODEOptions = Field(ChartODEOptions(method="rk4", steps=100), description="probability-flow ODE of the NLL")
    n_train: int = Field(20000, ge=1, description="training points")
    n_test: int = Field(1000, ge=2, description="held-out points")
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype of data and model")

    @model_validator(mode="after")
    def _batch_fits(self):
        if self.training.batch_size > self.n_train:
            raise ValueError(f"training.batch_size ({self.training.batch_size}) exceeds n_train ({self.n_train})")
        return self


class ManifoldExperimentSpec(ManifoldTrainingSpec):
    """:class:`ManifoldTrainingSpec` plus the number of model samples drawn for the plots and sample metrics."""

    n_samples: int = Field(1000, ge=2, description="samples drawn from the model")


def merge_spec_dicts(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of spec dicts, ``override`` winning. A nested dict whose ``kind`` differs from
    the base's replaces it whole (the fields of another component do not carry over).

    >>> base = {"seed": 0, "sampler": {"kind": "probability_flow", "method": "dopri5"}}
    >>> merge_spec_dicts(base, {"sampler": {"method": "rk4"}})
    {'seed': 0, 'sampler': {'kind': 'probability_flow', 'method': 'rk4'}}
    >>> merge_spec_dicts(base, {"sampler": {"kind": "reverse_sde"}})
    {'seed': 0, 'sampler': {'kind': 'reverse_sde'}}
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and value.get("kind", old.get("kind")) == old.get("kind"):
            out[key] = merge_spec_dicts(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file in the same folder, then ``os.replace``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, allow_nan=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached_json(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The flat metrics dict at ``path`` if an earlier, interrupted run of this output folder wrote it, else
    ``compute()``, written there atomically first: a long run's expensive stages (a seed, a dataset) run once.
    The folder's ``spec.json`` (:meth:`Experiment.check_out_dir`) ties the file to this spec."""
    if path.is_file():
        # JSON has no NaN or inf: they were written as null (the final metrics.json reports them so, with a warning)
        return {k: math.nan if v is None else v for k, v in json.loads(path.read_text(encoding="utf-8")).items()}
    data = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in data.items()})
    return data


def final_losses(losses: Sequence[float], suffix: str = "") -> dict[str, float]:
    """Mean and median training loss over the last tenth of the steps, as ``final_loss<suffix>`` and
    ``final_loss_median<suffix>``.

    Rare spikes can carry the mean where the DSM target is heavy-tailed (in distance DSM a noised distance near
    zero puts a 2/d term in it), so the median is the robust summary of where training ended."""
    if not losses:
        raise ValueError("final_losses needs at least one recorded loss")
    tail = torch.tensor(list(losses[-max(1, len(losses) // 10) :]), dtype=torch.float64)
    # torch.median takes the lower middle value; the quantile interpolates, as the usual median does
    return {f"final_loss{suffix}": float(tail.mean()), f"final_loss_median{suffix}": float(tail.quantile(0.5))}


def _finite_metrics(metrics: Mapping[str, Any], kind: str) -> dict[str, float | None]:
    if not isinstance(metrics, Mapping):
        raise TypeError(f"{kind}.run() must return a dict of name -> number, got {type(metrics).__name__}")
    out: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise TypeError(f"{kind}.run(): metric names must be strings, got {name!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{kind}.run(): metric {name!r} is not a number: {value!r}") from err
        if not math.isfinite(number):
            # JSON has no NaN/inf: record the failure as null rather than losing the run
            warnings.warn(f"metric {name!r} of {kind} is {number}; written as null", RuntimeWarning, stacklevel=3)
            out[name] = None
        else:
            out[name] = number
    return out


class Experiment(Component, family=True):
    """A reproducible run: train, sample and evaluate as its spec says.

    Subclasses implement :meth:`run` and may set ``quick_overrides``, the spec changes of the small
    ``--quick`` variant. :meth:`execute` is the template: it writes ``spec.json`` (the resolved spec, so the
    run is reproduced from its folder alone) before any work, calls :meth:`run`, then writes ``metrics.json``.
    """

    quick_overrides: ClassVar[dict[str, Any]] = {}
    threads: ClassVar[int | None] = None
    """torch intra-op threads the command line uses for this experiment unless ``--threads`` is given
    (None: torch's default)."""

    @abstractmethod
    def run(self, out_dir: Path, *, device: torch.device, progress: bool) -> dict[str, float]:
        """Do the work, writing checkpoints and plots into ``out_dir``; return flat ``{name: number}`` metrics."""

    @classmethod
    def resolve_spec(cls, overrides: Mapping[str, Any] | None = None, *, quick: bool = False, seed: int | None = None) -> Spec:
        """The default spec, with ``quick_overrides`` (if ``quick``), then ``overrides``, then ``seed``
        (the master seed and the training seed) merged over it, validated."""
        data = cls.Spec().model_dump(mode="json")
        if quick:
            data = merge_spec_dicts(data, cls.quick_overrides)
        if overrides:
            data = merge_spec_dicts(data, overrides)
        if seed is not None:
            data = merge_spec_dicts(data, {"seed": seed, "training": {"seed": seed}})
        return cls.Spec.model_validate(data)

    def build_model(self, spec: Spec, *keys: str | int, dtype: torch.dtype | None = None) -> ScoreModel:
        """Build a score model from ``spec`` with torch's global RNG seeded from (``seed``, "init", ``keys``) in a
        forked RNG: its initialisation depends on the master seed and the keys only, not on what ran before."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.spec.seed, "init", *keys))
            model = build(spec, ScoreModel)
        return model.to(dtype) if dtype is not None else model

    def train_model(
        self,
        process: Process,
        data: torch.Tensor,
        out_dir: Path,
        *keys: str | int,
        device: torch.device,
        progress: bool,
        dtype: torch.dtype,
        training: TrainingSpec | None = None,
    ) -> tuple[torch.nn.Module, float]:
        """Train ``spec.model`` (seeded by ``keys``) on ``data`` with :class:`Trainer` into ``out_dir`` (resumable);
        return its EMA copy and the training seconds."""
        model = self.build_model(self.spec.model, *keys, dtype=dtype)
        trainer = Trainer(model, process, data, training or self.spec.training, out_dir, device, progress)
        trainer.fit()
        return trainer.ema_model, trainer.train_seconds

    def check_out_dir(self, out_dir: str | Path) -> None:
        """Raise ValueError if ``out_dir`` holds a run of another spec (resuming it would mix two runs)."""
        spec_path = Path(out_dir) / "spec.json"
        if spec_path.is_file():
            try:
                previous = json.loads(spec_path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{spec_path} is not valid JSON ({err}); choose another output folder") from err
            # a run written before a spec field existed resumes if that field keeps its default
            if type(self.spec).with_defaults(previous) != self.spec.model_dump(mode="json"):
                raise ValueError(f"{out_dir} holds a run of a different spec; choose another output folder")

    def execute(
        self, out_dir: str | Path, *, device: str | torch.device | None = None, progress: bool = True
    ) -> dict[str, float]:
        """Run into ``out_dir``: ``spec.json`` first, then :meth:`run`, then ``metrics.json``.

        A folder holding a run of the same spec is resumed (trainers continue from their checkpoints);
        one holding a different spec is refused.
        """
        out_dir = Path(out_dir)
        self.check_out_dir(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        device = torch.device(device) if device is not None else torch.device("cpu")
        write_json(out_dir / "spec.json", self.spec.model_dump(mode="json"))
        metrics = _finite_metrics(self.run(out_dir, device=device, progress=progress), self.kind)
        write_json(out_dir / "metrics.json", metrics)
        return metrics
