r"""Denoising score matching on functions: minibatches of finite marginals :math:`(x, y)` under an OU process with a
GP limit (:class:`~geodiffusion.processes.gp.OUGaussianProcess`), and a seeded, exactly resumable training loop.

For values :math:`y_0` at inputs :math:`x`, a time :math:`t` and :math:`y_t = \mu_t + \sigma_t L \xi`, the loss of a
network :math:`o_\theta(t, x, y)` in the process's parametrisation is

.. math:: \mathcal{L} = \mathbb{E}\, \lambda(t)\, \tfrac{1}{Nd} \| o_\theta(t, x, y_t) - T(\xi) \|^2,

with the target :math:`T` of :meth:`OUGaussianProcess.denoising_pair` (:math:`-L^{-\top}\xi/\sigma_t`,
:math:`-L\xi/\sigma_t` or :math:`-\xi`) and :math:`\lambda = \sigma_t^2` (``weighting="sigma2"``; 1 for the
:math:`S_t^\top` parametrisation, whose target is already of unit scale) or 1 (``"none"``).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor, nn

from geodiffusion._random import rand
from geodiffusion._validation import check_finite
from geodiffusion.processes.base import Process
from geodiffusion.processes.gp import OUGaussianProcess
from geodiffusion.spec import Spec
from geodiffusion.training.checkpoint import load_checkpoint, save_checkpoint
from geodiffusion.training.ema import EMA

__all__ = [
    "FunctionTrainingSpec",
    "FunctionTrainer",
    "function_dsm_loss",
    "function_riemannian_dsm_loss",
    "derive_function_seed",
]

FunctionWeighting = Literal["sigma2", "none"]
CHECKPOINT_FORMAT = 1
# fields that may change between an interrupted run and its resumption without changing the result
_RESUMABLE_CHANGES = frozenset({"steps", "checkpoint_every", "log_every"})


def derive_function_seed(seed: int, *keys: str | int) -> int:
    """An independent 63-bit seed for the stream named ``keys`` under ``seed`` (numpy ``SeedSequence`` hashing)."""
    words = [int(seed)] + [k if isinstance(k, int) else int.from_bytes(k.encode(), "little") % 2**32 for k in keys]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def _weight(process: OUGaussianProcess, t: Tensor, weighting: FunctionWeighting) -> Tensor:
    if weighting == "none" or process.spec.parametrisation == "st_preconditioned":
        return torch.ones_like(t)
    return process.std(t) ** 2


def function_dsm_loss(
    model: nn.Module,
    process: OUGaussianProcess,
    inputs: Tensor,
    values: Tensor,
    *,
    t: Tensor | None = None,
    eps: float = 1e-3,
    weighting: FunctionWeighting = "sigma2",
    generator: torch.Generator | None = None,
    reduce: bool = True,
) -> Tensor:
    r"""DSM loss :math:`\lambda(t) \| o_\theta(t, x, y_t) - T \|^2 / (Nd)` of ``values [B, N, d]`` at
    ``inputs [B, N, m]``, averaged over the batch (``reduce``) or per function ``[B]``; times
    :math:`t \sim U[\varepsilon, T]` unless ``t [B]`` is given. ``model(t, y, inputs=x)`` returns the output in
    ``process.spec.parametrisation``."""
    if not isinstance(process, OUGaussianProcess):
        raise ValueError(f"process: expected an OUGaussianProcess, got {type(process).__name__}")
    check_finite("values", values)
    check_finite("inputs", inputs)
    if values.dim() != 3 or inputs.dim() != 3 or inputs.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"inputs and values: expected [B, N, m] and [B, N, d], got {list(inputs.shape)} and {list(values.shape)}"
        )
    if weighting not in ("sigma2", "none"):
        raise ValueError(f"weighting: expected 'sigma2' or 'none', got {weighting!r}")
    batch = values.shape[0]
    if t is None:
        if not 0 <= eps < process.T:
            raise ValueError(f"eps: expected a value in [0, T={process.T}), got {eps}")
        t = eps + (process.T - eps) * rand((batch,), generator, dtype=values.dtype, device=values.device)
    factor = process.factor(inputs)
    y_t, target = process.denoising_pair(values, t, inputs=factor, generator=generator)
    out = model(t, y_t, inputs=inputs)
    losses = _weight(process, t, weighting) * ((out - target) ** 2).flatten(1).mean(-1)
    return losses.mean() if reduce else losses


def function_riemannian_dsm_loss(
    model: nn.Module,
    process: Process,
    inputs: Tensor,
    values: Tensor,
    *,
    t: Tensor | None = None,
    eps: float = 1e-3,
    weighting: FunctionWeighting = "sigma2",
    generator: torch.Generator | None = None,
    reduce: bool = True,
) -> Tensor:
    r"""DSM for functions with values on a manifold :math:`M`, noised by ``process`` (Brownian motion on :math:`M`,
    :class:`~geodiffusion.processes.BrownianProcess`) independently at every point:
    :math:`\lambda(t)\,\tfrac1N \sum_i \| P_{y_{t,i}} s_\theta(t, x, y_t)_i - \nabla \log p_{\tau(t)}(y_{0,i}, y_{t,i}) \|^2`
    with the exact heat-kernel score as target and :math:`\lambda = \sigma_t^2` (``"sigma2"``) or 1.
    ``values [B, N, *point_shape]`` on :math:`M`, ``inputs [B, N, m]``; one time per function."""
    manifold = getattr(process, "manifold", None)
    if manifold is None:
        raise ValueError(f"process: expected a process on a manifold, got {type(process).__name__}; use function_dsm_loss")
    check_finite("values", values)
    check_finite("inputs", inputs)
    manifold.check_point("values", values)
    if values.dim() != 2 + len(manifold.point_shape) or inputs.dim() != 3 or inputs.shape[:2] != values.shape[:2]:
        raise ValueError(
            f"inputs and values: expected [B, N, m] and [B, N, *point_shape], got {list(inputs.shape)} and {list(values.shape)}"
        )
    if weighting not in ("sigma2", "none"):
        raise ValueError(f"weighting: expected 'sigma2' or 'none', got {weighting!r}")
    batch, n = values.shape[:2]
    if t is None:
        if not 0 < eps < process.T:
            raise ValueError(f"eps: expected a value in (0, T={process.T}), got {eps}")
        t = eps + (process.T - eps) * rand((batch,), generator, dtype=values.dtype, device=values.device)
    # the same time at every point of a function: the marginal is a product of heat kernels
    marginal = process.marginal(values, t[:, None].expand(batch, n))
    y_t = marginal.sample(generator)
    target = marginal.score(y_t)
    diff = manifold.proj(y_t, model(t, y_t, inputs=inputs)) - target
    per_function = manifold.inner(y_t, diff, diff).mean(-1)
    lam = process.sigma(t) ** 2 if weighting == "sigma2" else torch.ones_like(t)
    losses = lam.to(per_function.dtype) * per_function
    return losses.mean() if reduce else losses


class FunctionTrainingSpec(Spec):
    """Optimisation settings of :class:`FunctionTrainer`."""

    steps: int = Field(2000, ge=1, description="number of optimiser steps")
    batch_size: int = Field(32, ge=1, description="functions per minibatch (at most the number of functions)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    ema_decay: float = Field(0.995, ge=0, le=1, description="EMA decay (with warm-up min(beta, (1+n)/(10+n)))")
    grad_clip: Annotated[float, Field(gt=0)] | None = Field(1.0, description="max global gradient norm; None: no clipping")
    weighting: FunctionWeighting = Field("sigma2", description="lambda(t): sigma_t^2 or 1")
    eps: float = Field(1e-3, ge=0, description="times are drawn from U[eps, T]")
    min_points: int | None = Field(
        None, ge=1, description="each minibatch keeps a random subset of between min_points and N points (None: all N)"
    )
    seed: int = Field(0, ge=0, description="seeds the minibatch order, point subsets and DSM noise")
    checkpoint_every: int = Field(500, ge=1, description="write checkpoints/last.pt every this many steps (and at the end)")
    log_every: int = Field(50, ge=1, description="append a line to train_log.jsonl every this many steps")


class FunctionTrainer:
    r"""Fits a function score network to a pool of functions ``inputs [M, N, m]``, ``values [M, N, d]`` by
    :func:`function_dsm_loss` (an OU process with a GP limit) or :func:`function_riemannian_dsm_loss` (Brownian
    motion on the values' manifold) with AdamW, gradient clipping and an EMA.

    Minibatches are consecutive slices of a per-epoch permutation drawn from a data generator; times, point
    subsets and noise come from a second generator. Both are seeded from ``spec.seed`` and saved in every
    checkpoint together with the model, EMA, optimiser, permutation and global RNG states, so that :meth:`fit`
    resumed from ``out_dir/checkpoints/last.pt`` ends bit-for-bit where an uninterrupted run ends (on CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        process: Process,
        inputs: Tensor,
        values: Tensor,
        spec: FunctionTrainingSpec | dict[str, Any],
        out_dir: str | Path | None = None,
        device: str | torch.device | None = None,
        progress: bool = False,
    ) -> None:
        spec = spec if isinstance(spec, FunctionTrainingSpec) else FunctionTrainingSpec.model_validate(spec)
        self._manifold = getattr(process, "manifold", None)
        if not isinstance(process, OUGaussianProcess) and (
            self._manifold is None or not callable(getattr(process, "sigma", None))
        ):
            raise ValueError(
                f"process: expected an OUGaussianProcess or Brownian motion on a manifold, got {type(process).__name__}"
            )
        check_finite("inputs", inputs)
        check_finite("values", values)
        if values.dim() < 3 or inputs.dim() != 3 or inputs.shape[:2] != values.shape[:2]:
            raise ValueError(
                f"inputs and values: expected [M, N, m] and [M, N, d], got {list(inputs.shape)} and {list(values.shape)}"
            )
        if spec.batch_size > values.shape[0]:
            raise ValueError(f"batch_size ({spec.batch_size}) exceeds the number of functions ({values.shape[0]})")
        if spec.min_points is not None and spec.min_points > values.shape[1]:
            raise ValueError(f"min_points ({spec.min_points}) exceeds the {values.shape[1]} points per function")
        if not spec.eps < process.T:
            raise ValueError(f"spec.eps ({spec.eps}) must be smaller than the process's T ({process.T})")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(model).__name__} has no trainable parameters")
        if params[0].dtype != values.dtype:
            raise ValueError(f"values have dtype {values.dtype} but the model's parameters are {params[0].dtype}")
        self.spec, self.process = spec, process
        self.device = torch.device(device) if device is not None else values.device
        self.model = model.to(self.device)
        self.inputs, self.values = inputs.to(self.device), values.to(self.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.ema = EMA(self.model, spec.ema_decay)
        self.data_generator = torch.Generator().manual_seed(derive_function_seed(spec.seed, "data"))
        self.noise_generator = torch.Generator().manual_seed(derive_function_seed(spec.seed, "noise"))
        self.step = 0
        self.history: list[float] = []
        self.train_seconds = 0.0
        self._permutation: Tensor | None = None
        self._cursor = 0

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir is not None else None

    @property
    def ema_model(self) -> nn.Module:
        """The EMA copy of the model (eval mode), the one to sample and evaluate with."""
        return self.ema.model

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
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
            "history": list(self.history),
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the spec may differ only in steps and logging cadence."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"unsupported checkpoint format {state.get('format')!r}; expected {CHECKPOINT_FORMAT}")
        saved, current = state["spec"], self.spec.model_dump(mode="json")
        changed = sorted(k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k) != current[k])
        if changed:
            raise ValueError(
                f"the checkpoint was trained with different settings ({', '.join(changed)}); resuming would not reproduce it"
            )
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        self.noise_generator.set_state(state["noise_generator"])
        self._permutation, self._cursor = state["permutation"], int(state["cursor"])
        random.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.train_seconds = float(state["train_seconds"])

    def _next_batch(self) -> tuple[Tensor, Tensor]:
        m, b = self.values.shape[0], self.spec.batch_size
        if self._permutation is None or self._cursor + b > m:
            self._permutation = torch.randperm(m, generator=self.data_generator)
            self._cursor = 0
        idx = self._permutation[self._cursor : self._cursor + b].to(self.device)
        self._cursor += b
        inputs, values = self.inputs[idx], self.values[idx]
        n = values.shape[1]
        if self.spec.min_points is not None:
            # one random subset size and subset per minibatch: the network sees sets of every size it is used on
            k = int(torch.randint(self.spec.min_points, n + 1, (), generator=self.noise_generator))
            keep = torch.randperm(n, generator=self.noise_generator)[:k].to(self.device)
            inputs, values = inputs[:, keep], values[:, keep]
        return inputs, values

    def fit(self) -> list[float]:
        """Train to ``spec.steps`` (resuming from ``checkpoints/last.pt`` if present); return the loss history."""
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            self.load_state_dict(load_checkpoint(self.checkpoint_path))
        s = self.spec
        log = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.out_dir / "train_log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (closed below)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=s.steps, initial=self.step, desc="train", leave=False)
        self.model.train()
        try:
            while self.step < s.steps:
                start = time.perf_counter()
                inputs, values = self._next_batch()
                loss_fn = function_dsm_loss if self._manifold is None else function_riemannian_dsm_loss
                loss = loss_fn(
                    self.model, self.process, inputs, values, eps=s.eps, weighting=s.weighting, generator=self.noise_generator
                )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
                self.optimizer.step()
                self.ema.update(self.model)
                self.step += 1
                self.history.append(float(loss.detach()))
                self.train_seconds += time.perf_counter() - start
                if bar is not None:
                    bar.update(1)
                if log is not None and (self.step % s.log_every == 0 or self.step == s.steps):
                    recent = self.history[-s.log_every :]
                    log.write(json.dumps({"step": self.step, "loss": sum(recent) / len(recent)}) + "\n")
                    log.flush()
                if self.checkpoint_path is not None and (self.step % s.checkpoint_every == 0 or self.step == s.steps):
                    save_checkpoint(self.checkpoint_path, self.state_dict())
        finally:
            if log is not None:
                log.close()
            if bar is not None:
                bar.close()
        return self.history
