r"""Compact Lie groups SO(3) and SU(n) with the bi-invariant metric induced by the ambient Frobenius product.

Metric: :math:`\langle u, v\rangle_x = \mathrm{Re}\,\mathrm{tr}(u^H v) = -\mathrm{tr}(AB)` for :math:`u = xA`,
:math:`v = xB` in :math:`T_x G = x\,\mathfrak g` (the ambient inner product restricted to the group, so the
Riemannian gradient of a function is the tangent projection of its ambient gradient). With it a rotation of
SO(3) by the angle :math:`\theta` lies at distance :math:`\sqrt2\,\theta` from the identity, SU(2) is isometric
to the round sphere :math:`S^3` of radius :math:`\sqrt2`, and in general :math:`d(x, y) = (\sum_j \theta_j^2)^{1/2}`
for the eigenangles :math:`e^{i\theta_j}` of :math:`x^H y` (with :math:`\sum_j\theta_j = 0` on SU(n)).
Geodesics are one-parameter subgroups: :math:`\exp_x(xA) = x\,e^A`, :math:`\log_x y = x \log(x^H y)`.

Laplace spectrum (eigenvalues of :math:`-\Delta`, irreducible representation :math:`\lambda` contributing
:math:`d_\lambda^2` eigenfunctions): SO(3): :math:`l(l+1)/2`, multiplicity :math:`(2l+1)^2`; SU(n): the Casimir
:math:`C(\lambda) = \sum_j \lambda_j(\lambda_j + n + 1 - 2j) - |\lambda|^2/n` for partitions
:math:`\lambda_1 \ge \dots \ge \lambda_{n-1} \ge \lambda_n = 0`, i.e. :math:`|\lambda + \rho|^2 - |\rho|^2`.
"""

from __future__ import annotations

import functools
import itertools
import math
from abc import abstractmethod
from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

from geodiffusion._random import rand, randn
from geodiffusion.manifolds.base import Manifold
from geodiffusion.spec import Spec

__all__ = ["SO3", "SU", "complex_dtype", "real_dtype", "su_partitions"]


