r"""Two-dimensional SU(3) lattice gauge theory with the Wilson action, open boundaries.

Links :math:`U_{s,\mu} \in SU(3)` live on the edges of an :math:`L \times L` grid of sites
(:math:`2L(L-1)` links, ``[..., k, 3, 3]`` complex, order ``(mu, x, y)``); plaquettes
:math:`U_p = U_{s,0}U_{s+\hat0,1}U_{s+\hat1,0}^HU_{s,1}^H` and the density w.r.t. Haar measure is
:math:`p(U) \propto \exp(\tfrac\beta3\sum_p \mathrm{Re}\,\mathrm{tr}\,U_p)`. With open boundaries in two dimensions the
plaquettes are independent under this law (gauge-fix a maximal tree: each plaquette then owns one free link), each with
density :math:`e^{\frac\beta3\mathrm{Re\,tr}\,U}/z(\beta)` w.r.t. Haar, so the normaliser is :math:`z(\beta)^{(L-1)^2}`
with :math:`z` a two-dimensional Weyl integral: the log-density is known exactly, normaliser included.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geodiffusion._random import rand, randn

__all__ = [
    "n_links",
    "link_sites",
    "plaquettes",
    "wilson_loops",
    "n_wilson_loops",
    "wilson_log_density",
    "log_z_plaquette",
    "mean_plaquette_exact",
    "metropolis_su3",
]


def n_links(size: int) -> int:
    """Number of links :math:`2L(L-1)` of the open :math:`L \\times L` lattice."""
    if size < 2:
        raise ValueError(f"size: expected a lattice side L >= 2, got {size}")
    return 2 * size * (size - 1)


def link_sites(size: int) -> tuple[Tensor, Tensor]:
    """Sites ``x L + y`` where each link starts and ends, ``[2L(L-1)]`` each, in the links' order: horizontal links
    (x, y) -> (x+1, y) indexed ``x L + y``, then vertical links (x, y) -> (x, y+1) indexed ``x (L-1) + y``."""
    n_links(size)  # validates size
    x, y = torch.meshgrid(torch.arange(size - 1), torch.arange(size), indexing="ij")
    horizontal = (x * size + y).flatten()
    x, y = torch.meshgrid(torch.arange(size), torch.arange(size - 1), indexing="ij")
    vertical = (x * size + y).flatten()
    start = torch.cat([horizontal, vertical])
    end = torch.cat([horizontal + size, vertical + 1])
    return start, end


def _link_grids(links: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Horizontal links ``[..., L-1, L, n, n]`` (site (x, y) to (x+1, y)) and vertical ``[..., L, L-1, n, n]``."""
    n = links.shape[-1] if links.dim() >= 3 else 0
    if links.dim() < 3 or links.shape[-3:] != (n_links(size), n, n) or n < 2:
        raise ValueError(f"links: expected shape [..., {n_links(size)}, n, n] for L = {size}, got {list(links.shape)}")
    half = size * (size - 1)
    lead = links.shape[:-3]
    horizontal = links[..., :half, :, :].reshape(*lead, size - 1, size, n, n)
    vertical = links[..., half:, :, :].reshape(*lead, size, size - 1, n, n)
    return horizontal, vertical


def plaquettes(links: Tensor, size: int) -> Tensor:
    r""":math:`\tfrac1n\mathrm{Re\,tr}\,U_p` of every plaquette, ``[..., (L-1)^2]`` real (links of :math:`SU(n)`)."""
    # U_p at lower-left site (x, y): h(x, y) v(x+1, y) h(x, y+1)^H v(x, y)^H, the 1 x 1 Wilson loop; the real part
    # before the division by n, so that the Metropolis chains' rounding (and their seeded draws) stay as they were
    return _loop_traces(links, size, 1).real / links.shape[-1]


def _line_products(links: Tensor, length: int, axis: int) -> Tensor:
    """Ordered products of ``length`` consecutive links along grid axis ``axis`` (-4: x, -3: y)."""
    out = links
    for step in range(1, length):
        head = out.narrow(axis, 0, out.shape[axis] - 1)
        out = head @ links.narrow(axis, step, head.shape[axis])
    return out


