"""The Process abstraction: a forward noising SDE and what derives from it."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from geodiffusion._validation import check_finite, check_time, expand_time
from geodiffusion.processes.distributions import DiagonalGaussian
from geodiffusion.registry import Component

if TYPE_CHECKING:
    from geodiffusion.manifolds.base import Manifold

__all__ = ["Process", "LinearGaussianProcess", "ScoreFn", "TorchsdeReverse"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score(t, x) -> s(t, x)``, same shape as ``x``; a ScoreModel is one."""


class Process(Component, family=True):
    r"""Forward SDE :math:`dX_t = f(X_t, t)\,dt + g(t)\,dW_t` on :math:`[0, T]`.

    The reverse-time SDE :math:`dX = [f - g^2 \nabla \log p_t]\,dt + g\,d\bar W` and the
    probability-flow ODE :math:`\dot x = f - \tfrac12 g^2 \nabla \log p_t` are derived here.

    The declared capability :attr:`manifold` says where :math:`X_t` lives: None means :math:`\mathbb{R}^d` in
    its ambient coordinates; a :class:`~geodiffusion.manifolds.Manifold` means that ``x`` are its points, ``f``
    and scores are tangent vectors, :math:`W` is Brownian motion on it, and the checks and samplers use its
    ``proj``, ``exp``, metric and Laplace–Beltrami operator.
    """

    @property
    def manifold(self) -> Manifold | None:
        r"""The manifold :math:`M` the process lives on; None for :math:`\mathbb{R}^d` (flat, ambient coordinates)."""
        return None

    @property
    @abstractmethod
    def T(self) -> float:
        """Terminal time :math:`T`."""

    @property
    @abstractmethod
    def event_ndim(self) -> int:
        """Number of trailing axes of ``x`` forming one sample (log-densities sum over them)."""

    @abstractmethod
    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Drift :math:`f(x, t)`."""

    @abstractmethod
    def diffusion(self, t: Tensor | float) -> Tensor:
        r"""Diffusion coefficient :math:`g(t)` (scalar noise scale per time)."""

    @abstractmethod
    def marginal(self, x0: Tensor, t: Tensor | float) -> DiagonalGaussian:
        r"""Transition law :math:`p_{t|0}(\cdot \mid x_0)` with ``sample``, ``log_prob``, ``score``."""

    @abstractmethod
    def prior(self, shape: tuple[int, ...], *, device=None, dtype=None) -> DiagonalGaussian:
        r"""Reference law :math:`p_T \approx \pi` over samples of ``shape``."""

    # --- template methods -------------------------------------------------

    def check_inputs(self, x: Tensor, t: Tensor | float, *, name: str = "x") -> Tensor:
        """Validate ``x`` (finite, at least ``event_ndim`` axes) and ``t`` in [0, T]; return ``t`` broadcast to ``x``.

        Complex ``x`` (points of SU(n)) is accepted; times are then real, of the matching real dtype."""
        check_finite(name, x)
        if x.is_complex():
            check_finite(name, torch.view_as_real(x))
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{name}: expected a floating (real or complex) tensor, got {x.dtype}")
        if x.dim() < self.event_ndim:
            raise ValueError(f"{name}: expected at least {self.event_ndim} axes, got shape {list(x.shape)}")
        return expand_time(check_time(t, self.T, x.real), x)

    def time_like(self, t: Tensor | float, x: Tensor) -> Tensor:
        """``t`` as a tensor on ``x``'s device and (real) dtype, broadcast against ``x``.

        Cheap (no range check, no host sync): for inner loops whose inputs were validated once."""
        t = torch.as_tensor(t, dtype=x.real.dtype, device=x.device)
        return expand_time(t, x)

    def example_context(self, x0: Tensor, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Keyword context the methods need besides the state, for example data ``x0`` (property tests):
        none by default; the OU process on function values returns their ``inputs``."""
        return {}

    def noise_covariance(self, v: Tensor, t: Tensor | float, **context: Any) -> Tensor:
        r""":math:`g g^\top v`, the diffusion's covariance applied to ``v`` (shaped like ``x``): :math:`g(t)^2 v` for
        scalar noise; processes with correlated noise override it (the Fokker–Planck check uses it)."""
        return self.diffusion(self.time_like(t, v)) ** 2 * v

    def reverse_drift(self, x: Tensor, t: Tensor | float, score: Tensor) -> Tensor:
        r"""Drift of the reverse SDE, :math:`f(x, t) - g(t)^2 s(t, x)`, in forward time."""
        return self.drift(x, t) - self.diffusion(self.time_like(t, x)) ** 2 * score

    def probability_flow_drift(self, x: Tensor, t: Tensor | float, score: Tensor) -> Tensor:
        r"""Velocity of the probability-flow ODE, :math:`f(x, t) - \tfrac12 g(t)^2 s(t, x)`."""
        return self.drift(x, t) - 0.5 * self.diffusion(self.time_like(t, x)) ** 2 * score

    def torchsde_reverse(self, score: ScoreFn, event_shape: tuple[int, ...], method: str = "euler") -> TorchsdeReverse:
        """The reverse SDE as a torchsde module in reversed time :math:`s = T - t`."""
        return TorchsdeReverse(self, score, event_shape, method)