def complex_dtype(dtype: torch.dtype | None) -> torch.dtype:
    """The complex dtype of the precision of ``dtype`` (complex128 for float64, complex64 for float32)."""
    dtype = dtype or torch.get_default_dtype()
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of the precision of ``dtype``."""
    return torch.empty((), dtype=dtype).real.dtype if dtype.is_complex else dtype


def _skew(a: Tensor) -> Tensor:
    return 0.5 * (a - a.mH)


def su_partitions(n: int, max_row: int) -> list[tuple[int, ...]]:
    """Highest weights of SU(n) irreducible representations: partitions with ``n - 1`` rows, first row <= ``max_row``."""
    out = []
    for lam in itertools.combinations_with_replacement(range(max_row, -1, -1), n - 1):
        out.append(tuple(lam) + (0,))
    return out


def su_casimir(lam: tuple[int, ...]) -> float:
    """:math:`C(\\lambda)`: eigenvalue of :math:`-\\Delta` on the matrix coefficients of :math:`\\lambda` (Frobenius)."""
    n = len(lam)
    total = sum(lam)
    return sum(l * (l + n + 1 - 2 * (j + 1)) for j, l in enumerate(lam)) - total * total / n


def su_dimension(lam: tuple[int, ...]) -> float:
    r"""Weyl dimension formula :math:`d_\lambda = \prod_{j<k} (\lambda_j - \lambda_k + k - j)/(k - j)`."""
    n = len(lam)
    out = 1.0
    for j in range(n):
        for k in range(j + 1, n):
            out *= (lam[j] - lam[k] + k - j) / (k - j)
    return out


def _group_spectrum(pairs: list[tuple[float, float]], count: int) -> tuple[Tensor, Tensor]:
    table: dict[float, float] = {}
    for ev, mult in pairs:
        key = round(ev, 9)
        table[key] = table.get(key, 0.0) + mult
    keys = sorted(table)[:count]
    return torch.tensor(keys, dtype=torch.float64), torch.tensor([table[k] for k in keys], dtype=torch.float64)


class _LieGroup(Manifold):
    """Shared machinery of compact matrix Lie groups with the Frobenius bi-invariant metric."""

    compact = True
    has_heat_kernel = True

    @property
    @abstractmethod
    def log_volume(self) -> float:
        """Log of the Riemannian volume of the group."""

    @abstractmethod
    def lie_algebra_basis(self, device=None, dtype=None) -> Tensor:
        """An orthonormal basis ``[dim, N, N]`` of the Lie algebra (Frobenius inner product)."""

    def log_differential(self, x: Tensor, u: Tensor, y: Tensor, w: Tensor) -> Tensor:
        r""":math:`d(\log_x)_y[w] = x\,\frac{\mathrm{ad}_U}{1 - e^{-\mathrm{ad}_U}}(y^H w)` with :math:`U = x^H u`; near
        :math:`x` (:math:`\|U\|_F < 0.1`) by its Bernoulli series (to :math:`\mathrm{ad}_U^8`, truncation below
        :math:`10^{-15}`). Differentiating ``log`` there goes through the eigenvectors of :math:`x^H y \approx I`,
        whose eigenvalues nearly coincide: float32 gave NaN on SU(3) at :math:`\|u\| = 10^{-7}`."""
        a = self._algebra(x.mH @ u)
        c = self._algebra(y.mH @ w)
        term, total = c, c.clone()
        for coefficient in (0.5, 1 / 12, 0.0, -1 / 720, 0.0, 1 / 30240, 0.0, -1 / 1209600):
            term = a @ term - term @ a  # ad_U^k C, k = 1, 2, ...
            if coefficient:
                total = total + coefficient * term
        out = x @ self._algebra(total)
        far = torch.linalg.matrix_norm(a) >= 0.1
        if bool(far.any()):  # autograd of log (an eigendecomposition) only where the series is not used
            out = out.clone()
            out[far] = super().log_differential(x[far], u[far], y[far], w[far])
        return out

    def random_isometry(self, n: int, generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
        r""":math:`x \mapsto a\,x^{\pm 1} b` with :math:`a, b` Haar: the metric is bi-invariant, so left and right
        translations and the inversion :math:`x^{-1} = x^H` are isometries."""
        a = self.random_point(n, generator, dtype=torch.float64)
        b = self.random_point(n, generator, dtype=torch.float64)
        invert = rand((n,), generator, dtype=torch.float64) < 0.5
        return lambda x: a.to(x) @ torch.where(invert.to(x.device)[:, None, None], x.mH, x) @ b.to(x)

    @abstractmethod
    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        """The ``count`` smallest distinct eigenvalues of :math:`-\\Delta` and their multiplicities (float64)."""

    def reference_log_prob(self, x: Tensor) -> Tensor:
        """Haar (uniform): :math:`-\\log \\mathrm{vol}(G)`."""
        self.check_point("x", x)
        return torch.full(x.shape[:-2], -self.log_volume, dtype=real_dtype(x.dtype), device=x.device)

    def inner(self, x: Tensor, u: Tensor, v: Tensor) -> Tensor:
        r""":math:`\mathrm{Re}\,\mathrm{tr}(u^H v)`."""
        return (u.conj() * v).real.flatten(-2).sum(-1)

    def laplace_beltrami(self, fn, x: Tensor) -> Tensor:
        r""":math:`\Delta f(x) = \sum_i \partial_{s_i}^2 f(x\,e^{\sum_i s_i E_i})|_{s=0}`: exponential coordinates
        are normal coordinates of a bi-invariant metric, so the Laplacian at their centre is the flat one."""
        basis = self.lie_algebra_basis(device=x.device, dtype=x.dtype)
        rdt = real_dtype(x.dtype)
        with torch.enable_grad():
            s = torch.zeros(x.shape[:-2] + (basis.shape[0],), dtype=rdt, device=x.device, requires_grad=True)
            a = torch.einsum("...i,ijk->...jk", s.to(x.dtype), basis)
            y = x.detach() @ torch.linalg.matrix_exp(a)
            (grad,) = torch.autograd.grad(fn(y).sum(), s, create_graph=True)
            total = torch.zeros(s.shape[:-1], dtype=rdt, device=x.device)
            if not grad.requires_grad:  # fn is affine in s
                return total
            for i in range(basis.shape[0]):
                (second,) = torch.autograd.grad(grad[..., i].sum(), s, retain_graph=True)
                total = total + second[..., i]
        return total.detach()

    def exp(self, x: Tensor, v: Tensor) -> Tensor:
        r""":math:`\exp_x(v) = x\,e^{x^H v}`."""
        self.check_point("x", x)
        a = self._algebra(x.mH @ v)
        # in double precision: batched float32 matrix_exp picks its Pade degree per batch, not per matrix
        wide = torch.complex128 if a.is_complex() else torch.float64
        y = x.to(wide) @ torch.linalg.matrix_exp(a.to(wide))
        # x is on the group only to its dtype's rounding, and a chain of exp steps (a sampler) would accumulate
        # that defect (measured 4e-6 after 500 float32 steps): one Newton-Schulz step of the polar factor,
        # y (3I - y^H y) / 2, squares the O(eps) defect; then det(y) = 1 is restored by its n-th root
        eye = torch.eye(y.shape[-1], dtype=wide, device=y.device)
        y = 0.5 * y @ (3 * eye - y.mH @ y)
        y = self._fix_determinant(y)
        return y.to(a.dtype)

    def _fix_determinant(self, y: Tensor) -> Tensor:
        """Divide a (near-)unitary matrix by an n-th root of its determinant (near 1); SO(3) overrides with identity."""
        det = torch.linalg.det(y)
        return y / (det ** (1.0 / y.shape[-1]))[..., None, None]

    def proj(self, x: Tensor, v: Tensor) -> Tensor:
        r""":math:`x\,\pi_{\mathfrak g}(x^H v)`, :math:`\pi_{\mathfrak g}` the orthogonal projection onto the Lie algebra."""
        self.check_point("x", x)
        return x @ self._algebra(x.mH @ v)

    @abstractmethod
    def _algebra(self, a: Tensor) -> Tensor:
        """Orthogonal projection of a matrix onto the Lie algebra."""


class SO3(_LieGroup, kind="so3"):
    r""":math:`SO(3) = \{R \in \mathbb R^{3\times 3} : R^\top R = I, \det R = 1\}`, points ``[..., 3, 3]`` real, with
    :math:`\langle u, v\rangle = \mathrm{tr}(u^\top v)`: :math:`d(R_0, R) = \sqrt2\,\theta`, :math:`\theta \in [0, \pi]`
    the rotation angle of :math:`R_0^\top R`; volume :math:`16\sqrt2\,\pi^2`.

    >>> so3 = SO3()
    >>> x = torch.eye(3, dtype=torch.float64)
    >>> v = torch.tensor([[0.0, -0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    >>> round(float(so3.dist(x, so3.exp(x, v))), 6)  # |v|_F = sqrt(2) * 0.5
    0.707107
    """

    class Spec(Spec):
        """Rotation group SO(3) with the Frobenius bi-invariant metric."""

    @classmethod
    def examples(cls):
        return [cls.Spec()]

    @property
    def dim(self) -> int:
        return 3

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (3, 3)

    @property
    def log_volume(self) -> float:
        r""":math:`\log(16\sqrt2\,\pi^2)`: :math:`S^3(2\sqrt2)/\{\pm1\}`."""
        return math.log(16 * math.sqrt(2) * math.pi**2)

    def lie_algebra_basis(self, device=None, dtype=None) -> Tensor:
        e = torch.zeros(3, 3, 3, dtype=dtype or torch.get_default_dtype(), device=device)
        for i, (j, k) in enumerate(((2, 1), (0, 2), (1, 0))):
            e[i, j, k], e[i, k, j] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        return e

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        r""":math:`l(l+1)/2` with multiplicity :math:`(2l+1)^2`."""
        return _group_spectrum([(l * (l + 1) / 2, (2 * l + 1) ** 2) for l in range(count)], count)

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        """Haar: QR of a Gaussian matrix with the signs of R's diagonal fixed, then a reflection if det = -1."""
        # drawn in float64 and rounded, so that float32 points are orthogonal to float32 rounding
        z = randn((n, 3, 3), generator, dtype=torch.float64, device=device)
        q, r = torch.linalg.qr(z)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
        flip = torch.ones(n, 3, dtype=q.dtype, device=q.device)
        flip[:, 2] = torch.sign(torch.linalg.det(q))
        return (q * flip[..., None, :]).to(dtype or torch.get_default_dtype())

    def _algebra(self, a: Tensor) -> Tensor:
        return _skew(a)

    def _fix_determinant(self, y: Tensor) -> Tensor:
        # the polar factor of a matrix near SO(3) is in SO(3): det = +1 up to O(eps^2)
        return y

    def rotation_angle(self, x: Tensor, y: Tensor) -> Tensor:
        r"""Rotation angle :math:`\theta \in [0, \pi]` of :math:`x^\top y`, by atan2 (accurate at 0 and at pi)."""
        r = x.mT @ y
        w = torch.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
        cos = 0.5 * (torch.diagonal(r, dim1=-2, dim2=-1).sum(-1) - 1)
        return torch.atan2(0.5 * w.norm(dim=-1), cos)

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        r = x.mT @ y
        theta = self.rotation_angle(x, y)[..., None, None]
        skew = _skew(r)
        # away from pi: theta / sin(theta) times the skew part (sin theta [a]_x)
        small = theta < 1e-4
        safe = torch.where(small | (theta > 3.0), torch.ones_like(theta), theta)
        scale = torch.where(small, 1 + theta**2 / 6, safe / torch.sin(safe))
        near = scale * skew
        # near pi the skew part is O(pi - theta): read the axis off (R + R^T)/2 - cos I = (1 - cos) a a^T instead
        cos = torch.cos(theta)
        b = 0.5 * (r + r.mT) - cos * torch.eye(3, dtype=r.dtype, device=r.device)
        diag = torch.diagonal(b, dim1=-2, dim2=-1)
        i = diag.argmax(-1)
        col = torch.gather(b, -1, i[..., None, None].expand(b.shape[:-1] + (1,)))[..., 0]
        axis = col / col.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        w = torch.stack([skew[..., 2, 1], skew[..., 0, 2], skew[..., 1, 0]], -1)
        axis = axis * torch.where((axis * w).sum(-1, keepdim=True) < 0, -1.0, 1.0).to(r.dtype)
        zero = torch.zeros_like(axis[..., 0])
        hat = torch.stack(
            [
                torch.stack([zero, -axis[..., 2], axis[..., 1]], -1),
                torch.stack([axis[..., 2], zero, -axis[..., 0]], -1),
                torch.stack([-axis[..., 1], axis[..., 0], zero], -1),
            ],
            -2,
        )
        far = theta * hat
        return x @ torch.where(theta > 3.0, far, near)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        return math.sqrt(2) * self.rotation_angle(x, y)

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        self.check_point("x", x)
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        orth = (x.mT @ x - eye).abs().flatten(-2).amax(-1) <= atol
        det = (torch.linalg.det(x) - 1).abs() <= atol
        return orth & det & torch.isfinite(x).flatten(-2).all(-1)

    def _heat_kernel(self, **options):
        from geodiffusion.heat.lie import SO3HeatKernel

        return SO3HeatKernel(manifold=self.spec, **options)


class SU(_LieGroup, kind="su"):
    r""":math:`SU(n) = \{U \in \mathbb C^{n\times n} : U^H U = I, \det U = 1\}`, points ``[..., n, n]`` complex
    (``random_point(dtype=float64)`` gives complex128), with :math:`\langle u, v\rangle = \mathrm{Re}\,\mathrm{tr}(u^H v)`:
    :math:`d(U_0, U) = \|\theta\|` for the eigenangles of :math:`U_0^H U` chosen with :math:`\sum_j\theta_j = 0` and
    least norm; volume :math:`\sqrt n\,(2\pi)^{(n-1)(n+2)/2}/\prod_{k<n} k!`.

    >>> su2 = SU(n=2)
    >>> x = torch.eye(2, dtype=torch.complex128)
    >>> round(float(su2.dist(x, -x)), 6)  # -I is antipodal on S^3 of radius sqrt(2): pi sqrt(2)
    4.442883
    """

    class Spec(Spec):
        """Special unitary group SU(n) with the Frobenius bi-invariant metric."""

        n: int = Field(2, ge=2, le=16, description="matrix size n (dimension n^2 - 1)")

    @classmethod
    def examples(cls):
        return [cls.Spec(n=2), cls.Spec(n=3)]

    @property
    def n(self) -> int:
        return self.spec.n

    @property
    def dim(self) -> int:
        return self.spec.n**2 - 1

    @property
    def point_shape(self) -> tuple[int, ...]:
        return (self.spec.n, self.spec.n)

    @property
    def log_volume(self) -> float:
        r"""Macdonald's volume :math:`\sqrt n\,(2\pi)^{(n-1)(n+2)/2}/\prod_{k=1}^{n-1}k!` for the Frobenius metric."""
        n = self.spec.n
        return 0.5 * math.log(n) + 0.5 * (n - 1) * (n + 2) * math.log(2 * math.pi) - sum(math.lgamma(k + 1) for k in range(1, n))

    def lie_algebra_basis(self, device=None, dtype=None) -> Tensor:
        return _su_basis(self.spec.n, complex_dtype(dtype), str(device) if device is not None else "cpu")

    def laplacian_spectrum(self, count: int = 10) -> tuple[Tensor, Tensor]:
        r""":math:`C(\lambda)` with multiplicity :math:`d_\lambda^2` (summed over representations sharing it)."""
        n = self.spec.n
        rows = count + 2
        while True:
            pairs = [(su_casimir(lam), su_dimension(lam) ** 2) for lam in su_partitions(n, rows)]
            ev, mult = _group_spectrum(pairs, count)
            # every partition with first row > rows has Casimir above (n-1)/n rows^2: complete below that
            if float(ev[-1]) < (n - 1) / n * (rows + 1) ** 2:
                return ev, mult
            rows *= 2

    def random_point(self, n, generator=None, *, device=None, dtype=None) -> Tensor:
        """Haar: QR of a complex Gaussian with R's diagonal phases removed (Haar on U(n)), then the first column
        divided by det (left equivariant, so Haar on SU(n))."""
        cdt = complex_dtype(dtype)
        size = self.spec.n
        z = randn((n, size, size), generator, dtype=torch.complex128, device=device)
        q, r = torch.linalg.qr(z)
        d = torch.diagonal(r, dim1=-2, dim2=-1)
        q = q * (d / d.abs())[..., None, :]
        det = torch.linalg.det(q)
        fix = torch.ones(n, size, dtype=q.dtype, device=q.device)
        fix[:, 0] = det.conj()
        return (q * fix[..., None, :]).to(cdt)

    def _algebra(self, a: Tensor) -> Tensor:
        s = _skew(a)
        tr = torch.diagonal(s, dim1=-2, dim2=-1).sum(-1) / self.spec.n
        return s - tr[..., None, None] * torch.eye(self.spec.n, dtype=s.dtype, device=s.device)

    def eigenangles(self, g: Tensor) -> tuple[Tensor, Tensor]:
        r"""Eigenangles :math:`\theta` (sum zero, least norm) and eigenvectors of :math:`g \in SU(n)`."""
        vals, vecs = torch.linalg.eig(g)
        return su_angles(vals), vecs

    def log(self, x: Tensor, y: Tensor) -> Tensor:
        self.check_point("x", x)
        g = x.mH @ y
        theta, vecs = self.eigenangles(g)
        a = vecs @ torch.diag_embed((1j * theta).to(g.dtype)) @ torch.linalg.inv(vecs)
        return x @ self._algebra(a)

    def dist(self, x: Tensor, y: Tensor) -> Tensor:
        vals = torch.linalg.eigvals(x.mH @ y)
        return su_angles(vals).norm(dim=-1)

    def belongs(self, x: Tensor, atol: float = 1e-6) -> Tensor:
        self.check_point("x", x)
        eye = torch.eye(self.spec.n, dtype=x.dtype, device=x.device)
        unitary = (x.mH @ x - eye).abs().flatten(-2).amax(-1) <= atol
        det = (torch.linalg.det(x) - 1).abs() <= atol
        finite = torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).flatten(-3 if x.is_complex() else -2).all(-1)
        return unitary & det & finite

    def _heat_kernel(self, **options):
        from geodiffusion.heat.lie import SUHeatKernel

        return SUHeatKernel(manifold=self.spec, **options)


def su_angles(vals: Tensor) -> Tensor:
    r"""Eigenangles of an SU(n) element from its eigenvalues: principal angles in :math:`(-\pi, \pi]`, then
    :math:`2\pi` moved from the largest (or onto the smallest) until :math:`\sum_j \theta_j = 0`, which gives the
    least-norm logarithm in :math:`\mathfrak{su}(n)`."""
    theta = torch.angle(vals)
    k = torch.round(theta.sum(-1, keepdim=True).detach() / (2 * math.pi))
    rank = theta.detach().argsort(-1).argsort(-1)
    n = theta.shape[-1]
    down = (k > 0) & (rank >= n - k)
    up = (k < 0) & (rank < -k)
    return theta - 2 * math.pi * down.to(theta.dtype) + 2 * math.pi * up.to(theta.dtype)


@functools.lru_cache(maxsize=32)
def _su_basis(n: int, dtype: torch.dtype, device: str) -> Tensor:
    mats = []
    for j in range(n):
        for k in range(j + 1, n):
            a = torch.zeros(n, n, dtype=dtype)
            a[j, k], a[k, j] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            mats.append(a)
            b = torch.zeros(n, n, dtype=dtype)
            b[j, k], b[k, j] = 1j / math.sqrt(2), 1j / math.sqrt(2)
            mats.append(b)
    for j in range(1, n):
        # orthonormal traceless diagonals: (1, ..., 1, -j, 0, ...) / sqrt(j (j + 1))
        d = torch.zeros(n, dtype=torch.float64)
        d[:j] = 1.0
        d[j] = -float(j)
        mats.append(torch.diag((1j * d / math.sqrt(j * (j + 1))).to(dtype)))
    return torch.stack(mats).to(device)
