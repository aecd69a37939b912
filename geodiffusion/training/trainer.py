r"""Training loop for score models: AdamW on a DSM loss, EMA, clipping, seeded, resumable and data parallel.

:class:`TrainerBase` is the one loop; :class:`Trainer` (points of :math:`\mathbb R^d` or of a manifold),
:class:`~geodiffusion.training.FunctionTrainer` (functions) and :class:`~geodiffusion.training.GraphTrainer`
(conformer graphs) supply only their data's validation, its number of items, how a batch is gathered and its loss.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from geodiffusion._validation import check_tensor
from geodiffusion.processes.base import LinearGaussianProcess, Process
from geodiffusion.spec import Spec
from geodiffusion.training.checkpoint import load_checkpoint, save_checkpoint
from geodiffusion.training.distributed import (
    DistributedContext,
    RankSlicedScore,
    barrier,
    broadcast_object,
    local_device,
    setup_distributed,
)
from geodiffusion.training.ema import EMA
from geodiffusion.training.losses import Weighting, dsm_loss
from geodiffusion.training.riemannian import riemannian_dsm_loss

__all__ = ["LRScheduleSpec", "TrainingSpec", "TrainerBase", "Trainer", "Validation", "derive_seed"]

#: a held-out score of the EMA model, lower is better (e.g. a DSM loss on validation data with fixed noise)
Validation = Callable[[nn.Module], float]

CHECKPOINT_FORMAT = 1
# fields that may change between an interrupted run and its resumption without changing the result
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every"})
# what load_state_dict reads: a checkpoint lacking one of them was written by another (older) layout
_STATE_KEYS = frozenset(
    {"step", "model", "ema", "optimizer", "data_generator", "noise_generator", "permutation", "cursor"}
    | {"python_rng", "torch_rng", "spec", "history", "train_seconds"}
)


def derive_seed(seed: int, *keys: str | int) -> int:
    """An independent 63-bit seed for the stream named ``keys`` under the master ``seed``
    (numpy's ``SeedSequence`` hashing, so streams of adjacent seeds do not overlap)."""
    words = [int(seed)] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") % 2**32 for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) & (2**63 - 1)


class LRScheduleSpec(Spec):
    """Learning-rate schedule fields of every trainer's spec (which also has ``lr`` and ``steps``)."""

    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant after the warm-up, or cosine decay to 0 at `steps` after it (RSGM's schedule)"
    )
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up from 0 over this many steps")

    @model_validator(mode="after")
    def _warmup_fits(self):
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps ({self.steps})")
        return self

    def lr_at(self, step: int) -> float:
        r"""Learning rate of update ``step`` (0-based): :math:`\eta\,\min(1, (s+1)/W)` during the warm-up, then
        :math:`\eta` (constant) or :math:`\tfrac{\eta}{2}(1 + \cos(\pi (s - W)/(S - W)))` (cosine)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        progress = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * progress))


class TrainingSpec(LRScheduleSpec):
    """Optimisation settings of :class:`Trainer`."""

    steps: int = Field(2000, ge=1, description="number of optimiser steps")
    batch_size: int = Field(
        256, ge=1, description="global minibatch size (at most the number of data points), split over the ranks of a DDP run"
    )
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (the peak of the schedule)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    ema_decay: float = Field(0.999, ge=0, le=1, description="EMA decay beta (with warm-up min(beta, (1+n)/(10+n)))")
    grad_clip: Annotated[float, Field(gt=0)] | None = Field(1.0, description="max global gradient norm; None: no clipping")
    weighting: Weighting = Field("sigma2", description="DSM weighting lambda(t): sigma2, likelihood or none")
    eps: float = Field(1e-3, ge=0, description="times are drawn from U[eps, T]")
    seed: int = Field(0, ge=0, description="seeds the minibatch order and the DSM noise (two independent streams)")
    checkpoint_every: int = Field(1000, ge=1, description="write checkpoints/last.pt every this many steps (and at the end)")
    log_every: int = Field(50, ge=1, description="append a line to train_log.jsonl every this many steps")


class TrainerBase(ABC):
    r"""The training loop shared by every trainer: AdamW on the mean loss of a minibatch of *items* (data points,
    functions, graphs), gradient clipping, an EMA of the parameters, seeded and exactly resumable, data parallel.

    One step draws ``spec.batch_size`` item indices as the next consecutive slice of a per-epoch permutation of the
    :attr:`num_items` items (the tail of an epoch that does not fill a batch is skipped), gathers them into a
    batch (:meth:`_gather`) and takes one optimiser step on its loss :math:`\mathcal L(\theta)` (:meth:`_loss`).
    The permutation comes from a *data* generator, times and noise (and any other per-step randomness) from a
    *noise* generator, seeded ``derive_seed(spec.seed, "data")`` and ``derive_seed(spec.seed, "noise")``; both live
    on the CPU, so the draws do not depend on the device. Every checkpoint holds them with the model, its EMA,
    the optimiser, the permutation, its cursor and the global RNG states, so that :meth:`fit` resumed from
    ``out_dir/checkpoints/last.pt`` ends bit-for-bit where an uninterrupted run ends (on CPU); the spec may change
    on resumption only in ``steps``, ``checkpoint_every`` and ``log_every``. Every ``log_every`` steps a JSON line
    (mean loss since the last line, gradient norm, learning rate, training seconds) goes to
    ``out_dir/train_log.jsonl``; a resumed run first drops the lines written after its checkpoint.

    **Distributed data parallel.** Under ``torchrun`` (or with ``distributed=True`` in an initialised process
    group) the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` (gloo on CPU, NCCL on
    GPU; a CUDA ``device`` without index becomes ``cuda:LOCAL_RANK``). ``spec.batch_size`` stays the *global*
    batch: every rank draws the same items, times and noise, and runs the model on its contiguous slice of the
    batch only (:meth:`_distributed_model`; the batch's noising, which needs no model, is repeated on every rank).
    The loss is the global-batch mean and rank :math:`r` back-propagates :math:`W\mathcal L` through its own rows,
    so DDP's gradient average equals the single-process gradient to round-off. Only rank 0 writes checkpoints and
    logs (a barrier follows each save); on resumption rank 0 reads the checkpoint and broadcasts it, so
    ``out_dir`` need not be shared between nodes. Checkpoints hold the bare model (no ``module.`` prefix):
    a DDP checkpoint resumes in a single process and vice versa. ``distributed=False`` trains alone even
    under torchrun; models must use all their parameters in every forward (DDP's default) and should not
    use batch statistics (BatchNorm sees a rank's slice only).

    **Validation.** With ``validation`` (a :data:`Validation`: EMA model to a float, lower is better) the loop
    scores the EMA model at every checkpoint step, on rank 0, before the checkpoint is written: the value joins
    the log line as ``val_loss`` and :attr:`val_history`, and the EMA weights of the best step so far are kept
    (:meth:`best_model`); both are in the checkpoint. The global RNG states are restored after each call, so
    training with and without it, interrupted or not, takes the same steps (a function drawing from its own
    seeded generator also gives values comparable across steps). Under DDP the other ranks wait at the
    checkpoint barrier meanwhile: keep it well within the process group's timeout.

    A subclass validates its data and stores it, then calls ``super().__init__``, and implements
    :attr:`num_items`, :meth:`_gather` and :meth:`_loss` (optionally :meth:`_to_device`, :meth:`_check_model`
    and :meth:`_distributed_model`). ``spec`` needs the fields of :class:`TrainingSpec` (other than ``weighting``).
    """

    #: the spec class that dict specs are validated with
    spec_type: ClassVar[type[Spec]] = Spec
    #: what an item is, for messages ("data points", "functions", "graphs")
    item_name: ClassVar[str] = "items"
    #: the loop's name in the progress bar
    progress_desc: ClassVar[str] = "training"

    def __init__(
        self,
        model: nn.Module,
        process: Process,
        spec: Spec | dict[str, Any],
        out_dir: str | Path | None,
        device: str | torch.device,
        progress: bool,
        distributed: bool | None,
        validation: Validation | None = None,
    ) -> None:
        spec = self._coerce_spec(spec)
        params = self._trainable_parameters(model)
        if validation is not None and not callable(validation):
            raise TypeError(f"validation: expected a callable (EMA model -> float), got {type(validation).__name__}")
        if spec.batch_size > self.num_items:
            raise ValueError(f"batch_size ({spec.batch_size}) exceeds the number of {self.item_name} ({self.num_items})")
        if not spec.eps < process.T:
            raise ValueError(f"spec.eps ({spec.eps}) must be smaller than the process's T ({process.T})")
        self.spec = spec
        self.process = process
        self.device = torch.device(device)
        self.dist: DistributedContext | None = setup_distributed(self.device, distributed=distributed)
        if self.dist is not None:
            self.device = local_device(self.device)
            if spec.batch_size < self.dist.world_size:
                raise ValueError(
                    f"batch_size ({spec.batch_size}) must be at least the world size ({self.dist.world_size}): "
                    "every rank evaluates a slice of the global batch"
                )
        self.model = model.to(self.device)
        self._to_device(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress and (self.dist is None or self.dist.is_main)
        self._check_model()
        self._ddp: nn.Module | None = None
        if self.dist is not None:
            # DDP broadcasts rank 0's parameters and buffers at construction: every rank (and its EMA, copied
            # below) starts from the same model whatever each rank initialised
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

        self.optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.ema = EMA(self.model, spec.ema_decay)
        # Generators live on the CPU: values drawn from them do not depend on the training device.
        self.data_generator = torch.Generator().manual_seed(derive_seed(spec.seed, "data"))
        self.noise_generator = torch.Generator().manual_seed(derive_seed(spec.seed, "noise"))
        self.step = 0
        self.history: list[float] = []
        self.train_seconds = 0.0  # wall time of the optimisation, summed over resumed sessions
        self._permutation: Tensor | None = None
        self._cursor = 0
        self.validation = validation
        self.val_history: list[tuple[int, float]] = []  # (step, validation value) at each checkpoint step
        self._best_ema: dict[str, Tensor] | None = None

    @classmethod
    def _coerce_spec(cls, spec: Spec | dict[str, Any]) -> Any:
        return spec if isinstance(spec, cls.spec_type) else cls.spec_type.model_validate(spec)

    @staticmethod
    def _trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        return params

    # --- what a subclass supplies -------------------------------------------

    @property
    @abstractmethod
    def num_items(self) -> int:
        """The number of items the minibatches are drawn from."""

    @abstractmethod
    def _gather(self, index: Tensor) -> Any:
        """The batch of the items ``index [B]`` (CPU, long), on :attr:`device`; may draw from :attr:`noise_generator`
        (the same draws on every rank)."""

    @abstractmethod
    def _loss(self, batch: Any, model: Any) -> Tensor:
        r"""The mean loss :math:`\mathcal L` of ``batch`` under the score ``model`` (:attr:`model`, or under DDP
        :meth:`_distributed_model`), drawing times and noise from :attr:`noise_generator`."""

    def _to_device(self, device: torch.device) -> None:  # noqa: B027 (optional hook: data may stay where it is)
        """Move the data to ``device`` (called once, after the device is final)."""

    def _check_model(self) -> None:  # noqa: B027 (optional hook: the first step checks the model anyway)
        """Raise a ValueError if the model cannot take the data (called before training)."""

    def _distributed_model(self, ddp: nn.Module) -> Any:
        """The score that :meth:`_loss` calls under DDP: the global batch in, ``ddp`` run on this rank's slice."""
        return RankSlicedScore(ddp, self.dist)

    # --- paths ------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.out_dir / "train_log.jsonl" if self.out_dir is not None else None

    @property
    def is_main(self) -> bool:
        """True on rank 0 of a distributed run and always in a single process: the writer of files."""
        return self.dist is None or self.dist.is_main

    @property
    def best_validation(self) -> tuple[int, float] | None:
        """(step, value) of the lowest validation value so far (the first on ties); None if none was recorded."""
        return min(self.val_history, key=lambda sv: sv[1]) if self.val_history else None

    def best_model(self) -> nn.Module:
        """A copy of the EMA model with the weights it had at :attr:`best_validation`'s step (eval mode)."""
        if self._best_ema is None:
            raise ValueError(
                "best_model: no validation value recorded (pass validation= and fit to a checkpoint step; "
                "a checkpoint written before validation existed has none)"
            )
        model = copy.deepcopy(self.ema.model)
        model.load_state_dict(self._best_ema)
        return model.eval()

    def _validate(self) -> float | None:
        if self.validation is None or not self.is_main:
            return None
        # a validation that draws from the global generators must not move the training's draws
        with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            value = float(self.validation(self.ema.model))
        if not math.isfinite(value):
            raise FloatingPointError(f"validation gave {value} at step {self.step}")
        best = self.best_validation
        if best is None or value < best[1]:
            self._best_ema = {k: v.detach().clone() for k, v in self.ema.model.state_dict().items()}
        self.val_history.append((self.step, value))
        return value

    @property
    def ema_model(self) -> nn.Module:
        """The EMA copy of the model (eval mode): the one to sample from."""
        return self.ema.model

    # --- state ------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything :meth:`fit` needs to continue exactly where it stopped."""
        spec_of = lambda obj: obj.spec.model_dump(mode="json") if isinstance(getattr(obj, "spec", None), Spec) else None  # noqa: E731
        return {
            "format": CHECKPOINT_FORMAT,
            "trainer": self._checkpoint_kind(),
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "permutation": self._permutation,
            "cursor": self._cursor,
            "python_rng": random.getstate(),
            "torch_rng": torch.get_rng_state(),
            "spec": self.spec.model_dump(mode="json"),
            "model_spec": spec_of(self.model),
            "process_spec": spec_of(self.process),
            "history": list(self.history),
            "train_seconds": self.train_seconds,
            "validation": [list(sv) for sv in self.val_history],
            "best_ema": self._best_ema,
            "world_size": self.dist.world_size if self.dist is not None else 1,  # provenance only: resumable anywhere
        }

    @classmethod
    def _checkpoint_kind(cls) -> str:
        # the nearest of the package's trainers: a user's subclass reads its parent's checkpoints
        return next(k.__name__ for k in cls.__mro__ if k.__module__.startswith("geodiffusion.training."))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the training spec may differ only in steps and logging cadence."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}; expected {CHECKPOINT_FORMAT}")
        # checkpoints from before the shared loop carry no "trainer": only the Trainer's layout is unchanged since
        kind, expected, missing = state.get("trainer"), self._checkpoint_kind(), sorted(_STATE_KEYS - state.keys())
        if missing or (kind != expected and not (kind is None and expected == "Trainer")):
            who = f"by {kind}" if kind is not None else "by an earlier version of geodiffusion"
            lacking = f" (it lacks {', '.join(missing)})" if missing else ""
            raise ValueError(f"the checkpoint was written {who}{lacking}; {expected} cannot resume it: use another out_dir")
        # a field added after the checkpoint was written had its default then; a cosine schedule ends at `steps`
        saved, current = type(self.spec).with_defaults(state["spec"]), self.spec.model_dump(mode="json")
        resumable = _RESUMABLE_CHANGES - ({"steps"} if current.get("lr_schedule") == "cosine" else set())
        changed = sorted(k for k in current if k not in resumable and saved.get(k) != current[k])
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {current[k]!r}" for k in changed)
            raise ValueError(f"the checkpoint was trained with different settings ({diffs}); resuming would not reproduce it")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
        except RuntimeError as err:
            raise ValueError(f"the checkpoint does not match {type(self.model).__name__}: {err}") from err
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        self.noise_generator.set_state(state["noise_generator"])
        perm = state["permutation"]
        self._permutation = perm.to(torch.long) if perm is not None else None
        self._cursor = int(state["cursor"])
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = [float(v) for v in state["history"]]
        self.train_seconds = float(state["train_seconds"])
        # checkpoints from before validation existed carry neither
        self.val_history = [(int(step), float(value)) for step, value in state.get("validation", [])]
        self._best_ema = state.get("best_ema")

    def save(self, path: str | Path | None = None) -> Path:
        """Write a checkpoint atomically (default ``out_dir/checkpoints/last.pt``) from the calling rank
        (:meth:`fit` calls it on rank 0 only)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError(f"no checkpoint path: pass one or give the {type(self).__name__} an out_dir")
        return save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        self.load_state_dict(load_checkpoint(path, map_location=self.device))

    # --- training ---------------------------------------------------------

    def _next_index(self) -> Tensor:
        """The items of the next minibatch: the next slice of this epoch's permutation (a new one when it is used up)."""
        n, size = self.num_items, self.spec.batch_size
        if self._permutation is None or (self._cursor + 1) * size > n:
            self._permutation = torch.randperm(n, generator=self.data_generator)
            self._cursor = 0
        index = self._permutation[self._cursor * size : (self._cursor + 1) * size]
        self._cursor += 1
        return index

    def _resume(self) -> bool:
        """Load ``out_dir/checkpoints/last.pt`` if present (rank 0 reads it and broadcasts it to the other ranks)."""
        if self.dist is None:
            if self.checkpoint_path is not None and self.checkpoint_path.is_file():
                self.load(self.checkpoint_path)
                return True
            return False
        state = None
        if self.dist.is_main and self.checkpoint_path is not None and self.checkpoint_path.is_file():
            # CPU tensors pickle to any rank's device; load_state_dict moves them to the parameters'
            state = load_checkpoint(self.checkpoint_path, map_location="cpu")
        state = broadcast_object(state, self.dist, self.device)
        if state is not None:
            self.load_state_dict(state)
        return state is not None

    def _checkpoint(self) -> None:
        # every rank reaches the barrier at the same steps, whatever out_dir it was given
        if self.is_main and self.checkpoint_path is not None:
            self.save()
        barrier(self.dist, self.device)

    def _prepare_log(self, resumed: bool) -> None:
        if self.log_path is None or not self.is_main:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if resumed and self.log_path.is_file():
            # drop lines written after the checkpoint we resume from: they will be written again
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= self.step:
                    kept.append(line)
        self.log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def fit(self) -> list[float]:
        """Train to ``spec.steps`` (resuming from ``out_dir/checkpoints/last.pt`` when present);
        return the per-step loss history from step 1."""
        spec = self.spec
        resumed = self._resume() if self.step == 0 else False
        self._prepare_log(resumed)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        model = self.model if self._ddp is None else self._distributed_model(self._ddp)
        bar = tqdm(
            total=spec.steps, initial=min(self.step, spec.steps), desc=self.progress_desc, unit="step", disable=not self.progress
        )
        # losses and gradient norms stay on the device between log/checkpoint steps: one host sync per flush,
        # not per step (.item() would stall a GPU's queue every step)
        pending: list[Tensor] = []
        grad_norm: Tensor | None = None
        last_logged = self.step
        session_start, offset = time.perf_counter(), self.train_seconds
        # a user's spec need not have the schedule fields (LRScheduleSpec): it then trains at a constant lr
        scheduled = getattr(spec, "lr_schedule", "constant") != "constant" or getattr(spec, "warmup_steps", 0) > 0
        self.model.train()
        try:
            while self.step < spec.steps:
                loss = self._loss(self._gather(self._next_index()), model)
                self.optimizer.zero_grad(set_to_none=True)
                if self.dist is None:
                    loss.backward()
                else:
                    # this rank's rows carry the gradient; DDP divides the sum over ranks by world_size
                    (loss * self.dist.world_size).backward()
                if spec.grad_clip is not None:
                    grad_norm = nn.utils.clip_grad_norm_(params, spec.grad_clip)
                if scheduled:
                    # a function of the step alone, so a resumed run takes the same rates
                    for group in self.optimizer.param_groups:
                        group["lr"] = spec.lr_at(self.step) * group.get("lr_scale", 1.0)
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                pending.append(loss.detach())
                bar.update(1)
                log_now = self.step % spec.log_every == 0 or self.step == spec.steps
                checkpoint_now = self.step % spec.checkpoint_every == 0 or self.step == spec.steps
                if log_now or checkpoint_now:
                    self._flush(pending)
                    pending = []
                    self.train_seconds = offset + time.perf_counter() - session_start
                val = None
                if checkpoint_now:
                    tick = time.perf_counter()
                    val = self._validate()
                    session_start += time.perf_counter() - tick  # validation is not training time
                extra = {"val_loss": val} if val is not None else {}
                if log_now:
                    window = self.history[last_logged:]  # the steps since the last line (of this session)
                    last_logged = self.step
                    bar.set_postfix(loss=f"{np.mean(window):.4f}")
                    self._log(
                        {
                            "step": self.step,
                            "loss": float(np.mean(window)),
                            "grad_norm": float(grad_norm) if grad_norm is not None else None,
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "elapsed_s": self.train_seconds,
                        }
                        | extra
                    )
                elif extra:
                    self._log({"step": self.step} | extra)
                if checkpoint_now:
                    self._checkpoint()
        finally:
            bar.close()
        return list(self.history)

    def _flush(self, pending: list[Tensor]) -> list[float]:
        """Move the losses of the steps since the last flush to :attr:`history` (one host sync); raise if one is
        not finite, before anything is logged or checkpointed. The loss is the global-batch loss, the same on every
        rank, so all ranks stop together."""
        values = torch.stack(pending).double().tolist() if pending else []
        first = self.step - len(values) + 1
        for k, value in enumerate(values):
            if not np.isfinite(value):
                raise FloatingPointError(f"training diverged: loss is {value} at step {first + k}")
        self.history.extend(values)
        return values

    def _log(self, record: dict[str, Any]) -> None:
        if self.log_path is not None and self.is_main:
            with self.log_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


class Trainer(TrainerBase):
    r"""Fits a score model :math:`s_\theta` to ``data`` by minimising the DSM loss with AdamW: :func:`dsm_loss`
    on :math:`\mathbb R^d`, :func:`~geodiffusion.training.riemannian_dsm_loss` (exact heat-kernel target, Riemannian
    norm) when the process lives on a manifold (``process.manifold is not None``). The items are the data points;
    the loop, checkpoints, logs and data parallelism are :class:`TrainerBase`'s.

    Launching ``geodiffusion run`` on several GPUs (the command line maps ``--device cuda`` to each worker's GPU
    and lets only rank 0 write ``OUT``)::

        # one node, 4 GPUs
        torchrun --standalone --nproc_per_node=4 -m geodiffusion run quickstart --device cuda --out runs/q
        # two nodes of 8 GPUs: run on each node, with its --node_rank (0 on the host at MASTER_ADDR)
        torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 --master_addr=10.0.0.1 --master_port=29500 \
            -m geodiffusion run quickstart --device cuda --out /shared/runs/q

    Shapes: ``data [N, *event_shape]``; the model maps ``(t [B], x [B, *event_shape])`` to ``[B, *event_shape]``.
    """

    spec_type = TrainingSpec
    item_name = "data points"

    def __init__(
        self,
        model: nn.Module,
        process: Process,
        data: Tensor,
        spec: TrainingSpec | dict[str, Any],
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = True,
        distributed: bool | None = None,
        validation: Validation | None = None,
    ) -> None:
        spec = self._coerce_spec(spec)
        if not isinstance(process, Process):
            raise TypeError(f"process: expected a Process, got {type(process).__name__}")
        self._check_data(data, process)
        if process.manifold is not None:
            # Riemannian DSM: sigma_t^2 weighting needs the process's sigma(t); the marginal at t = 0 is a point mass
            if spec.weighting == "sigma2" and not callable(getattr(process, "sigma", None)):
                raise ValueError(f"weighting='sigma2' needs a process with sigma(t), got {type(process).__name__}")
            if spec.eps <= 0:
                raise ValueError(f"spec.eps must be positive for a process on a manifold (a point mass at t = 0), got {spec.eps}")
        elif spec.weighting == "sigma2" and not isinstance(process, LinearGaussianProcess):
            raise ValueError(f"weighting='sigma2' needs a LinearGaussianProcess, got {type(process).__name__}")
        # complex points (SU(n)) are trained by a real network: compare with the points' real dtype
        dtype = self._trainable_parameters(model)[0].dtype
        if dtype != data.real.dtype:
            raise ValueError(f"data has dtype {data.dtype} but the model's parameters are {dtype}; cast one of them")
        self.data = data
        super().__init__(
            model, process, spec, out_dir, device if device is not None else data.device, progress, distributed, validation
        )

    # --- validation -------------------------------------------------------

    @staticmethod
    def _check_data(data: Tensor, process: Process) -> None:
        check_tensor("data", data)
        if not (data.is_floating_point() or (data.is_complex() and getattr(process, "manifold", None) is not None)):
            raise ValueError(f"data: expected a floating tensor (complex only for points of a manifold), got {data.dtype}")
        if data.dim() < process.event_ndim + 1:
            raise ValueError(
                f"data: expected shape [N, *event_shape] with {process.event_ndim} event axes, got {list(data.shape)}"
            )
        if not bool(torch.isfinite(data).all()):
            bad = int((~torch.isfinite(data)).flatten(1).any(-1).sum())
            raise ValueError(f"data: {bad} of {len(data)} points contain NaN or inf")

    def _check_model(self) -> None:
        x = self.data[:2]
        t = torch.full((x.shape[0],), 0.5 * self.process.T, dtype=x.real.dtype, device=x.device)
        was_training = self.model.training
        try:
            with torch.no_grad():
                out = self.model.eval()(t, x)
        except Exception as err:  # any failure here means the data do not fit the model
            raise ValueError(
                f"data of shape [N, {', '.join(map(str, x.shape[1:]))}] do not fit {type(self.model).__name__}: {err}"
            ) from err
        finally:
            self.model.train(was_training)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"{type(self.model).__name__} maps inputs of shape {list(x.shape)} to {got}; expected the same shape"
            )

    # --- the items and their loss -------------------------------------------

    @property
    def num_items(self) -> int:
        return len(self.data)

    def _to_device(self, device: torch.device) -> None:
        self.data = self.data.to(device)

    def _gather(self, index: Tensor) -> Tensor:
        return self.data[index.to(self.device)]

    def _loss(self, x0: Tensor, model: Any) -> Tensor:
        # looked up at call time (module globals), so that the loss can be patched in tests
        loss_fn = riemannian_dsm_loss if self.process.manifold is not None else dsm_loss
        return loss_fn(model, self.process, x0, generator=self.noise_generator, weighting=self.spec.weighting, eps=self.spec.eps)