def _extent(size: int, max_extent: int | None) -> int:
    """The longest loop side: ``max_extent``, or L - 1 for None."""
    extent = size - 1 if max_extent is None else max_extent
    if not 1 <= extent <= size - 1:
        raise ValueError(f"max_extent: expected a loop side between 1 and L - 1 = {size - 1}, got {max_extent}")
    return extent


def n_wilson_loops(size: int, max_extent: int | None = None) -> int:
    r"""How many loops :func:`wilson_loops` returns: :math:`(\sum_{w \le e} (L - w))^2`, ``e`` the longest side."""
    n_links(size)  # validates size
    return sum(size - w for w in range(1, _extent(size, max_extent) + 1)) ** 2


def wilson_loops(links: Tensor, size: int, max_extent: int | None = None) -> Tensor:
    r""":math:`\tfrac1n\mathrm{tr}\,W_C` of every rectangular loop :math:`C` of the lattice with sides
    :math:`w, h \le` ``max_extent`` (all of them by default), ``[..., n_loops]`` complex, ordered by ``(w, h)`` then
    lower-left site. :math:`W_C = A\,B\,C^H D^H` runs along the bottom (:math:`A`), up the right side (:math:`B`),
    back along the top and down the left side; the 1 x 1 loops are the plaquettes. Gauge invariant: a gauge
    transformation conjugates :math:`W_C` by the element at its corner."""
    return _loop_traces(links, size, max_extent) / links.shape[-1]


def _loop_traces(links: Tensor, size: int, max_extent: int | None) -> Tensor:
    r""":math:`\mathrm{tr}\,W_C` (not divided by n) in :func:`wilson_loops`' order."""
    h, v = _link_grids(links, size)
    extent = _extent(size, max_extent)
    rows = [_line_products(h, w, -4) for w in range(1, extent + 1)]  # [..., L-w, L, n, n]
    columns = [_line_products(v, k, -3) for k in range(1, extent + 1)]  # [..., L, L-k, n, n]
    traces = []
    for w, row in enumerate(rows, start=1):
        for k, column in enumerate(columns, start=1):
            loop = (
                row[..., :, : size - k, :, :]
                @ column[..., w:, :, :, :]
                @ row[..., :, k:, :, :].mH
                @ column[..., : size - w, :, :, :].mH
            )
            traces.append(torch.diagonal(loop, dim1=-2, dim2=-1).sum(-1).flatten(-2))
    return torch.cat(traces, -1)


def _weyl_moments(beta: float, grid: int = 256) -> tuple[float, float]:
    r"""(:math:`\log z(\beta)`, :math:`\mathbb E\,\tfrac13\mathrm{Re\,tr}\,U`) by the Weyl integration formula: the
    class function :math:`f(\theta_1, \theta_2, -\theta_1-\theta_2)` against :math:`|\Delta(e^{i\theta})|^2` on the
    2-torus, trapezoid rule (spectrally accurate for smooth periodic integrands), in float64."""
    theta = torch.arange(grid, dtype=torch.float64) * (2 * math.pi / grid)
    t1, t2 = torch.meshgrid(theta, theta, indexing="ij")
    angles = torch.stack([t1, t2, -t1 - t2])
    e = torch.exp(1j * angles)
    vandermonde = ((e[0] - e[1]).abs() * (e[0] - e[2]).abs() * (e[1] - e[2]).abs()) ** 2
    re_tr = torch.cos(angles).sum(0) / 3
    log_w = beta * re_tr + torch.log(vandermonde.clamp_min(1e-300))
    log_haar = torch.logsumexp(torch.log(vandermonde.clamp_min(1e-300)).flatten(), 0)
    log_z = float(torch.logsumexp(log_w.flatten(), 0) - log_haar)
    weights = torch.softmax(log_w.flatten(), 0)
    return log_z, float((weights * re_tr.flatten()).sum())


