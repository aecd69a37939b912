"""The unit sphere S^n in R^{n+1}."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import randn
from geodiffusion.groups.matrix import haar_orthogonal
from geodiffusion.manifolds.base import Manifold
from geodiffusion.spec import Spec

__all__ = ["Sphere"]


def _dot(x: Tensor, y: Tensor) -> Tensor:
    return (x * y).sum(-1, keepdim=True)


class Sphere(Manifold, kind="sphere"):
    r""":math:`S^n = \{x \in \mathbb{R}^{n+1} : \|x\| = 1\}` with the round metric:
    :math:`\exp_x v = \cos\|v\|\,x + \sin\|v\|\,v/\|v\|`, :math:`d(x, y) = \arccos\langle x, y\rangle`,
    Laplace–Beltrami :math:`\Delta f = \mathrm{tr}(P H P) - n\langle x, \nabla f\rangle` for an ambient
    extension with gradient :math:`\nabla f` and Hessian :math:`H`, :math:`P = I - xx^\top`."""

    compact = True
    has_heat_kernel = True

    class Spec(Spec):
        """Unit sphere S^n embedded in R^(n+1)."""

        dim: int = Field(2, ge=1, description="intrinsic dimension n")

    @classmethod
    def examples(cls):
        return [cls.Spec(dim=1), cls.Spec(dim=2), cls.Spec(dim=3), cls.Spec(dim=15)]

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.dim + 1,)

    @property
    def log_volume(self) -> float:
        r""":math:`\log |S^n| = \log 2 + \tfrac{n+1}{2}\log\pi - \log\Gamma(\tfrac{n+1}{2})`."""
        n = self.spec.dim
        return math.log(2.0) + 0.5 * (n + 1) * math.log(math.pi) - math.lgamma(0.5 * (n + 1))

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        r"""The ``count`` smallest eigenvalues of :math:`-\Delta`, :math:`l(l+n-1)` for :math:`l = 0, 1, \dots`, with
        multiplicities :math:`\binom{l+n}{n} - \binom{l+n-2}{n}` (the harmonic polynomials of degree :math:`l`),
        float64."""
        if count < 1:
            raise ValueError(f"count: expected a positive integer, got {count}")
        n = self.spec.dim
        ls = range(count)
        ev = [float(l * (l + n - 1)) for l in ls]
        mult = [float(math.comb(l + n, n) - (math.comb(l + n - 2, n) if l >= 2 else 0)) for l in ls]
        return torch.tensor(ev, dtype=torch.float64), torch.tensor(mult, dtype=torch.float64)

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        r""":math:`x \mapsto Qx`, :math:`Q` Haar on :math:`O(n+1)` (the whole isometry group of :math:`S^n`)."""
        q = haar_orthogonal(n, self.spec.dim + 1, generator, special=False, dtype=torch.float64)
        return lambda x: (q.to(x) @ x[..., None])[..., 0]

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        z = randn((n, self.spec.dim + 1), generator, dtype=dtype, device=device)
        return z / z.norm(dim=-1, keepdim=True)

    def reference_log_prob(self, x: Tensor) -> Tensor:
        """Uniform: :math:`-\\log |S^n|`."""
        self.check_point("x", x)
        return torch.full(x.shape[:-1], -self.log_volume, dtype=x.dtype, device=x.device)

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        return v - _dot(x, v) * x

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        self.check_point("x", x)
        norm = v.norm(dim=-1, keepdim=True)
        # sin(r)/r written via sinc so that v = 0 is exact and differentiable
        y = torch.cos(norm) * x + torch.sinc(norm / math.pi) * v
        return y / y.norm(dim=-1, keepdim=True)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        cos = _dot(x, y)
        u = y - cos * x
        sin = u.norm(dim=-1, keepdim=True)
        theta = torch.atan2(sin, cos)  # accurate at both small and near-pi angles, unlike arccos
        scale = torch.where(sin > 0, theta / sin.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(sin))
        return scale * u

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        cos = _dot(x, y)
        return torch.atan2((y - cos * x).norm(dim=-1, keepdim=True), cos).squeeze(-1)

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        self.check_point("x", x)
        return ((x.norm(dim=-1) - 1).abs() <= atol) & torch.isfinite(x).all(-1)

    def laplace_beltrami(self, fn, x: Tensor) -> Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
            radial = self.spec.dim * _dot(grad, x.detach()).squeeze(-1)
            if not grad.requires_grad:  # fn is affine: zero Hessian
                return -radial.detach()
            trace = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
            for i in range(x.shape[-1]):
                (row,) = torch.autograd.grad(grad[..., i].sum(), x, retain_graph=True)
                trace = trace + row[..., i]
            # H x as the gradient of <grad f, x> with x held constant
            (hx,) = torch.autograd.grad((grad * x.detach()).sum(), x, retain_graph=True)
            x_h_x = _dot(hx, x.detach()).squeeze(-1)
        return (trace - x_h_x - radial).detach()

    def _heat_kernel(self, **options):
        from geodiffusion.heat.sphere import SphereHeatKernel

        return SphereHeatKernel(manifold=self.spec, **options)