class LinearGaussianProcess(Process):
    r"""Processes with Gaussian transitions :math:`p_{t|0}(x \mid x_0) = \mathcal{N}(\alpha_t x_0, \sigma_t^2 I)`."""

    @abstractmethod
    def mean_scale(self, t: Tensor) -> Tensor:
        r""":math:`\alpha_t`."""

    @abstractmethod
    def std(self, t: Tensor) -> Tensor:
        r""":math:`\sigma_t`, the std of :math:`x_t` given :math:`x_0`."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        r"""Std of the isotropic Gaussian prior :math:`\pi = \mathcal{N}(0, \sigma_\pi^2 I)`."""

    def marginal(self, x0: Tensor, t: Tensor | float) -> DiagonalGaussian:
        t = self.check_inputs(x0, t, name="x0")
        return DiagonalGaussian(self.mean_scale(t) * x0, self.std(t), self.event_ndim)

    def prior(self, shape, *, device=None, dtype=None) -> DiagonalGaussian:
        zero = torch.zeros(shape, device=device, dtype=dtype)
        return DiagonalGaussian(zero, torch.full((), self.prior_std, device=device, dtype=zero.dtype), self.event_ndim)


class TorchsdeReverse(nn.Module):
    r"""Reverse-time SDE for ``torchsde.sdeint``: :math:`Y_s = X_{T-s}` solves
    :math:`dY = -[f - g^2 s_\theta](Y, T - s)\,ds + g(T - s)\,dW_s`.

    States are flattened to ``[batch, prod(event_shape)]``. The noise is additive
    (``g`` depends on time only), so Itô and Stratonovich forms coincide and every
    torchsde method applies; ``sde_type`` is chosen to match the method.
    """

    noise_type: ClassVar[str] = "diagonal"
    ITO_METHODS: ClassVar[frozenset[str]] = frozenset({"euler", "milstein", "srk"})
    STRATONOVICH_METHODS: ClassVar[frozenset[str]] = frozenset({"midpoint", "heun", "euler_heun", "reversible_heun", "log_ode"})

    def __init__(self, process: Process, score: ScoreFn, event_shape: tuple[int, ...], method: str = "euler") -> None:
        super().__init__()
        if method not in self.ITO_METHODS | self.STRATONOVICH_METHODS:
            raise ValueError(
                f"unknown torchsde method {method!r}; expected one of {sorted(self.ITO_METHODS | self.STRATONOVICH_METHODS)}"
            )
        self.process, self.score, self.event_shape = process, score, tuple(event_shape)
        self.sde_type = "ito" if method in self.ITO_METHODS else "stratonovich"

    def _unflatten(self, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        t = (self.process.T - s).to(y.dtype).expand(y.shape[0])
        return t, y.reshape((y.shape[0],) + self.event_shape)

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        t, x = self._unflatten(s, y)
        return -self.process.reverse_drift(x, t, self.score(t, x)).reshape(y.shape)

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        t = torch.as_tensor(self.process.T - s, dtype=y.dtype, device=y.device)
        return self.process.diffusion(t).expand(y.shape)