def log_z_plaquette(beta: float) -> float:
    r""":math:`\log z(\beta) = \log\mathbb E_{\mathrm{Haar}}\,e^{\frac\beta3\mathrm{Re\,tr}\,U}` on :math:`SU(3)`."""
    return _weyl_moments(beta)[0]


def mean_plaquette_exact(beta: float) -> float:
    r""":math:`\langle\tfrac13\mathrm{Re\,tr}\,U_p\rangle` under the Wilson action (exact for open 2-D lattices)."""
    return _weyl_moments(beta)[1]


def wilson_log_density(links: Tensor, size: int, beta: float, log_volume: float) -> Tensor:
    r"""Normalised :math:`\log p(U) = \beta\sum_p\tfrac13\mathrm{Re\,tr}\,U_p - (L-1)^2\log z(\beta) - k\log|SU(3)|`
    w.r.t. the Riemannian volume of :math:`SU(3)^k` (``log_volume`` = :math:`\log|SU(3)|` in its metric)."""
    if links.dim() < 3 or links.shape[-2:] != (3, 3):
        raise ValueError(f"links: the Wilson density here is SU(3)'s; expected [..., k, 3, 3], got {list(links.shape)}")
    return beta * plaquettes(links, size).sum(-1) - (size - 1) ** 2 * log_z_plaquette(beta) - n_links(size) * log_volume


def metropolis_su3(
    size: int,
    beta: float,
    n_chains: int,
    n_sweeps: int,
    step: float,
    generator: torch.Generator | None = None,
    *,
    pool: int = 256,
) -> tuple[Tensor, float]:
    r"""``n_chains`` independent Metropolis chains from Haar-random links, ``n_sweeps`` sweeps of single-link updates
    :math:`U \leftarrow RU`, accepted with probability :math:`\min(1, e^{\Delta\log p})`. :math:`R` is drawn
    uniformly from a pool of ``pool`` matrices :math:`e^{\epsilon A}`, :math:`A = \sum_i z_iT_i`,
    :math:`z \sim \mathcal N(0, I)` in an orthonormal basis :math:`T_i` of :math:`\mathfrak{su}(3)`, and their inverses:
    a pool closed under inversion makes the proposal symmetric w.r.t. Haar measure (left multiplication preserves it),
    and it generates :math:`SU(3)`, so the chain is ergodic (Gattringer & Lang, §4.1). Returns the final links
    ``[n_chains, k, 3, 3]`` (complex128) and the acceptance rate. Chains run in parallel; the loop is over sweeps and
    links."""
    from geodiffusion.manifolds.lie import SU

    if n_chains < 1 or n_sweeps < 1 or pool < 1 or not step > 0 or not math.isfinite(beta):
        raise ValueError(
            "expected n_chains, n_sweeps, pool >= 1, step > 0 and a finite beta; "
            f"got {n_chains}, {n_sweeps}, {pool}, {step}, {beta}"
        )
    k = n_links(size)
    su3 = SU(n=3)
    basis = su3.lie_algebra_basis(dtype=torch.float64)
    coeff = randn((pool, basis.shape[0]), generator, dtype=torch.float64).to(torch.complex128)
    half = torch.linalg.matrix_exp(step * torch.einsum("ci,ijk->cjk", coeff, basis))
    moves = torch.cat([half, half.mH])
    links = su3.random_point(n_chains * k, generator, dtype=torch.float64).reshape(n_chains, k, 3, 3)
    log_p = beta * plaquettes(links, size).sum(-1)
    accepted = 0
    for _ in range(n_sweeps):
        for j in range(k):
            choice = (rand((n_chains,), generator, dtype=torch.float64) * len(moves)).long().clamp_max(len(moves) - 1)
            old = links[:, j].clone()
            links[:, j] = moves[choice] @ old
            new_log_p = beta * plaquettes(links, size).sum(-1)
            accept = torch.log(rand((n_chains,), generator, dtype=torch.float64)) < new_log_p - log_p
            links[:, j] = torch.where(accept[:, None, None], links[:, j], old)
            log_p = torch.where(accept, new_log_p, log_p)
            accepted += int(accept.sum())
    return links, accepted / (n_chains * n_sweeps * k)
