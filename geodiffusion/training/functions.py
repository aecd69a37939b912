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

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from geodiffusion._random import rand
from geodiffusion._validation import check_finite
from geodiffusion.processes.base import Process
from geodiffusion.processes.gp import OUGaussianProcess
from geodiffusion.training.distributed import RankSlicedScore
from geodiffusion.training.trainer import LRScheduleSpec, TrainerBase, Validation, derive_seed

__all__ = [
    "FunctionTrainingSpec",
    "FunctionTrainer",
    "function_dsm_loss",
    "function_dsm_weight",
    "function_riemannian_dsm_loss",
    "derive_function_seed",
]

FunctionWeighting = Literal["sigma2", "none"]
FunctionMetric = Literal["euclidean", "kernel"]
# the experiments' name for derive_seed (the same streams: it always was the same function)
derive_function_seed = derive_seed


def function_dsm_weight(process: OUGaussianProcess, t: Tensor, weighting: FunctionWeighting = "sigma2") -> Tensor:
    r"""The DSM weight :math:`\lambda(t)` of :func:`function_dsm_loss`: :math:`\sigma_t^2`, or 1 (``"none"``, and
    always for ``st_preconditioned`` outputs, whose target :math:`-\xi` is already :math:`O(1)`)."""
    if weighting not in ("sigma2", "none"):
        raise ValueError(f"weighting: expected 'sigma2' or 'none', got {weighting!r}")
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
    antithetic: bool = False,
    metric: FunctionMetric = "euclidean",
) -> Tensor:
    r"""DSM loss :math:`\lambda(t) \| o_\theta(t, x, y_t) - T \|^2 / (Nd)` of ``values [B, N, d]`` at
    ``inputs [B, N, m]``, averaged over the batch (``reduce``) or per function ``[B]``; times
    :math:`t \sim U[\varepsilon, T]` unless ``t`` (``[B]``, or one time for all) is given. ``model(t, y, inputs=x)``
    returns the output in ``process.spec.parametrisation``.

    ``antithetic``: each function's term is the mean over :math:`\pm\xi` at one :math:`t`
    (:math:`y_t^\pm = \mu_t \pm \sigma_t L\xi`, targets :math:`\pm T(\xi)`, :math:`T` linear): the same
    expectation, but the gradient's :math:`O(1/\sigma_t)` noise term, odd in :math:`\xi` and dominant at small
    :math:`t`, cancels. Two network evaluations per function.

    ``metric="kernel"`` measures the error of the score :math:`\delta s` that the output stands for in the norm
    :math:`\delta s^\top K \delta s` of the likelihood bound (:math:`\tfrac12\int\beta\,\mathbb{E}\,\delta s^\top K
    \delta s\,dt`) instead of the output's own Euclidean norm: :math:`\|L^{-1}\delta o\|^2` for K-preconditioned
    outputs, :math:`\|L^\top \delta o\|^2` for plain ones, and unchanged for ``st_preconditioned`` (already
    whitened). The minimiser is the same score; what changes is which errors cost most. With a white-noise term
    in :math:`K`, K-preconditioned errors along rough functions cost :math:`1/\text{(its variance)}` times more."""
    if metric not in ("euclidean", "kernel"):
        raise ValueError(f"metric: expected 'euclidean' or 'kernel', got {metric!r}")
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
    else:
        # a given tensor keeps its dtype (a float64 t with float32 values is not rounded); a number takes the values'
        t = torch.as_tensor(t, dtype=None if isinstance(t, Tensor) else values.dtype, device=values.device)
        if t.numel() != 1 and tuple(t.shape) != (batch,):
            raise ValueError(f"t: expected one time or one per function, [{batch}], got shape {list(t.shape)}")
        t = t.reshape(-1).expand(batch)  # a shared time, broadcast so the antithetic pair can concatenate it
    factor = process.factor(inputs)
    y_t, target = process.denoising_pair(values, t, inputs=factor, generator=generator)
    if antithetic:
        mean = process.marginal(values, t, inputs=factor).mean.to(values.dtype)
        y_t, target = torch.cat([y_t, 2 * mean - y_t]), torch.cat([target, -target])
        t, inputs = torch.cat([t, t]), torch.cat([inputs, inputs])
    out = model(t, y_t, inputs=inputs)
    error = out - target
    kind = process.spec.parametrisation
    if metric == "kernel" and kind != "st_preconditioned":
        whiten = factor.sqrt_solve if kind == "kernel_preconditioned" else factor.sqrt_t_matvec
        # an antithetic pair's halves share the factor: [2, B, N, d] broadcasts against its [B, Nd, Nd]
        pairs = error.reshape((2 if antithetic else 1, batch) + error.shape[1:])
        error = whiten(pairs).reshape(error.shape).to(out.dtype)
    losses = function_dsm_weight(process, t, weighting) * (error**2).flatten(1).mean(-1)
    if antithetic:
        losses = 0.5 * (losses[:batch] + losses[batch:])
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


