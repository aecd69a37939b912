"""The Manifold abstraction: a Riemannian manifold embedded in an ambient space."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.registry import Component

if TYPE_CHECKING:
    from geodiffusion.heat.base import HeatKernel

__all__ = ["Manifold"]


class Manifold(Component, family=True):
    r"""A Riemannian manifold :math:`M` of dimension ``dim``; points are ambient
    tensors of trailing shape ``point_shape``, tangent vectors at :math:`x` are
    ambient tensors :math:`v` with ``proj(x, v) == v``.

    Identities (checked by :func:`geodiffusion.testing.check_manifold`):
    :math:`\exp_x(\log_x y) = y`, :math:`d(x, y) = \|\log_x y\|_x`, :math:`\exp_x v \in M`.
    """

    compact: ClassVar[bool] = False
    """Declares that a uniform probability measure exists (``random_uniform``)."""
    has_heat_kernel: ClassVar[bool] = False
    """Declares that ``heat_kernel()`` is available."""
    flat: ClassVar[bool] = False
    """Declares zero curvature with ambient coordinates isometric (Laplace–Beltrami = ambient Laplacian)."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Intrinsic dimension :math:`n`."""

    @property
    @abstractmethod
    def point_shape(self) -> tuple[int, ...]:
        """Trailing (ambient) shape of one point."""

    @abstractmethod
    def random_point(self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=None) -> Tensor:
        """``n`` points from a reference distribution (uniform when ``compact``)."""

    @abstractmethod
    def reference_log_prob(self, x: Tensor) -> Tensor:
        """Log-density (w.r.t. Riemannian volume) of the law that ``random_point`` draws from."""

    @abstractmethod
    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        """Orthogonal projection of an ambient vector :math:`v` onto :math:`T_x M`."""

    @abstractmethod
    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        r"""Riemannian exponential :math:`\exp_x(v)`."""

    @abstractmethod
    def log(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Riemannian logarithm :math:`\log_x(y) \in T_x M`."""

    @abstractmethod
    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        """Per-point boolean: does ``x`` lie on :math:`M` (to ``atol``)?"""

    # --- template methods -------------------------------------------------

    def inner(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        r"""Metric :math:`\langle u, v \rangle_x` (the ambient one unless overridden)."""
        nd = len(self.point_shape)
        return (u * v).flatten(u.dim() - nd).sum(-1) if nd else u * v

    def norm(self, x: Tensor, v: Tensor) -> Tensor:
        return self.inner(x, v, v).clamp_min(0).sqrt()

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Geodesic distance :math:`d(x, y) = \|\log_x y\|_x`."""
        return self.norm(x, self.log(x, y))

    def random_tangent(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""A standard Gaussian ambient vector projected onto :math:`T_x M` (for complex points the real and imaginary
        parts are each standard, the Gaussian of the real inner product :math:`\mathrm{Re}\,\mathrm{tr}(u^H v)`)."""
        if x.is_complex():
            parts = randn((2,) + tuple(x.shape), generator, dtype=x.real.dtype, device=x.device)
            return self.proj(x, torch.complex(parts[0], parts[1]))
        v = randn(x.shape, generator, dtype=x.dtype, device=x.device)
        return self.proj(x, v)

    def random_uniform(self, n: int, generator: torch.Generator | None = None, *, device=None, dtype=None) -> Tensor:
        """``n`` points from the normalised Riemannian volume (compact manifolds only)."""
        if not self.compact:
            raise ValueError(f"{type(self).__name__} is not compact: it has no uniform distribution")
        return self.random_point(n, generator, device=device, dtype=dtype)

    def heat_kernel(self, **options: Any) -> HeatKernel:
        """The heat kernel :math:`p_t(x_0, x)` of Brownian motion on :math:`M` (generator :math:`\\Delta/2`)."""
        if not self.has_heat_kernel:
            raise NotImplementedError(f"no heat kernel is known for {type(self).__name__}")
        return self._heat_kernel(**options)

    def _heat_kernel(self, **options: Any) -> HeatKernel:
        raise NotImplementedError

    def log_differential(self, x: Tensor, u: Tensor, y: Tensor, w: Tensor) -> Tensor:
        r""":math:`d(\log_x)_y[w]` for :math:`w \in T_yM` at :math:`y = \exp_x u` (batched): the velocity, in normal
        coordinates at :math:`x`, of a curve through :math:`y` with velocity :math:`w`. By forward-mode autograd of
        ``log``; at :math:`u = 0` it is :math:`P_x w`, evaluated directly (``log`` need not be differentiable at
        :math:`y = x`)."""
        _, dlog = torch.func.jvp(lambda z: self.log(x, z), (y,), (w,))
        at_origin = (u == 0).flatten(x.dim() - len(self.point_shape)).all(-1)
        at_origin = at_origin.reshape(at_origin.shape + (1,) * len(self.point_shape))
        return torch.where(at_origin, self.proj(x, w), dlog)

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        r"""``n`` random isometries :math:`g_i` as one map :math:`x_i \mapsto g_i \cdot x_i` on points
        ``[n, *point_shape]`` (any dtype and device): what heat kernels and scores must be invariant or
        equivariant under (``check_heat_kernel`` checks :math:`p_t(g x_0, g x) = p_t(x_0, x)`)."""
        raise NotImplementedError(f"no isometries are known for {type(self).__name__}: define random_isometry(n, generator)")

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        """The ``count`` smallest distinct eigenvalues of :math:`-\\Delta` and their multiplicities (float64), for a
        compact manifold whose spectrum is known in closed form; the heat trace is
        :math:`\\int_M p_t(x, x)\\,dx = \\sum_i m_i e^{-\\lambda_i t/2}`."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form discrete Laplacian spectrum")

    def laplace_beltrami(self, fn, x: Tensor) -> Tensor:
        r""":math:`\Delta f(x)` for a scalar function ``fn`` of points; by autograd on flat manifolds."""
        if not self.flat:
            raise NotImplementedError(f"{type(self).__name__} does not define its Laplace-Beltrami operator")
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
            flat_grad = grad.flatten(x.dim() - len(self.point_shape))
            total = torch.zeros(flat_grad.shape[:-1], dtype=x.dtype, device=x.device)
            if not grad.requires_grad:  # fn is affine: zero Hessian
                return total
            for i in range(flat_grad.shape[-1]):
                (second,) = torch.autograd.grad(flat_grad[..., i].sum(), x, retain_graph=True)
                total = total + second.flatten(x.dim() - len(self.point_shape))[..., i]
        return total

    def check_point(self, name: str, x: Tensor) -> None:
        """Raise unless ``x`` has trailing shape ``point_shape``."""
        nd = len(self.point_shape)
        if x.dim() < nd or tuple(x.shape[x.dim() - nd :]) != tuple(self.point_shape):
            shape = ", ".join(map(str, self.point_shape))
            raise ValueError(f"{name}: expected points of shape [..., {shape}] on {type(self).__name__}, got {list(x.shape)}")