class FunctionTrainingSpec(LRScheduleSpec):
    """Optimisation settings of :class:`FunctionTrainer`."""

    steps: int = Field(2000, ge=1, description="number of optimiser steps")
    batch_size: int = Field(32, ge=1, description="functions per minibatch (at most the number of functions)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    ema_decay: float = Field(0.995, ge=0, le=1, description="EMA decay (with warm-up min(beta, (1+n)/(10+n)))")
    grad_clip: Annotated[float, Field(gt=0)] | None = Field(1.0, description="max global gradient norm; None: no clipping")
    weighting: FunctionWeighting = Field("sigma2", description="lambda(t): sigma_t^2 or 1")
    antithetic: bool = Field(
        False, description="OU-GP DSM: average each function's loss over +xi and -xi (cancels the O(1/sigma_t) gradient noise)"
    )
    metric: FunctionMetric = Field(
        "euclidean", description="OU-GP DSM: norm of the error, the output's own or the likelihood bound's K-norm of the score"
    )
    eps: float = Field(1e-3, ge=0, description="times are drawn from U[eps, T]")
    min_points: int | None = Field(
        None, ge=1, description="each minibatch keeps a random subset of between min_points and N points (None: all N)"
    )
    seed: int = Field(0, ge=0, description="seeds the minibatch order, point subsets and DSM noise")
    checkpoint_every: int = Field(500, ge=1, description="write checkpoints/last.pt every this many steps (and at the end)")
    log_every: int = Field(50, ge=1, description="append a line to train_log.jsonl every this many steps")


class FunctionTrainer(TrainerBase):
    r"""Fits a function score network to a pool of functions ``inputs [M, N, m]``, ``values [M, N, d]`` by
    :func:`function_dsm_loss` (an OU process with a GP limit) or :func:`function_riemannian_dsm_loss` (Brownian
    motion on the values' manifold) with AdamW, gradient clipping and an EMA.

    The items are the :math:`M` functions; with ``spec.min_points`` each minibatch keeps one random subset of its
    points (size and subset drawn from the noise generator, the same on every rank). The loop, exact resumption,
    logs and data parallelism (each rank runs the model on its slice of the functions) are :class:`TrainerBase`'s.
    """

    spec_type = FunctionTrainingSpec
    item_name = "functions"

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
        distributed: bool | None = None,
        validation: Validation | None = None,
    ) -> None:
        spec = self._coerce_spec(spec)
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
        if spec.antithetic and self._manifold is not None:
            raise ValueError("antithetic: pairs +xi and -xi of the OU-GP transition; Brownian motion on a manifold has none")
        if spec.metric == "kernel" and self._manifold is not None:
            raise ValueError("metric: 'kernel' is the OU-GP limit's K-norm; Brownian motion on a manifold has no K")
        if spec.min_points is not None and spec.min_points > values.shape[1]:
            raise ValueError(f"min_points ({spec.min_points}) exceeds the {values.shape[1]} points per function")
        dtype = self._trainable_parameters(model)[0].dtype
        if dtype != values.dtype:
            raise ValueError(f"values have dtype {values.dtype} but the model's parameters are {dtype}")
        self.inputs, self.values = inputs, values
        super().__init__(
            model, process, spec, out_dir, device if device is not None else values.device, progress, distributed, validation
        )

    @property
    def num_items(self) -> int:
        return self.values.shape[0]

    def _to_device(self, device: torch.device) -> None:
        self.inputs, self.values = self.inputs.to(device), self.values.to(device)

    def _gather(self, index: Tensor) -> tuple[Tensor, Tensor]:
        index = index.to(self.device)
        inputs, values = self.inputs[index], self.values[index]
        n = values.shape[1]
        if self.spec.min_points is not None:
            # one random subset size and subset per minibatch: the network sees sets of every size it is used on
            k = int(torch.randint(self.spec.min_points, n + 1, (), generator=self.noise_generator))
            keep = torch.randperm(n, generator=self.noise_generator)[:k].to(self.device)
            inputs, values = inputs[:, keep], values[:, keep]
        return inputs, values

    def _loss(self, batch: tuple[Tensor, Tensor], model: Any) -> Tensor:
        inputs, values = batch
        s = self.spec
        if self._manifold is not None:
            return function_riemannian_dsm_loss(
                model, self.process, inputs, values, eps=s.eps, weighting=s.weighting, generator=self.noise_generator
            )
        return function_dsm_loss(
            model,
            self.process,
            inputs,
            values,
            eps=s.eps,
            weighting=s.weighting,
            generator=self.noise_generator,
            antithetic=s.antithetic,
            metric=s.metric,
        )

    def _distributed_model(self, ddp: nn.Module) -> RankSlicedScore:
        # the function axis is the batch axis of the values and of their inputs alike
        return RankSlicedScore(ddp, self.dist, batched=("inputs",))
